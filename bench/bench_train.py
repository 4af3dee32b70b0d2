"""Training throughput: images per second of one full training step (loss, backward, gradient
clipping, Adam, EMA: losses.step_fns_from_config, as training runs them), peak memory, and the
achieved FLOP/s against the device's dense peak (bench/report.py's PEAK_TFLOPS).

    python bench/bench_train.py                         # ve/cifar10_ncsnpp_continuous, CPU batch 8
    python bench/bench_train.py --configs ve/digits_ncsnpp_continuous --batch 64
    python bench/bench_train.py --device cuda --batch 128 --precision bf16 --channels-last --compile

The reference on this kind of machine (the project's shared measurements): 4.5-4.9 s per step of 8
images on 2 threads (~1.7 images/s). Reports the median over --steps after warm-up steps (two
with --compile: the first compiles); prints a table and writes bench/results/bench_train.json
(--out). FLOPs are those of matmuls and convolutions (torch's FlopCounterMode), counted once.
"""
import argparse
import platform
import sys

import torch

from report import (RESULTS, ROOT, add_speed_args, configure, count_flops, device_name,
                    median_seconds, option_columns, peak_memory_gb, print_table,
                    reset_peak_memory, speed_columns, throughput, write_json)

sys.path.insert(0, str(ROOT))

import precision  # noqa: E402
import losses  # noqa: E402
from checkpoints import build_state  # noqa: E402
import sde_lib  # noqa: E402
from configs import load_config  # noqa: E402

REFERENCE_CPU_SECONDS = {'ve/cifar10_ncsnpp_continuous': 4.9}  # batch 8, 2 threads


def time_steps(config_name, args, steps):
  """One result row: seconds per training step of `config_name` with the options of `args`."""
  config = configure(load_config(config_name), args)
  config.training.batch_size = batch_size = args.batch
  torch.manual_seed(0)
  state = build_state(config)
  sde, _ = sde_lib.get_sde(config)
  grad_scaler = precision.grad_scaler(args.precision, config.device.type)
  generator = torch.Generator(device=config.device).manual_seed(0)
  train_step, _ = losses.step_fns_from_config(config, sde, generator, grad_scaler=grad_scaler)
  shape = (batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
  batch = torch.rand(shape, device=config.device)
  flops = count_flops(lambda: train_step(state, batch))  # eager: the count needs no compilation
  state['model'] = precision.training_model(config, state['model'])
  reset_peak_memory(config.device)
  seconds, _ = median_seconds(lambda: train_step(state, batch).item(), steps, config.device,
                              warmup=2 if args.compile else 1)
  ref = REFERENCE_CPU_SECONDS.get(config_name) if args.device == 'cpu' and batch_size == 8 else None
  return dict(config=config_name, device=device_name(config.device), precision=args.precision,
              channels_last=args.channels_last, compile=args.compile,
              adam_impl=args.adam_impl, batch=batch_size,
              seconds_per_step=seconds, flops_per_step=flops,
              peak_memory_gb=peak_memory_gb(config.device), reference_seconds_per_step=ref,
              speedup_vs_reference=ref / seconds if ref else None,
              **throughput(batch_size, seconds, flops, config.device, args.precision,
                           args.peak_tflops))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=['ve/cifar10_ncsnpp_continuous'])
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--out', default=str(RESULTS / 'bench_train.json'))
  args = add_speed_args(parser).parse_args()
  if args.batch is None:
    args.batch = 128 if args.device.startswith('cuda') else 8
  rows = [time_steps(name, args, args.steps) for name in args.configs]

  print_table(rows, [('config', lambda r: r['config']), ('device', lambda r: r['device'][:16])]
              + option_columns() + [('s/step', lambda r: f'{r["seconds_per_step"]:.3f}')]
              + speed_columns() + [('vs ref', lambda r: f'{r["speedup_vs_reference"]:.2f}x'
                                    if r['speedup_vs_reference'] else '-')])
  print(f'peak: {rows[0]["peak_tflops"]} TFLOP/s ({rows[0]["peak_source"]})')
  write_json(args.out, dict(what='training step', rows=rows, threads=args.threads,
                            steps=args.steps, torch=torch.__version__,
                            machine=platform.processor() or platform.machine()))


if __name__ == '__main__':
  main()
