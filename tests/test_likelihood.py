"""likelihood_fn against closed forms.

For Gaussian data N(mu, diag s^2) the probability-flow ODE moves each coordinate affinely, so the
latent z and the log-determinant of the flow from eps to T are known exactly
(`gaussian_score.marginal_std_ratio_flow`); likelihood_fn must return
bpd = -(log p_T(z) + logdet) / (D ln 2) + offset. The drift's Jacobian is diagonal, so Rademacher
probes (eps_i^2 = 1) give the exact trace; Gaussian probes give sum_i eps_i^2 d_i, which we
reproduce from the same generator.
"""
import math

import pytest
import torch

import likelihood
import ode_solvers
import sampling
import sde_lib
from gaussian_score import ExactScoreModel, marginal_std_ratio_flow
from test_sampling import GAUSSIAN, SDES, _mixture, tiny_ncsnpp

identity = lambda x: x
EPS = 1e-5
DIM = 16


def _data(n=8, mixture=GAUSSIAN, seed=3):
  return mixture.sample(n, torch.Generator().manual_seed(seed))


def _exact_bpd(sde, data, probe_sq=None, offset=8.):
  """Closed-form output of likelihood_fn and z; probe_sq (B, ...) = eps^2 for Gaussian probes."""
  z, log_ratio = marginal_std_ratio_flow(sde, GAUSSIAN, data, EPS, sde.T)
  weights = torch.ones_like(data) if probe_sq is None else probe_sq
  logdet = (weights * log_ratio).sum(dim=(1, 2, 3))
  return -(sde.prior_logp(z) + logdet) / math.log(2) / DIM + offset, z


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('hutchinson_type', ['Rademacher', 'exact'])
@pytest.mark.parametrize('method', ['RK45', 'dopri5'])
def test_bpd_matches_gaussian(sde_name, hutchinson_type, method):
  sde = SDES[sde_name][0]()
  data = _data()
  fn = likelihood.get_likelihood_fn(sde, identity, hutchinson_type=hutchinson_type, method=method,
                                    eps=EPS)
  bpd, z, nfe = fn(ExactScoreModel(sde, GAUSSIAN), data)
  exact, z_exact = _exact_bpd(sde, data)
  assert (bpd - exact).abs().max() < 2e-3, (bpd - exact).abs().max()
  assert torch.allclose(z, z_exact, rtol=1e-4, atol=1e-4 * sde.prior_sampling((1,)).abs().max())
  assert bpd.shape == (8,) and z.shape == data.shape and nfe > 0


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_gaussian_probe(sde_name):
  """Gaussian probes: exact given the probe, and the batch mean within 3 standard errors."""
  sde = SDES[sde_name][0]()
  data = _data(64)
  fn = likelihood.get_likelihood_fn(sde, identity, hutchinson_type='Gaussian', method='dopri5',
                                    eps=EPS)
  bpd, _, _ = fn(ExactScoreModel(sde, GAUSSIAN), data, generator=torch.Generator().manual_seed(4))
  probe = torch.randn(data.shape, generator=torch.Generator().manual_seed(4))
  given_probe, _ = _exact_bpd(sde, data, probe_sq=probe ** 2)
  assert (bpd - given_probe).abs().max() < 2e-3
  exact, _ = _exact_bpd(sde, data)
  err = bpd - exact
  assert err.abs().max() > 1e-2  # the probe does add noise: this is not the Rademacher case
  assert err.mean().abs() < 3 * err.std() / math.sqrt(len(err)), (err.mean(), err.std())


def test_exact_trace_on_a_mixture():
  """Mixture scores have non-diagonal Jacobians: only the exact trace is exact there.

  The ODE carries p_eps to p_T, so likelihood_fn gives log p_eps(x) + log prior(z) - log p_T(z).
  """
  sde = sde_lib.VPSDE()
  mixture = _mixture()
  data = _data(8, mixture)
  model = ExactScoreModel(sde, mixture)
  bpd, z, _ = likelihood.get_likelihood_fn(sde, identity, hutchinson_type='exact', method='dopri5',
                                           eps=EPS)(model, data)

  def coeffs(t):
    t = torch.full((len(data),), float(t))
    return sde.marginal_prob(torch.ones_like(t), t)[0], sde.marginal_prob(torch.zeros_like(t), t)[1]

  logp = (mixture.log_prob(data, *coeffs(EPS)) + sde.prior_logp(z.double()).float()
          - mixture.log_prob(z, *coeffs(sde.T)))
  exact = -logp / math.log(2) / DIM + 8
  assert (bpd - exact).abs().max() < 2e-3


def test_offset_follows_the_data_range():
  """7 bits/dim for data in [-1, 1] (centered), 8 for data in [0, 1]: exactly 1 apart."""
  sde = sde_lib.VPSDE()
  data = _data()
  model = ExactScoreModel(sde, GAUSSIAN)
  uncentered = likelihood.get_likelihood_fn(sde, identity, method='dopri5')(model, data)[0]
  centered = likelihood.get_likelihood_fn(sde, lambda x: (x + 1.) / 2., method='dopri5')(model, data)[0]
  assert torch.allclose(uncentered - centered, torch.ones(8))
  assert likelihood.bits_per_dim_offset(lambda x: (x + 1.) / 2.) == 7.


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('method', ['RK45', 'dopri5'])
def test_encode_decode_round_trip(sde_name, method):
  sde = SDES[sde_name][0]()
  data = _data()
  model = ExactScoreModel(sde, GAUSSIAN)
  _, z, _ = likelihood.get_likelihood_fn(sde, identity, method=method, eps=EPS)(model, data)
  decoded, _ = sampling.get_ode_sampler(sde, data.shape, identity, method=method, eps=EPS,
                                        device='cpu')(model, z=z)
  rms = (decoded - data).pow(2).mean().sqrt().item()
  assert rms < 1e-3, rms


def test_one_forward_per_evaluation(monkeypatch):
  """nfe counts network forward passes, and there is exactly one per ODE function evaluation."""
  sde = sde_lib.VESDE()
  model = ExactScoreModel(sde, GAUSSIAN)
  forwards = []
  model.register_forward_hook(lambda *args: forwards.append(1))
  evaluations = []
  solve = ode_solvers.solve

  def counting_solve(fn, *args, **kw):
    return solve(lambda t, y: evaluations.append(1) or fn(t, y), *args, **kw)

  monkeypatch.setattr(ode_solvers, 'solve', counting_solve)
  _, _, nfe = likelihood.get_likelihood_fn(sde, identity, method='RK45')(model, _data())
  assert nfe == len(forwards) == len(evaluations) > 0


def test_unknown_options_are_clear():
  with pytest.raises(ValueError, match='Known: Rademacher, Gaussian, exact'):
    likelihood.get_likelihood_fn(sde_lib.VPSDE(), identity, hutchinson_type='Bernoulli')
  with pytest.raises(ValueError, match='Known methods'):
    likelihood.get_likelihood_fn(sde_lib.VPSDE(), identity, method='RK9')


@pytest.mark.parametrize('method', ['RK45', 'dopri5'])
def test_tiny_ncsnpp_likelihood_end_to_end(method):
  config, model = tiny_ncsnpp()
  sde, _ = sde_lib.get_sde(config)
  data = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(14))
  fn = likelihood.get_likelihood_fn(sde, identity, rtol=1e-2, atol=1e-2, method=method)
  bpd, z, nfe = fn(model, data)
  assert bpd.shape == (2,) and torch.isfinite(bpd).all() and z.shape == data.shape and nfe > 0
