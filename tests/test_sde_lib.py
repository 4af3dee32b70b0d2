"""sde_lib: reference values, the SDEs' closed forms against simulation, and get_sde.

Fixtures: tests/fixtures/sde/sde_values.pt (score_sde_pytorch cb1f359, float32) and the
`labels` / `model_output` / `score` of tests/fixtures/parity/*.pt.
"""
import math
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import torch

import sde_lib
from configs import load_config
from conftest import FIXTURES, ROOT

SDE_VALUES = torch.load(FIXTURES / 'sde' / 'sde_values.pt', map_location='cpu', weights_only=True)
SDE_NAMES = ('VESDE', 'VPSDE', 'subVPSDE')
TOL = dict(rtol=1e-4, atol=1e-5)


def _fixture_sde(name):
  entry = SDE_VALUES[name]
  return getattr(sde_lib, entry['class'])(**entry['params'])


def _fixture_score_fn(x, t):
  return -x / (1 + t.view(-1, 1, 1, 1))


# --- Reference values ---------------------------------------------------------------------------

@pytest.mark.parametrize('name', SDE_NAMES)
def test_schedules_T_and_N_match_reference(name):
  entry = SDE_VALUES[name]
  sde = _fixture_sde(name)
  assert sde.T == entry['T'] and sde.N == entry['N']
  for key, expected in entry['schedules'].items():
    torch.testing.assert_close(getattr(sde, key), expected, **TOL, msg=lambda m: f'{key}: {m}')


@pytest.mark.parametrize('case', range(3))
@pytest.mark.parametrize('name', SDE_NAMES)
def test_forward_quantities_match_reference(name, case):
  sde = _fixture_sde(name)
  c = SDE_VALUES[name]['cases'][case]
  x, t = c['x'], c['t']
  for method in ('sde', 'marginal_prob', 'discretize'):
    for i, (actual, expected) in enumerate(zip(getattr(sde, method)(x, t), c[method])):
      torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f'{method}[{i}]: {m}')
  torch.testing.assert_close(sde.prior_logp(x), c['prior_logp'], **TOL)


@pytest.mark.parametrize('probability_flow', [False, True])
@pytest.mark.parametrize('case', range(3))
@pytest.mark.parametrize('name', SDE_NAMES)
def test_reverse_sde_and_ode_match_reference(name, case, probability_flow):
  sde = _fixture_sde(name)
  c = SDE_VALUES[name]['cases'][case]
  expected = c['reverse_probability_flow' if probability_flow else 'reverse']
  rsde = sde.reverse(_fixture_score_fn, probability_flow)
  assert rsde.T == expected['T'] and rsde.N == expected['N']
  drift, diffusion = rsde.sde(c['x'], c['t'])
  torch.testing.assert_close(drift, expected['sde'][0], **TOL)
  if probability_flow:  # the ODE has no noise; the reference returns the float 0.
    assert not torch.is_tensor(diffusion) and diffusion == 0. == expected['sde'][1]
  else:
    torch.testing.assert_close(diffusion, expected['sde'][1], **TOL)
  for i, (actual, want) in enumerate(zip(rsde.discretize(c['x'], c['t']), expected['discretize'])):
    torch.testing.assert_close(actual, want, **TOL, msg=lambda m: f'discretize[{i}]: {m}')


def test_get_sigmas_and_get_ddpm_params_match_reference():
  from models import utils as mutils  # here, so that the SDE tests run while networks change
  ref = SDE_VALUES['_model_utils']
  sigmas = mutils.get_sigmas(load_config('ve/cifar10_ncsnpp_continuous'))
  assert sigmas.dtype == np.float64
  expected_sigmas = ref['get_sigmas(ve/cifar10_ncsnpp_continuous)']
  torch.testing.assert_close(torch.from_numpy(sigmas), expected_sigmas, **TOL)
  params = mutils.get_ddpm_params(load_config('vp/cifar10_ddpmpp_continuous'))
  expected = ref['get_ddpm_params(vp/cifar10_ddpmpp_continuous)']
  assert set(params) == set(expected)
  for key, want in expected.items():
    if torch.is_tensor(want):
      assert params[key].dtype == np.float64, key
      torch.testing.assert_close(torch.from_numpy(params[key]), want, **TOL,
                                 msg=lambda m: f'{key}: {m}')
    else:
      assert params[key] == pytest.approx(want, rel=1e-12), key


