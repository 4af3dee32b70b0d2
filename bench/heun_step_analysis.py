"""How many evaluations EDM's Heun sampler needs on the quality benchmark's modes, in closed form.

Within one Gaussian mode of std s (mean 0 in EDM's scaled variable y = x / s(t)), the
probability-flow ODE is linear: dy/dsigma = y sigma / (s^2 + sigma^2). A Heun step from sigma_a
to sigma_b therefore multiplies y by a number, and the final Euler step to sigma = 0 by
s^2 / (s^2 + sigma^2). The product over the ladder, divided by the exact factor
s / sqrt(s^2 + sigma_max^2), is the sampler's within-mode spread (1 = exact), with no sampling
noise. It equals bench_sampler_quality.py's measured spread (VE, 10 levels: 1.245 here, 1.239
measured with n = 4000), and tests/test_fast_sampling.py checks that heun_sample multiplies by
exactly this number.

  python bench/heun_step_analysis.py          # s = 0.1 (the benchmark's modes)
Writes bench/results/heun_step_analysis.json.
"""
import argparse
import sys

from report import RESULTS, ROOT, write_json

sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]

import fast_sampling as fs  # noqa: E402
import sde_lib  # noqa: E402
from gaussian_score import heun_gain  # noqa: E402


def spread(sde, eps, levels, s, schedule, rho=7.):
  sigmas = fs.get_sigma_schedule(sde, levels, eps, schedule, rho).tolist()
  exact = s / (s * s + sigmas[0] ** 2) ** 0.5
  return heun_gain(sigmas, s) / exact


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--std', type=float, default=0.1, help='mode std s')
  parser.add_argument('--band', type=float, default=0.03, help='target |spread - 1|')
  args = parser.parse_args()
  sdes = {'ve': (sde_lib.VESDE(sigma_min=0.01, sigma_max=50), 1e-5), 'vp': (sde_lib.VPSDE(), 1e-3)}
  grids = [('edm', 3.), ('edm', 7.), ('edm', 15.), ('logsnr', None), ('time_uniform', None)]
  levels = (6, 8, 10, 11, 14, 18, 24, 30)
  result = {'std': args.std, 'band': args.band, 'rows': []}
  print(f'Heun (EDM) within-mode spread, mode std {args.std}; NFE = 2 levels - 1')
  print(f'{"SDE":4s}{"schedule":16s}' + ''.join(f'{2 * n - 1:>8d}' for n in levels)
        + f'{"NFE for +-" + str(args.band):>16s}')
  for name, (sde, eps) in sdes.items():
    for schedule, rho in grids:
      label = f'{schedule} rho={rho:g}' if rho else schedule
      values = [spread(sde, eps, n, args.std, schedule, rho or 7.) for n in levels]
      needed = next((2 * n - 1 for n in range(2, 400)
                     if abs(spread(sde, eps, n, args.std, schedule, rho or 7.) - 1) <= args.band),
                    None)
      print(f'{name:4s}{label:16s}' + ''.join(f'{v:8.3f}' for v in values) + f'{str(needed):>16s}')
      result['rows'].append(dict(sde=name, schedule=schedule, rho=rho,
                                 nfe=[2 * n - 1 for n in levels], spread=values,
                                 nfe_within_band=needed))
  write_json(RESULTS / 'heun_step_analysis.json', result)


if __name__ == '__main__':
  main()
