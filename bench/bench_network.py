"""Score-network speed at full size: eval forward of the score function, and one forward +
backward of the denoising score-matching loss, on CPU.

    python bench/bench_network.py                    # both CIFAR-10 configs, batch 8, 2 threads
    python bench/bench_network.py --reference        # also time score_sde_pytorch (/work/ref)
    python bench/bench_network.py --repeats 3 --configs ve/cifar10_ncsnpp_continuous
    python bench/bench_network.py --bf16             # also ours under bf16 autocast, channels_last

The reference on this kind of machine (/work/shared/measurements.md): forward 0.89-1.27 s
(NCSN++ cont.) and 0.69-1.04 s (DDPM++ cont.); a whole training step 4.5-4.9 s and 3.0-3.2 s.
With --reference, the reference runs in a subprocess (its `models` package shadows ours) on the
same config, weights and inputs, so the ratio is measured side by side. Reports medians over
`--repeats` after one warm-up call; prints a table and writes bench/results/bench_network.json.
"""
import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import torch

from report import RESULTS, ROOT, write_json

REFERENCE = pathlib.Path('/work/ref')
CONFIGS = ('ve/cifar10_ncsnpp_continuous', 'vp/cifar10_ddpmpp_continuous')


def _load_config(name):
  sys.path.insert(0, str(ROOT))
  from configs import load_config
  config = load_config(name)
  config.device = torch.device('cpu')
  return config


def _import_implementation(impl):
  """(models.utils, sde_lib) of this project or of the reference checkout."""
  if impl == 'reference':
    import torch.utils.cpp_extension as cpp_extension
    cpp_extension.load = lambda *args, **kwargs: None  # CPU only: skip building the CUDA op
    for name in [m for m in sys.modules if m == 'models' or m.startswith('models.')
                 or m == 'sde_lib']:
      del sys.modules[name]
    sys.path.insert(0, str(REFERENCE))
  else:
    sys.path.insert(0, str(ROOT))
  import models.ddpm  # noqa: F401  (registers the networks)
  import models.ncsnpp  # noqa: F401
  import sde_lib
  from models import utils as mutils
  return mutils, sde_lib


def _median_seconds(fn, repeats):
  fn()  # warm-up: oneDNN primitive creation, allocator
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def time_network(impl, config_name, batch, repeats, bf16=False):
  """Seconds (median) of the eval score function and of a DSM loss forward + backward.

  With `bf16`, runs under CPU bf16 autocast with channels_last weights and inputs (outputs move
  by ~5e-3 relative; not the default anywhere).
  """
  config = _load_config(config_name)
  mutils, sde_lib = _import_implementation(impl)
  if impl == 'reference':
    config.data.channels = config.data.num_channels  # the reference reads this missing key
  torch.manual_seed(0)
  model = mutils.get_model(config.model.name)(config)
  n_params = sum(p.numel() for p in model.parameters())
  sde = (sde_lib.VESDE(config.model.sigma_min, config.model.sigma_max, config.model.num_scales)
         if config.training.sde == 'vesde'
         else sde_lib.VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales))
  g = torch.Generator().manual_seed(0)
  x0 = torch.rand(batch, config.data.num_channels, config.data.image_size,
                  config.data.image_size, generator=g)
  if config.data.centered:
    x0 = 2 * x0 - 1
  t = torch.rand(batch, generator=g) * (1 - 1e-3) + 1e-3
  z = torch.randn(x0.shape, generator=g)
  mean, std = sde.marginal_prob(x0, t)
  std = std[:, None, None, None]
  xt = mean + std * z

  if bf16:
    model = model.to(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
  autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16)
  eval_score = mutils.get_score_fn(sde, model, train=False, continuous=True)
  train_score = mutils.get_score_fn(sde, model, train=True, continuous=True)

  def forward():
    with torch.no_grad(), autocast:
      eval_score(xt, t)

  def forward_backward():
    model.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.square(train_score(xt, t) * std + z).mean()
    loss.backward()

  fwd, fwd_all = _median_seconds(forward, repeats)
  train, train_all = _median_seconds(forward_backward, repeats)
  return {'impl': impl + ('-bf16' if bf16 else ''), 'config': config_name, 'batch': batch, 'params': n_params,
          'forward_s': fwd, 'forward_all_s': fwd_all,
          'forward_backward_s': train, 'forward_backward_all_s': train_all}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--reference', action='store_true',
                      help='also time score_sde_pytorch from /work/ref, in a subprocess')
  parser.add_argument('--bf16', action='store_true',
                      help='also time ours under bf16 autocast with channels_last')
  parser.add_argument('--impl', default='ours', choices=['ours', 'reference'],
                      help=argparse.SUPPRESS)  # used by the subprocess
  parser.add_argument('--out', default=str(RESULTS / 'bench_network.json'))
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  if args.impl == 'reference':  # subprocess mode: print one JSON line per config
    for name in args.configs:
      print(json.dumps(time_network('reference', name, args.batch, args.repeats)), flush=True)
    return

  rows = []
  for name in args.configs:
    rows.append(time_network('ours', name, args.batch, args.repeats))
    if args.bf16:
      rows.append(time_network('ours', name, args.batch, args.repeats, bf16=True))
    if args.reference:
      if not REFERENCE.exists():
        print(f'--reference: {REFERENCE} not found, skipping the reference', file=sys.stderr)
      else:
        cmd = [sys.executable, __file__, '--impl', 'reference', '--configs', name,
               '--batch', str(args.batch), '--threads', str(args.threads),
               '--repeats', str(args.repeats)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.extend(json.loads(line) for line in out.splitlines() if line.startswith('{'))

  print(f'\nbatch {args.batch}, {args.threads} threads, median of {args.repeats} '
        f'(torch {torch.__version__}, {platform.processor() or platform.machine()})')
  print(f'{"config":32s} {"impl":10s} {"params":>11s} {"forward s":>10s} {"fwd+bwd s":>10s}')
  for r in rows:
    print(f'{r["config"]:32s} {r["impl"]:10s} {r["params"]:11,d} {r["forward_s"]:10.3f} '
          f'{r["forward_backward_s"]:10.3f}')
  ours = {r['config']: r for r in rows if r['impl'] == 'ours'}
  speedups = {}
  for r in rows:
    if r['impl'] == 'reference':
      o = ours[r['config']]
      speedups[r['config']] = {'forward': r['forward_s'] / o['forward_s'],
                               'forward_backward': r['forward_backward_s'] / o['forward_backward_s']}
      print(f'{r["config"]:32s} {"speed-up":10s} {"":11s} {speedups[r["config"]]["forward"]:9.2f}x '
            f'{speedups[r["config"]]["forward_backward"]:9.2f}x')

  write_json(args.out, {'batch': args.batch, 'threads': args.threads, 'repeats': args.repeats,
                        'torch': torch.__version__, 'results': rows,
                        'speedup_vs_reference': speedups})


if __name__ == '__main__':
  main()
