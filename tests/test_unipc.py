"""UniPC (unipc.py) against closed forms: on Gaussian data the probability-flow ODE and the
denoiser are exact, so the tests see the update's order, the sampler's convergence, its NFE and
its agreement with diffusers' UniPCMultistepScheduler on the same ladder."""
import math

import ml_collections
import pytest
import torch

import fast_sampling as fs
import sampling
import sde_lib
import unipc
from configs import with_defaults
from gaussian_score import ExactScoreModel, GaussianMixture
from test_fast_sampling import EVENT, SDES, _eps_of, _flow_error, _setup, _variance_ratio

STD = 0.5  # the data std of the one-dimensional check of the local order


def _on_trajectory(sigma):
  """y(sigma) on the probability-flow trajectory of N(0, STD^2) through y(0.7) = sqrt(STD^2 +
  0.49), and D there: y = sqrt(STD^2 + sigma^2), D = y STD^2 / (STD^2 + sigma^2)."""
  y = math.sqrt(STD ** 2 + sigma ** 2)
  return y, y * STD ** 2 / (STD ** 2 + sigma ** 2)


def _local_errors(order, variant, steps=(0.1, 0.05, 0.025)):
  """|UniP - exact| and |UniC - exact| of one step of size h from sigma = 0.7, with exact history
  at the earlier points (h apart) and the corrector fed D at the predicted point."""
  errors = []
  for h in steps:
    sigs = [0.7 * math.exp(h * k) for k in range(order - 1, -1, -1)] + [0.7 * math.exp(-h)]
    outs = [torch.tensor([_on_trajectory(s)[1]], dtype=torch.float64) for s in sigs[:-1]]
    y = torch.tensor([_on_trajectory(sigs[-2])[0]], dtype=torch.float64)
    exact = _on_trajectory(sigs[-1])[0]
    predicted = unipc.unipc_step(y, sigs, outs, order, variant)
    d_new = predicted * STD ** 2 / (STD ** 2 + sigs[-1] ** 2)
    corrected = unipc.unipc_step(y, sigs, outs, order, variant, d_new=d_new)
    errors.append((abs(predicted.item() - exact), abs(corrected.item() - exact)))
  return errors


@pytest.mark.parametrize('variant', unipc.VARIANTS)
@pytest.mark.parametrize('order', [1, 2, 3])
def test_the_update_shows_its_order(order, variant):
  """UniP-p's local error falls 2^(p+1)-fold per halving of the step (order p), UniC-p's
  2^(p+2)-fold (order p + 1: the corrector adds one). Measured: 3.9-4.0 / 7.0-8.1 (p = 1),
  7.6-8.0 / 14.1-15.9 (p = 2), 14.4-15.7 / 29.9-31.6 (p = 3)."""
  errors = _local_errors(order, variant)
  for i, name in enumerate(('predictor', 'corrector')):
    expected = 2 ** (order + 1 + i)
    ratios = [errors[k][i] / errors[k + 1][i] for k in range(len(errors) - 1)]
    assert all(0.85 < r / expected < 1.15 for r in ratios), (name, ratios, expected)
  assert errors[-1][1] < errors[-1][0] / 10  # the free corrector is worth having


def _unipc(n, order, variant='bh2'):
  def run(score_fn, sde, z):
    return unipc.unipc_sample(score_fn, sde, z.shape, n, order, variant, eps=_eps_of(sde), z=z,
                              lower_order_final=False)
  return run


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_the_sampler_converges_at_its_order(sde_name):
  """Flow-map errors per halving of the step: UniPC-1 ~4x and UniPC-2 ~8x (orders 2 and 3 with
  the corrector; measured 3.5-4.6 and 6.1-9.2). UniPC-3's global ratios are irregular at these
  step counts (its 2-4 warm-up steps are of lower order, and the network's float32 time limits
  the errors near 1e-6), but it is 50-90x more accurate than UniPC-2 at 24 steps."""
  for variant in unipc.VARIANTS:
    e1 = [_flow_error(sde_name, _unipc(n, 1, variant)) for n in (24, 48)]
    e2 = [_flow_error(sde_name, _unipc(n, 2, variant)) for n in (24, 48)]
    assert 3.0 < e1[0] / e1[1] < 5.0, (variant, e1)
    assert 5.5 < e2[0] / e2[1] < 10.0, (variant, e2)
    e3 = _flow_error(sde_name, _unipc(24, 3, variant))
    assert e3 < e2[0] / 20 and e3 < 3e-4, (variant, e3, e2)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('continuous', [True, False])
