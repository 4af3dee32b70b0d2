"""Heun (EDM) and DPM-Solver against closed forms: Gaussian data has an exact score, exact samples
and an exact probability-flow map, so each test isolates the sampler from any network."""
import math

import pytest
import torch

import fast_sampling as fs
import sde_lib
from gaussian_score import ExactScoreModel, GaussianMixture, heun_gain, marginal_std_ratio_flow
from models import utils as mutils

DATA_STD = 0.5
SDES = {'ve': (lambda: sde_lib.VESDE(), 1e-5), 'vp': (lambda: sde_lib.VPSDE(), 1e-3),
        'subvp': (lambda: sde_lib.subVPSDE(), 1e-3)}
EVENT = (1, 4, 4)


def _setup(name):
  make, eps = SDES[name]
  sde = make()
  mixture = GaussianMixture.gaussian(torch.zeros(EVENT), torch.full(EVENT, DATA_STD))
  score_fn = mutils.get_score_fn(sde, ExactScoreModel(sde, mixture, continuous=True),
                                 continuous=True)
  return sde, eps, mixture, score_fn


def _variance_ratio(x):
  return x.var().item() / DATA_STD ** 2


DPM_VARIANTS = [('dpmsolver++', 'singlestep', 3), ('dpmsolver', 'singlestep', 3),
                ('dpmsolver++', 'multistep', 3), ('dpmsolver', 'multistep', 3)]


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
@pytest.mark.parametrize('algorithm,method,order', DPM_VARIANTS)
def test_dpm_solver_variance_at_20_nfe(sde_name, algorithm, method, order):
  # 4000 x 16 values: the variance's own sampling error is ~0.6 %; the bound is 2 %.
  sde, eps, _, score_fn = _setup(sde_name)
  x, nfe = fs.dpm_solver_sample(score_fn, sde, (4000,) + EVENT, 20, order, method, algorithm,
                                eps=eps, generator=torch.Generator().manual_seed(0))
  assert nfe == 20
  assert abs(_variance_ratio(x) - 1) < 0.02, _variance_ratio(x)


def test_dpm_solver_sub_vp_needs_a_wider_band():
  # sub-VP's sigma(t)/s(t) spans 1e-4..150 at eps = 1e-3 (VE: 1e-2..50), so 20 steps are
  # coarser in log-SNR: order 3 is within 3 % in the data-prediction form (measured 0.977) and
  # 6 % in the noise-prediction form (measured 1.054), not 2 %.
  sde, eps, _, score_fn = _setup('subvp')
  for algorithm, band in (('dpmsolver++', 0.03), ('dpmsolver', 0.06)):
    x, _ = fs.dpm_solver_sample(score_fn, sde, (4000,) + EVENT, 20, 3, 'singlestep', algorithm,
                                eps=eps, generator=torch.Generator().manual_seed(0))
    assert abs(_variance_ratio(x) - 1) < band, (algorithm, _variance_ratio(x))


