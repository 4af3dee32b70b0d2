"""Few-step samplers for the probability-flow ODE of any of our SDEs.

- EDM's 2nd-order Heun sampler, deterministic or stochastic ("churn"), Karras et al. 2022, Alg. 1-2.
- DPM-Solver (noise prediction) and DPM-Solver++ (data prediction), orders 1-3, single-step and
  multistep, Lu et al. 2022a (Alg. 1-3) and 2022b (Alg. 1-2).

Every SDE here has Gaussian marginals x_t = s(t) (x_0 + sigma(t) z) (`sde.scale_and_sigma`), so
in y = x / s the probability-flow ODE of VE, VP and sub-VP is the same equation:

    dy / dsigma = eps(y, sigma) = (y - D(y; sigma)) / sigma,

with D the denoiser (Tweedie) and eps = -std * score. Both families are written once, in y and
sigma; DPM-Solver's lambda is -log sigma and its alpha is 1 in these variables. The score network
is always called at x = s(t) y and t = sde.sigma_inverse(sigma). UniPC (unipc.py) shares them.

`budget_settings` holds what `config.sampling.num_steps` alone selects for dpm_solver and unipc
(docs/few_step_sampling.md); `settings_from_config` merges it with the keys a config sets and a
fitted ladder (`sampling.step_ladder`, scripts/optimize_ladder.py).
"""
import json
import math

import torch
from tqdm.auto import tqdm

import sde_lib
from models import utils as mutils

SCHEDULES = ('edm', 'logsnr', 'time_uniform', 'time_quadratic')


def check_option(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'Unknown {name} {value!r}; choose one of {", ".join(map(str, allowed))}.')


class ScaledODE:
  """A score seen as eps(y, sigma) and D(y, sigma) in EDM's scaled variables.

  Args:
    score_fn: a `models.utils.ScoreModel`, or any (x, t) -> score (wrapped in one).
    sde: the forward SDE (scale_and_sigma / sigma_inverse).
    batch_size, device: of the time vectors the network is called with.
  `nfe` is the ScoreModel's evaluations since this object was built.
  """

  def __init__(self, score_fn, sde, batch_size, device):
    self.score_model = mutils.ScoreModel.of_score_fn(sde, score_fn)
    self.sde = sde
    self.batch_size, self.device = batch_size, device
    self._start = self.score_model.nfe

  @property
  def nfe(self):
    return self.score_model.nfe - self._start

  def time(self, sigma):
    """t(sigma) as a (B,) float32 tensor on the device."""
    t = self.sde.sigma_inverse(torch.as_tensor(float(sigma), dtype=torch.float64))
    return t.to(torch.float32).expand(self.batch_size).to(self.device)

  def eps(self, y, sigma):
    """Noise prediction eps = -s sigma score(s y, t(sigma)), shape y.shape: the ScoreModel's, with
    the marginal std s(t) sigma of the scaled variables (not `sde.marginal_prob`'s formula)."""
    t = self.time(sigma)
    s = self.sde.scale_and_sigma(t)[0].reshape((-1,) + (1,) * (y.ndim - 1))
    return self.score_model.noise(s * y, t, std=float(sigma) * s)

  def denoise(self, y, sigma):
    """Data prediction D(y; sigma) = y - sigma eps, in y (ScoreModel.denoised's Tweedie formula
    in x rounds differently)."""
    return y - float(sigma) * self.eps(y, sigma)

  def scale(self, t):
    return float(self.sde.scale_and_sigma(torch.tensor(float(t), dtype=torch.float64))[0])


