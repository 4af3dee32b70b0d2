"""Forward SDEs of Song et al. (2021), their reverse-time SDE / probability-flow ODE, and
`get_sde(config)`, the one place a config becomes an SDE.

Tensors `x` are batches (B, ...) and `t` is a float tensor of shape (B,) in [0, T]. Where one
time serves the whole batch, the SDEs here (`float_time = True`) also take `t` as a Python float
in the continuous-time coefficients (`sde`, `marginal_prob`, `noise_label`, `output_to_score` of
continuous models), computing them as Python floats in float64, without tensor ops;
`sde.batch_time(t, B)` gives what to pass. The ODE sampler and the likelihood use this: after each
network call every small tensor op costs ~10 us on the CPU (the caches were just refilled), and
the time vector's arithmetic was most of their wall time outside the network.

Each SDE also says how its time maps to the network's conditioning label and how the
network's output becomes a score (`noise_label`, `output_to_score`): those are the
conventions of the official checkpoints, kept here so that no sampler needs an
`isinstance` test on SDE types.
"""
import abc
import math

import numpy as np
import torch


def bcast(v, x):
  """Reshape a per-example vector (B,) so it broadcasts against x (B, ...); a Python number
  (one time for the whole batch) broadcasts as it is."""
  if not torch.is_tensor(v):
    return v
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def randn(shape, generator=None, device=None, dtype=None):
  """Standard normal noise of `shape`, drawn where its generator lives and moved to `device`.

  Args:
    shape: (B, ...).
    generator: None (torch's global generator, drawing on `device`), a torch.Generator, or a
      list of B generators: row b then comes from generator b alone, so it does not depend on
      the batch it is drawn in (per-image seeds, as EDM's `--seeds`).
    device: where the result goes; default the generator's device (the first one's), else the CPU.
    dtype: default torch's.
  Returns:
    A tensor of `shape`. One generator gives the numbers of torch.randn(shape, generator=g).
  """
  if isinstance(generator, (list, tuple)):
    if len(generator) != shape[0]:
      raise ValueError(f'Got {len(generator)} generators for a batch of {shape[0]}: pass one '
                       'generator, or one per example.')
    if len(generator) == 1:
      generator = generator[0]
    else:
      device = generator[0].device if device is None else device
      rows = [torch.randn((1,) + tuple(shape[1:]), generator=g, device=g.device, dtype=dtype)
              for g in generator]
      return torch.cat(rows).to(device)
  if generator is None:
    return torch.randn(tuple(shape), device=device, dtype=dtype)
  noise = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
  return noise if device is None else noise.to(device)


def prior_draw(sde, shape, device, generator=None):
  """x(T) from `sde`'s prior, (B, ...) on `device`: drawn where the generator lives, the CPU
  without one (as score_sde_pytorch draws it, so a seed gives its samples on a GPU too), then
  moved. Every sampler starts here."""
  return sde.prior_sampling(tuple(shape), generator=generator).to(device)


def _exp(v):
  """exp of a tensor or of a Python number (the scalar-time path)."""
  return torch.exp(v) if torch.is_tensor(v) else math.exp(v)


def _sqrt(v):
  """sqrt of a tensor or of a Python number."""
  return torch.sqrt(v) if torch.is_tensor(v) else math.sqrt(v)


def _sum_except_batch(x):
  return torch.sum(x, dim=tuple(range(1, x.ndim)))


