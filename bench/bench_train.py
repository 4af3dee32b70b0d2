"""Training throughput: images per second of one full training step (loss, backward, gradient
clipping, Adam, EMA; `losses.get_step_fn` as run_lib.train runs it).

    python bench/bench_train.py                         # ve/cifar10_ncsnpp_continuous, CPU batch 8
    python bench/bench_train.py --steps 5 --threads 2   # + GPU at batch 128 when CUDA is present
    python bench/bench_train.py --configs ve/digits_ncsnpp_continuous --cpu-batch 64

The reference on this kind of machine (/work/shared/measurements.md): 4.5-4.9 s per step of 8
images on 2 threads (~1.7 images/s). Reports the median over --steps after one warm-up step;
prints a table and writes bench/results/bench_train.json.
"""
import argparse
import platform
import statistics
import sys
import time

import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import losses  # noqa: E402
import run_lib  # noqa: E402
import sde_lib  # noqa: E402
from configs import load_config  # noqa: E402

REFERENCE_CPU_SECONDS = {'ve/cifar10_ncsnpp_continuous': 4.9}  # batch 8, 2 threads


def time_steps(config_name, device, batch_size, steps):
  """Median seconds per training step of `config_name` at `batch_size` on `device`."""
  config = load_config(config_name)
  config.device = torch.device(device)
  config.training.batch_size = batch_size
  torch.manual_seed(0)
  state = run_lib.build_state(config)
  sde, _ = sde_lib.get_sde(config)
  tc = config.training
  step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                               reduce_mean=tc.reduce_mean, continuous=tc.continuous,
                               likelihood_weighting=tc.likelihood_weighting)
  shape = (batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
  batch = torch.rand(shape, device=config.device)
  sync = torch.cuda.synchronize if config.device.type == 'cuda' else (lambda: None)
  times = []
  for i in range(steps + 1):
    sync()
    start = time.perf_counter()
    step_fn(state, batch).item()
    sync()
    if i > 0:  # the first step builds kernels / allocator pools
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=['ve/cifar10_ncsnpp_continuous'])
  parser.add_argument('--cpu-batch', type=int, default=8)
  parser.add_argument('--gpu-batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--no-cpu', action='store_true', help='only the GPU run')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  runs = [] if args.no_cpu else [('cpu', args.cpu_batch)]
  if torch.cuda.is_available():
    runs.append(('cuda', args.gpu_batch))
  rows = []
  for name in args.configs:
    for device, batch in runs:
      seconds = time_steps(name, device, batch, args.steps)
      ref = REFERENCE_CPU_SECONDS.get(name) if device == 'cpu' and batch == 8 else None
      rows.append(dict(config=name, device=device if device == 'cpu' else torch.cuda.get_device_name(),
                       batch=batch, seconds_per_step=seconds, images_per_second=batch / seconds,
                       reference_seconds_per_step=ref,
                       speedup_vs_reference=ref / seconds if ref else None))

  print(f'{"config":34s} {"device":24s} {"batch":>5s} {"s/step":>8s} {"img/s":>8s} {"vs ref":>7s}')
  for r in rows:
    speedup = f'{r["speedup_vs_reference"]:.2f}x' if r['speedup_vs_reference'] else '-'
    print(f'{r["config"]:34s} {r["device"][:24]:24s} {r["batch"]:5d} {r["seconds_per_step"]:8.3f} '
          f'{r["images_per_second"]:8.2f} {speedup:>7s}')
  write_json(RESULTS / 'bench_train.json',
             dict(rows=rows, threads=args.threads, steps=args.steps, torch=torch.__version__,
                  machine=platform.processor() or platform.machine()))


if __name__ == '__main__':
  main()