def get_sigma_schedule(sde, num_points, eps, schedule='edm', rho=7.):
  """Decreasing noise levels sigma_0 = sigma(T) > ... > sigma_{n-1} = sigma(eps), float64 (n,).

  Args:
    schedule: 'edm' (EDM Eq. 5: uniform in sigma^(1/rho)), 'logsnr' (uniform in log sigma, i.e.
      DPM-Solver's logSNR-uniform; VE's own geometric ladder), 'time_uniform' (uniform in t, the
      PC and DDPM choice), 'time_quadratic' (DPM-Solver's, uniform in sqrt(t)).
  """
  check_option('schedule', schedule, SCHEDULES)
  if num_points < 2:
    raise ValueError(f'A sigma schedule needs at least 2 points, got {num_points}.')
  ends = torch.tensor([sde.T, eps], dtype=torch.float64)
  sigma_max, sigma_min = sde.scale_and_sigma(ends)[1].tolist()
  u = torch.linspace(0, 1, num_points, dtype=torch.float64)
  if schedule == 'edm':
    return (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  if schedule == 'logsnr':
    return torch.exp(math.log(sigma_max) + u * (math.log(sigma_min) - math.log(sigma_max)))
  if schedule == 'time_uniform':
    t = sde.T + u * (eps - sde.T)
  else:
    t = (math.sqrt(sde.T) + u * (math.sqrt(eps) - math.sqrt(sde.T))) ** 2
  return sde.scale_and_sigma(t)[1]


def check_ladder(sde, sigmas, num_levels):
  """A given ladder (e.g. scripts/optimize_ladder.py's) as floats, and the time t of its last
  level: it must have `num_levels` decreasing levels, the first sigma(T) (where the prior is)."""
  sigmas = [float(v) for v in sigmas]
  if len(sigmas) != num_levels:
    raise ValueError(f'The ladder has {len(sigmas)} noise levels; this run needs {num_levels}.')
  if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] <= 0:
    raise ValueError(f'A ladder must decrease and stay positive: {sigmas}.')
  sigma_max = float(sde.scale_and_sigma(torch.tensor(float(sde.T), dtype=torch.float64))[1])
  if not math.isclose(sigmas[0], sigma_max, rel_tol=1e-6):
    raise ValueError(f'A ladder starts at sigma(T) = {sigma_max:.6g} of this SDE, not {sigmas[0]:.6g}.')
  return sigmas, float(sde.sigma_inverse(torch.tensor(sigmas[-1], dtype=torch.float64)))


def ladder(sde, num_levels, eps, schedule, sigmas=None):
  """(ladder floats, time of its last level): `schedule`'s to eps, or the given one checked."""
  if sigmas is None:
    return get_sigma_schedule(sde, num_levels, eps, schedule).tolist(), eps
  return check_ladder(sde, sigmas, num_levels)


def initial_y(sde, shape, ode, z, generator):
  x = sde_lib.prior_draw(sde, shape, ode.device, generator) if z is None else z
  return x.to(ode.device) / ode.scale(sde.T)


def heun_sample(score_fn, sde, shape, num_steps=18, eps=1e-3, schedule='edm', rho=7.,
                churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1., to_zero=True, z=None,
                generator=None, device='cpu', progress=False):
  """EDM's Heun sampler (Karras et al. 2022, Alg. 2; Alg. 1 when churn = 0).

  Args:
    score_fn: a `models.utils.ScoreModel`, or any (x (B, ...), t (B,)) -> score (one call is one
      evaluation).
    sde: forward SDE (needs scale_and_sigma / sigma_inverse).
    shape: (B, ...) of the samples.
    num_steps: noise levels from sigma(T) to sigma(eps); the last step to 0 (if `to_zero`) is an
      Euler step, so NFE = 2 num_steps - 1 (2 num_steps - 2 without `to_zero`).
    churn, s_tmin, s_tmax, s_noise: EDM's stochasticity (S_churn etc.); 0 churn is deterministic.
      The raised noise level is capped at sigma(T), so the first step adds no noise.
    to_zero: finish at sigma = 0 (t = 0), returning a denoised sample; else stop at t = eps.
    z: initial noise x(T) (B, ...) instead of a prior draw.
    generator: torch.Generator, or a list of B of them (example b's noise from generator b).
  Returns:
    (x (B, ...), nfe).
  """
  ode = ScaledODE(score_fn, sde, shape[0], device)
  sigmas = get_sigma_schedule(sde, num_steps, eps, schedule, rho).tolist()
  if to_zero:
    sigmas.append(0.)
  y = initial_y(sde, shape, ode, z, generator)
  gamma_max = min(churn / num_steps, math.sqrt(2) - 1)
  for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc='heun'):
    sigma, sigma_next = sigmas[i], sigmas[i + 1]
    gamma = gamma_max if s_tmin <= sigma <= s_tmax else 0.
    # Never above sigma(T): past it t(sigma) > T, outside what the network was trained on
    # (discrete-time models' labels leave their table there: negative for VE, > N - 1 for VP).
    sigma_hat = min(sigma * (1 + gamma), sigmas[0])
    if gamma > 0:  # raise the noise level to sigma_hat with fresh noise
      noise = sde_lib.randn(y.shape, generator, device=y.device)
      y = y + math.sqrt(sigma_hat ** 2 - sigma ** 2) * s_noise * noise
    d = ode.eps(y, sigma_hat)
    y_next = y + (sigma_next - sigma_hat) * d
    if sigma_next > 0:  # trapezoidal correction
      y_next = y + (sigma_next - sigma_hat) * 0.5 * (d + ode.eps(y_next, sigma_next))
    y = y_next
  return y * ode.scale(0. if to_zero else eps), ode.nfe


