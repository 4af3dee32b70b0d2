"""Sampling throughput: images per second of one whole sampler call (`sampling.get_sampling_fn`,
as evaluation runs it), peak memory, and the network's achieved FLOP/s against the device's
dense peak (bench/report.py's PEAK_TFLOPS).

    python bench/bench_sampling.py                     # DPM-Solver, 20 evaluations, CPU batch 8
    python bench/bench_sampling.py --device cuda --batch 1000 --precision bf16 --channels-last --compile

The network has its initial (untrained) weights: the cost does not depend on them. Reports the
median over --repeats calls after warm-up calls (two with --compile); prints a table and writes
bench/results/bench_sampling.json (--out).
"""
import argparse
import platform
import sys

import torch

from report import (RESULTS, ROOT, add_speed_args, configure, count_flops, device_name,
                    median_seconds, option_columns, peak_memory_gb, print_table,
                    reset_peak_memory, speed_columns, throughput, write_json)

sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from configs import load_config  # noqa: E402
from models import utils as mutils  # noqa: E402


def time_sampling(config_name, args):
  """One result row: seconds per sampler call of `config_name` with the options of `args`."""
  config = configure(load_config(config_name), args)
  config.sampling.method = args.method
  config.sampling.num_steps = args.steps
  config.sampling.progress = False
  torch.manual_seed(0)
  model = mutils.create_model(config).eval()
  sde, eps = sde_lib.get_sde(config)
  shape = (args.batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config),
                                     eps)
  score_fn = mutils.get_score_fn(sde, model, continuous=config.training.continuous)
  x = torch.randn(shape, device=config.device)
  t = torch.full((args.batch,), 0.5, device=config.device)
  with torch.no_grad():
    flops_per_eval = count_flops(lambda: score_fn(x, t))
  nfe = []

  def run():
    with torch.no_grad():
      nfe.append(sampler(model)[1])

  reset_peak_memory(config.device)
  seconds, _ = median_seconds(run, args.repeats, config.device, warmup=2 if args.compile else 1)
  flops = flops_per_eval * nfe[-1]
  return dict(config=config_name, device=device_name(config.device), method=args.method,
              nfe=nfe[-1], precision=args.precision, channels_last=args.channels_last,
              compile=args.compile, batch=args.batch, seconds_per_call=seconds,
              flops_per_call=flops, peak_memory_gb=peak_memory_gb(config.device),
              **throughput(args.batch, seconds, flops, config.device, args.precision,
                           args.peak_tflops))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=['ve/cifar10_ncsnpp_continuous'])
  parser.add_argument('--method', default='dpm_solver', help='config.sampling.method')
  parser.add_argument('--steps', type=int, default=20, help='config.sampling.num_steps')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=str(RESULTS / 'bench_sampling.json'))
  args = add_speed_args(parser).parse_args()
  if args.batch is None:
    args.batch = 1000 if args.device.startswith('cuda') else 8
  rows = [time_sampling(name, args) for name in args.configs]

  print_table(rows, [('config', lambda r: r['config']), ('method', lambda r: r['method']),
                     ('nfe', lambda r: str(r['nfe']))] + option_columns()
              + [('s/call', lambda r: f'{r["seconds_per_call"]:.3f}')] + speed_columns())
  print(f'peak: {rows[0]["peak_tflops"]} TFLOP/s ({rows[0]["peak_source"]})')
  write_json(args.out, dict(what=f'sampling, {args.method} {rows[0]["nfe"]} NFE', rows=rows,
                            threads=args.threads, repeats=args.repeats, torch=torch.__version__,
                            machine=platform.processor() or platform.machine()))


if __name__ == '__main__':
  main()