# --- Closed forms against simulation -------------------------------------------------------------

def _sdes():
  return {'VESDE': sde_lib.VESDE(0.01, 50., 1000), 'VPSDE': sde_lib.VPSDE(0.1, 20., 1000),
          'subVPSDE': sde_lib.subVPSDE(0.1, 20., 1000)}


@pytest.mark.parametrize('name', SDE_NAMES)
def test_marginal_prob_matches_euler_maruyama_simulation(name):
  """Simulate dx = f dt + g dw from x(0) = 1.5 with 2000 Euler-Maruyama steps on 20k 1-D
  paths (float64); mean and std at t = 0.3 and 1 must agree with `marginal_prob` within
  4 Monte Carlo standard errors (plus 0.5% for the scheme's O(dt) bias)."""
  sde = _sdes()[name]
  n_paths, n_steps, x0 = 20000, 2000, 1.5
  gen = torch.Generator().manual_seed(0)
  x = torch.full((n_paths, 1), x0, dtype=torch.float64)
  if name == 'VESDE':
    # marginal_prob's std is sigma(t), not sqrt(sigma(t)^2 - sigma_min^2): the VE marginal
    # assumes x(0) already carries noise of std sigma_min.
    x = x + sde.sigma_min * torch.randn(x.shape, generator=gen, dtype=torch.float64)
  dt = 1. / n_steps
  checkpoints = {int(0.3 * n_steps): 0.3, n_steps: 1.0}
  for i in range(n_steps):
    t = torch.full((n_paths,), i * dt, dtype=torch.float64)
    drift, diffusion = sde.sde(x, t)
    x = x + drift * dt + diffusion[:, None] * np.sqrt(dt) * torch.randn(x.shape, generator=gen,
                                                                         dtype=torch.float64)
    if i + 1 in checkpoints:
      t_end = torch.tensor([checkpoints[i + 1]], dtype=torch.float64)
      mean, std = sde.marginal_prob(torch.full((1, 1), x0, dtype=torch.float64), t_end)
      mean, std = mean.item(), std.item()
      se_mean, se_std = std / np.sqrt(n_paths), std / np.sqrt(2 * n_paths)
      assert abs(x.mean().item() - mean) < 4 * se_mean + 5e-3 * abs(mean), (t_end, x.mean(), mean)
      assert abs(x.std().item() - std) < 4 * se_std + 5e-3 * std, (t_end, x.std(), std)


def _chain_moments(sde, times):
  """Mean coefficient and variance after running x_{i+1} = x_i + f_i + G_i z at `times` from a
  deterministic x_0 = 1: f is linear in x (f = a x), so both propagate exactly."""
  coeff, var = torch.tensor(1., dtype=torch.float64), torch.tensor(0., dtype=torch.float64)
  for t in times:
    f, G = sde.discretize(torch.ones(1, 1), torch.tensor([t], dtype=torch.float32))
    a, G = f.double().item(), G.double().item()
    coeff, var = (1 + a) * coeff, (1 + a) ** 2 * var + G ** 2
  return coeff.item(), var.item()


@pytest.mark.parametrize('name', ['VPSDE', 'subVPSDE'])
def test_discretize_converges_to_marginal_as_N_grows(name):
  """Run the N-step chain of `discretize` up to t = 0.5: the chain's mean coefficient and
  variance approach `marginal_prob`'s at rate O(1/N) (DDPM's chain for VP, Euler-Maruyama for
  sub-VP)."""
  errors = []
  for N in (50, 500, 5000):
    sde = getattr(sde_lib, name)(0.1, 20., N)
    k = N // 2
    # Index i must land on step i: VP's discretize reads index floor(t (N - 1)).
    times = [(i + 0.5) / (N - 1) if name == 'VPSDE' else i / N for i in range(k)]
    coeff, var = _chain_moments(sde, times)
    mean, std = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64),
                                  torch.tensor([0.5], dtype=torch.float64))
    errors.append((abs(coeff - mean.item()), abs(var - std.item() ** 2)))
  for (e_mean, e_var), (e_mean_next, e_var_next) in zip(errors, errors[1:]):
    assert e_mean_next < e_mean / 5 and e_var_next < e_var / 5, errors
  assert errors[-1][0] < 1e-3 and errors[-1][1] < 1e-3, errors


