"""Cost of one likelihood ODE function evaluation (drift + Hutchinson divergence) relative to one
network forward pass on the same batch; ours (one forward + one backward) next to the reference's
scheme (a forward for the drift, then forward + backward for the divergence).

  python bench/bench_likelihood.py            # small NCSN++ (parity config: nf 16, 16x16), batch 4
  python bench/bench_likelihood.py --full     # configs/ve/cifar10_ncsnpp_continuous, batch 4

Prints a table and writes bench/results/bench_likelihood[_full].json.
"""
import argparse
import statistics
import sys
import time

import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import likelihood  # noqa: E402
import sde_lib  # noqa: E402
from models import utils as mutils  # noqa: E402


def load_model(full, device, name='ve/cifar10_ncsnpp_continuous'):
  """The full-size network of config `name` (random init), or the small parity-fixture network
  of that config with its non-trivial fixture weights (so that the ODE takes a realistic number
  of steps; fixtures exist for ve/cifar10_ncsnpp_continuous and vp/cifar10_ddpmpp_continuous)."""
  fixture = None
  if full:
    from configs import load_config
    config = load_config(name)
  else:
    import ml_collections
    fixture = torch.load(ROOT / 'tests/fixtures/parity' / f'{name.replace("/", "__")}.pt',
                         weights_only=False)
    config = ml_collections.ConfigDict(fixture['config'])
  config.device = torch.device(device)
  torch.manual_seed(0)
  model = mutils.create_model(config)
  if fixture is not None:
    model.load_state_dict(fixture['state_dict'])
  return config, model.eval()


def sync(device):
  if str(device).startswith('cuda'):
    torch.cuda.synchronize()


def median_time(fn, repeats, device):
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--full', action='store_true', help='full-size CIFAR-10 NCSN++')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)

  config, model = load_model(args.full, args.device)
  sde, _ = sde_lib.get_sde(config)
  size = config.data.image_size
  x = torch.randn(args.batch, config.data.num_channels, size, size, device=args.device)
  t = torch.full((args.batch,), 0.5, device=args.device)
  probe = torch.randint(0, 2, x.shape, device=args.device).float() * 2 - 1
  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  drift_fn = lambda y, s: sde.reverse(score_fn, probability_flow=True).sde(y, s)[0]

  def forward():
    with torch.no_grad():
      drift_fn(x, t)

  def ours():
    with torch.no_grad():
      likelihood.drift_and_divergence(drift_fn, x, t, probe)

  def reference_scheme():
    with torch.no_grad():
      drift_fn(x, t)  # the drift, evaluated on its own
      likelihood.drift_and_divergence(drift_fn, x, t, probe)  # then forward + backward again

  rows = {name: median_time(fn, args.repeats, args.device)
          for name, fn in [('forward', forward), ('ours', ours), ('reference_scheme', reference_scheme)]}
  result = {
    'model': 've/cifar10_ncsnpp_continuous' if args.full else 'parity ncsnpp (nf 16, 16x16)',
    'device': str(args.device), 'batch': args.batch, 'threads': torch.get_num_threads(),
    'seconds': rows,
    'ratio_to_forward': {k: v / rows['forward'] for k, v in rows.items()},
  }
  print(f"{result['model']}, batch {args.batch}, {args.device}, median of {args.repeats}")
  print(f"{'':28s}{'seconds':>10s}{'x forward':>11s}")
  for name, seconds in rows.items():
    print(f'{name:28s}{seconds:10.4f}{seconds / rows["forward"]:11.2f}')
  write_json(RESULTS / f'bench_likelihood{"_full" if args.full else ""}.json', result)


if __name__ == '__main__':
  main()
