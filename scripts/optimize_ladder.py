"""A noise-level ladder for one solver and one budget, fitted to a model's own ODE trajectories.

  python scripts/optimize_ladder.py --config ve/digits_ncsnpp_continuous \
      --ckpt assets/pretrained/ve_digits.pth --nfe 10 --method unipc
  python main.py ... --config.sampling.method=unipc --config.sampling.num_steps=10 \
      --config.sampling.step_ladder=assets/pretrained/ve_digits_ladder_unipc_nfe10.json

As GITS (Chen et al. 2024): the probability-flow ODE of --num prior draws is solved accurately
(UniPC-3 with --substeps steps per interval of a fine logSNR-uniform grid of --grid levels from
sigma(T) down to max(sigma(eps), fast_sampling.FINAL_SIGMA), the range of the budget's own
ladders), its states and denoiser outputs kept at the grid levels. The local error of one solver
step from grid level a to b, started on that trajectory with the trajectory's denoiser outputs as
history (the previous level q, and b for UniPC's corrector), costs no network evaluation; dynamic
programming over (previous, current) level pairs finds the ladder of the solver's steps with the
least summed error. The history of third-order solvers is two levels long, one more than the
search sees: their steps are costed at second order. Summed local errors miss how the solver's
own (inexact) history and the flow carry errors, so the ladder is then refined by coordinate
descent on the end-to-end error of the solver itself against the accurate solution (from the
better of the searched and the evenly spaced ladder). The script prints the end-to-end errors
of the searched, the refined and the logSNR-uniform ladder (same draws). The ladder, the solver settings it was fitted for and those errors go to a
JSON file (default: next to the checkpoint), which `config.sampling.step_ladder` reads.
"""
import argparse
import json
import math
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
import fast_sampling as fs  # noqa: E402
import pretrained  # noqa: E402
import sde_lib  # noqa: E402
import unipc  # noqa: E402
from models import utils as mutils  # noqa: E402


def teacher(ode, sde, grid, y, substeps):
  """Accurate states and denoiser outputs at the grid levels, each (G, B, ...), by UniPC-3 on the
  grid refined `substeps`-fold (log-uniform within each interval)."""
  fine = [grid[0]]
  for a, b in zip(grid[:-1], grid[1:]):
    fine += [a * (b / a) ** (k / substeps) for k in range(1, substeps + 1)]
  states, outs = [y], [ode.denoise(y, fine[0])]
  history = [outs[0]]
  for i in range(len(fine) - 1):
    order = min(3, i + 1)
    y_pred = unipc.unipc_step(y, fine[:i + 2], history[-order:], order, 'bh2')
    d = ode.denoise(y_pred, fine[i + 1])
    y = unipc.unipc_step(y, fine[:i + 2], history[-order:], order, 'bh2', d_new=d)
    history = (history + [d])[-3:]
    if (i + 1) % substeps == 0:
      states.append(y)
      outs.append(d)
  return torch.stack(states), torch.stack(outs)


def step_fn(method, variant):
  """step(y, sigs, outs, d_new) -> the solver's state at sigs[-1] from y at sigs[-2], with the
  denoiser outputs `outs` at sigs[:-1] (one or two) and, for UniPC's corrector, d_new at sigs[-1]
  (None: no corrector, as on the last step)."""
  def step(y, sigs, outs, d_new):
    order = len(outs)
    if method == 'unipc':
      return unipc.unipc_step(y, sigs, outs, order, variant, d_new=d_new)
    return fs._multistep(y, sigs, outs, order, plus=True)
  return step


def local_costs(grid, states, outs, step, last):
  """cost[q, a, b]: RMS error of one step a -> b from the trajectory with q as the previous level
  (q = a: none, the first step), relative to the RMS state at b, float64 (G, G, G), inf where not
  q <= a < b. `last`: the step without a corrector (UniPC's last). Relative, since the flow
  shrinks an error made at level b as it shrinks the state (exactly so for Gaussian data, where
  it scales each direction by sqrt(s^2 + sigma_end^2) / sqrt(s^2 + sigma_b^2)): the absolute
  error would spend the steps at the top of the ladder."""
  g = len(grid)
  cost = torch.full((g, g, g), math.inf, dtype=torch.float64)
  for a in range(g - 1):
    for q in range(a + 1):
      if q == a and a > 0:
        continue  # only the first step (from level 0) has no history
      history = [outs[a]] if q == a else [outs[q], outs[a]]
      sig_hist = [grid[a]] if q == a else [grid[q], grid[a]]
      for b in range(a + 1, g):
        y = step(states[a], sig_hist + [grid[b]], history, None if last else outs[b])
        cost[q, a, b] = ((y - states[b]).pow(2).mean() / states[b].pow(2).mean()).sqrt().item()
  return cost


