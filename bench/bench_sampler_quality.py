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
  python bench/bench_sampler_quality.py --few-step --sdes ve,vp,subvp   # docs/few_step_sampling.md
Writes bench/results/sampler_quality.json (--few-step: few_step_quality.json).

--few-step: 5, 6, 8 and 10 evaluations of what `--config.sampling.method=dpm_solver|unipc
--config.sampling.num_steps=N` gives (the settings the budget picks, through get_sampling_fn),
dpm_solver's former default (single-step order 3) and DPM-Solver++ 3M with the final step, and
diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler as peers under VP (DDPM's
discrete betas 1e-4..0.02 over 1000 steps, the exact noise prediction at each integer timestep
they call it with). diffusers has no VE or sub-VP form of these schedulers: no peer rows there.
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


FEW_STEP_NFE = (5, 6, 8, 10)
WIDE_STD = 0.5
WIDE = GaussianMixture.gaussian(torch.zeros(SHAPE), torch.full(SHAPE, WIDE_STD))


def _config_sampler(method, nfe, sde, shape, eps, **keys):
  """The sampler `--config.sampling.method=<method> --config.sampling.num_steps=<nfe>` builds."""
  import ml_collections
  from configs import with_defaults
  config = with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': True}, 'device': 'cpu',
    'sampling': dict(method=method, num_steps=nfe, progress=False, **keys)}))
  return sampling.get_sampling_fn(config, sde, shape, lambda x: x, eps)


