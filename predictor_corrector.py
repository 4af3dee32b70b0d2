"""Predictors and correctors of Song et al. (2021), the steps of the predictor-corrector samplers
(`sampling.pc_loop`): numerical solvers of the reverse-time SDE (App. E-G) and score-based MCMC
(Alg. 4-5), registered by name (`get_predictor('reverse_diffusion')`, `get_corrector('langevin')`;
also importable from `sampling`, as in score_sde_pytorch).

Each has `update_fn(x, t) -> (x, x_mean)` with x (B, C, H, W) and t (B,): the new state and the
same without its noise.
"""
import abc

import torch

import sde_lib
from registry import Registry
from sde_lib import bcast

PREDICTORS = Registry('predictor')
CORRECTORS = Registry('corrector')
register_predictor = PREDICTORS.register
register_corrector = CORRECTORS.register


def get_predictor(name):
  """The Predictor class registered as `name` ('euler_maruyama', 'reverse_diffusion', ...)."""
  return PREDICTORS.get(name)


def get_corrector(name):
  """The Corrector class registered as `name` ('langevin', 'ald', 'none')."""
  return CORRECTORS.get(name)


def _timestep(sde, t):
  """Index i of the discrete chain at time t: floor(t (N - 1) / T), as the reference."""
  return (t * (sde.N - 1) / sde.T).long()


class _Noise:
  """Standard normal noise like x, from `generator`: None (torch's global generator), one
  torch.Generator, or a list of B of them, row b drawn from generator b (`sde_lib.randn`).

  The noise is drawn on the generator's device and moved to x's: pass a generator on x's device
  to avoid a copy per step.
  """

  generator = None

  def noise_like(self, x):
    return sde_lib.randn(x.shape, self.generator, device=x.device, dtype=x.dtype)


class Predictor(_Noise, abc.ABC):
  """One step of a numerical solver of the reverse-time SDE, from t to t - 1/N.

  Args:
    sde: the forward `sde_lib.SDE`.
    score_fn: (x, t) -> score, e.g. a `models.utils.ScoreModel`.
    probability_flow: step the probability-flow ODE instead of the reverse SDE.
    generator: optional torch.Generator, or a list of one per example, for the noise (keyword
      only).
  """

  def __init__(self, sde, score_fn, probability_flow=False, *, generator=None):
    super().__init__()
    self.sde = sde
    self.rsde = sde.reverse(score_fn, probability_flow)
    self.score_fn = score_fn
    self.probability_flow = probability_flow
    self.generator = generator

  @abc.abstractmethod
  def update_fn(self, x, t):
    """One predictor step. Returns (x, x_mean): the new state and the same without its noise."""


class Corrector(_Noise, abc.ABC):
  """`n_steps` of score-based MCMC at fixed time t.

  Args:
    sde: the forward `sde_lib.SDE`.
    score_fn: (x, t) -> score.
    snr: signal-to-noise ratio r that sets the step size (Alg. 4-5).
    n_steps: MCMC steps per call.
    generator: optional torch.Generator, or a list of one per example, for the noise (keyword
      only).
  """

  def __init__(self, sde, score_fn, snr, n_steps, *, generator=None):
    super().__init__()
    self.sde = sde
    self.score_fn = score_fn
    self.snr = snr
    self.n_steps = n_steps
    self.generator = generator

  @abc.abstractmethod
  def update_fn(self, x, t):
    """`n_steps` corrector steps. Returns (x, x_mean)."""


@register_predictor(name='euler_maruyama')
class EulerMaruyamaPredictor(Predictor):
  """Euler-Maruyama on the reverse SDE: x - f dt + g sqrt(dt) z with dt = 1/N (Eq. 6)."""

  def update_fn(self, x, t):
    dt = -1. / self.rsde.N
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x + drift * dt
    if self.probability_flow:  # the ODE has no noise term
      return x_mean, x_mean
    x = x_mean + bcast(diffusion, x) * (-dt) ** 0.5 * self.noise_like(x)
    return x, x_mean


@register_predictor(name='reverse_diffusion')
class ReverseDiffusionPredictor(Predictor):
  """Reverse diffusion (Eq. 46): x_i = x_{i+1} - f_{i+1} + G_{i+1}^2 s + G_{i+1} z."""

  def update_fn(self, x, t):
    f, G = self.rsde.discretize(x, t)
    z = self.noise_like(x)
    x_mean = x - f
    return x_mean + bcast(G, x) * z, x_mean


def _ve_ancestral_step(predictor, x, t):
  """SMLD ancestral step (Eq. 47): x + (s_i^2 - s_{i-1}^2) score, noise std s_{i-1} sqrt(1 - s_{i-1}^2/s_i^2)."""
  timestep = _timestep(predictor.sde, t)
  sigmas = predictor.schedule('discrete_sigmas', t.device)
  sigma = sigmas[timestep]
  adjacent_sigma = torch.where(timestep == 0, torch.zeros_like(t), sigmas[(timestep - 1).clamp(min=0)])
  x_mean = x + predictor.score_fn(x, t) * bcast(sigma ** 2 - adjacent_sigma ** 2, x)
  std = torch.sqrt(adjacent_sigma ** 2 * (sigma ** 2 - adjacent_sigma ** 2) / sigma ** 2)
  return x_mean + bcast(std, x) * predictor.noise_like(x), x_mean