class SDE(abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T], discretised with N steps (paper, Eq. 5)."""

  # Whether sde / marginal_prob / noise_label / output_to_score take a Python float t. False
  # here, so that a user's SDE written with tensor-only formulas keeps getting (B,) vectors;
  # VE / VP / sub-VP set it, so a subclass that overrides one of them with tensor-only code
  # must set it back to False.
  float_time = False

  def __init__(self, N):
    super().__init__()
    self.N = N  # number of discretisation steps

  @property
  @abc.abstractmethod
  def T(self):
    """End time of the SDE."""

  @abc.abstractmethod
  def sde(self, x, t):
    """Drift f(x, t) of shape x.shape and diffusion g(t) of shape (B,)."""

  @abc.abstractmethod
  def marginal_prob(self, x, t):
    """Mean (x.shape) and std (B,) of the perturbation kernel p_{0t}(x(t) | x(0) = x)."""

  @abc.abstractmethod
  def prior_sampling(self, shape, generator=None, device=None):
    """Draw a batch of shape `shape` from the prior p_T; `generator` and `device` as in `randn`
    (a list of B generators draws row b from generator b)."""

  @abc.abstractmethod
  def prior_logp(self, z):
    """log p_T(z) per example, shape (B,), in nats."""

  def discretize(self, x, t):
    """x_{i+1} = x_i + f_i(x_i) + G_i z_i; Euler-Maruyama unless a subclass overrides it.

    Returns:
      f (x.shape) and G (B,).
    """
    dt = 1 / self.N
    drift, diffusion = self.sde(x, t)
    f = drift * dt
    G = diffusion * torch.sqrt(torch.tensor(dt, device=t.device))
    return f, G

  def batch_time(self, t, batch, device=None):
    """The time argument for a whole batch at one time t (a Python float): t itself where this
    SDE takes float times (its coefficients then cost no tensor ops), else a (B,) vector."""
    return t if self.float_time else torch.full((batch,), t, device=device)

  def reverse(self, score_fn, probability_flow=False):
    """The reverse-time SDE (Eq. 6), or the probability-flow ODE (Eq. 13) if `probability_flow`.

    Args:
      score_fn: callable (x, t) -> score of p_t at x, shape x.shape.
      probability_flow: build the deterministic ODE (diffusion 0) instead of the SDE.
    """
    return ReverseSDE(self, score_fn, probability_flow)

  # --- How the official networks are conditioned (score_sde_pytorch's get_score_fn). ---
  @abc.abstractmethod
  def noise_label(self, t, continuous):
    """The label (B,) the network is called with at time t."""

  @abc.abstractmethod
  def output_to_score(self, output, t, labels, continuous):
    """Turn the network's output at time t (called with `labels`) into the score."""

  # --- EDM's view of the marginals (Karras et al. 2022, Eq. 4): x_t = s(t) (x_0 + sigma(t) z). ---
  def scale_and_sigma(self, t):
    """s(t) and sigma(t) (B,) such that x_t = s(t) (x_0 + sigma(t) z): the probability-flow
    ODE of every SDE here is one ODE in x / s against sigma, which the fast samplers solve."""
    raise NotImplementedError(f'{type(self).__name__} does not define scale_and_sigma.')

  def sigma_inverse(self, sigma):
    """The time t at which sigma(t) = sigma (tensor in, tensor out)."""
    raise NotImplementedError(f'{type(self).__name__} does not define sigma_inverse.')


class ReverseSDE:
  """Reverse-time SDE / probability-flow ODE of a forward SDE; time still runs over [0, T]."""

  def __init__(self, forward_sde, score_fn, probability_flow=False):
    self.forward_sde = forward_sde
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.N = forward_sde.N

  @property
  def T(self):
    return self.forward_sde.T

  def sde(self, x, t):
    """Drift f - g^2 s (SDE) or f - g^2 s / 2 (ODE); the ODE's diffusion is 0."""
    drift, diffusion = self.forward_sde.sde(x, t)
    return self._minus_g2_score(drift, diffusion, x, t), (0. if self.probability_flow else diffusion)

  def discretize(self, x, t):
    """Reverse of the forward discretisation (the reverse-diffusion sampler's update)."""
    f, G = self.forward_sde.discretize(x, t)
    rev_G = torch.zeros_like(G) if self.probability_flow else G
    return self._minus_g2_score(f, G, x, t), rev_G

  def _minus_g2_score(self, drift, g, x, t):
    """drift - g^2 score(x, t) (times 1/2 for the ODE), as one fused op on the image-sized
    tensors: this runs at every network evaluation of every sampler."""
    value = -0.5 if self.probability_flow else -1.
    if not torch.is_tensor(g):  # scalar time: g is a Python float
      return torch.add(drift, self.score_fn(x, t), alpha=value * g * g)
    return torch.addcmul(drift, bcast(g ** 2, x), self.score_fn(x, t), value=value)


def _standard_normal_logp(z, var=1.):
  n = np.prod(z.shape[1:])
  return -n / 2. * np.log(2 * np.pi * var) - _sum_except_batch(z ** 2) / (2 * var)


