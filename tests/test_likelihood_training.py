"""Maximum-likelihood training (Song, Durkan, Murray & Ermon 2021) against closed forms.

Importance-sampled time: W(t) = int_eps^t g^2 / std^2 is checked against quadrature, the draws
against W / Z (Kolmogorov-Smirnov), and the loss it gives against the uniform-t likelihood-
weighted loss on fixed networks (same mean, lower variance). The likelihood bound is checked on
Gaussian data with its exact score, where the bound is tight up to the prior mismatch at T and
the Gaussian decoder below eps (both < 1e-3 bits/dim here), so it must equal the exact NLL.
"""
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

import eval_lib
import importance
import likelihood
import losses
import sde_lib
from gaussian_score import ExactScoreModel, GaussianMixture
from models import utils as mutils
from test_eval_lib import few_digits, tiny_config, write_checkpoint  # noqa: F401 (a fixture)
from test_losses import GaussianOracle, Scaled, S2, SHAPE, per_dim_expectation

SDES = {'ve': lambda: sde_lib.VESDE(0.01, 50.), 'vp': lambda: sde_lib.VPSDE(0.1, 20.),
        'vp_digits': lambda: sde_lib.VPSDE(0.1, 10.), 'subvp': lambda: sde_lib.subVPSDE(0.1, 20.)}
EPS = 1e-5


def _log_grid(eps, n=400001):
  """Times on [eps, 1], dense near eps where g^2 / std^2 ~ 1 / t."""
  return torch.logspace(math.log10(eps), 0., n, dtype=torch.float64)


@pytest.mark.parametrize('name', sorted(SDES))
def test_cumulative_weight_is_the_integral_and_inverts(name):
  sde = SDES[name]()
  t = _log_grid(EPS)
  w = importance.weight(sde, t)
  numeric = torch.cumulative_trapezoid(w, t)
  closed = importance.cum_weight(sde, t[1:], EPS)
  assert torch.allclose(closed, numeric, rtol=1e-6, atol=1e-9), (closed - numeric).abs().max()
  q = torch.linspace(0., 1., 101, dtype=torch.float64)
  t_q = importance.time_from_quantile(sde, q, EPS)
  assert t_q[0] == pytest.approx(EPS, rel=1e-9) and t_q[-1] == pytest.approx(1., rel=1e-9)
  torch.testing.assert_close(importance.cum_weight(sde, t_q, EPS) / importance.normalizer(sde, EPS),
                             q, atol=1e-12, rtol=0)


@pytest.mark.parametrize('name', sorted(SDES))
def test_sampled_time_has_the_density(name):
  """KS test of 20,000 draws against the CDF W(t) / Z; uniform draws fail it (VP, sub-VP)."""
  sde = SDES[name]()
  Z = importance.normalizer(sde, EPS)
  cdf = lambda t: (importance.cum_weight(sde, torch.as_tensor(t), EPS) / Z).numpy()
  t = importance.sample_time(sde, 20000, EPS, torch.Generator().manual_seed(0), dtype=torch.float64)
  assert t.min() >= EPS and t.max() <= 1.
  assert scipy.stats.kstest(t.numpy(), cdf).pvalue > 1e-3
  if name != 've':  # VE's density is uniform: importance sampling is uniform t there
    uniform = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert scipy.stats.kstest((uniform * (1 - EPS) + EPS).numpy(), cdf).pvalue < 1e-6


def _loss_samples(loss_fn, model, n_batches, batch=256, seed=0):
  g = torch.Generator().manual_seed(seed)
  return np.array([loss_fn(model, torch.randn((batch,) + SHAPE, generator=g) * math.sqrt(S2),
                           generator=g).item() for _ in range(n_batches)])