def _flow_error(sde_name, sample):
  """Relative RMS error of a deterministic sampler against the exact flow map from T to eps."""
  sde, eps, mixture, score_fn = _setup(sde_name)
  z = sde.prior_sampling((64,) + EVENT, generator=torch.Generator().manual_seed(1))
  exact, _ = marginal_std_ratio_flow(sde, mixture, z, sde.T, eps)
  x, _ = sample(score_fn, sde, z)
  return ((x - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt()).item()


def _eps_of(sde):
  return 1e-5 if isinstance(sde, sde_lib.VESDE) else 1e-3


def _heun(n):
  return lambda score_fn, sde, z: fs.heun_sample(score_fn, sde, z.shape, n, _eps_of(sde),
                                                 to_zero=False, z=z)


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_heun_is_second_order(sde_name):
  errors = [_flow_error(sde_name, _heun(n)) for n in (12, 24, 48)]
  ratios = [errors[0] / errors[1], errors[1] / errors[2]]
  print(f'{sde_name}: Heun flow-map errors {errors}, ratios {ratios}')
  assert all(3.0 < r < 6.0 for r in ratios), ratios  # 2nd order: ~4x per halving of the step
  assert errors[-1] < 0.015


def _dpm(n, order, method, algorithm='dpmsolver++'):
  def run(score_fn, sde, z):
    return fs.dpm_solver_sample(score_fn, sde, z.shape, n, order, method, algorithm,
                                eps=_eps_of(sde), z=z, lower_order_final=False)
  return run


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_dpm_solver_multistep_order_3_is_third_order(sde_name):
  """Flow-map errors at 24 / 48 / 96 steps fall 13-16x per halving (8x is 3rd order). With the
  official code's second difference (half of h^2 D'') they fell 4.1-5.0x: 2nd order."""
  for algorithm in ('dpmsolver', 'dpmsolver++'):
    e = [_flow_error(sde_name, _dpm(n, 3, 'multistep', algorithm)) for n in (24, 48, 96)]
    assert all(e[i] / e[i + 1] > 10. for i in range(2)), (algorithm, e)
    assert e[2] < 1e-5, (algorithm, e)  # 1.6-2.2e-4 with the official formula


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_dpm_solver_orders(sde_name):
  # Multistep order 2: ~4x per halving. Single-step order 3: much faster (>= 8x asymptotically;
  # measured 14-41x at these step counts).
  for algorithm in ('dpmsolver', 'dpmsolver++'):
    e2 = [_flow_error(sde_name, _dpm(n, 2, 'multistep', algorithm)) for n in (24, 48)]
    e3 = [_flow_error(sde_name, _dpm(n, 3, 'singlestep', algorithm)) for n in (24, 48)]
    assert 3.0 < e2[0] / e2[1] < 5.0, (algorithm, e2)
    assert e3[0] / e3[1] > 8.0, (algorithm, e3)
    assert e3[1] < e2[1] / 5  # measured 9.8-30x smaller at 48 NFE


def test_dpm_solver_first_order_is_ddim_and_matches_heun_euler():
  # Order 1 in both forms is the same DDIM step; Heun's Euler predictor on the same grid too.
  sde, eps, _, score_fn = _setup('vp')
  z = sde.prior_sampling((8,) + EVENT, generator=torch.Generator().manual_seed(2))
  a, _ = fs.dpm_solver_sample(score_fn, sde, z.shape, 10, 1, 'multistep', 'dpmsolver', eps=eps, z=z)
  b, _ = fs.dpm_solver_sample(score_fn, sde, z.shape, 10, 1, 'multistep', 'dpmsolver++', eps=eps,
                              z=z)
  torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_heun_variance(sde_name):
  # Heun's error constant is large on this problem: at 19 NFE the variance is 30-55 % high
  # (see docs/samplers.md); at 99 NFE it is within 2 %.
  sde, eps, _, score_fn = _setup(sde_name)
  x, nfe = fs.heun_sample(score_fn, sde, (4000,) + EVENT, 50, eps,
                          generator=torch.Generator().manual_seed(0))
  assert nfe == 99
  assert abs(_variance_ratio(x) - 1) < 0.02, _variance_ratio(x)


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_heun_is_edm_algorithm_1_exactly(sde_name):
  """On one Gaussian of std 0.1 (the quality benchmark's modes) every Heun step is a scalar
  factor, so heun_sample must return z / s(T) times the closed-form product `heun_gain`. The
  product also shows that 19 NFE cannot reach the issue's +-3 % spread with this algorithm:
  24 % (VE) and 42 % (VP) too wide, as the benchmark measures; bench/heun_step_analysis.py
  tabulates it for every schedule."""
  make, eps = SDES[sde_name]
  sde, std = make(), 0.1
  mixture = GaussianMixture.gaussian(torch.zeros(EVENT), torch.full(EVENT, std))
  score_fn = mutils.get_score_fn(sde, ExactScoreModel(sde, mixture, continuous=True),
                                 continuous=True)
  z = sde.prior_sampling((32,) + EVENT, generator=torch.Generator().manual_seed(5)).double()
  y0 = z / sde.scale_and_sigma(torch.tensor(float(sde.T), dtype=torch.float64))[0]
  for levels in (10, 30):
    sigmas = fs.get_sigma_schedule(sde, levels, eps).tolist()
    x, nfe = fs.heun_sample(score_fn, sde, z.shape, levels, eps, z=z)
    assert nfe == 2 * levels - 1
    torch.testing.assert_close(x.double(), y0 * heun_gain(sigmas, std), rtol=2e-5, atol=1e-6)
  ladder_19 = fs.get_sigma_schedule(sde, 10, eps).tolist()  # 10 levels = 19 NFE
  spread_19 = heun_gain(ladder_19, std) * math.hypot(std, ladder_19[0]) / std
  assert spread_19 == pytest.approx({'ve': 1.245, 'vp': 1.416}[sde_name], abs=2e-3)


def test_heun_churn_is_reproducible_and_stochastic():
  sde, eps, _, score_fn = _setup('ve')
  z = sde.prior_sampling((256,) + EVENT, generator=torch.Generator().manual_seed(3))
  run = lambda seed, churn: fs.heun_sample(score_fn, sde, z.shape, 40, eps, churn=churn, z=z,
                                           generator=torch.Generator().manual_seed(seed))[0]
  assert torch.equal(run(0, 10.), run(0, 10.))
  assert not torch.allclose(run(0, 10.), run(1, 10.))
  assert torch.equal(run(0, 0.), run(1, 0.))  # churn 0 is deterministic
  x = run(0, 10.)
  assert abs(_variance_ratio(x) - 1) < 0.15


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_heun_churn_stays_within_the_time_range(sde_name):
  """Churn raises each noise level by up to sqrt(2) - 1, but never above sigma(T): the network
  only sees t in [eps, T] (a discrete-time model's label then stays inside its table)."""
  sde, eps, _, score_fn = _setup(sde_name)
  times = []

  def recording(x, t):
    times.append(t)
    return score_fn(x, t)

  fs.heun_sample(recording, sde, (8,) + EVENT, 18, eps, churn=10.,
                 generator=torch.Generator().manual_seed(0))
  times = torch.cat(times)
  assert times.max().item() <= sde.T * (1 + 1e-6) and times.min().item() >= eps * (1 - 1e-4)


def test_heun_converges_to_rk45_from_the_same_noise():
  import sampling
  sde, eps, mixture, _ = _setup('vp')
  model = ExactScoreModel(sde, mixture, continuous=True)
  z = sde.prior_sampling((16,) + EVENT, generator=torch.Generator().manual_seed(4))
  ode = sampling.get_ode_sampler(sde, z.shape, lambda x: x, rtol=1e-6, atol=1e-6, eps=eps,
                                 device='cpu')
  x_rk, _ = ode(model, z=z)
  score_fn = mutils.get_score_fn(sde, model, continuous=True)
  diffs = []
  for n in (10, 20, 40, 80):
    x, _ = fs.heun_sample(score_fn, sde, z.shape, n, eps, to_zero=False, z=z)
    diffs.append((x - x_rk).pow(2).mean().sqrt().item())
  print('RMS(Heun - RK45) for 10/20/40/80 steps:', diffs)
  assert all(b < a / 2.5 for a, b in zip(diffs, diffs[1:])), diffs
  assert diffs[-1] < 2e-3


def test_schedules_are_monotone_and_hit_the_ends():
  sde = sde_lib.VPSDE()
  ends = sde.scale_and_sigma(torch.tensor([1.0, 1e-3], dtype=torch.float64))[1]
  for schedule in fs.SCHEDULES:
    s = fs.get_sigma_schedule(sde, 12, 1e-3, schedule)
    assert s.shape == (12,) and torch.all(s[1:] < s[:-1]), schedule
    torch.testing.assert_close(s[[0, -1]], ends, rtol=1e-9, atol=0)
  # EDM's rho = 7 steps: equally spaced in sigma^(1/7).
  s = fs.get_sigma_schedule(sde, 12, 1e-3, 'edm')
  steps = torch.diff(s ** (1 / 7))
  torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=1e-12)


