"""Cost of post-hoc EMA tracking (phema.py) during training: the time of one training step of a
config against the time of updating the tracked power-function EMAs after it, measured
interleaved (step, update, step, update, ...) so both see the same machine load; and the size and
write time of one snapshot in float32 and float16.

  python bench/bench_phema.py                                   # digits quick start, 2 widths
  python bench/bench_phema.py --config ve/cifar10_ncsnpp_continuous --batch 8 --reps 10
Writes bench/results/phema_overhead.json.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import losses  # noqa: E402
import phema  # noqa: E402
import sde_lib  # noqa: E402
from checkpoints import build_state  # noqa: E402
from configs import load_config  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='ve/digits_ncsnpp_continuous')
  parser.add_argument('--batch', type=int, default=None, help='default: the config\'s')
  parser.add_argument('--widths', default='0.05,0.1')
  parser.add_argument('--reps', type=int, default=30)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--json', default=str(RESULTS / 'phema_overhead.json'))
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  config = load_config(args.config)
  config.device = torch.device('cpu')
  batch = args.batch or config.training.batch_size
  torch.manual_seed(0)
  state = build_state(config)
  sde, _ = sde_lib.get_sde(config)
  train_step, _ = losses.step_fns_from_config(config, sde, torch.Generator().manual_seed(0))
  shape = (batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  data = torch.rand(shape) * 2 - 1
  tracker = phema.Tracker(phema.parse_widths(args.widths, '--widths'), state['model'].parameters())
  steps, updates = [], []
  for i in range(args.reps + 3):
    start = time.perf_counter()
    float(train_step(state, data))
    middle = time.perf_counter()
    tracker.update()
    end = time.perf_counter()
    if i >= 3:  # warm-up
      steps.append(middle - start)
      updates.append(end - middle)
  step, update = statistics.median(steps), statistics.median(updates)
  sizes = {}
  with tempfile.TemporaryDirectory() as folder:
    for dtype in phema.DTYPES:
      start = time.perf_counter()
      path = tracker.save_snapshot(folder, 0, dtype)
      sizes[dtype] = dict(bytes=os.path.getsize(path), seconds=time.perf_counter() - start)
  result = dict(config=args.config, batch=batch, widths=args.widths, threads=args.threads,
                parameters=tracker.numel(), reps=args.reps, step_s=step, update_s=update,
                overhead=update / step, step_s_all=steps, update_s_all=updates, snapshot=sizes)
  print(f'| config | batch | widths | step (median) | EMA update | overhead | snapshot fp32 / fp16 |')
  print('|---|---|---|---|---|---|---|')
  print(f'| {args.config} | {batch} | {args.widths} | {step * 1e3:.1f} ms | {update * 1e3:.2f} ms '
        f'| {100 * update / step:.2f} % | {sizes["float32"]["bytes"] / 1e6:.1f} MB / '
        f'{sizes["float16"]["bytes"] / 1e6:.1f} MB |')
  write_json(args.json, result)


if __name__ == '__main__':
  main()
