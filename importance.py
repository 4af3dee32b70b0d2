"""Importance-sampled time for the likelihood-weighted score-matching loss (Song, Durkan, Murray
& Ermon 2021, "Maximum Likelihood Training of Score-Based Diffusion Models", Sec. 5 / App. D).

With likelihood weighting lambda(t) = g(t)^2, the per-time loss is
  g(t)^2 ||s(x_t, t) + z / sigma_t||^2 = (g(t)^2 / sigma_t^2) ||sigma_t s(x_t, t) + z||^2,
and the first factor is what makes uniform t a poor estimator: under VP / sub-VP it grows like
1 / t near t = 0. Drawing t from the density p(t) = w(t) / Z, w(t) = g(t)^2 / sigma_t^2 on
[eps, T], and weighting each draw by Z / (T - eps) leaves the mean of the uniform-t estimator
unchanged and its variance far lower:

  E_{t~U(eps,T)}[g^2 ||s + z/sigma||^2] = E_{t~p}[Z / (T - eps) ||sigma s + z||^2].

W(t) = int_eps^t w is a closed form for every SDE here, and so is its inverse (the inverse-CDF
draw). With u(t) = int_0^t beta = beta_0 t + (beta_1 - beta_0) t^2 / 2:
  VP:     w dt = du / (1 - e^-u)                  ->  W + C = log(e^u - 1)
  sub-VP: w dt = du (1 + e^-u) / (1 - e^-u)       ->  W + C = 2 log(e^u - 1) - u = log(4 sinh^2(u/2))
  VE:     w = 2 log(sigma_max / sigma_min), a constant: p(t) is uniform, and importance
          sampling is uniform t with the constant weight (exact, and no variance reduction).
The reference (yang-song/score_flow) bisects W numerically and drops the constant Z; here both
directions are closed forms in float64, and Z / (T - eps) is kept so that the loss is the same
number as with uniform t (the bound and the variance comparison need that).
"""
import math

import torch

import sde_lib


def _kind(sde):
  # sub-VP first: it is not a VPSDE subclass, but say it explicitly so that order never matters.
  for cls, name in ((sde_lib.subVPSDE, 'subvp'), (sde_lib.VPSDE, 'vp'), (sde_lib.VESDE, 've')):
    if isinstance(sde, cls):
      return name
  raise ValueError(f'Importance-sampled time (config.training.importance_weighting) has closed '
                   f'forms for VESDE, VPSDE and subVPSDE, not {type(sde).__name__}; set '
                   'config.training.importance_weighting=False.')


def _integrated_beta(sde, t):
  """u(t) = int_0^t beta(s) ds (float64 tensor)."""
  return sde.beta_0 * t + 0.5 * (sde.beta_1 - sde.beta_0) * t ** 2


def _potential(sde, kind, t):
  """An antiderivative of w(t) = g(t)^2 / sigma_t^2 (float64 tensor in and out)."""
  if kind == 've':
    return 2 * math.log(sde.sigma_max / sde.sigma_min) * t
  u = _integrated_beta(sde, t)
  if kind == 'vp':
    return torch.log(torch.expm1(u))
  return 2 * torch.log(torch.expm1(u)) - u


def _inverse_potential(sde, kind, value):
  """The t with _potential(t) = value (float64 tensor in and out)."""
  if kind == 've':
    return value / (2 * math.log(sde.sigma_max / sde.sigma_min))
  if kind == 'vp':
    u = torch.nn.functional.softplus(value)  # log(1 + e^value)
  else:
    u = 2 * torch.asinh(0.5 * torch.exp(0.5 * value))
  d = sde.beta_1 - sde.beta_0
  if d == 0:
    return u / sde.beta_0
  return (torch.sqrt(sde.beta_0 ** 2 + 2 * d * u) - sde.beta_0) / d  # solve u(t) = u


def _f64(t):
  return torch.as_tensor(t, dtype=torch.float64)


def weight(sde, t):
  """w(t) = g(t)^2 / sigma_t^2, the unnormalised density of the importance-sampled time.

  Args: t a (B,) tensor or a float. Returns: float64 tensor of t's shape."""
  t = _f64(t)
  _, g = sde.sde(torch.zeros(t.shape + (1,), dtype=torch.float64), t)
  _, std = sde.marginal_prob(torch.zeros(t.shape + (1,), dtype=torch.float64), t)
  return _f64(g) ** 2 / _f64(std) ** 2


def cum_weight(sde, t, eps=1e-5):
  """W(t) = int_eps^t w(s) ds (the reference's `likelihood_importance_cum_weight`), float64."""
  kind = _kind(sde)
  return _potential(sde, kind, _f64(t)) - _potential(sde, kind, _f64(eps))


def normalizer(sde, eps=1e-5):
  """Z = W(T) as a Python float."""
  return float(cum_weight(sde, sde.T, eps))


def time_from_quantile(sde, q, eps=1e-5):
  """The inverse CDF: t in [eps, T] with W(t) / Z = q, for q (B,) in [0, 1]; float64."""
  kind = _kind(sde)
  c = _potential(sde, kind, _f64(eps))
  value = c + _f64(q) * (_potential(sde, kind, _f64(sde.T)) - c)
  return _inverse_potential(sde, kind, value).clamp(eps, sde.T)


def sample_time(sde, n, eps=1e-5, generator=None, device=None, dtype=torch.float32):
  """n times drawn from p(t) = w(t) / Z on [eps, T] (the reference's
  `sample_importance_weighted_time_for_likelihood`), from n uniform numbers of `generator` (the
  same draws uniform t would take, so the RNG streams keep their layout)."""
  q = torch.rand(n, generator=generator, device=device)
  return time_from_quantile(sde, q.double(), eps).to(dtype)


def drift_divergence_integral(sde, eps=1e-5):
  """int_eps^T div f(x, t) dt / D for the linear drifts here (f = a(t) x, div f = D a(t)):
  -(u(T) - u(eps)) / 2 for VP and sub-VP (a = -beta / 2), 0 for VE. Exact, so the bound spends
  no Monte Carlo noise on it."""
  kind = _kind(sde)
  if kind == 've':
    return 0.
  return -0.5 * float(_integrated_beta(sde, _f64(sde.T)) - _integrated_beta(sde, _f64(eps)))
