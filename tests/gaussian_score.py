"""Exact scores of Gaussian and Gaussian-mixture data under every SDE, as score "networks".

Data: a mixture of K Gaussians with diagonal covariances, p_0 = sum_k w_k N(mu_k, diag s_k^2),
on tensors of any shape (B, *event_shape). Every SDE here perturbs data linearly,
x(t) = alpha(t) x(0) + sigma(t) z, so each marginal is again such a mixture:

  p_t = sum_k w_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)),

whose score and log-density are closed forms (`GaussianMixture.score` / `.log_prob`).

`ExactScoreModel(sde, mixture, continuous)` is an nn.Module called like a score network,
model(x, labels), with the labels that `models.utils.get_score_fn` gives it; it recovers
(alpha, sigma) from the labels (continuous time or the discrete SMLD / DDPM chains) and returns
the exact score scaled so that `get_score_fn(sde, model, continuous=...)` returns it unchanged.
This isolates samplers, likelihoods and controllable generation from any trained network.

Usage::

  mixture = GaussianMixture.gaussian(mean=torch.zeros(1, 4, 4), std=torch.full((1, 4, 4), 0.5))
  model = ExactScoreModel(sde, mixture, continuous=True)
  score_fn = models.utils.get_score_fn(sde, model, continuous=True)   # exact score of p_t
"""
import math

import torch
from torch import nn

import sde_lib


class GaussianMixture(nn.Module):
  """sum_k w_k N(mu_k, diag s_k^2) over events of shape `means.shape[1:]` (a Module for .to())."""

  def __init__(self, weights, means, stds):
    """weights (K,) summing to 1; means, stds (K, *event_shape)."""
    super().__init__()
    weights, means, stds = (torch.as_tensor(v, dtype=torch.float32) for v in (weights, means, stds))
    if not (weights.ndim == 1 and means.shape == stds.shape and means.shape[0] == weights.shape[0]):
      raise ValueError(f'weights (K,), means and stds (K, ...) expected; got {tuple(weights.shape)}, '
                       f'{tuple(means.shape)}, {tuple(stds.shape)}.')
    self.register_buffer('weights', weights / weights.sum())
    self.register_buffer('means', means)
    self.register_buffer('stds', stds)

  @classmethod
  def gaussian(cls, mean, std):
    """A single Gaussian N(mean, diag std^2); mean and std have the event shape."""
    mean = torch.as_tensor(mean, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32).expand_as(mean)
    return cls(torch.ones(1), mean[None], std[None].clone())

  @property
  def event_shape(self):
    return tuple(self.means.shape[1:])

  def sample(self, n, generator=None):
    """n draws (n, *event_shape) from p_0."""
    g = generator
    device = self.means.device
    k = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=g).to(device)
    z = torch.randn((n,) + self.event_shape, generator=g).to(device)
    return self.means[k] + self.stds[k] * z

  def moments(self, alpha=1., sigma=0.):
    """Mean and variance (event_shape each) of the perturbed mixture; scalars alpha, sigma."""
    w = sde_lib.bcast(self.weights, self.means)
    mean = (w * alpha * self.means).sum(0)
    second = (w * (alpha ** 2 * (self.stds ** 2 + self.means ** 2) + sigma ** 2)).sum(0)
    return mean, second - mean ** 2

  def _components(self, x, alpha, sigma):
    """Per-component means (B, K, ...) and variances of p_t at per-example alpha, sigma (B,)."""
    a = alpha.reshape(-1, 1, *([1] * len(self.event_shape)))
    s = sigma.reshape(-1, 1, *([1] * len(self.event_shape)))
    return a * self.means[None], a ** 2 * self.stds[None] ** 2 + s ** 2

  def log_prob(self, x, alpha=None, sigma=None):
    """log p_t(x) (B,) in nats, p_t the mixture perturbed to x = alpha x0 + sigma z."""
    alpha = torch.ones(x.shape[0], device=x.device) if alpha is None else alpha
    sigma = torch.zeros(x.shape[0], device=x.device) if sigma is None else sigma
    mean, var = self._components(x, alpha, sigma)
    dims = tuple(range(2, mean.ndim))
    comp = -0.5 * (((x[:, None] - mean) ** 2 / var) + torch.log(2 * math.pi * var)).sum(dims)
    return torch.logsumexp(comp + torch.log(self.weights), dim=1)

  def score(self, x, alpha, sigma):
    """grad_x log p_t(x) (B, ...) at per-example alpha, sigma (B,)."""
    mean, var = self._components(x, alpha, sigma)
    dims = tuple(range(2, mean.ndim))
    comp = -0.5 * (((x[:, None] - mean) ** 2 / var) + torch.log(var)).sum(dims)
    resp = torch.softmax(comp + torch.log(self.weights), dim=1)  # posterior over components
    return (sde_lib.bcast(resp, mean) * (mean - x[:, None]) / var).sum(1)