@pytest.mark.parametrize('name', ['ve', 'vp', 'subvp'])
def test_importance_weighted_loss_is_unbiased(name):
  """Same mean as uniform t with likelihood weighting, on a fixed (10 % wrong) network, and the
  closed-form mean on the exact one; per-batch variance at least 5x lower under VP / sub-VP."""
  sde = sde_lib.VESDE(0.01, 10.) if name == 've' else SDES[name]()
  eps = 1e-2  # where uniform t still has a finite, estimable variance
  kwargs = dict(train=False, reduce_mean=True, likelihood_weighting=True, eps=eps)
  uniform = losses.get_sde_loss_fn(sde, **kwargs)
  weighted = losses.get_sde_loss_fn(sde, importance_weighting=True, **kwargs)
  oracle = GaussianOracle(sde, 'continuous')
  for model in (oracle, Scaled(oracle, 1.1)):
    u = _loss_samples(uniform, model, 200)
    w = _loss_samples(weighted, model, 200, seed=1)
    se = math.sqrt(u.var(ddof=1) / len(u) + w.var(ddof=1) / len(w))
    assert abs(u.mean() - w.mean()) < 4 * se, (u.mean(), w.mean(), se)
    if name != 've':
      assert u.var() > 3 * w.var(), (u.var(), w.var())  # at eps = 1e-2; ~1/t grows it below
  # At the training eps = 1e-5, where uniform t is hopeless (its variance ~ 1 / eps), the
  # importance-weighted loss still gives the closed-form mean.
  kwargs['eps'] = EPS
  weighted = losses.get_sde_loss_fn(sde, importance_weighting=True, **kwargs)
  t = torch.logspace(math.log10(EPS), 0., 400001, dtype=torch.float64)
  expected = torch.trapezoid(per_dim_expectation(sde, t, True), t).item() / (1 - EPS)
  w = _loss_samples(weighted, oracle, 50, seed=2)
  assert abs(w.mean() - expected) < 4 * w.std(ddof=1) / math.sqrt(len(w)) + 1e-4 * expected


def test_importance_weighting_needs_likelihood_weighting():
  with pytest.raises(ValueError, match='likelihood_weighting=True'):
    losses.get_sde_loss_fn(SDES['vp'](), False, likelihood_weighting=False, importance_weighting=True)
  with pytest.raises(ValueError, match='continuous'):
    losses.get_step_fn(SDES['vp'](), False, continuous=False, importance_weighting=True)


def _gaussian():
  g = torch.Generator().manual_seed(0)
  mean = torch.rand(SHAPE, generator=g) - 0.5
  return GaussianMixture.gaussian(mean, 0.5 + torch.rand(SHAPE, generator=g))


@pytest.mark.parametrize('name,importance_weighting', [('ve', True), ('vp', True), ('subvp', True),
                                                        ('vp', False)])
def test_bound_equals_exact_nll_with_the_exact_score(name, importance_weighting):
  """Bits/dim of the bound, averaged over 2,048 points, equal -log p_0 to Monte Carlo error."""
  sde, mixture = SDES[name](), _gaussian()
  data = mixture.sample(2048, torch.Generator().manual_seed(1))
  exact = -mixture.log_prob(data) / math.log(2) / 16 + 8.
  bound_fn = likelihood.get_likelihood_bound_fn(sde, lambda x: x, eps=EPS, num_samples=100,
                                                importance_weighting=importance_weighting,
                                                exact_prior=True)
  model = mutils.ScoreModel(sde, ExactScoreModel(sde, mixture), continuous=True)
  bpd = bound_fn(model, data, generator=torch.Generator().manual_seed(2))
  assert bpd.shape == (2048,) and model.nfe == 101  # 100 times and the t < eps term
  err = (bpd - exact).double()
  se = err.std().item() / math.sqrt(len(err))
  assert se < 0.05 and abs(err.mean().item()) < 4 * se + 2e-3, (err.mean().item(), se)


