"""Sample quality per network evaluation, with the exact score of a Gaussian mixture.

Data: 8 well-separated Gaussian modes in 48 dimensions (shape 3x4x4), std 0.1, unequal weights.
Every perturbed marginal of such data is again a mixture with a closed-form score, so the table
measures the samplers alone, with no network error. Metrics (n samples per row):
  mode TV   total-variation distance between mode frequencies and the weights
  spread    within-mode RMS distance to the mode's mean, relative to the exact (1 = exact)
  SW2       sliced Wasserstein-2 distance to fresh exact samples (256 random directions)
The first row, 'exact', compares two exact draws: the floor that n samples allow.

  python bench/bench_sampler_quality.py            # n = 4000, VE and VP (a few minutes on CPU)
  python bench/bench_sampler_quality.py --quick    # n = 1000, fewer rows
Writes bench/results/sampler_quality.json.
"""
import argparse
import math
import sys
import time

import torch

from report import RESULTS, ROOT, write_json

sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]

import fast_sampling as fs  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from gaussian_score import ExactScoreModel, GaussianMixture  # noqa: E402
from models import utils as mutils  # noqa: E402

SHAPE = (3, 4, 4)
MODE_STD = 0.1


def make_mixture(seed=0):
  """8 modes at random sign vectors of norm ~2 (about 20 mode stds apart), weights 1..8."""
  g = torch.Generator().manual_seed(seed)
  dim = math.prod(SHAPE)
  means = (torch.randint(0, 2, (8, dim), generator=g).float() * 2 - 1) * 0.3
  weights = torch.arange(1, 9, dtype=torch.float32)
  return GaussianMixture(weights / weights.sum(), means.reshape(8, *SHAPE),
                         torch.full((8,) + SHAPE, MODE_STD))


def metrics(x, mixture, reference, n_proj=256, seed=0):
  """mode TV, relative within-mode spread, sliced W2 of samples x (n, *SHAPE) vs `reference`."""
  flat = x.reshape(x.shape[0], -1).double()
  means = mixture.means.reshape(8, -1).double()
  dist = torch.cdist(flat, means)
  nearest = dist.argmin(1)
  freq = torch.bincount(nearest, minlength=8).double() / x.shape[0]
  tv = 0.5 * (freq - mixture.weights.double()).abs().sum().item()
  spread = (dist.gather(1, nearest[:, None]).pow(2).mean() / flat.shape[1]).sqrt().item() / MODE_STD
  g = torch.Generator().manual_seed(seed)
  dirs = torch.randn(flat.shape[1], n_proj, generator=g, dtype=torch.float64)
  dirs /= dirs.norm(dim=0, keepdim=True)
  a = (flat @ dirs).sort(0).values
  b = (reference.reshape(reference.shape[0], -1).double() @ dirs).sort(0).values
  sw2 = (a - b).pow(2).mean().sqrt().item()
  return tv, spread, sw2


