"""Samplers of Song et al. (2021): predictor-corrector (Alg. 1-3, App. G) and the probability-flow
ODE (Eq. 13, App. D), with the score_sde_pytorch entry points `get_pc_sampler`, `get_ode_sampler`
and `get_sampling_fn(config, ...)`.

Every sampler returns `(samples, nfe)`, nfe being the number of network evaluations actually made.
Predictors and correctors register by name (`get_predictor('reverse_diffusion')`); each has
`update_fn(x, t) -> (x, x_mean)` with x (B, C, H, W) and t (B,).

Quick start::

  sde, eps = sde_lib.get_sde(config)
  sampler = get_pc_sampler(sde, (8, 3, 32, 32), ReverseDiffusionPredictor, LangevinCorrector,
                           inverse_scaler, snr=0.16, continuous=True, eps=eps)
  samples, nfe = sampler(score_model)

Encode/decode: `likelihood.get_likelihood_fn(...)(model, data)` returns the latent z = x(T) of the
probability-flow ODE started at the data; `get_ode_sampler(...)(model, z=z)` integrates the same
ODE back from T and returns the data (inverse-scaled), up to the solvers' tolerances.
"""
import abc
import logging

import torch
import tqdm

import fast_sampling
import ode_solvers
import precision as precision_lib
import sde_lib
from models import utils as mutils
from models.utils import default_device
from registry import Registry
from sde_lib import bcast

PREDICTORS = Registry('predictor')
CORRECTORS = Registry('corrector')
SAMPLERS = Registry('sampler')  # config.sampling.method -> builder(config, sde, shape, scaler, eps)
register_predictor = PREDICTORS.register
register_corrector = CORRECTORS.register
register_sampler = SAMPLERS.register


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
    score_fn: (x, t) -> score, e.g. from `models.utils.get_score_fn`.
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


class _CountingScore:
  """Wraps a score function and counts its calls: one call is one network evaluation."""

  def __init__(self, score_fn):
    self.score_fn = score_fn
    self.count = 0

  def __call__(self, x, t):
    self.count += 1
    return self.score_fn(x, t)


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=False, denoise=True, eps=1e-3, device=None,
                   progress=False):
  """Predictor-corrector sampler (Alg. 1): at each of N times t_i = linspace(T, eps, N),
  `n_steps` corrector steps, then one predictor step.

  Args:
    sde: the forward `sde_lib.SDE`; its N sets the number of steps.
    shape: (B, C, H, W) of the batch to draw.
    predictor, corrector: Predictor / Corrector subclasses (or None for none).
    inverse_scaler: maps model space back to data space (applied to the output).
    snr: corrector signal-to-noise ratio.
    n_steps: corrector steps per predictor step.
    probability_flow: predictors step the probability-flow ODE.
    continuous: the network was trained on continuous time (sets its labels).
    denoise: return the last step's noise-free x_mean.
    eps: the last time, > 0 for numerical stability.
    device: where to sample (default CUDA if available, else CPU).
    progress: show a tqdm progress bar.
  Returns:
    pc_sampler(model, generator=None) -> (samples (B, C, H, W), nfe). `generator`: a
    torch.Generator, or a list of B of them (example b's noise from generator b; see
    `LangevinCorrector` for its step size then).
  """
  predictor = NonePredictor if predictor is None else predictor
  corrector = NoneCorrector if corrector is None else corrector
  device = default_device() if device is None else device

  def pc_sampler(model, generator=None):
    """Draw `shape` samples with `model`; `generator` makes the noise explicit."""
    score_fn = _CountingScore(mutils.get_score_fn(sde, model, train=False, continuous=continuous))
    extra = {} if generator is None else {'generator': generator}
    predictor_obj = predictor(sde, score_fn, probability_flow, **extra)
    corrector_obj = corrector(sde, score_fn, snr, n_steps, **extra)
    with torch.no_grad():
      x = sde_lib.prior_draw(sde, shape, device, generator)
      timesteps = torch.linspace(sde.T, eps, sde.N, device=device)
      for i in tqdm.trange(sde.N, disable=not progress, desc='PC sampling'):
        vec_t = timesteps[i].expand(shape[0]).contiguous()
        x, x_mean = corrector_obj.update_fn(x, vec_t)
        x, x_mean = predictor_obj.update_fn(x, vec_t)
      return inverse_scaler(x_mean if denoise else x), score_fn.count

  return pc_sampler


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5,
                    method='RK45', eps=1e-3, device=None, num_steps=100, progress=False):
  """Probability-flow ODE sampler (Eq. 13), integrated from T to eps.

  Args:
    sde, shape, inverse_scaler: as in `get_pc_sampler`.
    denoise: finish with one noise-free reverse-diffusion step at eps (one more evaluation).
    rtol, atol: tolerances of the adaptive solvers.
    method: scipy's 'RK45' (the paper's; state on the host) or any of
      `ode_solvers.method_names()`: 'dopri5' (adaptive, on the device), 'euler', 'midpoint',
      'heun', 'rk4' (fixed steps).
    eps: the last time.
    device: default CUDA if available, else CPU.
    num_steps: steps of the fixed-step methods.
    progress: print the time reached every evaluation through a tqdm bar.
  Returns:
    ode_sampler(model, z=None, generator=None) -> (samples, nfe). Without z, x(T) is drawn from
    the prior (`generator`: one, or a list of B, as in `get_pc_sampler`); with z (e.g. from
    `likelihood_fn`), z is decoded. The adaptive methods choose one step sequence for the whole
    batch, so an example's result moves with its batch-mates within the tolerances.
  """
  ode_solvers.check_method(method)
  device = default_device() if device is None else device

  def ode_sampler(model, z=None, generator=None):
    score_fn = _CountingScore(mutils.get_score_fn(sde, model, train=False, continuous=True))
    rsde = sde.reverse(score_fn, probability_flow=True)
    bar = tqdm.tqdm(disable=not progress, desc='ODE sampling', unit='nfe')
    with torch.no_grad():
      x = sde_lib.prior_draw(sde, shape, device, generator) if z is None else z.to(device)
      batch = x.shape[0]

      def drift(t, y):
        if progress:
          bar.update(1)
          bar.set_postfix(t=f'{t:.4f}', refresh=False)
        # One float t for the batch: the SDE's coefficients then cost no tensor ops. The drift is
        # computed in float32, as the reference's (a float64 drift moves the VP parity sample by
        # 1.7e-5, the size of the tolerances, and saves one op only).
        return rsde.sde(y.float(), sde.batch_time(t, batch, y.device))[0].to(y.dtype)

      # Float64 state for the solver (as scipy's), float32 for the network.
      x, _ = ode_solvers.solve(drift, x.double(), sde.T, eps, method, rtol, atol, num_steps)
      x = x.float()
      bar.close()
      if denoise:
        vec_eps = torch.full((batch,), eps, device=x.device)
        _, x = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False,
                                         generator=generator).update_fn(x, vec_eps)
      return inverse_scaler(x), score_fn.count

  return ode_sampler