def test_singlestep_orders_spend_the_budget():
  for nfe in range(3, 31):
    for order in (1, 2, 3):
      orders = fs.singlestep_orders(nfe, order)
      assert sum(orders) == nfe and max(orders) <= order


def test_bad_options_raise_clear_errors():
  sde, eps, _, score_fn = _setup('ve')
  with pytest.raises(ValueError, match='Unknown schedule'):
    fs.get_sigma_schedule(sde, 10, eps, 'cosine')
  with pytest.raises(ValueError, match='Unknown order'):
    fs.dpm_solver_sample(score_fn, sde, (2,) + EVENT, 10, order=4)
  with pytest.raises(ValueError, match='Unknown algorithm'):
    fs.dpm_solver_sample(score_fn, sde, (2,) + EVENT, 10, algorithm='unipc')
  with pytest.raises(ValueError, match='Unknown method'):
    fs.dpm_solver_sample(score_fn, sde, (2,) + EVENT, 10, method='adaptive')


@pytest.mark.parametrize('method,expected_nfe', [('heun', 5), ('dpm_solver', 3)])
def test_tiny_ncsnpp_through_get_sampling_fn(method, expected_nfe):
  import sampling
  from configs import with_defaults
  from test_sampling import tiny_ncsnpp
  config, model = tiny_ncsnpp()
  with_defaults(config)  # the fixture's config predates some keys library code reads
  config.sampling.progress = False
  config.sampling.method = method
  config.sampling.num_steps = 3
  config.sampling.order = 3
  sde, eps = sde_lib.get_sde(config)
  sampler = sampling.get_sampling_fn(config, sde, (2, 3, 8, 8), lambda x: x, eps)
  x, nfe = sampler(model, generator=torch.Generator().manual_seed(0))
  assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
  assert nfe == expected_nfe
  x2, _ = sampler(model, generator=torch.Generator().manual_seed(0))
  assert torch.equal(x, x2)
  config.sampling.method = 'ddim'
  with pytest.raises(ValueError, match='heun'):
    sampling.get_sampling_fn(config, sde, (2, 3, 8, 8), lambda x: x, eps)