def test_unipc_from_config_on_every_sde(sde_name, continuous):
  """method = 'unipc' with num_steps = 10 and nothing else set: 10 evaluations, the Gaussian's
  variance within 10 % (measured 5-8 % high: the std 2.5-4 % high, which docs/
  few_step_sampling.md reports for this budget; 2000 x 16 values: the variance's own sampling
  error is ~1 %), continuous and discrete models alike (sub-VP models are always continuous)."""
  make, eps = SDES[sde_name]
  sde = make()
  mixture = GaussianMixture.gaussian(torch.zeros(EVENT), torch.full(EVENT, 0.5))
  model = ExactScoreModel(sde, mixture, continuous=continuous)
  config = with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': continuous}, 'device': 'cpu',
    'sampling': {'method': 'unipc', 'num_steps': 10, 'progress': False}}))
  sampler = sampling.get_sampling_fn(config, sde, (2000,) + EVENT, lambda x: x, eps)
  x, nfe = sampler(model, generator=torch.Generator().manual_seed(0))
  assert nfe == 10
  assert abs(_variance_ratio(x) - 1) < 0.1, _variance_ratio(x)


def test_nfe_counts_the_final_step_and_generators_are_per_image():
  """num_steps is the number of evaluations with or without the final denoising step, and image
  k depends only on generator k: nothing is random after the prior draw."""
  sde, eps, mixture, _ = _setup('vp')
  model = ExactScoreModel(sde, mixture, continuous=True)
  config = with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': True}, 'device': 'cpu',
    'sampling': {'method': 'unipc', 'num_steps': 6, 'progress': False}}))
  for final in (True, False):
    config.sampling.denoise_to_zero = final
    sampler = sampling.get_sampling_fn(config, sde, (3,) + EVENT, lambda x: x, eps)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    x, nfe = sampler(model, generator=gens([5, 6, 7]))
    assert nfe == 6
    alone, _ = fs.sampler_from(unipc.unipc_sample, sde, (1,) + EVENT, lambda v: v, True, 'cpu',
                               **fs.solver_arguments(*fs.settings_from_config(config, 'unipc', sde),
                                                     sde, eps, 6),
                               variant='bh2')(model, generator=gens([6]))
    torch.testing.assert_close(x[1:2], alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(x, sampler(model, generator=gens([5, 6, 7]))[0])


@pytest.mark.parametrize('variant', unipc.VARIANTS)
@pytest.mark.parametrize('order', [1, 2, 3])
def test_same_steps_as_diffusers(order, variant):
  """On one ladder and with the exact denoiser, unipc_sample takes the steps of diffusers'
  UniPCMultistepScheduler (predict_x0, final_sigmas_type='sigma_min', so the last step has no
  corrector in both): the same samples to float32 rounding. diffusers works in x = alpha y with
  VP's alpha = 1 / sqrt(1 + sigma^2); the ladder is overwritten with ours."""
  diffusers = pytest.importorskip('diffusers')
  sde, eps, mixture, score_fn = _setup('vp')
  n = 8
  sigmas = fs.get_sigma_schedule(sde, n + 1, eps, 'logsnr')
  z = sde.prior_sampling((16,) + EVENT, generator=torch.Generator().manual_seed(3))
  ours, nfe = unipc.unipc_sample(score_fn, sde, z.shape, n, order, variant, eps=eps, z=z)
  assert nfe == n

  scheduler = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant,
                                                final_sigmas_type='sigma_min')
  scheduler.set_timesteps(n)
  scheduler.sigmas = sigmas.float()
  x = z.clone()
  for i, t in enumerate(scheduler.timesteps):
    sigma = sigmas[i].item()
    alpha = 1 / math.sqrt(1 + sigma ** 2)
    labels = torch.full((x.shape[0],), alpha * sigma)
    eps_x = -alpha * sigma * mixture.score(x, torch.full_like(labels, alpha), labels)
    x = scheduler.step(eps_x, t, x).prev_sample
  torch.testing.assert_close(ours, x, rtol=2e-4, atol=2e-5)


def test_bad_options_raise_clear_errors():
  sde, eps, _, score_fn = _setup('ve')
  with pytest.raises(ValueError, match='Unknown variant'):
    unipc.unipc_sample(score_fn, sde, (2,) + EVENT, 5, variant='bh3')
  with pytest.raises(ValueError, match='Unknown order'):
    unipc.unipc_sample(score_fn, sde, (2,) + EVENT, 5, order=4)
  with pytest.raises(ValueError, match='levels'):
    unipc.unipc_sample(score_fn, sde, (2,) + EVENT, 5, sigmas=[50., 1., 0.1])
  config = with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': True}, 'device': 'cpu',
    'sampling': {'method': 'unipc', 'num_steps': 5, 'dpm_method': 'singlestep'}}))
  with pytest.raises(ValueError, match='multistep'):
    sampling.get_sampling_fn(config, sde, (2,) + EVENT, lambda x: x, eps)