# --- DPM-Solver updates in y (alpha = 1, sigma), h = log(sigma_s / sigma_t) > 0. ---
# Noise prediction ('dpmsolver') keeps eps; data prediction ('dpmsolver++') keeps D.

def _first_order(y, sig_s, sig_t, out, plus):
  if plus:
    return (sig_t / sig_s) * y + (1 - sig_t / sig_s) * out
  return y - (sig_s - sig_t) * out


def _singlestep(ode, y, sig_s, sig_t, order, plus):
  """One DPM-Solver-k step from sig_s to sig_t (Lu et al. 2022a Alg. 1 / 2022b Alg. 1)."""
  f = ode.denoise if plus else ode.eps
  out_s = f(y, sig_s)
  if order == 1:
    return _first_order(y, sig_s, sig_t, out_s, plus)
  h = math.log(sig_s / sig_t)
  r1, r2 = (0.5, None) if order == 2 else (1 / 3, 2 / 3)
  sig_1 = sig_s * math.exp(-r1 * h)
  u1 = _first_order(y, sig_s, sig_1, out_s, plus)
  d1 = f(u1, sig_1) - out_s
  if plus:
    phi = -math.expm1(-h)  # 1 - e^{-h}
    if order == 2:
      return (sig_t / sig_s) * y + phi * out_s + phi / (2 * r1) * d1
    sig_2 = sig_s * math.exp(-r2 * h)
    phi_2 = -math.expm1(-r2 * h)
    u2 = (sig_2 / sig_s) * y + phi_2 * out_s + r2 / r1 * (1 - phi_2 / (r2 * h)) * d1
    d2 = f(u2, sig_2) - out_s
    return (sig_t / sig_s) * y + phi * out_s + (1 / r2) * (1 - phi / h) * d2
  phi = sig_t * math.expm1(h)  # = sig_s - sig_t
  if order == 2:
    return y - phi * out_s - phi / (2 * r1) * d1
  sig_2 = sig_s * math.exp(-r2 * h)
  u2 = y - sig_2 * math.expm1(r2 * h) * out_s - sig_2 * r2 / r1 * (
    math.expm1(r2 * h) / (r2 * h) - 1) * d1
  d2 = f(u2, sig_2) - out_s
  return y - phi * out_s - sig_t / r2 * (math.expm1(h) / h - 1) * d2