def test_heun_ladder_from_config():
  """config.sampling.heun_schedule / heun_rho reach heun_sample: the sampler built from a config
  equals heun_sample called with that ladder, and the ladders differ."""
  import ml_collections
  import sampling
  sde, eps, mixture, score_fn = _setup('ve')
  model = ExactScoreModel(sde, mixture, continuous=True)
  z = sde.prior_sampling((8,) + EVENT, generator=torch.Generator().manual_seed(6))
  from configs import with_defaults
  config = with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': True}, 'device': 'cpu',
    'sampling': {'method': 'heun', 'num_steps': 6, 'progress': False}}))
  outs = {}
  for schedule, rho in (('edm', 7.), ('edm', 3.), ('logsnr', 7.)):
    config.sampling.heun_schedule, config.sampling.heun_rho = schedule, rho
    x, _ = sampling.get_sampling_fn(config, sde, z.shape, lambda v: v, eps)(model, z=z)
    expected, _ = fs.heun_sample(score_fn, sde, z.shape, 6, eps, schedule=schedule, rho=rho, z=z)
    torch.testing.assert_close(x, expected)
    outs[schedule, rho] = x
  assert not torch.allclose(outs['edm', 7.], outs['edm', 3.])
  assert not torch.allclose(outs['edm', 7.], outs['logsnr', 7.])



# --- What sampling.num_steps alone selects (fast_sampling.budget_settings) -----------------------

def _config(method, num_steps, **sampling_keys):
  import ml_collections
  from configs import with_defaults
  return with_defaults(ml_collections.ConfigDict({
    'training': {'continuous': True}, 'device': 'cpu',
    'sampling': dict(method=method, num_steps=num_steps, progress=False, **sampling_keys)}))


