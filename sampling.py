"""Samplers of Song et al. (2021): predictor-corrector (Alg. 1-3, App. G) and the probability-flow
ODE (Eq. 13, App. D), with the score_sde_pytorch entry points `get_pc_sampler`, `get_ode_sampler`
and `get_sampling_fn(config, ...)`.

Every sampler takes the network or a `models.utils.ScoreModel` and returns `(samples, nfe)`, nfe
being the number of network evaluations actually made (the ScoreModel's count). Every PC sampler
here and in controllable_generation.py runs `pc_loop`. Predictors and correctors
(predictor_corrector.py, importable from here) register by name
(`get_predictor('reverse_diffusion')`); each has `update_fn(x, t) -> (x, x_mean)` with
x (B, C, H, W) and t (B,).

Quick start::

  sde, eps = sde_lib.get_sde(config)
  sampler = get_pc_sampler(sde, (8, 3, 32, 32), ReverseDiffusionPredictor, LangevinCorrector,
                           inverse_scaler, snr=0.16, continuous=True, eps=eps)
  samples, nfe = sampler(score_model)

Encode/decode: `likelihood.get_likelihood_fn(...)(model, data)` returns the latent z = x(T) of the
probability-flow ODE started at the data; `get_ode_sampler(...)(model, z=z)` integrates the same
ODE back from T and returns the data (inverse-scaled), up to the solvers' tolerances.
"""
import logging

import torch
import tqdm

import fast_sampling
import ode_solvers
import precision as precision_lib
import sde_lib
import unipc
from models import utils as mutils
from models.utils import default_device
# The steps, importable from here as in score_sde_pytorch.
from predictor_corrector import (  # noqa: F401
  CORRECTORS, PREDICTORS, AncestralSamplingPredictor, AnnealedLangevinDynamics, Corrector,
  EulerMaruyamaPredictor, LangevinCorrector, NoneCorrector, NonePredictor, Predictor,
  ReverseDiffusionPredictor, get_corrector, get_predictor, register_corrector, register_predictor)
from registry import Registry

SAMPLERS = Registry('sampler')  # config.sampling.method -> builder(config, sde, shape, scaler, eps)
register_sampler = SAMPLERS.register


