"""Bits/dim evaluation speed: seconds per image and per function evaluation (NFE), against the
network's own forward pass.

Each NFE of the likelihood ODE is one forward and one vector-Jacobian product of the score
network (the Hutchinson-Skilling divergence), so its floor is roughly one forward plus one
backward; the reference spends 2.0 s per NFE for a 0.55-0.66 s forward (ve/cifar10_ncsnpp_continuous,
batch 4, CPU; the project's shared measurements).

    python bench/bench_bpd.py                      # tiny 16x16 NCSN++ (the parity fixture), batch 4
    python bench/bench_bpd.py --full               # also ve/cifar10_ncsnpp_continuous (slow on CPU)

Tolerances are the reference's (RK45, rtol = atol = 1e-5, Rademacher noise, eps = 1e-5).
Prints a table and writes bench/results/bench_bpd.json.
"""
import argparse
import platform
import statistics
import sys
import time

import torch
from ml_collections import ConfigDict

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import likelihood  # noqa: E402
import sde_lib  # noqa: E402
from configs import load_config  # noqa: E402
from models import utils as mutils  # noqa: E402


def tiny_model():
  """The 16x16 VE NCSN++ of tests/fixtures/parity (non-trivial random weights)."""
  fixture = torch.load(ROOT / 'tests/fixtures/parity/ve__cifar10_ncsnpp_continuous.pt', weights_only=True)
  config = ConfigDict(fixture['config'])
  config.device = torch.device('cpu')
  model = mutils.create_model(config)
  model.load_state_dict(fixture['state_dict'])
  return config, model


def full_model():
  config = load_config('ve/cifar10_ncsnpp_continuous')
  config.device = torch.device('cpu')
  torch.manual_seed(0)
  return config, mutils.create_model(config)


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def bench(name, config, model, batch, repeats):
  sde, _ = sde_lib.get_sde(config)
  size, channels = config.data.image_size, config.data.num_channels
  g = torch.Generator().manual_seed(0)
  data = (torch.randint(0, 256, (batch, channels, size, size), generator=g).float()
          + torch.rand(batch, channels, size, size, generator=g)) / 256.
  if config.data.centered:
    data = data * 2 - 1
  inverse_scaler = (lambda x: (x + 1) / 2) if config.data.centered else (lambda x: x)
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  t = torch.full((batch,), 0.5)

  def forward():
    with torch.no_grad():
      score_fn(data, t)

  def forward_vjp():
    x = data.clone().requires_grad_(True)
    out = score_fn(x, t)
    torch.autograd.grad((out * torch.ones_like(out)).sum(), x)

  forward()
  t_fwd = _median_time(forward, 5)
  t_vjp = _median_time(forward_vjp, 5)
  likelihood_fn = likelihood.get_likelihood_fn(sde, inverse_scaler)  # reference tolerances
  runs = []
  for i in range(repeats):
    torch.manual_seed(i)
    start = time.perf_counter()
    bpd, _, nfe = likelihood_fn(model, data)
    runs.append((time.perf_counter() - start, int(nfe), float(bpd.mean())))
  wall = statistics.median(r[0] for r in runs)
  nfe = statistics.median(r[1] for r in runs)
  return {'model': name, 'batch': batch, 'threads': torch.get_num_threads(),
          'seconds_total': wall, 'seconds_per_image': wall / batch, 'nfe': nfe,
          'seconds_per_nfe': wall / nfe, 'forward_s': t_fwd, 'forward_plus_vjp_s': t_vjp,
          'nfe_over_forward': wall / nfe / t_fwd, 'nfe_over_forward_plus_vjp': wall / nfe / t_vjp,
          'mean_bpd': statistics.median(r[2] for r in runs)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--full', action='store_true', help='also time ve/cifar10_ncsnpp_continuous')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=1, help='likelihood solves per model')
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  rows = [bench('tiny ncsnpp 16x16 (parity fixture)', *tiny_model(), args.batch, args.repeats)]
  if args.full:
    rows.append(bench('ve/cifar10_ncsnpp_continuous', *full_model(), args.batch, 1))
  header = (f'{"model":38s} {"batch":>5s} {"NFE":>5s} {"s/image":>8s} {"s/NFE":>8s} '
            f'{"fwd s":>7s} {"fwd+vjp":>8s} {"NFE/fwd":>8s} {"NFE/(f+v)":>9s}')
  print(header)
  for r in rows:
    print(f'{r["model"]:38s} {r["batch"]:5d} {r["nfe"]:5.0f} {r["seconds_per_image"]:8.3f} '
          f'{r["seconds_per_nfe"]:8.4f} {r["forward_s"]:7.4f} {r["forward_plus_vjp_s"]:8.4f} '
          f'{r["nfe_over_forward"]:8.2f} {r["nfe_over_forward_plus_vjp"]:9.2f}')
  print('Reference, ve/cifar10_ncsnpp_continuous batch 4: 2.0 s per NFE, forward 0.55-0.66 s '
        '(NFE/fwd 3.0-3.6).')
  write_json(RESULTS / 'bench_bpd.json',
             {'rows': rows, 'torch': torch.__version__, 'machine': platform.machine(),
              'reference': {'seconds_per_nfe': 2.0, 'forward_s': [0.55, 0.66]}})


if __name__ == '__main__':
  main()