def _from_config(config, sde, z, model):
  import sampling
  eps = _eps_of(sde)
  return sampling.get_sampling_fn(config, sde, z.shape, lambda v: v, eps)(model, z=z)


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_explicit_dpm_solver_settings_sample_as_before(sde_name):
  """A config that sets any of order / dpm_method / dpm_schedule gets the former defaults for the
  others (3, 'singlestep', 'logsnr', no final step): bit-identical to dpm_solver_sample called
  with them, as before the budget chose settings. From 20 evaluations the budget's choice is
  that same single-step order 3 (the README's digits row at 20 is unchanged)."""
  sde, eps, mixture, score_fn = _setup(sde_name)
  model = ExactScoreModel(sde, mixture, continuous=True)
  z = sde.prior_sampling((8,) + EVENT, generator=torch.Generator().manual_seed(7))
  cases = [(10, dict(order=3), (3, 'singlestep', 'logsnr')),
           (10, dict(order=2), (2, 'singlestep', 'logsnr')),
           (10, dict(dpm_method='multistep'), (3, 'multistep', 'logsnr')),
           (12, dict(dpm_schedule='time_uniform'), (3, 'singlestep', 'time_uniform')),
           (20, dict(), (3, 'singlestep', 'logsnr')), (24, dict(), (3, 'singlestep', 'logsnr'))]
  for nfe, keys, (order, method, schedule) in cases:
    x, n = _from_config(_config('dpm_solver', nfe, **keys), sde, z, model)
    expected, _ = fs.dpm_solver_sample(score_fn, sde, z.shape, nfe, order, method, 'dpmsolver++',
                                       schedule, eps, z=z)
    assert n == nfe and torch.equal(x, expected), (nfe, keys)


def test_budget_settings_and_the_final_step():
  """num_steps alone: multistep order 3 below 8 evaluations and order 2 from 8, the logSNR
  ladder down to sigma = 0.01 (sub-VP's sigma(eps) is 1e-4), the final step at 6 under VP /
  sub-VP and for UniPC from 12; num_steps counts the final step. DPM-Solver++ 3M with the final
  step (the issue's 9 steps + 1) is reachable with explicit keys."""
  ve, vp, subvp = sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.subVPSDE()
  get = lambda sampler, sde, nfe: fs.budget_settings(sampler, sde, nfe)
  assert get('unipc', vp, 10) == dict(order=2, method='multistep', schedule=None,
                                      denoise_to_zero=False, variant='bh2', final_sigma=0.01)
  assert get('dpm_solver', ve, 5)['order'] == 3 and get('dpm_solver', ve, 8)['order'] == 2
  assert [get('unipc', s, 6)['denoise_to_zero'] for s in (ve, vp, subvp)] == [False, True, True]
  assert get('unipc', ve, 12)['denoise_to_zero'] and not get('dpm_solver', ve, 12)['denoise_to_zero']
  assert get('dpm_solver', vp, 20) == dict(fs.DPM_LEGACY, variant=None, final_sigma=0.01)
  args = fs.solver_arguments(get('unipc', subvp, 6), None, subvp, 1e-3, 6)
  assert args['num_steps'] == 5 and args['denoise_to_zero']
  assert float(subvp.scale_and_sigma(torch.tensor(args['eps']))[1]) == pytest.approx(0.01)
  assert fs.solver_arguments(get('unipc', vp, 10), None, vp, 1e-3, 10)['eps'] == 1e-3
  # DPM-Solver-2M's ladder ends at sigma = 0.005 under VP / sub-VP, below VP's eps = 1e-3 for a
  # continuous network only (a discrete one is not asked below its first timestep); VE at
  # sigma_min.
  sigma_at = lambda sde, t: float(sde.scale_and_sigma(torch.tensor(t, dtype=torch.float64))[1])
  for sde in (vp, subvp):
    args = fs.solver_arguments(get('dpm_solver', sde, 10), None, sde, 1e-3, 10)
    assert sigma_at(sde, args['eps']) == pytest.approx(0.005)
    assert fs.solver_arguments(get('dpm_solver', sde, 10), None, sde, 1e-3, 10,
                               continuous=False)['eps'] == pytest.approx(
                                 max(1e-3, float(sde.sigma_inverse(torch.tensor(0.005)))))
  assert fs.solver_arguments(get('dpm_solver', ve, 10), None, ve, 1e-5, 10)['eps'] == 1e-5
  assert [get('dpm_solver', vp, n)['final_sigma'] for n in (6, 8, 19, 20)] == [0.01, 0.005, 0.005, 0.01]

  sde, eps, mixture, score_fn = _setup('vp')
  model = ExactScoreModel(sde, mixture, continuous=True)
  z = sde.prior_sampling((8,) + EVENT, generator=torch.Generator().manual_seed(8))
  config = _config('dpm_solver', 10, order=3, dpm_method='multistep', denoise_to_zero=True)
  x, nfe = _from_config(config, sde, z, model)
  expected, _ = fs.dpm_solver_sample(score_fn, sde, z.shape, 9, 3, 'multistep', eps=eps,
                                     denoise_to_zero=True, z=z)
  assert nfe == 10 and torch.equal(x, expected)
  # denoise_to_zero is newer than the former defaults: setting it keeps the budget's ladder
  # (under sub-VP down to 0.01, not to sigma(1e-3) = 1e-4).
  settings, _ = fs.settings_from_config(config, 'dpm_solver', subvp)
  assert settings['schedule'] is None and settings['order'] == 3