def test_bound_is_above_the_nll_for_a_wrong_score():
  """A 20 % wrong score pays in the bound: the gap is E[KL], positive and well beyond MC error."""
  sde, mixture = SDES['vp'](), _gaussian()
  data = mixture.sample(1024, torch.Generator().manual_seed(1))
  exact = -mixture.log_prob(data) / math.log(2) / 16 + 8.
  bound_fn = likelihood.get_likelihood_bound_fn(sde, lambda x: x, num_samples=50, exact_prior=True)
  bpd = bound_fn(Scaled(ExactScoreModel(sde, mixture), 1.2), data,
                    generator=torch.Generator().manual_seed(2))
  err = (bpd - exact).double()
  assert err.mean() > 6 * err.std() / math.sqrt(len(err))


def test_bound_options_and_offset():
  """exact_prior and a sampled prior agree on average; the offset follows the inverse scaler."""
  sde, mixture = SDES['vp'](), _gaussian()
  data = mixture.sample(512, torch.Generator().manual_seed(1))
  model = ExactScoreModel(sde, mixture)
  runs = {}
  for exact_prior in (True, False):
    fn = likelihood.get_likelihood_bound_fn(sde, lambda x: x, num_samples=20, exact_prior=exact_prior)
    runs[exact_prior] = fn(model, data, generator=torch.Generator().manual_seed(3)).double()
  d = runs[False] - runs[True]
  assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(d))
  fn7 = likelihood.get_likelihood_bound_fn(sde, lambda x: (x + 1) / 2, num_samples=20, exact_prior=True)
  torch.testing.assert_close(fn7(model, data, generator=torch.Generator().manual_seed(3)).double(),
                             runs[True] - 1., rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match='bound_num_samples'):
    likelihood.get_likelihood_bound_fn(sde, lambda x: x, num_samples=0)


def test_eval_reports_the_bound_next_to_the_ode_and_refuses_no_dequantization(tmp_path, few_digits):
  """`--mode eval` with eval.enable_bound: bound files per batch (their own noise), the mean in
  report.json next to bits/dim; eval.dequantization='none' stops before any work, naming the fix."""
  config = tiny_config(tmp_path)
  ev = config.eval
  ev.enable_loss = ev.enable_sampling = False
  ev.enable_bound, ev.bound_num_samples, ev.bpd_num_repeats = True, 4, 1
  workdir = tmp_path / 'run'
  write_checkpoint(config, workdir)
  eval_lib.evaluate(config, str(workdir))
  report = json.loads((workdir / 'eval' / 'report.json').read_text())['1']
  bound = np.load(workdir / 'eval' / 'test_ckpt_1_bound_0.npz')['arr_0']
  assert bound.shape == (20,) and np.isfinite(bound).all()
  assert report['bound'] == pytest.approx(bound.mean(), rel=1e-6) and 'bpd' in report
  # An untrained network is far from a good model: both numbers are well above 0, and the
  # bound (num_samples 4) is not the ODE's number.
  assert report['bound'] > 1 and report['bpd'] > 1 and report['bound'] != report['bpd']
  ev.dequantization = 'none'
  with pytest.raises(ValueError, match='dequantization=uniform'):
    eval_lib.evaluate(config, str(tmp_path / 'run2'))
  ev.dequantization = 'gaussian'
  with pytest.raises(ValueError, match="dequantization is 'gaussian'"):
    eval_lib.evaluate(config, str(tmp_path / 'run3'))


def test_importance_weighted_training_stops_and_resumes_bit_identically(tmp_path):
  """Stopped at step 10 and resumed to 20, a VP run with likelihood and importance weighting ends
  with the weights, EMA, Adam state and RNG of the run that never stopped (its t draws come from
  the checkpointed loss-noise generator)."""
  from conftest import assert_same_run, whole_and_resumed_runs
  whole, resumed = whole_and_resumed_runs(tmp_path, {
    'training.sde': 'vpsde', 'training.likelihood_weighting': True,
    'training.importance_weighting': True})
  assert whole['step'] == 21
  assert_same_run(whole, resumed)