def best_path(cost, last_cost, steps):
  """Level indices 0 = i_0 < ... < i_steps = G - 1 with the least summed cost: dynamic programming
  over (previous, current) pairs (the first step's previous is itself)."""
  g = cost.shape[0]
  first = cost[0, 0, 1:].clone()
  i = torch.arange(g)
  valid = (i[:, None, None] < i[None, :, None]) & (i[None, :, None] < i[None, None, :])
  cost, last_cost = (torch.where(valid, c, math.inf) for c in (cost, last_cost))
  best = torch.full((g, g), math.inf, dtype=torch.float64)  # best[q, a]: paths ending q -> a
  best[0, 1:] = first
  back = []
  for k in range(1, steps):
    c = last_cost if k == steps - 1 else cost
    total = best[:, :, None] + c  # (q, a, b): path to q -> a, then a -> b
    value, arg = total.min(0)  # over q: (a, b)
    back.append(arg)
    best = value
  end = best[:, g - 1]
  if not math.isfinite(end.min()):
    raise ValueError(f'No finite ladder of {steps} steps on {g} levels.')
  a = int(end.argmin())
  path = [g - 1, a]
  b = g - 1
  for arg in reversed(back):
    a, b = int(arg[a, b]), a
    path.append(a)
  return path[::-1], float(end.min())


def refine(path, error, g, sweeps=3):
  """Coordinate descent of the levels `path` (grid indices; the ends stay) on error(path), the
  solver's own end-to-end error: each inner level moves by 1 or 2 grid levels while that helps."""
  path, best = list(path), error(path)
  for _ in range(sweeps):
    moved = False
    for j in range(1, len(path) - 1):
      for d in (-2, -1, 1, 2):
        cand = path[:j] + [path[j] + d] + path[j + 1:]
        if not cand[j - 1] < cand[j] < cand[j + 1]:
          continue
        e = error(cand)
        if e < best:
          path, best, moved = cand, e, True
    if not moved:
      break
  return path, best


def run_solver(ode, sde, sampler, settings, sigmas, y, eps):
  """The sampler's ('unipc' | 'dpm_solver', multistep) own run on a given ladder (sigmas None:
  the logSNR-uniform one), in y."""
  common = dict(num_steps=len(sigmas) - 1 if sigmas else settings['steps'], order=settings['order'],
                schedule='logsnr', eps=eps, sigmas=sigmas, z=y * ode.scale(sde.T),
                device=y.device)
  if sampler == 'unipc':
    x, _ = unipc.unipc_sample(ode.score_model, sde, y.shape, variant=settings['variant'], **common)
  else:
    x, _ = fs.dpm_solver_sample(ode.score_model, sde, y.shape, method='multistep', **common)
  return x