@pytest.mark.parametrize('method', ['dpm_solver', 'unipc'])
def test_ten_evaluation_defaults_keep_the_modes_width(method):
  """num_steps = 10 alone, exact scores of 8 Gaussian modes (std 0.1) in 48 dimensions (the
  mixture of bench/bench_sampler_quality.py): the within-mode spread is within 1 +- 0.03 of the
  exact one under VE, VP and sub-VP (n = 2,000: its MC error is ~0.3 %). DPM-Solver-2M on the
  ladder ending at 0.01 gave 0.963 / 0.959 under VP / sub-VP; order 3 without the final step
  1.06 under VE."""
  g = torch.Generator().manual_seed(0)
  shape, n, std = (3, 4, 4), 2000, 0.1
  means = (torch.randint(0, 2, (8, 48), generator=g).float() * 2 - 1) * 0.3
  weights = torch.arange(1, 9, dtype=torch.float32)
  mixture = GaussianMixture(weights / weights.sum(), means.reshape(8, *shape),
                            torch.full((8,) + shape, std))
  spreads = []
  for name in ('ve', 'vp', 'subvp'):
    make, eps = SDES[name]
    sde = make()
    model = ExactScoreModel(sde, mixture, continuous=True)
    z = sde.prior_sampling((n,) + shape, generator=torch.Generator().manual_seed(3))
    x, nfe = _from_config(_config(method, 10), sde, z, model)
    assert nfe == 10
    dist = torch.cdist(x.reshape(n, -1).double(), means.double())
    spreads.append((dist.min(1).values.pow(2).mean() / 48).sqrt().item() / std)
  assert all(abs(s - 1) <= 0.03 for s in spreads), spreads


def test_step_ladder_from_a_json_file(tmp_path):
  """config.sampling.step_ladder: the sampler runs on the file's levels with the settings the file
  was fitted for; a file for another budget or sampler, or a ladder that does not start at
  sigma(T), is refused."""
  import json
  sde, eps, mixture, score_fn = _setup('ve')
  model = ExactScoreModel(sde, mixture, continuous=True)
  z = sde.prior_sampling((8,) + EVENT, generator=torch.Generator().manual_seed(9))
  sigmas = [50., 10., 2., 0.5, 0.1, 0.03, 0.01]
  record = dict(sampler='unipc', nfe=6, order=3, method='multistep', variant='bh1',
                denoise_to_zero=False, sigmas=sigmas)
  path = tmp_path / 'ladder.json'
  path.write_text(json.dumps(record))
  x, nfe = _from_config(_config('unipc', 6, step_ladder=str(path)), sde, z, model)
  import unipc
  expected, _ = unipc.unipc_sample(score_fn, sde, z.shape, 6, 3, 'bh1', sigmas=sigmas, z=z)
  assert nfe == 6 and torch.equal(x, expected)
  with pytest.raises(ValueError, match='at 6 evaluations'):
    _from_config(_config('unipc', 8, step_ladder=str(path)), sde, z, model)
  with pytest.raises(ValueError, match='not dpm_solver'):
    _from_config(_config('dpm_solver', 6, step_ladder=str(path)), sde, z, model)
  with pytest.raises(ValueError, match='starts at sigma'):
    fs.check_ladder(sde, [40.] + sigmas[1:], 7)
  with pytest.raises(ValueError, match='decrease'):
    fs.check_ladder(sde, [50., 60.] + sigmas[2:], 7)