class _LinearBetaSDE(SDE):
  """What VP and sub-VP share: beta(t) = beta_0 + t (beta_1 - beta_0) on [0, 1], the mean
  coefficient s(t) = exp(-int_0^t beta / 2), a standard normal prior, and 999 t as the label of
  continuously trained networks."""

  float_time = True

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(N)
    self.beta_0 = beta_min
    self.beta_1 = beta_max

  @property
  def T(self):
    return 1

  def _beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def _log_mean_coeff(self, t):
    return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def _time_from_neg_log_mean(self, L):
    """Solve -log s(t) = 0.25 t^2 (b1 - b0) + 0.5 t b0 = L for t >= 0."""
    d = self.beta_1 - self.beta_0
    if d == 0:
      return 2 * L / self.beta_0
    return (torch.sqrt(self.beta_0 ** 2 + 4 * d * L) - self.beta_0) / d

  def prior_sampling(self, shape, generator=None, device=None):
    return randn(shape, generator, device)

  def prior_logp(self, z):
    return _standard_normal_logp(z)

  def marginal_prob(self, x, t):
    log_mean_coeff = self._log_mean_coeff(t)
    return bcast(_exp(log_mean_coeff), x) * x, self._std(log_mean_coeff)

  def _std(self, log_mean_coeff):
    """The perturbation kernel's std (B,) as a function of log s(t)."""
    raise NotImplementedError

  def _continuous_score(self, output, t):
    # The network predicts the noise eps; score = -eps / std (negating the (B,) std, not the
    # output, is the same number and one image-sized op fewer).
    return output / bcast(-self._std(self._log_mean_coeff(t)), output)


class VPSDE(_LinearBetaSDE):
  """Variance-preserving SDE (DDPM's continuous limit): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw."""

  def __init__(self, beta_min=0.1, beta_max=20, N=1000):
    super().__init__(beta_min, beta_max, N)
    # DDPM's discrete chain (Ho et al. 2020), used by discretize and discrete-time models.
    self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
    self.alphas = 1. - self.discrete_betas
    self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
    self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
    self.sqrt_1m_alphas_cumprod = torch.sqrt(1. - self.alphas_cumprod)

  def sde(self, x, t):
    beta_t = self._beta(t)
    return bcast(-0.5 * beta_t, x) * x, _sqrt(beta_t)

  def _std(self, log_mean_coeff):
    # Kept as sqrt(1 - exp(.)) rather than expm1 so scores match the official checkpoints'.
    return _sqrt(1. - _exp(2. * log_mean_coeff))

  def discretize(self, x, t):
    """DDPM's ancestral chain: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z."""
    timestep = (t * (self.N - 1) / self.T).long()
    beta = self.discrete_betas.to(x.device)[timestep]
    alpha = self.alphas.to(x.device)[timestep]
    f = bcast(torch.sqrt(alpha), x) * x - x
    return f, torch.sqrt(beta)

  def noise_label(self, t, continuous):
    # Continuous models see 999 t; discrete DDPM models the (unrounded) step index.
    return t * 999 if continuous else t * (self.N - 1)

  def output_to_score(self, output, t, labels, continuous):
    if continuous:
      return self._continuous_score(output, t)
    std = self.sqrt_1m_alphas_cumprod.to(labels.device)[labels.long()]
    return -output / bcast(std, output)

  def scale_and_sigma(self, t):
    log_mean_coeff = self._log_mean_coeff(t)
    return torch.exp(log_mean_coeff), torch.sqrt(torch.expm1(-2. * log_mean_coeff))

  def sigma_inverse(self, sigma):
    # sigma^2 = 1 / s^2 - 1, so -log s = log(1 + sigma^2) / 2.
    return self._time_from_neg_log_mean(0.5 * torch.log1p(sigma ** 2))


