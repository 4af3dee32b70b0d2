"""UniPC (Zhao et al. 2023): a unified predictor-corrector for the probability-flow ODE, multistep,
orders 1-3, in the data-prediction form, written in EDM's scaled variables as fast_sampling.py
(y = x / s, sigma; lambda = -log sigma, alpha = 1).

One step from sigma_s to sigma_t (h = log(sigma_s / sigma_t) > 0) with the denoiser D:

  predictor  y_t = (sigma_t / sigma_s) y_s + (1 - e^-h) D_s + B(h) sum_k rho_k D1_k
  corrector  the same with D1 of the new point t (r = 1) added, and its own rho,

where D1_k = (D(s_k) - D_s) / r_k are divided differences to the earlier points s_k at
r_k = (lambda(s_k) - lambda(s)) / h < 0, and rho solves the order conditions
sum_k rho_k r_k^(i-1) = i! h phi_(i+1)(-h) / B(h), i = 1..p (phi_1(x) = (e^x - 1) / x,
phi_(i+1)(x) = (phi_i(x) - 1 / i!) / x). B(h) = h ('bh1') or 1 - e^-h ('bh2'). The corrector
uses the evaluation at the predicted y_t, which the next step needs anyway: it costs no
evaluation and raises the order by one (UniC-p after UniP-p is of order p + 1). The next step
starts from the corrected y_t and reuses D at the predicted one.
"""
import math

import torch
from tqdm.auto import tqdm

import fast_sampling as fs
from models import utils as mutils

VARIANTS = ('bh1', 'bh2')


def _rhs(h, order, variant):
  """B(h) and the right-hand sides b_i = i! h phi_(i+1)(-h) / B(h), i = 1..order, of the
  order conditions. The recursion in phi loses ~eps / h^order: fine for h > 1e-3 in float64."""
  x = -h
  big_b = x if variant == 'bh1' else math.expm1(x)
  g, factorial, b = math.expm1(x) / x - 1, 1., []  # g = x phi_2(x)
  for i in range(1, order + 1):
    b.append(g * factorial / big_b)
    factorial *= i + 1
    g = g / x - 1 / factorial
  return big_b, b


def _rhos(rs, b):
  """rho solving sum_k rho_k r_k^i = b_(i+1), i = 0..len(rs) - 1 (a Vandermonde system)."""
  r = torch.tensor(rs, dtype=torch.float64)
  matrix = torch.stack([r ** i for i in range(len(rs))])
  return torch.linalg.solve(matrix, torch.tensor(b[:len(rs)], dtype=torch.float64)).tolist()


def _update(y, sig_s, sig_t, d_s, diffs, rhos, big_b):
  """(sigma_t / sigma_s) y + (1 - sigma_t / sigma_s) D_s - B sum rho_k D1_k: B carries the sign
  of x = -h, so this is + |B| sum rho_k D1_k."""
  out = (sig_t / sig_s) * y + (1 - sig_t / sig_s) * d_s
  for rho, diff in zip(rhos, diffs):
    out = out - (big_b * rho) * diff
  return out


def unipc_step(y, sigs, outs, order, variant, d_new=None):
  """One UniP (d_new None) or UniC (d_new given) step to sigs[-1].

  Args:
    y: (B, ...) the state at sigs[-2].
    sigs: decreasing floats, the last `order` + 1 noise levels of the run (fewer at the start).
    outs: the denoiser outputs D (B, ...) at sigs[:-1], the last ones (at least `order`).
    order: p, the number of denoiser outputs the predictor combines (1, 2 or 3).
    variant: 'bh1' or 'bh2'.
    d_new: D at the predicted y_t, for the corrector.
  Returns:
    (B, ...) the predicted or corrected state at sigs[-1].
  """
  sig_s, sig_t = sigs[-2], sigs[-1]
  h = math.log(sig_s / sig_t)
  d_s = outs[-1]
  rs = [math.log(sig_s / sigs[-2 - k]) / h for k in range(1, order)]
  diffs = [(outs[-1 - k] - d_s) / r for k, r in zip(range(1, order), rs)]
  big_b, b = _rhs(h, order, variant)
  if d_new is None:  # UniP-p: p - 1 earlier points
    if order == 1:
      rhos = []
    elif order == 2:
      rhos = [0.5]  # the official code's choice: b_1's limit for h -> 0, for both B(h)
    else:
      rhos = _rhos(rs, b)
  else:  # UniC-p: the same points and the new one at r = 1
    diffs = diffs + [d_new - d_s]
    rhos = [0.5] if order == 1 else _rhos(rs + [1.], b)
  return _update(y, sig_s, sig_t, d_s, diffs, rhos, big_b)