def _multistep(y, sigs, outs, order, plus):
  """One multistep update to sigs[-1] from the last `order` outputs (Lu et al. 2022b Alg. 2)."""
  sig_s, sig_t = sigs[-2], sigs[-1]
  out_0 = outs[-1]
  if order == 1:
    return _first_order(y, sig_s, sig_t, out_0, plus)
  h = math.log(sig_s / sig_t)
  r0 = math.log(sigs[-3] / sig_s) / h
  d1_0 = (out_0 - outs[-2]) / r0
  if order == 2:
    d1, d2 = d1_0, None
  else:
    r1 = math.log(sigs[-4] / sigs[-3]) / h
    d1_1 = (outs[-2] - outs[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    # d2 ~ h^2 D'', which the h^2 phi_3 coefficients below expect. The official DPM-Solver code
    # (and diffusers) omit the 2, i.e. h^2 D'' / 2: that halves the 2nd-derivative term and
    # leaves their 3rd-order multistep at 2nd order (flow-map error 4.1-5.0x smaller per halving
    # of the step; 13-16x with the 2, tests/test_fast_sampling.py).
    d2 = 2 * (d1_0 - d1_1) / (r0 + r1)
  if plus:
    phi = -math.expm1(-h)
    y_t = (sig_t / sig_s) * y + phi * out_0
    if order == 2:
      return y_t + 0.5 * phi * d1
    return y_t + (1 - phi / h) * d1 - ((h - phi) / h ** 2 - 0.5) * d2
  phi = math.expm1(h)
  y_t = y - sig_t * phi * out_0
  if order == 2:
    return y_t - 0.5 * sig_t * phi * d1
  return y_t - sig_t * (phi / h - 1) * d1 - sig_t * ((phi - h) / h ** 2 - 0.5) * d2


def singlestep_orders(nfe, order):
  """Per-step orders that spend exactly `nfe` evaluations (DPM-Solver's fast version)."""
  if order == 1:
    return [1] * nfe
  if order == 2:
    return [2] * (nfe // 2) + [1] * (nfe % 2)
  k = nfe // 3 + 1
  return {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]


def dpm_solver_sample(score_fn, sde, shape, num_steps=18, order=3, method='singlestep',
                      algorithm='dpmsolver++', schedule='logsnr', eps=1e-3, denoise_to_zero=False,
                      lower_order_final=True, sigmas=None, z=None, generator=None,
                      device='cpu', progress=False):
  """DPM-Solver / DPM-Solver++ on the probability-flow ODE, from t = T to t = eps.

  Args:
    num_steps: the number of network evaluations (multistep: steps; singlestep: the NFE budget,
      split into steps of order `order` as DPM-Solver does).
    order: 1, 2 or 3.
    method: 'multistep' or 'singlestep'.
    algorithm: 'dpmsolver' (noise prediction) or 'dpmsolver++' (data prediction).
    schedule: see `get_sigma_schedule`; 'logsnr' is DPM-Solver's recommended choice.
    denoise_to_zero: one more evaluation returning D(y; sigma(eps)) (the sample at t = 0).
    lower_order_final: use lower orders for the last steps when num_steps < 15 (stabler).
    sigmas: a ladder of noise levels from sigma(T) down to use instead of `schedule`'s (steps + 1
      levels; `check_ladder`), e.g. one from scripts/optimize_ladder.py.
  Returns:
    (x (B, ...), nfe).
  """
  check_option('order', order, (1, 2, 3))
  check_option('method', method, ('multistep', 'singlestep'))
  check_option('algorithm', algorithm, ('dpmsolver', 'dpmsolver++'))
  plus = algorithm == 'dpmsolver++'
  ode = ScaledODE(score_fn, sde, shape[0], device)
  y = initial_y(sde, shape, ode, z, generator)
  if method == 'singlestep':
    orders = singlestep_orders(num_steps, order)
    sigmas, t_end = ladder(sde, len(orders) + 1, eps, schedule, sigmas)
    for i in tqdm(range(len(orders)), disable=not progress, desc='dpm-solver'):
      y = _singlestep(ode, y, sigmas[i], sigmas[i + 1], orders[i], plus)
  else:
    sigmas, t_end = ladder(sde, num_steps + 1, eps, schedule, sigmas)
    f = ode.denoise if plus else ode.eps
    outs = []
    for i in tqdm(range(num_steps), disable=not progress, desc='dpm-solver'):
      outs = (outs + [f(y, sigmas[i])])[-order:]
      step_order = min(order, i + 1)
      if lower_order_final and num_steps < 15:
        step_order = min(step_order, num_steps - i)
      y = _multistep(y, sigmas[:i + 2], outs, step_order, plus)
  if denoise_to_zero:
    return ode.denoise(y, sigmas[-1]) * ode.scale(0.), ode.nfe
  return y * ode.scale(t_end), ode.nfe


def sampler_from(sample_fn, sde, shape, inverse_scaler, continuous, device, **kwargs):
  def sampler(model, z=None, generator=None):
    """Draw a batch with `model` (the network or a `models.utils.ScoreModel`): returns
    (inverse_scaler(x) (B, C, H, W), number of network evaluations)."""
    score_model = mutils.ScoreModel.of(sde, model, continuous=continuous)
    with torch.no_grad():
      x, nfe = sample_fn(score_model, sde, shape, z=z, generator=generator, device=device,
                         **kwargs)
    return inverse_scaler(x), nfe

  return sampler


def get_heun_sampler(sde, shape, inverse_scaler, num_steps=18, eps=1e-3, continuous=True,
                     device=None, **kwargs):
  """`sampler(model, z=None) -> (samples, nfe)` running `heun_sample` (kwargs go to it)."""
  device = device or mutils.default_device()
  return sampler_from(heun_sample, sde, shape, inverse_scaler, continuous, device,
                       num_steps=num_steps, eps=eps, **kwargs)


def get_dpm_solver_sampler(sde, shape, inverse_scaler, num_steps=18, order=3, eps=1e-3,
                           continuous=True, device=None, **kwargs):
  """`sampler(model, z=None) -> (samples, nfe)` running `dpm_solver_sample` (kwargs go to it)."""
  device = device or mutils.default_device()
  return sampler_from(dpm_solver_sample, sde, shape, inverse_scaler, continuous, device,
                       num_steps=num_steps, order=order, eps=eps, **kwargs)


def heun_from_config(config, sde, shape, inverse_scaler, eps):
  """`config.sampling.method = 'heun'`: num_steps noise levels; optional `churn`, `heun_schedule`
  ('edm', EDM's rho ladder; 'logsnr' needs fewer levels on long sigma ranges, see
  bench/heun_step_analysis.py) and `heun_rho` (7)."""
  s = config.sampling
  return get_heun_sampler(sde, shape, inverse_scaler, num_steps=s.num_steps, eps=eps,
                          continuous=config.training.continuous, device=config.device,
                          churn=s.churn, schedule=s.heun_schedule,
                          rho=s.heun_rho, progress=s.progress)


# --- What `sampling.num_steps` alone selects ---------------------------------------------------

# The lowest noise level of the ladders the budget picks: VE's sigma_min and VP's sigma(1e-3)
# are 0.01, while sub-VP's sigma(1e-3) = 1e-4 would put a third of a logSNR-uniform ladder below
# 0.01, where the ODE of data on pixel scales barely moves (docs/few_step_sampling.md).
FINAL_SIGMA = 0.01
# DPM-Solver++ 2M (8-19 evaluations) under VP / sub-VP ends its ladder at 0.005 instead: its last
# long step narrows fine modes (std 0.05-0.1) by 4-8 % when it ends at 0.01, 1-5 % at 0.005,
# with wide data within 3 % either way (docs/few_step_sampling.md). VE stops at sigma_min.
DPM2_FINAL_SIGMA = 0.005
# The smallest time continuous networks are trained at (losses.get_sde_loss_fn's eps): a ladder
# may end below the sampler's eps (1e-3 under VP) down to it, but a discrete network is not
# asked below eps, the level of its first timestep.
CONTINUOUS_TRAINING_EPS = 1e-5
# dpm_solver's settings before the budget chose them: a config that sets any of order /
# dpm_method / dpm_schedule, and not the newer denoise_to_zero, gets these for those it leaves
# None, and samples as before.
DPM_LEGACY = dict(order=3, method='singlestep', schedule='logsnr', denoise_to_zero=False)
LADDER_KEYS = ('sampler', 'nfe', 'order', 'method', 'variant', 'denoise_to_zero', 'sigmas')


def budget_settings(sampler, sde, nfe):
  """The settings of 'dpm_solver' / 'unipc' at `nfe` evaluations when the config leaves them
  None: dict of order, method, schedule (None: logSNR-uniform down to max(sigma(eps),
  final_sigma)), denoise_to_zero, variant, final_sigma. From the exact-score measurements in
  docs/few_step_sampling.md: multistep order 3 below 8 evaluations, order 2 from 8 (order 3
  widens a Gaussian of std 0.5 by 10-20 % at 8-12); the final step at 6 under VP / sub-VP and,
  for UniPC, from 12; DPM-Solver's order 2 ends at DPM2_FINAL_SIGMA under VP / sub-VP;
  dpm_solver keeps its former single-step order 3 from 20 (at the floor)."""
  if sampler == 'dpm_solver' and nfe >= 20:
    return dict(DPM_LEGACY, variant=None, final_sigma=FINAL_SIGMA)
  final = (nfe == 6 and not isinstance(sde, sde_lib.VESDE)) or (sampler == 'unipc' and nfe >= 12)
  order = 3 if nfe < 8 else 2
  low = (sampler == 'dpm_solver' and order == 2 and not isinstance(sde, sde_lib.VESDE))
  return dict(order=order, method='multistep', schedule=None, denoise_to_zero=final,
              variant='bh2' if sampler == 'unipc' else None,
              final_sigma=DPM2_FINAL_SIGMA if low else FINAL_SIGMA)


def read_ladder(path):
  """A ladder JSON of scripts/optimize_ladder.py: dict with LADDER_KEYS (sigmas: the noise levels
  from sigma(T) down, one more than the solver's steps)."""
  with open(path) as f:
    ladder = json.load(f)
  missing = [k for k in LADDER_KEYS if k not in ladder]
  if missing:
    raise ValueError(f'{path} is no ladder of scripts/optimize_ladder.py: it lacks {missing}.')
  return ladder


def settings_from_config(config, sampler, sde):
  """(settings, ladder levels or None) of config.sampling for 'dpm_solver' / 'unipc': the keys it
  sets, then a step_ladder's, then `budget_settings` (dpm_solver: `DPM_LEGACY` where a config of
  before sets one of them). num_steps must be the ladder's evaluations."""
  s = config.sampling
  given = dict(order=s.order, method=s.dpm_method, schedule=s.dpm_schedule,
               denoise_to_zero=s.denoise_to_zero, variant=s.unipc_variant)
  base, sigmas = budget_settings(sampler, sde, s.num_steps), None
  if s.step_ladder:
    ladder = read_ladder(s.step_ladder)
    if (ladder['sampler'], ladder['nfe']) != (sampler, s.num_steps):
      raise ValueError(f'{s.step_ladder} is a ladder for {ladder["sampler"]} at {ladder["nfe"]} '
                       f'evaluations, not {sampler} at num_steps = {s.num_steps}.')
    base = {k: ladder[k] for k in ('order', 'method', 'variant', 'denoise_to_zero')}
    base['schedule'], sigmas = None, ladder['sigmas']
  elif (sampler == 'dpm_solver' and given['denoise_to_zero'] is None
        and any(given[k] is not None for k in ('order', 'method', 'schedule'))):
    base = dict(DPM_LEGACY, variant=None)
  settings = {k: base[k] if v is None else v for k, v in given.items()}
  # The lowered end belongs to the budget's own DPM-Solver-2M choice, not to orders set by hand.
  budget_choice = all(settings[k] == base[k] for k in given) and 'final_sigma' in base
  settings['final_sigma'] = base['final_sigma'] if budget_choice else FINAL_SIGMA
  if settings['denoise_to_zero'] and s.num_steps < 2:
    raise ValueError('A final denoising step needs num_steps >= 2 evaluations.')
  return settings, sigmas


def solver_arguments(settings, sigmas, sde, eps, num_steps, continuous=True):
  """Keyword arguments of dpm_solver_sample / unipc_sample for `settings_from_config`'s result:
  the final step is one of the num_steps evaluations; schedule None is logSNR-uniform down to
  max(sigma(eps), final_sigma) (the sample is the one at that level without the final step);
  a final_sigma below FINAL_SIGMA may go below eps, to CONTINUOUS_TRAINING_EPS, for continuous
  networks."""
  final = bool(settings['denoise_to_zero'])
  schedule = settings['schedule'] or 'logsnr'
  if settings['schedule'] is None and sigmas is None:
    final_sigma = settings['final_sigma']
    t_final = float(sde.sigma_inverse(torch.tensor(final_sigma, dtype=torch.float64)))
    lowest = CONTINUOUS_TRAINING_EPS if continuous and final_sigma < FINAL_SIGMA else eps
    eps = max(lowest, t_final)
  return dict(num_steps=num_steps - final, order=settings['order'], schedule=schedule, eps=eps,
              denoise_to_zero=final, sigmas=sigmas)


def dpm_solver_from_config(config, sde, shape, inverse_scaler, eps):
  """`config.sampling.method = 'dpm_solver'`: num_steps evaluations; `order`, `dpm_method`,
  `dpm_schedule`, `denoise_to_zero` and `step_ladder` left unset are chosen for the budget
  (`settings_from_config`); `dpm_algorithm` ('dpmsolver++')."""
  s = config.sampling
  settings, sigmas = settings_from_config(config, 'dpm_solver', sde)
  return get_dpm_solver_sampler(sde, shape, inverse_scaler,
                                continuous=config.training.continuous, device=config.device,
                                method=settings['method'], algorithm=s.dpm_algorithm,
                                progress=s.progress,
                                **solver_arguments(settings, sigmas, sde, eps, s.num_steps,
                                                   config.training.continuous))