@register_sampler(name='ode')
def _ode_from_config(config, sde, shape, inverse_scaler, eps):
  sampling = config.sampling
  return get_ode_sampler(sde, shape, inverse_scaler, denoise=sampling.noise_removal,
                         rtol=sampling.get('ode_rtol', 1e-5), atol=sampling.get('ode_atol', 1e-5),
                         method=sampling.get('ode_method', 'RK45'), eps=eps, device=config.device,
                         num_steps=sampling.get('ode_num_steps', 100),
                         progress=sampling.get('progress', False))


@register_sampler(name='pc')
def _pc_from_config(config, sde, shape, inverse_scaler, eps):
  sampling = config.sampling
  return get_pc_sampler(sde, shape, get_predictor(sampling.predictor.lower()),
                        get_corrector(sampling.corrector.lower()), inverse_scaler,
                        snr=sampling.snr, n_steps=sampling.n_steps_each,
                        probability_flow=sampling.probability_flow,
                        continuous=config.training.continuous, denoise=sampling.noise_removal,
                        eps=eps, device=config.device, progress=sampling.get('progress', False))


# Few-step ODE samplers (fast_sampling.py): EDM's Heun and DPM-Solver.
register_sampler(fast_sampling.heun_from_config, name='heun')
register_sampler(fast_sampling.dpm_solver_from_config, name='dpm_solver')


def get_sampling_fn(config, sde, shape, inverse_scaler, eps, precision=None):
  """Build the sampler named by `config.sampling.method`: 'pc', 'ode', 'heun', 'dpm_solver'.

  Optional config.sampling keys of the ODE sampler: ode_method ('RK45'), ode_rtol, ode_atol
  (1e-5), ode_num_steps (100). The network runs in `precision` (default
  config.sampling.precision: 'fp32' | 'bf16' | 'fp16'), compiled if config.sampling.compile;
  the sampler's state and the SDE arithmetic stay float32 (`precision.sampling_model_fn`).
  Returns sampler(model, ...) -> (samples, nfe).
  """
  sampler = SAMPLERS.get(config.sampling.method.lower())(config, sde, shape, inverse_scaler, eps)
  low = (config.sampling.get('precision', 'fp32') if precision is None else precision) != 'fp32'
  ode_method = config.sampling.get('ode_method', 'RK45')
  if low and config.sampling.method.lower() == 'ode' and not ode_solvers.is_fixed_step(ode_method):
    # Step control then chases the network's rounding (a small network at 1e-5 took 572
    # evaluations in bf16 against 62 in fp32).
    rtol, atol = config.sampling.get('ode_rtol', 1e-5), config.sampling.get('ode_atol', 1e-5)
    if min(rtol, atol) < 1e-3:
      logging.warning('The adaptive ODE solver %s at rtol %g / atol %g with the network in reduced '
                      'precision spends evaluations on its rounding (bf16 ~4e-3): use tolerances '
                      'of 1e-3 or more, or a fixed-step ode_method.', ode_method, rtol, atol)
  prepare = precision_lib.sampling_model_fn(config, precision)
  if prepare is None:
    return sampler

  def prepared_sampler(model, *args, **kwargs):
    return sampler(prepare(model), *args, **kwargs)

  return prepared_sampler