def unipc_sample(score_fn, sde, shape, num_steps=10, order=3, variant='bh1', schedule='logsnr',
                 eps=1e-3, denoise_to_zero=False, lower_order_final=True, sigmas=None, z=None,
                 generator=None, device='cpu', progress=False):
  """UniPC-p on the probability-flow ODE from t = T to t = eps (data prediction).

  Args:
    score_fn: a `models.utils.ScoreModel`, or any (x (B, ...), t (B,)) -> score.
    sde: the forward SDE.
    shape: (B, ...) of the samples.
    num_steps: steps, one network evaluation each: the corrector of a step reuses the next step's
      evaluation, and the last step has none (it would need one more evaluation).
    order: the predictor's order p, 1-3 (the first steps use fewer points, as any multistep
      method); with its corrector a step is of order p + 1.
    variant: B(h) = h ('bh1', the paper's choice for unconditional sampling at few steps) or
      e^h - 1 in noise-prediction time ('bh2', i.e. 1 - e^-h here; the budget's choice, better
      in docs/few_step_sampling.md's measurements).
    schedule: the ladder of `fast_sampling.get_sigma_schedule`, if `sigmas` is not given.
    denoise_to_zero: one more evaluation returning D(y; sigma_last) (the sample at t = 0).
    lower_order_final: orders at most num_steps - i for the last steps when num_steps < 15, as
      DPM-Solver's (the official UniPC always lowers them).
    sigmas: a decreasing ladder of num_steps + 1 noise levels from sigma(T) down to use instead
      (e.g. one optimized by scripts/optimize_ladder.py; `fast_sampling.check_ladder`).
    z: initial noise x(T) (B, ...) instead of a prior draw.
    generator: torch.Generator, or a list of B of them; nothing is random after the prior draw.
  Returns:
    (x (B, ...), nfe), nfe = num_steps (+ 1 with denoise_to_zero).
  """
  fs.check_option('order', order, (1, 2, 3))
  fs.check_option('variant', variant, VARIANTS)
  ode = fs.ScaledODE(score_fn, sde, shape[0], device)
  sigmas, t_end = fs.ladder(sde, num_steps + 1, eps, schedule, sigmas)
  y = fs.initial_y(sde, shape, ode, z, generator)
  outs, d = [], ode.denoise(y, sigmas[0])
  for i in tqdm(range(num_steps), disable=not progress, desc='unipc'):
    outs = (outs + [d])[-order:]
    step_order = min(order, i + 1)
    if lower_order_final and num_steps < 15:
      step_order = min(step_order, num_steps - i)
    y_pred = unipc_step(y, sigmas[:i + 2], outs, step_order, variant)
    if i == num_steps - 1:
      y = y_pred
      break
    d = ode.denoise(y_pred, sigmas[i + 1])
    y = unipc_step(y, sigmas[:i + 2], outs, step_order, variant, d_new=d)
  if denoise_to_zero:
    return ode.denoise(y, sigmas[-1]) * ode.scale(0.), ode.nfe
  return y * ode.scale(t_end), ode.nfe


def get_unipc_sampler(sde, shape, inverse_scaler, num_steps=10, order=3, eps=1e-3,
                      continuous=True, device=None, **kwargs):
  """`sampler(model, z=None, generator=None) -> (samples, nfe)` running `unipc_sample` (kwargs
  go to it)."""
  device = device or mutils.default_device()
  return fs.sampler_from(unipc_sample, sde, shape, inverse_scaler, continuous, device,
                         num_steps=num_steps, order=order, eps=eps, **kwargs)


def unipc_from_config(config, sde, shape, inverse_scaler, eps):
  """`config.sampling.method = 'unipc'`: num_steps evaluations (a final denoising step
  included); `order`, `unipc_variant`, `dpm_schedule`, `denoise_to_zero` and `step_ladder` left
  unset are chosen for the budget (`fast_sampling.settings_from_config`)."""
  s = config.sampling
  settings, sigmas = fs.settings_from_config(config, 'unipc', sde)
  if settings['method'] != 'multistep':
    raise ValueError(f"UniPC is multistep; sampling.dpm_method = {settings['method']!r} is "
                     "dpm_solver's.")
  return get_unipc_sampler(sde, shape, inverse_scaler, continuous=config.training.continuous,
                           device=config.device, variant=settings['variant'], progress=s.progress,
                           **fs.solver_arguments(settings, sigmas, sde, eps, s.num_steps,
                                                 config.training.continuous))