def test_ve_discretize_telescopes_to_the_marginal_variance():
  """SMLD's chain adds sigma_{i}^2 - sigma_{i-1}^2 at step i, so after steps 0..k its variance
  is exactly sigma(k / (N - 1))^2, for every N."""
  for N in (11, 101, 1001):
    sde = sde_lib.VESDE(0.01, 50., N)
    k = (N - 1) // 2
    coeff, var = _chain_moments(sde, [(i + 0.5) / (N - 1) for i in range(k + 1)])
    std = sde.marginal_prob(torch.zeros(1), torch.tensor([0.5]))[1].item()
    assert coeff == 1.
    assert var == pytest.approx(std ** 2, rel=1e-5), N


@pytest.mark.parametrize('name', SDE_NAMES)
def test_prior_logp_is_the_prior_normal_density(name):
  sde = _sdes()[name]
  z = sde.prior_sampling((5, 3, 4, 4), generator=torch.Generator().manual_seed(0)).double()
  scale = sde.sigma_max if name == 'VESDE' else 1.
  prior = torch.distributions.Normal(0., torch.tensor(scale, dtype=torch.float64))
  expected = prior.log_prob(z).sum(dim=(1, 2, 3))
  torch.testing.assert_close(sde.prior_logp(z), expected, rtol=1e-10, atol=1e-8)


def test_prior_sampling_has_the_prior_std():
  for name, sde in _sdes().items():
    z = sde.prior_sampling((4000, 8), generator=torch.Generator().manual_seed(1))
    scale = sde.sigma_max if name == 'VESDE' else 1.
    assert z.std().item() == pytest.approx(scale, rel=0.02), name  # SE of std: 0.4%


# --- Network conditioning conventions -------------------------------------------------------------

@pytest.mark.parametrize('variant', sorted(p.stem for p in (FIXTURES / 'parity').glob('*.pt')))
def test_noise_label_and_output_to_score_follow_the_reference(variant):
  """The label handed to the network and the output -> score map of the reference's
  get_score_fn, captured in the parity fixtures (no network needed)."""
  fx = torch.load(FIXTURES / 'parity' / f'{variant}.pt', map_location='cpu', weights_only=True)
  sde = getattr(sde_lib, fx['sde']['class'])(**fx['sde']['params'])
  t, continuous = fx['t'], fx['continuous']
  labels = sde.noise_label(t, continuous)
  assert labels.dtype == fx['labels'].dtype
  torch.testing.assert_close(labels, fx['labels'], rtol=1e-6, atol=0)
  score = sde.output_to_score(fx['model_output'], t, labels, continuous)
  scale = fx['score'].abs().max().item()
  torch.testing.assert_close(score, fx['score'], rtol=1e-5, atol=1e-5 * scale)


def test_noise_label_formulas():
  t = torch.tensor([1e-5, 0.25, 0.5, 1.])
  ve = sde_lib.VESDE(0.01, 50., 1000)
  torch.testing.assert_close(ve.noise_label(t, True), 0.01 * 5000. ** t)
  discrete = ve.noise_label(t, False)
  assert discrete.dtype == torch.int64
  assert discrete.tolist() == [999, 749, 500, 0]  # round((1 - t) * 999); 499.5 rounds to even
  vp = sde_lib.VPSDE(0.1, 20., 1000)
  torch.testing.assert_close(vp.noise_label(t, True), 999 * t)
  torch.testing.assert_close(vp.noise_label(t, False), 999 * t)  # not rounded
  assert vp.noise_label(t, False).dtype == torch.float32
  subvp = sde_lib.subVPSDE(0.1, 20., 1000)
  for continuous in (True, False):  # sub-VP models are always continuous
    torch.testing.assert_close(subvp.noise_label(t, continuous), 999 * t)