def pc_loop(sde, score_fn, predictor, corrector, x, eps, *, snr, n_steps=1,
            probability_flow=False, generator=None, score_modifier=None, project=None,
            progress=False):
  """The predictor-corrector loop (Alg. 1) that every PC sampler runs: at each of N times
  t_i = linspace(T, eps, N), `n_steps` corrector steps, then one predictor step.

  Args:
    sde: the forward `sde_lib.SDE`; its N sets the number of steps.
    score_fn: (x, t) -> score, e.g. a `models.utils.ScoreModel`.
    predictor, corrector: Predictor / Corrector subclasses (or None for none).
    x: the start x(T), (B, C, H, W).
    eps: the last time.
    snr, n_steps, probability_flow: as in `get_pc_sampler`.
    generator: the noise's torch.Generator, or a list of B of them (None: torch's global one).
    score_modifier: (x, t) -> a term added to the score at every step (classifier guidance).
    project: (x, x_mean, t) -> (x, x_mean), applied after every corrector and every predictor
      step (imputation of known data); it may draw noise.
    progress: show a tqdm progress bar.
  Returns:
    (x, x_mean) after the last step, each (B, C, H, W): the sample and its noise-free mean.
  """
  if score_modifier is not None:
    unguided = score_fn
    score_fn = lambda y, t: unguided(y, t) + score_modifier(y, t)
  extra = {} if generator is None else {'generator': generator}
  predictor_obj = (NonePredictor if predictor is None else predictor)(
    sde, score_fn, probability_flow, **extra)
  corrector_obj = (NoneCorrector if corrector is None else corrector)(
    sde, score_fn, snr, n_steps, **extra)
  x_mean = x
  timesteps = torch.linspace(sde.T, eps, sde.N, device=x.device)
  for i in tqdm.trange(sde.N, disable=not progress, desc='PC sampling'):
    vec_t = timesteps[i].expand(x.shape[0]).contiguous()
    x, x_mean = corrector_obj.update_fn(x, vec_t)
    if project is not None:
      x, x_mean = project(x, x_mean, vec_t)
    x, x_mean = predictor_obj.update_fn(x, vec_t)
    if project is not None:
      x, x_mean = project(x, x_mean, vec_t)
  return x, x_mean


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                   probability_flow=False, continuous=False, denoise=True, eps=1e-3, device=None,
                   progress=False):
  """Predictor-corrector sampler (Alg. 1): at each of N times t_i = linspace(T, eps, N),
  `n_steps` corrector steps, then one predictor step (`pc_loop`).

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
    pc_sampler(model, generator=None) -> (samples (B, C, H, W), nfe). `model`: the network or a
    `models.utils.ScoreModel` (used as it is). `generator`: a torch.Generator, or a list of B of
    them (example b's noise from generator b; see `LangevinCorrector` for its step size then).
  """
  device = default_device() if device is None else device

  def pc_sampler(model, generator=None):
    """Draw `shape` samples with `model`; `generator` makes the noise explicit."""
    score_model = mutils.ScoreModel.of(sde, model, continuous=continuous)
    start = score_model.nfe
    with torch.no_grad():
      x = sde_lib.prior_draw(sde, shape, device, generator)
      x, x_mean = pc_loop(sde, score_model, predictor, corrector, x, eps, snr=snr,
                          n_steps=n_steps, probability_flow=probability_flow,
                          generator=generator, progress=progress)
      return inverse_scaler(x_mean if denoise else x), score_model.nfe - start

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
    ode_sampler(model, z=None, generator=None) -> (samples, nfe); `model` the network (called as
    continuous-time) or a `models.utils.ScoreModel`. Without z, x(T) is drawn from
    the prior (`generator`: one, or a list of B, as in `get_pc_sampler`); with z (e.g. from
    `likelihood_fn`), z is decoded. The adaptive methods choose one step sequence for the whole
    batch, so an example's result moves with its batch-mates within the tolerances.
  """
  ode_solvers.check_method(method)
  device = default_device() if device is None else device

  def ode_sampler(model, z=None, generator=None):
    score_model = mutils.ScoreModel.of(sde, model, continuous=True)
    start = score_model.nfe
    rsde = sde.reverse(score_model, probability_flow=True)
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
        _, x = ReverseDiffusionPredictor(sde, score_model, probability_flow=False,
                                         generator=generator).update_fn(x, vec_eps)
      return inverse_scaler(x), score_model.nfe - start

  return ode_sampler


@register_sampler(name='ode')
def _ode_from_config(config, sde, shape, inverse_scaler, eps):
  sampling = config.sampling
  return get_ode_sampler(sde, shape, inverse_scaler, denoise=sampling.noise_removal,
                         rtol=sampling.ode_rtol, atol=sampling.ode_atol,
                         method=sampling.ode_method, eps=eps, device=config.device,
                         num_steps=sampling.ode_num_steps,
                         progress=sampling.progress)


@register_sampler(name='pc')
def _pc_from_config(config, sde, shape, inverse_scaler, eps):
  sampling = config.sampling
  return get_pc_sampler(sde, shape, get_predictor(sampling.predictor.lower()),
                        get_corrector(sampling.corrector.lower()), inverse_scaler,
                        snr=sampling.snr, n_steps=sampling.n_steps_each,
                        probability_flow=sampling.probability_flow,
                        continuous=config.training.continuous, denoise=sampling.noise_removal,
                        eps=eps, device=config.device, progress=sampling.progress)


# Few-step ODE samplers (fast_sampling.py, unipc.py): EDM's Heun, DPM-Solver and UniPC.
register_sampler(fast_sampling.heun_from_config, name='heun')
register_sampler(fast_sampling.dpm_solver_from_config, name='dpm_solver')
register_sampler(unipc.unipc_from_config, name='unipc')


def get_sampling_fn(config, sde, shape, inverse_scaler, eps, precision=None):
  """Build the sampler named by `config.sampling.method`: 'pc', 'ode', 'heun', 'dpm_solver',
  'unipc' (the last two: `num_steps` network evaluations, their settings chosen for that budget
  unless set; docs/few_step_sampling.md).

  Optional config.sampling keys of the ODE sampler: ode_method ('RK45'), ode_rtol, ode_atol
  (1e-5), ode_num_steps (100). The network runs in `precision` (default
  config.sampling.precision: 'fp32' | 'bf16' | 'fp16'), compiled if config.sampling.compile;
  the sampler's state and the SDE arithmetic stay float32 (`precision.sampling_model_fn`).
  Returns sampler(model, ...) -> (samples, nfe); `model` may be a `models.utils.ScoreModel` only
  where nothing is to be prepared (fp32, not compiled, not channels_last).
  """
  sampler = SAMPLERS.get(config.sampling.method.lower())(config, sde, shape, inverse_scaler, eps)
  low = (config.sampling.precision if precision is None else precision) != 'fp32'
  ode_method = config.sampling.ode_method
  if low and config.sampling.method.lower() == 'ode' and not ode_solvers.is_fixed_step(ode_method):
    # Step control then chases the network's rounding (a small network at 1e-5 took 572
    # evaluations in bf16 against 62 in fp32).
    rtol, atol = config.sampling.ode_rtol, config.sampling.ode_atol
    if min(rtol, atol) < 1e-3:
      logging.warning('The adaptive ODE solver %s at rtol %g / atol %g with the network in reduced '
                      'precision spends evaluations on its rounding (bf16 ~4e-3): use tolerances '
                      'of 1e-3 or more, or a fixed-step ode_method.', ode_method, rtol, atol)
  prepare = precision_lib.sampling_model_fn(config, precision)
  if prepare is None:
    return sampler

  def prepared_sampler(model, *args, **kwargs):
    if isinstance(model, mutils.ScoreModel):  # it would call its network unprepared
      raise TypeError('This sampler prepares the network itself (config.sampling precision / '
                      'compile, channels_last): pass the network, not a ScoreModel.')
    return sampler(prepare(model), *args, **kwargs)

  return prepared_sampler