def _vp_ancestral_step(predictor, x, t):
  """DDPM ancestral step (Eq. 47): (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) z."""
  beta = predictor.schedule('discrete_betas', t.device)[_timestep(predictor.sde, t)]
  x_mean = (x + bcast(beta, x) * predictor.score_fn(x, t)) / bcast(torch.sqrt(1. - beta), x)
  return x_mean + bcast(torch.sqrt(beta), x) * predictor.noise_like(x), x_mean


# The one place where sampler update rules depend on the SDE's type (they use its discrete chain).
_ANCESTRAL_STEPS = {sde_lib.VESDE: _ve_ancestral_step, sde_lib.VPSDE: _vp_ancestral_step}
_LANGEVIN_ALPHAS = {  # alpha_i = 1 - beta_i of DDPM's chain scales the Langevin step (ones for VE)
  sde_lib.VESDE: lambda sde: torch.ones(sde.N),
  sde_lib.VPSDE: lambda sde: sde.alphas,
  # sub-VP shares VP's beta schedule (the reference reads a missing `alphas` attribute here).
  sde_lib.subVPSDE: lambda sde: 1. - torch.linspace(sde.beta_0 / sde.N, sde.beta_1 / sde.N, sde.N),
}


def _lookup(table, sde, what):
  if type(sde) not in table:
    raise NotImplementedError(f'{what} supports {", ".join(c.__name__ for c in table)}, '
                              f'not {type(sde).__name__}.')
  return table[type(sde)]


@register_predictor(name='ancestral_sampling')
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the discrete SMLD (VE) or DDPM (VP) chain; no probability flow."""

  def __init__(self, sde, score_fn, probability_flow=False, *, generator=None):
    super().__init__(sde, score_fn, probability_flow, generator=generator)
    self._step = _lookup(_ANCESTRAL_STEPS, sde, 'Ancestral sampling')
    if probability_flow:
      raise ValueError('Ancestral sampling has no probability-flow version; use '
                       'reverse_diffusion or euler_maruyama with probability_flow=True.')
    self._schedules = {}

  def schedule(self, name, device):
    """The SDE's discrete schedule `name` on `device`, copied once (no host copy per step)."""
    if (name, device) not in self._schedules:
      self._schedules[name, device] = getattr(self.sde, name).to(device)
    return self._schedules[name, device]

  def update_fn(self, x, t):
    return self._step(self, x, t)


@register_predictor(name='none')
class NonePredictor(Predictor):
  """No predictor (corrector-only sampling): returns (x, x)."""

  def __init__(self, sde, score_fn, probability_flow=False, *, generator=None):
    self.generator = generator

  def update_fn(self, x, t):
    return x, x


class _LangevinBase(Corrector):
  def __init__(self, sde, score_fn, snr, n_steps, *, generator=None):
    super().__init__(sde, score_fn, snr, n_steps, generator=generator)
    self.alphas = _lookup(_LANGEVIN_ALPHAS, sde, type(self).__name__)(sde)

  def _alpha(self, t):
    if self.alphas.device != t.device:  # copied once, not every step
      self.alphas = self.alphas.to(t.device)
    return self.alphas[_timestep(self.sde, t)]


@register_corrector(name='langevin')
class LangevinCorrector(_LangevinBase):
  """Langevin MCMC (Alg. 4-5): step eps = 2 alpha (r |z| / |s|)^2.

  With one generator (or none) |z| and |s| are averaged over the batch, as in the reference, so
  each example's step depends on its batch-mates. With a list of per-example generators each
  example gets its own step from its own norms, so that it depends only on its own seed.
  """

  def update_fn(self, x, t):
    alpha = self._alpha(t)
    per_example = isinstance(self.generator, (list, tuple))
    x_mean = x  # n_steps = 0: no correction
    for _ in range(self.n_steps):
      grad = self.score_fn(x, t)
      noise = self.noise_like(x)
      grad_norm = torch.linalg.vector_norm(grad.reshape(grad.shape[0], -1), dim=-1)
      noise_norm = torch.linalg.vector_norm(noise.reshape(noise.shape[0], -1), dim=-1)
      if not per_example:
        grad_norm, noise_norm = grad_norm.mean(), noise_norm.mean()
      step_size = (self.snr * noise_norm / grad_norm) ** 2 * 2 * alpha
      x_mean = x + bcast(step_size, x) * grad
      x = x_mean + bcast(torch.sqrt(step_size * 2), x) * noise
    return x, x_mean


@register_corrector(name='ald')
class AnnealedLangevinDynamics(_LangevinBase):
  """Annealed Langevin dynamics of NCSN (Song & Ermon 2019): step 2 alpha (r sigma_t)^2."""

  def update_fn(self, x, t):
    alpha = self._alpha(t)
    std = self.sde.marginal_prob(x, t)[1]
    step_size = (self.snr * std) ** 2 * 2 * alpha
    x_mean = x  # n_steps = 0: no correction
    for _ in range(self.n_steps):
      grad = self.score_fn(x, t)
      noise = self.noise_like(x)
      x_mean = x + bcast(step_size, x) * grad
      x = x_mean + bcast(torch.sqrt(step_size * 2), x) * noise
    return x, x_mean


@register_corrector(name='none')
class NoneCorrector(Corrector):
  """No corrector (predictor-only sampling): returns (x, x)."""

  def __init__(self, sde, score_fn, snr, n_steps, *, generator=None):
    self.generator = generator

  def update_fn(self, x, t):
    return x, x