def _optimize_ladder():
  import importlib.util
  from conftest import ROOT
  spec = importlib.util.spec_from_file_location('optimize_ladder',
                                                ROOT / 'scripts' / 'optimize_ladder.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_ladder_search_finds_the_least_summed_cost():
  """scripts/optimize_ladder.py's dynamic programming over (previous, current) levels against
  every ladder of 3 steps on 7 levels, on random costs."""
  import itertools
  search = _optimize_ladder()
  g, steps = 7, 3
  gen = torch.Generator().manual_seed(0)
  cost = torch.rand((g, g, g), generator=gen, dtype=torch.float64)
  last = torch.rand((g, g, g), generator=gen, dtype=torch.float64)
  best = math.inf
  for inner in itertools.combinations(range(1, g - 1), steps - 1):
    path = (0,) + inner + (g - 1,)
    total = cost[0, 0, path[1]].item()
    for k in range(1, steps):
      table = last if k == steps - 1 else cost
      total += table[path[k - 1], path[k], path[k + 1]].item()
    best = min(best, total)
  path, total = search.best_path(cost, last, steps)
  assert path[0] == 0 and path[-1] == g - 1 and len(path) == steps + 1
  assert total == pytest.approx(best)


def test_fitted_ladder_beats_the_logsnr_one_on_a_mixture():
  """The script's search and refinement on the exact score of a two-mode mixture (VE, UniPC-3 at
  5 evaluations): the fitted ladder's end-to-end error is below the logSNR-uniform ladder's."""
  search = _optimize_ladder()
  sde = sde_lib.VESDE()
  score_fn = _two_modes_score(sde)
  ode = fs.ScaledODE(score_fn, sde, 64, 'cpu')
  grid = fs.get_sigma_schedule(sde, 13, 1e-5, 'logsnr').tolist()
  y0 = fs.initial_y(sde, (64,) + EVENT, ode, None, torch.Generator().manual_seed(0))
  states, outs = search.teacher(ode, sde, grid, y0, 4)
  step = search.step_fn('unipc', 'bh2')
  path, _ = search.best_path(search.local_costs(grid, states, outs, step, False),
                             search.local_costs(grid, states, outs, step, True), 5)
  settings = dict(order=3, variant='bh2', steps=5)

  def error(p):
    x = search.run_solver(ode, sde, 'unipc', settings,
                          None if p is None else [grid[i] for i in p], y0, 1e-5)
    return (x - states[-1]).pow(2).mean().sqrt().item()

  refined, fitted = search.refine(path, error, len(grid))
  assert fitted <= error(path) and fitted < error(None), (fitted, error(path), error(None))


def test_the_ladder_search_scores_the_sampler_it_fits():
  """fit() refines on the end-to-end error of the sampler it fits (once it ran DPM-Solver for
  every sampler): its 'logsnr' error is UniPC's own on the logSNR ladder, and differs from
  DPM-Solver's with the same order."""
  search = _optimize_ladder()
  sde = sde_lib.VESDE()
  score_fn = _two_modes_score(sde)
  settings = dict(order=2, variant='bh2', denoise_to_zero=False)
  shape = (32,) + EVENT
  _, errors, _, _, _ = search.fit(score_fn, sde, 1e-5, shape, 'unipc', settings, 5,
                                  grid_levels=9, substeps=2)
  ode = fs.ScaledODE(score_fn, sde, 32, 'cpu')
  grid = fs.get_sigma_schedule(sde, 9, 1e-5, 'logsnr').tolist()
  y0 = fs.initial_y(sde, shape, ode, None, torch.Generator().manual_seed(0))
  target = search.teacher(ode, sde, grid, y0, 2)[0][-1]
  rel = lambda x: ((x / ode.scale(1e-5) - target).pow(2).mean().sqrt()
                   / target.pow(2).mean().sqrt()).item()
  own = rel(search.run_solver(ode, sde, 'unipc', dict(settings, steps=5), None, y0, 1e-5))
  other = rel(search.run_solver(ode, sde, 'dpm_solver', dict(settings, steps=5), None, y0, 1e-5))
  assert errors['logsnr'] == pytest.approx(own, rel=1e-6) and abs(own - other) > 1e-3 * own


def _two_modes_score(sde):
  """The exact score of two modes (weights 0.3 / 0.7, means -0.6 / 0.6, std 0.1) of the ladder tests."""
  mixture = GaussianMixture(torch.tensor([0.3, 0.7]), torch.stack([torch.full(EVENT, -0.6),
                                                                   torch.full(EVENT, 0.6)]),
                            torch.full((2,) + EVENT, 0.1))
  return mutils_score(sde, mixture)


def mutils_score(sde, mixture):
  from models import utils as mutils
  return mutils.get_score_fn(sde, ExactScoreModel(sde, mixture, continuous=True), continuous=True)