def test_output_to_score_scales():
  t = torch.tensor([0.1, 0.6])
  out = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
  ve = sde_lib.VESDE(0.01, 50., 1000)
  assert torch.equal(ve.output_to_score(out, t, ve.noise_label(t, True), True), out)
  for cls in (sde_lib.VPSDE, sde_lib.subVPSDE):
    sde = cls(0.1, 20., 1000)
    std = sde.marginal_prob(torch.zeros(2), t)[1]
    torch.testing.assert_close(sde.output_to_score(out, t, sde.noise_label(t, True), True),
                               -out / std.view(-1, 1, 1, 1))
  vp = sde_lib.VPSDE(0.1, 20., 1000)
  labels = vp.noise_label(t, False)  # 99.9, 599.4 -> std index 99, 599
  expected = -out / vp.sqrt_1m_alphas_cumprod[[99, 599]].view(-1, 1, 1, 1)
  torch.testing.assert_close(vp.output_to_score(out, t, labels, False), expected)


# --- One Python float for the whole batch (the ODE samplers' scalar-time path) --------------------

@pytest.mark.parametrize('name', SDE_NAMES)
def test_a_float_time_gives_the_numbers_of_a_time_vector(name):
  """t as one Python float: the coefficients come out as Python floats (no tensor ops) and every
  continuous-time quantity equals what a (B,) float64 vector holding that time gives. (Against a
  float32 vector they differ where float32 cancels: VP's std = sqrt(1 - exp(-int beta)) carries
  a 1.2e-4 relative float32 error at t = 1e-3 and 0.6 % at 1e-5; the float path is accurate.)"""
  sde = _fixture_sde(name)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
  out = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
  score_fn = lambda y, t: -y / (1 + sde_lib.bcast(t, y))
  close = dict(rtol=1e-12, atol=1e-14)
  for t in (1e-5, 1e-3, 0.3, 1.):
    vec = torch.full((2,), t, dtype=torch.float64)
    (drift, g), (drift_vec, g_vec) = sde.sde(x, t), sde.sde(x, vec)
    (mean, std), (mean_vec, std_vec) = sde.marginal_prob(x, t), sde.marginal_prob(x, vec)
    label, label_vec = sde.noise_label(t, True), sde.noise_label(vec, True)
    assert all(type(v) is float for v in (g, std, label)), (t, g, std, label)
    torch.testing.assert_close(drift, drift_vec, **close)
    torch.testing.assert_close(mean, mean_vec, **close)
    for scalar, vector in ((g, g_vec), (std, std_vec), (label, label_vec)):
      torch.testing.assert_close(torch.full((2,), scalar, dtype=torch.float64), vector, **close)
    torch.testing.assert_close(sde.output_to_score(out, t, label, True),
                               sde.output_to_score(out, vec, label_vec, True), **close)
    for probability_flow in (False, True):
      rsde = sde.reverse(score_fn, probability_flow)
      torch.testing.assert_close(rsde.sde(x, t)[0], rsde.sde(x, vec)[0], **close)
      if not probability_flow:
        torch.testing.assert_close(torch.full((2,), rsde.sde(x, t)[1], dtype=torch.float64),
                                   rsde.sde(x, vec)[1], **close)


@pytest.mark.parametrize('name', ['VPSDE', 'subVPSDE'])
def test_float_time_std_is_accurate_where_float32_cancels(name):
  """Near t = 0 the std's 1 - exp(2 log s(t)) cancels: float32 is off by 1.2e-4 (VP) and 2.4e-4
  (sub-VP) at t = 1e-3; the float path (float64) agrees with the expm1 form to 1e-9."""
  sde = _fixture_sde(name)
  for t in (1e-5, 1e-3, 0.5):
    variance = -math.expm1(2 * (-0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0))
    exact = math.sqrt(variance) if name == 'VPSDE' else variance
    assert sde.marginal_prob(torch.zeros(1), t)[1] == pytest.approx(exact, rel=1e-9)


def test_ve_discrete_label_of_a_float_time_rounds_like_the_tensor():
  ve = sde_lib.VESDE(0.01, 50., 1000)
  times = [1e-5, 0.25, 0.5, 0.75, 1.] + [i / 997 for i in range(998)]
  labels = [ve.noise_label(t, False) for t in times]
  assert all(type(v) is int for v in labels)
  assert labels == ve.noise_label(torch.tensor(times), False).tolist()


# --- get_sde --------------------------------------------------------------------------------------