# labels -> (alpha, sigma, t): how each SDE's get_score_fn labels map back to its perturbation.
def _ve_continuous(sde, labels):
  t = torch.log(labels / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
  return torch.ones_like(labels), labels, t


def _ve_discrete(sde, labels):
  # Label k indexes the descending ladder: sigma = discrete_sigmas[N - 1 - k] = sigma(t_k).
  index = sde.N - 1 - labels.long()
  t = index.float() / (sde.N - 1) * sde.T
  sigma = sde.discrete_sigmas.to(labels.device)[index]
  return torch.ones_like(sigma), sigma, t


def _scaled_time_continuous(sde, labels):
  t = labels / 999.
  alpha = sde.marginal_prob(torch.ones_like(t), t)[0]
  return alpha, sde.marginal_prob(torch.zeros_like(t), t)[1], t


def _vp_discrete(sde, labels):
  # DDPM chain: x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) z, i = floor(label).
  i = labels.long()
  t = labels / (sde.N - 1) * sde.T
  return (sde.sqrt_alphas_cumprod.to(labels.device)[i],
          sde.sqrt_1m_alphas_cumprod.to(labels.device)[i], t)


_LABELS_TO_PERTURBATION = {
  (sde_lib.VESDE, True): _ve_continuous,
  (sde_lib.VESDE, False): _ve_discrete,
  (sde_lib.VPSDE, True): _scaled_time_continuous,
  (sde_lib.VPSDE, False): _vp_discrete,
  (sde_lib.subVPSDE, True): _scaled_time_continuous,
  (sde_lib.subVPSDE, False): _scaled_time_continuous,  # sub-VP labels are always continuous
}


class ExactScoreModel(nn.Module):
  """A 'network' whose output get_score_fn(sde, model, continuous=continuous) turns into the exact
  score of the perturbed `mixture` at the time the labels encode.

  Args:
    sde: the forward `sde_lib.SDE` (VE, VP or sub-VP).
    mixture: a `GaussianMixture` (its event shape is the data shape without batch).
    continuous: whether get_score_fn will be called with continuous=True (labels are then
      continuous noise levels / times; otherwise the discrete SMLD / DDPM chain's indices).
  """

  def __init__(self, sde, mixture, continuous=True):
    super().__init__()
    key = (type(sde), bool(continuous))
    if key not in _LABELS_TO_PERTURBATION:
      raise ValueError(f'No exact score for {type(sde).__name__} (continuous={continuous}).')
    self.sde = sde
    self.mixture = mixture
    self.continuous = continuous
    self._perturbation = _LABELS_TO_PERTURBATION[key]

  def perturbation(self, labels):
    """(alpha, sigma, t), each (B,), that the network labels stand for."""
    return self._perturbation(self.sde, labels)

  def forward(self, x, labels):
    alpha, sigma, t = self.perturbation(labels)
    score = self.mixture.score(x, alpha.to(x.dtype), sigma.to(x.dtype))
    # output_to_score is linear in the output: divide by its action on ones to invert it.
    unit = self.sde.output_to_score(torch.ones_like(x), t, labels, self.continuous)
    return score / unit


def marginal_std_ratio_flow(sde, mixture, x, t0, t1):
  """Exact probability-flow map of a single diagonal Gaussian from time t0 to t1 (scalars).

  For p_0 = N(mu, diag s^2) the ODE moves each coordinate affinely:
  x(t1) - alpha1 mu = sqrt(v1 / v0) (x(t0) - alpha0 mu), v = alpha^2 s^2 + sigma^2.
  Returns x(t1) (x's shape) and log(dx_i(t1)/dx_i(t0)) per coordinate (event shape; the flow's
  log-determinant is its sum).
  """
  if mixture.means.shape[0] != 1:
    raise ValueError('The closed-form flow map holds for a single Gaussian only.')
  mu, s = mixture.means[0], mixture.stds[0]

  def coeffs(t):
    t = torch.tensor([float(t)])
    return (sde.marginal_prob(torch.ones(1), t)[0].item(),
            sde.marginal_prob(torch.zeros(1), t)[1].item())

  (a0, sig0), (a1, sig1) = coeffs(t0), coeffs(t1)
  v0, v1 = a0 ** 2 * s ** 2 + sig0 ** 2, a1 ** 2 * s ** 2 + sig1 ** 2
  ratio = torch.sqrt(v1 / v0)
  return a1 * mu + ratio * (x - a0 * mu), torch.log(ratio)


def heun_gain(sigmas, s):
  """The number EDM's Heun sampler (Alg. 1, Euler last step to sigma = 0) multiplies y by, for one
  zero-mean Gaussian of std s, along the decreasing ladder `sigmas` (floats, last > 0).

  In y = x / s(t) the probability-flow ODE of such data is linear, dy/dsigma = y f(sigma) with
  f = sigma / (s^2 + sigma^2), so every Heun step is a scalar factor; the Euler step from the last
  sigma to 0 is the denoiser D = y s^2 / (s^2 + sigma^2). The exact factor is
  s / sqrt(s^2 + sigmas[0]^2).
  """
  f = lambda sigma: sigma / (s * s + sigma * sigma)
  gain = 1.
  for a, b in zip(sigmas[:-1], sigmas[1:]):
    d = b - a
    gain *= 1 + d * 0.5 * (f(a) + f(b) * (1 + d * f(a)))
  return gain * s * s / (s * s + sigmas[-1] ** 2)
