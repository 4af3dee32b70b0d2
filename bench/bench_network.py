"""Score-network speed at full size: eval forward of the score function, and one forward +
backward of the denoising score-matching loss; images/s, peak memory, achieved FLOP/s and its
fraction of the device's dense peak (bench/report.py's PEAK_TFLOPS).

    python bench/bench_network.py                    # both CIFAR-10 configs, batch 8, 2 threads
    python bench/bench_network.py --reference PATH   # also time score_sde_pytorch checked out at PATH
    python bench/bench_network.py --repeats 3 --configs ve/cifar10_ncsnpp_continuous
    python bench/bench_network.py --bf16             # also ours in bf16 + channels_last (+ fused Adam)
    python bench/bench_network.py --device cuda --batch 128 --precision bf16 --channels-last --compile

The reference on this kind of machine (the project's shared measurements): forward 0.89-1.27 s
(NCSN++ cont.) and 0.69-1.04 s (DDPM++ cont.); a whole training step 4.5-4.9 s and 3.0-3.2 s.
With --reference PATH (or $SCORESDE_REFERENCE), a checkout of score_sde_pytorch runs in a
subprocess (its `models` package shadows ours) on the same config, weights and inputs, so the
ratio is measured side by side. Three timings: the eval score function ('forward'), the loss
forward + backward ('fwd+bwd'), and a whole training step with each implementation's own
losses.get_step_fn, Adam and EMA ('train step'). Both keep freed memory
(precision.keep_freed_cpu_memory, as training does; --malloc-default for glibc's default, under
which page faults took ~20 % of the digits network's forward pass). Reports medians over
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

import os

import torch

from report import (RESULTS, ROOT, add_speed_args, count_flops, device_name, median_seconds,
                    peak_memory_gb, print_table, reset_peak_memory, speed_columns, throughput,
                    write_json)

CONFIGS = ('ve/cifar10_ncsnpp_continuous', 'vp/cifar10_ddpmpp_continuous')


def _load_config(name, device='cpu'):
  sys.path.insert(0, str(ROOT))
  from configs import load_config
  config = load_config(name)
  config.device = torch.device(device)
  return config


def _import_implementation(impl, reference=None):
  """(models.utils, sde_lib, losses, ExponentialMovingAverage) of this project or of the
  reference checkout at `reference`."""
  if impl == 'reference':
    import torch.utils.cpp_extension as cpp_extension
    cpp_extension.load = lambda *args, **kwargs: None  # CPU only: skip building the CUDA op
    for name in [m for m in sys.modules if m == 'models' or m.startswith('models.')
                 or m == 'sde_lib']:
      del sys.modules[name]
    sys.path.insert(0, str(reference))
  else:
    sys.path.insert(0, str(ROOT))
  import models.ddpm  # noqa: F401  (registers the networks)
  import models.ncsnpp  # noqa: F401
  import losses
  import sde_lib
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage
  return mutils, sde_lib, losses, ExponentialMovingAverage


def time_network(impl, config_name, batch, repeats, precision='fp32', channels_last=False,
                 compile=False, device='cpu', peak=None, reference=None, adam_impl='default'):
  """Seconds (median) of the eval score function and of a DSM loss forward + backward, with
  images/s, FLOP/s and peak memory of the forward pass.

  `precision` runs the network under autocast (bf16 moves the outputs by ~1e-2 relative, see
  tests/test_precision.py), `channels_last` converts weights and inputs, `compile` wraps the
  network in torch.compile; the reference runs as it is (fp32, CPU).
  """
  config = _load_config(config_name, device)
  config.training.precision = precision
  config.optim.adam_impl = adam_impl
  mutils, sde_lib, losses, ema_class = _import_implementation(impl, reference)
  if impl == 'reference':
    config.data.channels = config.data.num_channels  # the reference reads this missing key
  torch.manual_seed(0)
  model = mutils.get_model(config.model.name)(config).to(config.device)
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
  x0, t, z = (v.to(config.device) for v in (x0, t, z))
  mean, std = sde.marginal_prob(x0, t)
  std = std[:, None, None, None]
  xt = mean + std * z

  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    xt = xt.contiguous(memory_format=torch.channels_last)
  network = model
  if impl == 'ours':
    import precision as precision_lib
    autocast = precision_lib.autocast(precision, config.device.type)
    network = precision_lib.CompiledModel(model) if compile else model
  else:
    import contextlib
    autocast = contextlib.nullcontext()
  eval_score = mutils.get_score_fn(sde, network, train=False, continuous=True)
  train_score = mutils.get_score_fn(sde, network, train=True, continuous=True)

  def forward():
    with torch.no_grad(), autocast:
      eval_score(xt, t)

  def forward_backward():
    model.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.square(train_score(xt, t) * std + z).mean()
    loss.backward()

  tc = config.training
  state = dict(model=network, optimizer=losses.get_optimizer(config, model.parameters()),
               ema=ema_class(model.parameters(), decay=config.model.ema_rate), step=0)
  extra = {}
  if impl == 'ours':
    extra = dict(precision=precision,
                 scaler=precision_lib.grad_scaler(precision, config.device.type))
  step_fn = losses.get_step_fn(sde, True, losses.optimization_manager(config),
                               reduce_mean=tc.reduce_mean, continuous=tc.continuous,
                               likelihood_weighting=tc.likelihood_weighting, **extra)
  batch_x0 = x0.contiguous(memory_format=torch.channels_last) if channels_last else x0

  def train_step():  # loss, backward, clipping, Adam, EMA: what training does per step
    step_fn(state, batch_x0)

  warmup = 2 if compile else 1
  flops = count_flops(lambda: mutils.get_score_fn(sde, model, continuous=True)(xt, t))
  reset_peak_memory(config.device)
  fwd, fwd_all = median_seconds(forward, repeats, config.device, warmup)
  memory = peak_memory_gb(config.device)
  train, train_all = median_seconds(forward_backward, repeats, config.device, warmup)
  step, step_all = median_seconds(train_step, repeats, config.device, warmup)
  name = (impl + (f'-{precision}' if precision != 'fp32' else '')
          + ('-nhwc' if channels_last else '') + ('-compiled' if compile else '')
          + (f'-{adam_impl}-adam' if adam_impl != 'default' else ''))
  return {'impl': name, 'config': config_name, 'batch': batch, 'params': n_params,
          'device': device_name(config.device), 'precision': precision,
          'channels_last': channels_last, 'compile': compile, 'adam_impl': adam_impl,
          'forward_s': fwd, 'forward_all_s': fwd_all, 'forward_flops': flops,
          'forward_backward_s': train, 'forward_backward_all_s': train_all,
          'train_step_s': step, 'train_step_all_s': step_all,
          'forward_peak_memory_gb': memory,
          **throughput(batch, fwd, flops, config.device, precision, peak)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--reference', nargs='?', const=os.environ.get('SCORESDE_REFERENCE', ''),
                      default=None, metavar='PATH',
                      help='also time score_sde_pytorch checked out at PATH (default '
                      '$SCORESDE_REFERENCE), in a subprocess')
  parser.add_argument('--bf16', action='store_true',
                      help='also time ours under bf16 autocast with channels_last, with the '
                      'default and the fused Adam')
  parser.add_argument('--impl', default='ours', choices=['ours', 'reference'],
                      help=argparse.SUPPRESS)  # used by the subprocess
  parser.add_argument('--out', default=str(RESULTS / 'bench_network.json'))
  parser.add_argument('--malloc-default', action='store_true',
                      help="keep glibc's default of unmapping freed blocks (both implementations)")
  args = add_speed_args(parser, batch=8).parse_args()
  torch.set_num_threads(args.threads)
  if not args.malloc_default:  # the same allocator setting for ours and the reference
    sys.path.append(str(ROOT))  # last: the reference's modules come first in its subprocess
    import precision as precision_lib
    precision_lib.keep_freed_cpu_memory()
  options = dict(precision=args.precision, channels_last=args.channels_last,
                 compile=args.compile, device=args.device, peak=args.peak_tflops,
                 adam_impl=args.adam_impl)

  if args.impl == 'reference':  # subprocess mode: print one JSON line per config
    for name in args.configs:
      print(json.dumps(time_network('reference', name, args.batch, args.repeats,
                                    reference=args.reference)), flush=True)
    return

  rows, speedups = [], {}
  for name in args.configs:
    ours = time_network('ours', name, args.batch, args.repeats, **options)
    rows.append(ours)
    if args.bf16:  # numbers change anyway in bf16, so also with the fused Adam
      for adam_impl in ('default', 'fused'):
        rows.append(time_network('ours', name, args.batch, args.repeats,
                                 **dict(options, precision='bf16', channels_last=True,
                                        adam_impl=adam_impl)))
    if args.reference is not None:
      if not (pathlib.Path(args.reference) / 'models' / 'ncsnpp.py').is_file():
        sys.exit(f'--reference {args.reference!r} is not a checkout of score_sde_pytorch: pass '
                 'its folder (git clone https://github.com/yang-song/score_sde_pytorch).')
      cmd = [sys.executable, __file__, '--impl', 'reference', '--reference', args.reference,
             '--configs', name,
             '--batch', str(args.batch), '--threads', str(args.threads),
             '--repeats', str(args.repeats)] + (['--malloc-default'] if args.malloc_default else [])
      out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
      reference = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
      rows.extend(reference)
      speedups[name] = {key: reference[0][f'{key}_s'] / ours[f'{key}_s']
                        for key in ('forward', 'forward_backward', 'train_step')}

  print(f'\nbatch {args.batch}, {args.threads} threads, median of {args.repeats} '
        f'(torch {torch.__version__}, {platform.processor() or platform.machine()}, '
        f'{rows[0]["device"]}; peak {rows[0]["peak_tflops"]} TFLOP/s: {rows[0]["peak_source"]})')
  print_table(rows, [('config', lambda r: r['config']), ('impl', lambda r: r['impl']),
                     ('params', lambda r: f'{r["params"]:,d}'),
                     ('forward s', lambda r: f'{r["forward_s"]:.3f}'),
                     ('fwd+bwd s', lambda r: f'{r["forward_backward_s"]:.3f}'),
                     ('train step s', lambda r: f'{r["train_step_s"]:.3f}')]
              + speed_columns('forward_peak_memory_gb'))
  for name, speedup in speedups.items():
    print(f'{name}: speed-up over the reference: forward {speedup["forward"]:.2f}x, '
          f'forward + backward {speedup["forward_backward"]:.2f}x, train step '
          f'{speedup["train_step"]:.2f}x')

  write_json(args.out, {'batch': args.batch, 'threads': args.threads, 'repeats': args.repeats,
                        'torch': torch.__version__, 'results': rows,
                        'speedup_vs_reference': speedups})


if __name__ == '__main__':
  main()