def fit(score_model, sde, eps, shape, sampler, settings, nfe, grid_levels=41, substeps=4, seed=0,
        device='cpu'):
  """The ladder of `sampler` ('unipc' | 'dpm_solver') with `settings` (budget_settings' dict:
  order, variant, denoise_to_zero; multistep) at `nfe` evaluations for `score_model` (models.utils.ScoreModel), fitted on
  shape[0] prior draws from `seed`. Returns (sigmas: the levels from sigma(T) down, errors:
  dict of the end-to-end relative RMS errors of 'logsnr', 'dp' and 'fitted', the searched and
  the refined grid paths, the searched path's summed local error)."""
  settings = dict(settings, steps=nfe - bool(settings['denoise_to_zero']))
  t_end = max(eps, float(sde.sigma_inverse(torch.tensor(fs.FINAL_SIGMA, dtype=torch.float64))))
  grid = fs.get_sigma_schedule(sde, grid_levels, t_end, 'logsnr').tolist()
  ode = fs.ScaledODE(score_model, sde, shape[0], device)
  y0 = fs.initial_y(sde, shape, ode, None, torch.Generator().manual_seed(seed))
  with torch.no_grad():
    states, outs = teacher(ode, sde, grid, y0, substeps)
    print(f'teacher: {ode.nfe} evaluations on {grid_levels} levels', flush=True)
    step = step_fn(sampler, settings['variant'])
    cost = local_costs(grid, states, outs, step, last=False)
    last = local_costs(grid, states, outs, step, last=True) if sampler == 'unipc' else cost
    dp_path, summed = best_path(cost, last, settings['steps'])
    # D at the last level is the run's output at t = 0 when it ends with the denoising step.
    target = outs[-1] if settings['denoise_to_zero'] else states[-1]

    def error(path):
      x = run_solver(ode, sde, sampler, settings,
                     None if path is None else [grid[i] for i in path], y0, t_end)
      y = x if settings['denoise_to_zero'] else x / ode.scale(t_end)
      return ((y - target).pow(2).mean().sqrt() / target.pow(2).mean().sqrt()).item()

    errors = {'logsnr': error(None), 'dp': error(dp_path)}
    uniform = [round(v) for v in torch.linspace(0, grid_levels - 1, settings['steps'] + 1).tolist()]
    start = dp_path if errors['dp'] <= error(uniform) else uniform
    path, errors['fitted'] = refine(start, error, grid_levels)
  if errors['fitted'] > errors['logsnr']:
    # The logSNR ladder lies on the grid only when its steps divide the grid's intervals.
    print(f'no ladder on this grid beats the logSNR-uniform one: it is the result (a --grid '
          f'with a multiple of {settings["steps"]} intervals contains it)', flush=True)
    sigmas = fs.get_sigma_schedule(sde, settings['steps'] + 1, t_end, 'logsnr').tolist()
    return sigmas, dict(errors, fitted=errors['logsnr']), dp_path, None, summed
  return [grid[i] for i in path], errors, dp_path, path, summed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='config name or path')
  parser.add_argument('--ckpt', required=True, help='checkpoint file or shipped name')
  parser.add_argument('--nfe', type=int, required=True, help='network evaluations of the run')
  parser.add_argument('--method', default='unipc', choices=('unipc', 'dpm_solver'))
  parser.add_argument('--order', type=int, default=None, help='default: the budget\'s')
  parser.add_argument('--variant', default=None, help='UniPC B(h); default: the budget\'s')
  parser.add_argument('--final', default=None, choices=('yes', 'no'),
                      help='end with a denoising step; default: the budget\'s')
  parser.add_argument('--num', type=int, default=256, help='trajectories')
  parser.add_argument('--grid', type=int, default=41, help='candidate noise levels')
  parser.add_argument('--substeps', type=int, default=4, help='teacher steps per grid interval')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--out', default=None, help='default: <ckpt>_ladder_<method>_nfe<N>.json')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  model, config = pretrained.load(args.ckpt, config=configs.load_config(args.config))
  sde, eps = sde_lib.get_sde(config)
  settings = fs.budget_settings(args.method, sde, args.nfe)
  for key, value in (('order', args.order), ('variant', args.variant)):
    settings[key] = value if value is not None else settings[key]
  if args.final is not None:
    settings['denoise_to_zero'] = args.final == 'yes'
  if settings['method'] != 'multistep':
    raise SystemExit(f'{args.method} at {args.nfe} evaluations is single-step by default: pass '
                     '--order 2 or 3 for its multistep solver (the search steps multistep).')
  shape = (args.num, config.data.num_channels, config.data.image_size, config.data.image_size)
  score_model = mutils.ScoreModel.of(sde, model, continuous=config.training.continuous)
  sigmas, errors, dp_path, path, summed = fit(score_model, sde, eps, shape, args.method, settings,
                                              args.nfe, args.grid, args.substeps, args.seed,
                                              config.device)
  print(f'dynamic programming: levels {dp_path} (summed local error {summed:.3g}, end-to-end '
        f'{errors["dp"]:.4g}); refined: {path}')
  print('sigmas ' + ', '.join(f'{s:.4g}' for s in sigmas))
  print(f'relative RMS error against the accurate solution: fitted {errors["fitted"]:.4g}, '
        f'logSNR-uniform {errors["logsnr"]:.4g}')
  ckpt = pretrained.path_of(args.ckpt)
  out = args.out or ckpt.with_name(f'{ckpt.stem}_ladder_{args.method}_nfe{args.nfe}.json')
  record = dict(sampler=args.method, nfe=args.nfe, order=settings['order'], method='multistep',
                variant=settings['variant'], denoise_to_zero=settings['denoise_to_zero'],
                sigmas=sigmas, config=args.config, ckpt=str(args.ckpt), sde=config.training.sde,
                num=args.num, grid=args.grid, seed=args.seed, error_fitted=errors['fitted'],
                error_dp=errors['dp'], error_logsnr=errors['logsnr'])
  pathlib.Path(out).write_text(json.dumps(record, indent=1) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