class subVPSDE(_LinearBetaSDE):
  """Sub-VP SDE (paper, Eq. 11): the VP drift with a diffusion discounted by 1 - exp(-2 int beta)."""

  def sde(self, x, t):
    beta_t = self._beta(t)
    discount = 1. - _exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
    return bcast(-0.5 * beta_t, x) * x, _sqrt(beta_t * discount)

  def _std(self, log_mean_coeff):
    return 1 - _exp(2. * log_mean_coeff)  # the variance of sub-VP is std**2: no sqrt here

  def noise_label(self, t, continuous):
    return t * 999  # sub-VP models are always continuous (as in score_sde_pytorch)

  def output_to_score(self, output, t, labels, continuous):
    return self._continuous_score(output, t)

  def scale_and_sigma(self, t):
    # std / s = 1 / s - s = 2 sinh(-log s)
    log_mean_coeff = self._log_mean_coeff(t)
    return torch.exp(log_mean_coeff), 2 * torch.sinh(-log_mean_coeff)

  def sigma_inverse(self, sigma):
    return self._time_from_neg_log_mean(torch.asinh(sigma / 2))


class VESDE(SDE):
  """Variance-exploding SDE (SMLD's continuous limit): sigma(t) = sigma_min (sigma_max/sigma_min)^t."""

  float_time = True

  def __init__(self, sigma_min=0.01, sigma_max=50, N=1000):
    super().__init__(N)
    self.sigma_min = sigma_min
    self.sigma_max = sigma_max
    self.discrete_sigmas = torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), N))
    # g(t) / sigma(t) = sqrt(2 log(sigma_max / sigma_min)), rounded to float32 as the reference's
    # tensor is; a Python float here spares the samplers a tensor construction per evaluation.
    self._diffusion_per_sigma = float(torch.sqrt(torch.tensor(
      2 * (np.log(sigma_max) - np.log(sigma_min)), dtype=torch.float32)))

  @property
  def T(self):
    return 1

  def sde(self, x, t):
    # sigma(t) g / sigma with the two constants folded: one op fewer per sampler evaluation.
    return torch.zeros_like(x), (
      (self.sigma_max / self.sigma_min) ** t * (self.sigma_min * self._diffusion_per_sigma))

  def _sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def marginal_prob(self, x, t):
    return x, self._sigma(t)

  def prior_sampling(self, shape, generator=None, device=None):
    return randn(shape, generator, device) * self.sigma_max

  def prior_logp(self, z):
    return _standard_normal_logp(z, var=self.sigma_max ** 2)

  def discretize(self, x, t):
    """SMLD's chain: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z."""
    timestep = (t * (self.N - 1) / self.T).long()
    sigmas = self.discrete_sigmas.to(t.device)
    sigma = sigmas[timestep]
    adjacent_sigma = torch.where(timestep == 0, torch.zeros_like(t),
                                 sigmas[(timestep - 1).clamp(min=0)])
    return torch.zeros_like(x), torch.sqrt(sigma ** 2 - adjacent_sigma ** 2)

  def noise_label(self, t, continuous):
    # Continuous models see sigma(t); discrete NCSN models the index of the reversed
    # sigma ladder (index 0 is the largest sigma).
    if continuous:
      return self._sigma(t)
    if not torch.is_tensor(t):
      return round((self.T - t) * (self.N - 1))  # both round half to even
    return torch.round((self.T - t) * (self.N - 1)).long()

  def output_to_score(self, output, t, labels, continuous):
    return output  # NCSN-style networks output the score directly

  def scale_and_sigma(self, t):
    return torch.ones_like(t), self._sigma(t)

  def sigma_inverse(self, sigma):
    return torch.log(sigma / self.sigma_min) / np.log(self.sigma_max / self.sigma_min)


_SDES = {'vesde': (VESDE, 1e-5), 'vpsde': (VPSDE, 1e-3), 'subvpsde': (subVPSDE, 1e-3)}


def get_sde(config):
  """Build the forward SDE named by `config.training.sde` and its sampling eps.

  Returns:
    (sde, sampling_eps): the smallest time used by samplers (1e-5 for VE, 1e-3 for VP/sub-VP,
    as in the paper's code).
  """
  name = config.training.sde.lower()
  if name not in _SDES:
    raise ValueError(f'Unknown SDE {config.training.sde!r} in config.training.sde. '
                     f'Known SDEs: {", ".join(sorted(_SDES))}.')
  cls, eps = _SDES[name]
  if cls is VESDE:
    sde = VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                N=config.model.num_scales)
  else:
    sde = cls(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
              N=config.model.num_scales)
  return sde, eps