def diffusers_rows(mixture, n):
  """(name, run) of diffusers' schedulers on VP's discrete DDPM chain, the exact noise prediction
  at the (rounded) timesteps they ask for; run(generator) -> (samples, nfe)."""
  import diffusers
  sde = sde_lib.VPSDE(N=1000)  # its prior: the same draws as the other rows

  def run(make, nfe, generator):
    scheduler = make()
    scheduler.set_timesteps(nfe)
    abar = scheduler.alphas_cumprod.double()  # = VPSDE(N=1000).alphas_cumprod
    x = sde_lib.prior_draw(sde, (n,) + SHAPE, 'cpu', generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
      a, std = abar[t].sqrt().float(), (1 - abar[t]).sqrt().float()
      eps = -std * mixture.score(x, a.expand(n), std.expand(n))
      x = scheduler.step(eps, t, x).prev_sample
    return x, len(scheduler.timesteps)

  dpm, uni = diffusers.DPMSolverMultistepScheduler, diffusers.UniPCMultistepScheduler
  kinds = {
    'diffusers DPM++ 2M (default)': lambda: dpm(),
    'diffusers DPM++ 2M use_lu_lambdas': lambda: dpm(use_lu_lambdas=True),
    'diffusers DPM++ 3M use_lu_lambdas': lambda: dpm(use_lu_lambdas=True, solver_order=3),
    'diffusers DPM++ 2M karras': lambda: dpm(use_karras_sigmas=True),
    'diffusers UniPC bh2 2 (default)': lambda: uni(),
    'diffusers UniPC bh2 3': lambda: uni(solver_order=3),
    'diffusers UniPC bh1 3 (sigma_min)': lambda: uni(solver_order=3, solver_type='bh1',
                                                     final_sigmas_type='sigma_min'),
    'diffusers UniPC bh2 2 exponential': lambda: uni(use_exponential_sigmas=True),
  }
  return [(f'{name} NFE={nfe}', lambda g, make=make, nfe=nfe: run(make, nfe, g))
          for nfe in FEW_STEP_NFE for name, make in kinds.items()]


def few_step_rows(name, make_sde, eps, mixture, n):
  """(name, run) pairs of the few-step rows (see the module docstring)."""
  sde = make_sde(1000)
  model = ExactScoreModel(sde, mixture, continuous=True)
  shape = (n,) + SHAPE
  rows = []
  for nfe in FEW_STEP_NFE:
    settings = {m: fs.budget_settings(m, sde, nfe) for m in ('dpm_solver', 'unipc')}
    for method, label in (('dpm_solver', 'dpm_solver'), ('unipc', 'unipc')):
      st = settings[method]
      what = (f'{"S" if st["method"] == "singlestep" else "M"}{st["order"]}'
              f'{" +final" if st["denoise_to_zero"] else ""}')
      rows.append((f'{label} default ({what}) NFE={nfe}',
                   lambda g, method=method, nfe=nfe: _config_sampler(method, nfe, sde, shape, eps)(
                     model, generator=g)))
    rows.append((f'dpm_solver former default (3S) NFE={nfe}',
                 lambda g, nfe=nfe: _config_sampler('dpm_solver', nfe, sde, shape, eps, order=3)(
                   model, generator=g)))
    rows.append((f'DPM-Solver++ 3M +final NFE={nfe}',
                 lambda g, nfe=nfe: _config_sampler('dpm_solver', nfe, sde, shape, eps, order=3,
                                                    dpm_method='multistep',
                                                    denoise_to_zero=True)(model, generator=g)))
  if name == 'vp':
    rows += diffusers_rows(mixture, n)
  return rows


def ladder_rows(make_sde, eps, mixture, n, folder, nfes=(6, 10), num=256):
  """(name, run) of `unipc` on a ladder scripts/optimize_ladder.py fits to the mixture's exact
  score at each budget (`num` draws of other noise than the rows'; the JSON goes to `folder`)."""
  import json
  sys.path.insert(0, str(ROOT / 'scripts'))
  import optimize_ladder
  sde = make_sde(1000)
  model = ExactScoreModel(sde, mixture, continuous=True)
  score = mutils.ScoreModel.of(sde, model, continuous=True)
  rows = []
  for nfe in nfes:
    settings = fs.budget_settings('unipc', sde, nfe)
    sigmas, errors, *_ = optimize_ladder.fit(score, sde, eps, (num,) + SHAPE, 'unipc', settings,
                                             nfe, seed=1000)
    path = folder / f'mixture_{type(sde).__name__}_unipc_nfe{nfe}.json'
    path.write_text(json.dumps(dict(settings, sampler='unipc', nfe=nfe, sigmas=sigmas,
                                    **{f'error_{k}': v for k, v in errors.items()})))
    print(f'fitted ladder at {nfe} NFE: relative error {errors["fitted"]:.4g} (logSNR '
          f'{errors["logsnr"]:.4g})', flush=True)
    rows.append((f'unipc fitted ladder NFE={nfe}',
                 lambda g, nfe=nfe, path=path: _config_sampler(
                   'unipc', nfe, sde, (n,) + SHAPE, eps, step_ladder=str(path))(model, generator=g)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n', type=int, default=None, help='samples per row (default 4000)')
  parser.add_argument('--quick', action='store_true', help='n = 1000 and fewer rows')
  parser.add_argument('--sdes', default='ve,vp', help='comma list of ve, vp, subvp')
  parser.add_argument('--few-step', action='store_true',
                      help='only the 5-10 evaluation rows of docs/few_step_sampling.md')
  parser.add_argument('--ladders', action='store_true',
                      help='with --few-step: also unipc on ladders fitted to the mixture (6, 10 NFE)')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  args.out = args.out or str(RESULTS / ('few_step_quality.json' if args.few_step
                                        else 'sampler_quality.json'))
  n = args.n or (1000 if args.quick else 4000)
  torch.set_num_threads(2)
  mixture = make_mixture()
  results = []
  sdes = {'ve': (lambda N: sde_lib.VESDE(sigma_min=0.01, sigma_max=50, N=N), 1e-5),
          'vp': (lambda N: sde_lib.VPSDE(N=N), 1e-3), 'subvp': (lambda N: sde_lib.subVPSDE(N=N), 1e-3)}
  header = (f'{"SDE":5s} {"sampler":44s} {"NFE":>6s} {"mode TV":>8s} {"spread":>7s} {"SW2":>7s} '
            f'{"s":>6s}' + (f' {"wide":>7s}' if args.few_step else ''))
  print(header, flush=True)
  print('-' * len(header))
  exact_a = mixture.sample(n, torch.Generator().manual_seed(1))
  exact_b = mixture.sample(n, torch.Generator().manual_seed(2))
  floor = metrics(exact_a, mixture, exact_b)
  print(f'{"-":5s} {"exact vs exact (floor)":44s} {0:6d} {floor[0]:8.4f} {floor[1]:7.3f} {floor[2]:7.4f}')
  results.append(dict(sde='-', sampler='exact', nfe=0, mode_tv=floor[0], spread=floor[1],
                      sw2=floor[2]))
  for name in args.sdes.split(','):
    make_sde, eps = sdes[name]
    rows = (few_step_rows(name, make_sde, eps, mixture, n) if args.few_step
            else sampler_rows(make_sde, eps, mixture, n, args.quick))
    if args.ladders:
      rows += ladder_rows(make_sde, eps, mixture, n, RESULTS)
    # --few-step also runs each sampler on one wide Gaussian (std WIDE_STD, the scale of images
    # in [-1, 1]): the spread there shows what the 8-mode mixture's fine modes do not.
    wide = dict(few_step_rows(name, make_sde, eps, WIDE, n)) if args.few_step else {}
    for label, run in rows:
      start = time.perf_counter()
      x, nfe = run(torch.Generator().manual_seed(3))
      seconds = time.perf_counter() - start
      tv, spread, sw2 = metrics(x, mixture, exact_b)
      extra = {}
      if label in wide:
        extra['wide_spread'] = wide[label](torch.Generator().manual_seed(3))[0].std().item() / WIDE_STD
      print(f'{name:5s} {label:44s} {nfe:6d} {tv:8.4f} {spread:7.3f} {sw2:7.4f} {seconds:6.1f}'
            + (f' {extra["wide_spread"]:7.3f}' if extra else ''), flush=True)
      results.append(dict(sde=name, sampler=label, nfe=nfe, mode_tv=tv, spread=spread, sw2=sw2,
                          seconds=seconds, **extra))
  write_json(args.out, dict(n=n, mode_std=MODE_STD, dims=math.prod(SHAPE), rows=results))


if __name__ == '__main__':
  main()