@pytest.mark.parametrize('config_name, cls, eps, params', [
    ('ve/cifar10_ncsnpp_continuous', sde_lib.VESDE, 1e-5,
     dict(sigma_min=0.01, sigma_max=50., N=1000)),
    ('ve/ffhq_ncsnpp_continuous', sde_lib.VESDE, 1e-5,
     dict(sigma_min=0.01, sigma_max=1348., N=2000)),
    ('ve/ncsnv2/cifar10', sde_lib.VESDE, 1e-5, dict(sigma_min=0.01, sigma_max=50., N=232)),
    ('vp/cifar10_ddpmpp_continuous', sde_lib.VPSDE, 1e-3, dict(beta_0=0.1, beta_1=20., N=1000)),
    ('subvp/cifar10_ddpmpp_continuous', sde_lib.subVPSDE, 1e-3,
     dict(beta_0=0.1, beta_1=20., N=1000)),
])
def test_get_sde_builds_the_config_sde(config_name, cls, eps, params):
  sde, sampling_eps = sde_lib.get_sde(load_config(config_name))
  assert type(sde) is cls and sampling_eps == eps
  for key, value in params.items():
    assert getattr(sde, key) == value, key


def test_get_sde_unknown_name_is_a_clear_error():
  config = ml_collections.ConfigDict({'training': {'sde': 'edmsde'}})
  with pytest.raises(ValueError, match=r"Unknown SDE 'edmsde'.*subvpsde.*vesde.*vpsde"):
    sde_lib.get_sde(config)


def test_importing_sde_lib_and_models_pulls_in_neither_tensorflow_nor_jax():
  code = "import sde_lib, models, sys; print('tensorflow' in sys.modules or 'jax' in sys.modules)"
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'False'


def test_randn_draws_row_b_from_generator_b():
  gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
  z = sde_lib.randn((3, 1, 2, 2), gens, dtype=torch.float64)
  for b, s in enumerate((3, 4, 5)):
    expected = torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(s), dtype=torch.float64)
    assert torch.equal(z[b], expected)
  # one generator: torch.randn's numbers; a list of one: the same
  one = sde_lib.randn((2, 3), torch.Generator().manual_seed(7))
  assert torch.equal(one, torch.randn((2, 3), generator=torch.Generator().manual_seed(7)))
  assert torch.equal(sde_lib.randn((1, 3), [torch.Generator().manual_seed(7)]), one[:1])
  with pytest.raises(ValueError, match='Got 2 generators for a batch of 3'):
    sde_lib.randn((3, 2), gens[:2])


def test_prior_sampling_takes_per_image_generators():
  """Image b of a prior draw is the same in a batch of 2 and alone (VE scales by sigma_max)."""
  pair = sde_lib.VESDE(sigma_max=5.).prior_sampling(
    (2, 1, 2, 2), generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
  alone = sde_lib.VESDE(sigma_max=5.).prior_sampling(
    (1, 1, 2, 2), generator=[torch.Generator().manual_seed(4)])
  assert torch.equal(pair[1:], alone)
  assert torch.equal(alone, 5. * torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(4)))
  vp = sde_lib.VPSDE().prior_sampling((2, 3), generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
  assert torch.equal(vp[0], torch.randn(3, generator=torch.Generator().manual_seed(3)))


def test_prior_draw_uses_the_cpu_rng_without_a_generator():
  """The prior comes from torch's CPU RNG and is then moved, whatever the target device (the
  reference draws it so: the same seed gives the same x(T) on a GPU). 'meta' stands in for CUDA:
  the CPU RNG advances exactly as by one torch.randn of that shape."""
  sde = sde_lib.VESDE(sigma_max=50.)
  torch.manual_seed(0)
  x = sde_lib.prior_draw(sde, (3, 1, 4, 4), torch.device('meta'))
  assert x.device.type == 'meta' and x.shape == (3, 1, 4, 4)
  after_draw = torch.get_rng_state()
  torch.manual_seed(0)
  expected = torch.randn(3, 1, 4, 4) * 50.
  assert torch.equal(torch.get_rng_state(), after_draw)
  torch.manual_seed(0)
  assert torch.equal(sde_lib.prior_draw(sde, (3, 1, 4, 4), 'cpu'), expected)
  g = torch.Generator().manual_seed(1)
  assert torch.equal(sde_lib.prior_draw(sde, (3, 1, 4, 4), 'cpu', g),
                     torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 50.)