def sampler_rows(make_sde, eps, mixture, n, quick):
  """(name, run) pairs; run(generator) -> (samples, nfe). make_sde(N) builds the SDE."""
  shape = (n,) + SHAPE
  sde = make_sde(1000)
  model = ExactScoreModel(sde, mixture, continuous=True)
  ident = lambda x: x
  score_fn = mutils.get_score_fn(sde, model, continuous=True)
  rows = []
  rd, lg = sampling.get_predictor('reverse_diffusion'), sampling.get_corrector('langevin')
  for n_steps in ((100, 1000) if quick else (25, 100, 500, 1000)):
    def pc(g, n_steps=n_steps, corrector=lg):
      sde_n = make_sde(n_steps)  # the discrete schedules depend on N
      return sampling.get_pc_sampler(sde_n, shape, rd, corrector, ident, snr=0.16, eps=eps,
                                     continuous=True, device='cpu')(
        ExactScoreModel(sde_n, mixture, continuous=True), generator=g)
    rows.append((f'PC rev.diff.+Langevin N={n_steps}', pc))
    rows.append((f'predictor only N={n_steps}',
                 lambda g, n_steps=n_steps: pc(g, n_steps, sampling.get_corrector('none'))))
  for tol in ((1e-3, 1e-5) if quick else (1e-2, 1e-3, 1e-4, 1e-5)):
    rows.append((f'RK45 tol={tol:g}', lambda g, tol=tol: sampling.get_ode_sampler(
      sde, shape, ident, rtol=tol, atol=tol, eps=eps, device='cpu')(model, generator=g)))
  for steps in ((6, 10, 18) if quick else (6, 10, 18, 30)):
    rows.append((f'Heun (EDM) {steps} levels', lambda g, steps=steps: fs.heun_sample(
      score_fn, sde, shape, steps, eps, generator=g)))
  for nfe in ((10, 20) if quick else (10, 15, 20, 30)):
    rows.append((f'DPM-Solver++ 2M NFE={nfe}', lambda g, nfe=nfe: fs.dpm_solver_sample(
      score_fn, sde, shape, nfe, 2, 'multistep', 'dpmsolver++', eps=eps, generator=g)))
    rows.append((f'DPM-Solver++ 3M NFE={nfe}', lambda g, nfe=nfe: fs.dpm_solver_sample(
      score_fn, sde, shape, nfe, 3, 'multistep', 'dpmsolver++', eps=eps, generator=g)))
    rows.append((f'DPM-Solver++ 3S NFE={nfe}', lambda g, nfe=nfe: fs.dpm_solver_sample(
      score_fn, sde, shape, nfe, 3, 'singlestep', 'dpmsolver++', eps=eps, generator=g)))
    rows.append((f'DPM-Solver 3S NFE={nfe}', lambda g, nfe=nfe: fs.dpm_solver_sample(
      score_fn, sde, shape, nfe, 3, 'singlestep', 'dpmsolver', eps=eps, generator=g)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=None, help='samples per row (default 4000)')
  parser.add_argument('--quick', action='store_true', help='n = 1000 and fewer rows')
  parser.add_argument('--sdes', default='ve,vp', help='comma list of ve, vp, subvp')
  parser.add_argument('--out', default=str(RESULTS / 'sampler_quality.json'))
  args = parser.parse_args()
  n = args.n or (1000 if args.quick else 4000)
  torch.set_num_threads(2)
  mixture = make_mixture()
  results = []
  sdes = {'ve': (lambda N: sde_lib.VESDE(sigma_min=0.01, sigma_max=50, N=N), 1e-5),
          'vp': (lambda N: sde_lib.VPSDE(N=N), 1e-3), 'subvp': (lambda N: sde_lib.subVPSDE(N=N), 1e-3)}
  header = f'{"SDE":5s} {"sampler":34s} {"NFE":>6s} {"mode TV":>8s} {"spread":>7s} {"SW2":>7s} {"s":>6s}'
  print(header, flush=True)
  print('-' * len(header))
  exact_a = mixture.sample(n, torch.Generator().manual_seed(1))
  exact_b = mixture.sample(n, torch.Generator().manual_seed(2))
  floor = metrics(exact_a, mixture, exact_b)
  print(f'{"-":5s} {"exact vs exact (floor)":34s} {0:6d} {floor[0]:8.4f} {floor[1]:7.3f} {floor[2]:7.4f}')
  results.append(dict(sde='-', sampler='exact', nfe=0, mode_tv=floor[0], spread=floor[1],
                      sw2=floor[2]))
  for name in args.sdes.split(','):
    make_sde, eps = sdes[name]
    for label, run in sampler_rows(make_sde, eps, mixture, n, args.quick):
      start = time.perf_counter()
      x, nfe = run(torch.Generator().manual_seed(3))
      seconds = time.perf_counter() - start
      tv, spread, sw2 = metrics(x, mixture, exact_b)
      print(f'{name:5s} {label:34s} {nfe:6d} {tv:8.4f} {spread:7.3f} {sw2:7.4f} {seconds:6.1f}',
            flush=True)
      results.append(dict(sde=name, sampler=label, nfe=nfe, mode_tv=tv, spread=spread, sw2=sw2,
                          seconds=seconds))
  write_json(args.out, dict(n=n, mode_std=MODE_STD, dims=math.prod(SHAPE), rows=results))


if __name__ == '__main__':
  main()
