"""Wall time of the probability-flow ODE sampler spent outside the network (solver arithmetic,
host copies), per method. The network is timed with forward pre/post hooks.

  python bench/bench_ode_overhead.py           # small NCSN++ (parity config: nf 16, 16x16), batch 8
  python bench/bench_ode_overhead.py --full    # configs/ve/cifar10_ncsnpp_continuous
  python bench/bench_ode_overhead.py --config vp/cifar10_ddpmpp_continuous   # VP (DDPM++)

Prints a table and writes bench/results/bench_ode_overhead[_full].json.
"""
import argparse
import sys
import time

import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import sampling  # noqa: E402
import sde_lib  # noqa: E402
from bench_likelihood import load_model, sync  # noqa: E402


class NullNetwork(torch.nn.Module):
  """A network that costs ~nothing: -x / (1 + label^2), a smooth score-like field. The sampler's
  wall time per evaluation with it is the solver's and the wrappers' own cost."""

  def forward(self, x, labels):
    return -x / (1 + labels.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


class NetworkTimer:
  """Accumulates the time spent inside model.forward (synchronising CUDA at both ends)."""

  def __init__(self, model, device):
    self.device, self.seconds, self.calls, self._start = device, 0., 0, None
    model.register_forward_pre_hook(self._pre)
    model.register_forward_hook(self._post)

  def _pre(self, module, inputs):
    sync(self.device)
    self._start = time.perf_counter()

  def _post(self, module, inputs, output):
    sync(self.device)
    self.seconds += time.perf_counter() - self._start
    self.calls += 1

  def reset(self):
    self.seconds, self.calls = 0., 0


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--full', action='store_true', help='full-size CIFAR-10 network')
  parser.add_argument('--config', default='ve/cifar10_ncsnpp_continuous',
                      help='ve/cifar10_ncsnpp_continuous or vp/cifar10_ddpmpp_continuous')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--methods', default='RK45,dopri5,rk4')
  parser.add_argument('--tol', type=float, default=1e-5, help='rtol = atol of adaptive methods')
  parser.add_argument('--num-steps', type=int, default=50, help='steps of fixed-step methods')
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
  parser.add_argument('--repeats', type=int, default=3, help='runs per method; the median is shown')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)

  config, model = load_model(args.full, args.device, args.config)
  sde, eps = sde_lib.get_sde(config)
  size = config.data.image_size
  shape = (args.batch, config.data.num_channels, size, size)
  timer = NetworkTimer(model, args.device)
  z = sde.prior_sampling(shape, generator=torch.Generator().manual_seed(0)).to(args.device)
  rows = {}
  for method in args.methods.split(','):
    sampler = sampling.get_ode_sampler(sde, shape, lambda x: x, rtol=args.tol, atol=args.tol,
                                       method=method, eps=eps, device=args.device,
                                       num_steps=args.num_steps)
    runs = []  # the run-to-run spread (~0.2 points on 2 CPU cores) is why there are repeats
    for _ in range(args.repeats):
      timer.reset()
      sync(args.device)
      start = time.perf_counter()
      _, nfe = sampler(model, z=z)
      sync(args.device)
      wall = time.perf_counter() - start
      runs.append((1 - timer.seconds / wall, wall, timer.seconds))
    outside, wall, network = sorted(runs)[len(runs) // 2]
    start = time.perf_counter()
    _, null_nfe = sampler(NullNetwork(), z=z)
    sync(args.device)
    own_us = (time.perf_counter() - start) / null_nfe * 1e6
    rows[method] = {'nfe': nfe, 'wall_s': wall, 'network_s': network,
                    'outside_fraction': outside,
                    'outside_fraction_runs': sorted(r[0] for r in runs),
                    'own_cost_us_per_eval': own_us,
                    'own_cost_fraction': own_us * 1e-6 * nfe / network}
  result = {'model': args.config + ('' if args.full else ' (parity fixture: nf 16, 16x16)'),
            'device': str(args.device), 'batch': args.batch, 'tol': args.tol,
            'threads': torch.get_num_threads(), 'methods': rows}
  print(f"{result['model']}, batch {args.batch}, {args.device}, tol {args.tol}")
  # 'outside': wall time not inside the network's forward hooks (median run, range in brackets);
  # 'own': the sampler's cost per evaluation measured with a do-nothing network, relative to
  # this network's time.
  print(f"{'method':10s}{'nfe':>6s}{'wall s':>10s}{'network s':>11s}{'outside':>9s}"
        f"{'(runs)':>16s}{'own us/eval':>13s}{'own':>7s}")
  for method, r in rows.items():
    spread = '-'.join(f'{100 * f:.2f}' for f in r['outside_fraction_runs'][::len(
      r['outside_fraction_runs']) - 1 or 1])
    print(f"{method:10s}{r['nfe']:6d}{r['wall_s']:10.2f}{r['network_s']:11.2f}"
          f"{100 * r['outside_fraction']:8.2f}%{'(' + spread + '%)':>16s}"
          f"{r['own_cost_us_per_eval']:13.0f}{100 * r['own_cost_fraction']:6.1f}%")
  tag = ('_full' if args.full else '') + ('' if args.config.startswith('ve/') else '_vp')
  write_json(RESULTS / f'bench_ode_overhead{tag}.json', result)


if __name__ == '__main__':
  main()
