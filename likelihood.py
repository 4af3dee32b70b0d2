"""Exact log-likelihoods of score models through the probability-flow ODE (Song et al. 2021, Eq. 39
and App. D.2), in bits/dim, and the latent codes z = x(T) that the ODE maps data to.

log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt, with f~ = f - g^2 s / 2 the
probability-flow drift; the divergence comes from the Hutchinson-Skilling estimator
E[eps^T (d f~ / dx) eps] (Rademacher or Gaussian eps, fixed for the whole solve) or, for small
dimensions, the exact trace. Each ODE function evaluation costs one network forward pass and one
backward pass (one per dimension for the exact trace).

Encode/decode round trip: `bpd, z, nfe = likelihood_fn(model, data)`; then
`sampling.get_ode_sampler(sde, data.shape, inverse_scaler, eps=<the same eps>)(model, z=z)`
integrates the ODE back from T to eps and returns inverse_scaler(data) up to the tolerances.
"""
import numpy as np
import torch

import ode_solvers
from models import utils as mutils

HUTCHINSON_TYPES = ('Rademacher', 'Gaussian', 'exact')


def _probe(kind, data, generator):
  """The fixed probe vectors eps of the trace estimator (None for the exact trace)."""
  device = data.device if generator is None else generator.device
  if kind == 'Gaussian':
    return torch.randn(data.shape, generator=generator, device=device).to(data)
  if kind == 'Rademacher':
    return torch.randint(0, 2, data.shape, generator=generator, device=device).to(data) * 2 - 1
  return None


def drift_and_divergence(drift_fn, x, t, probe=None):
  """The drift f~(x, t) and its divergence from one forward and one backward pass.

  Args:
    drift_fn: (x, t) -> drift, same shape as x; examples must not interact.
    x: (B, ...) points; t: (B,) times, or one Python float for the whole batch.
    probe: (B, ...) Hutchinson vectors eps, giving eps^T J eps; None for the exact trace of J
      (one backward pass per dimension: small dimensions only).
  Returns:
    drift (B, ...) and divergence (B,), both detached.
  """
  with torch.enable_grad():
    x = x.detach().requires_grad_(True)
    drift = drift_fn(x, t)
    dims = tuple(range(1, x.ndim))
    if probe is not None:
      vjp = torch.autograd.grad(drift, x, grad_outputs=probe)[0]  # eps^T J
      return drift.detach(), torch.sum(vjp * probe, dim=dims)
    flat_drift = drift.reshape(x.shape[0], -1)
    div = torch.zeros(x.shape[0], device=x.device, dtype=drift.dtype)
    for j in range(flat_drift.shape[1]):
      # d drift_j / dx_j for every example at once: the examples are independent.
      grad = torch.autograd.grad(flat_drift[:, j].sum(), x, retain_graph=True)[0]
      div = div + grad.reshape(x.shape[0], -1)[:, j]
    return drift.detach(), div


def bits_per_dim_offset(inverse_scaler):
  """The reference's conversion to 8-bit bits/dim: 7 for data in [-1, 1], 8 for data in [0, 1].

  A density over [-1, 1] (bins of width 2/256) gains log2(128) = 7 bits per dimension when
  discretised to 256 levels; over [0, 1] (width 1/256) 8 bits. Computed as 7 - inverse_scaler(-1).
  """
  return 7. - float(inverse_scaler(torch.tensor(-1.)))


def get_likelihood_fn(sde, inverse_scaler, hutchinson_type='Rademacher', rtol=1e-5, atol=1e-5,
                      method='RK45', eps=1e-5, num_steps=100, precision='fp32'):
  """Build likelihood_fn(model, data) for a score model of `sde`.

  Args:
    sde: the forward `sde_lib.SDE`; the network is always called as continuous-time.
    inverse_scaler: model space -> data space; sets the bits/dim offset (see bits_per_dim_offset).
    hutchinson_type: 'Rademacher' or 'Gaussian' trace estimator, or 'exact' (small dimensions).
    rtol, atol: tolerances of the adaptive solvers.
    method: scipy's 'RK45' (the reference's) or any of `ode_solvers.method_names()` ('dopri5'
      keeps the state on the device).
    eps: integrate from eps to T.
    num_steps: steps of the fixed-step methods.
    precision: only 'fp32'; anything else is refused (see below).
  Returns:
    likelihood_fn(model, data (B, C, H, W), generator=None) -> (bpd (B,), z (B, C, H, W), nfe):
    bits/dim, the latent x(T), and the number of network forward passes; `model` the network
    (called as continuous-time) or a `models.utils.ScoreModel`.
  Raises:
    ValueError for a precision other than 'fp32': the solver's tolerances (1e-5 by default) are
    far below the rounding of a bf16 / fp16 network (~4e-3 / ~5e-4 relative), so the step
    control would chase rounding noise and the bits/dim would not be the model's.
  """
  import precision as precision_lib
  if precision_lib.check(precision) != 'fp32':
    raise ValueError(
      f'Likelihoods (bits/dim) run in float32 only, not {precision!r}: the ODE tolerances '
      f'(rtol {rtol:g}, atol {atol:g}) are below {precision} resolution (relative rounding '
      f'{precision_lib.RESOLUTION[precision]:.1e} per network output), so the adaptive solver '
      'would chase rounding noise. Evaluation computes bits/dim in float32 whatever '
      'config.eval.precision says.')
  kind = {k.lower(): k for k in HUTCHINSON_TYPES}.get(str(hutchinson_type).lower())
  if kind is None:
    raise ValueError(f'Unknown hutchinson_type {hutchinson_type!r}. Known: {", ".join(HUTCHINSON_TYPES)}.')
  ode_solvers.check_method(method)
  offset = bits_per_dim_offset(inverse_scaler)

  def likelihood_fn(model, data, generator=None):
    """Bits/dim of `data` (model space), its latent code z and the number of forward passes."""
    score_model = mutils.ScoreModel.of(sde, model, continuous=True)
    start = score_model.nfe
    rsde = sde.reverse(score_model, probability_flow=True)
    drift_fn = lambda x, t: rsde.sde(x, t)[0]
    shape, batch = data.shape, data.shape[0]
    dim = int(np.prod(shape[1:]))
    probe = _probe(kind, data, generator)

    def ode_fn(t, state):
      # state = [x flattened (B*D), accumulated divergence (B)], float64 as in scipy.
      x = state[:batch * dim].reshape(shape).to(data.dtype)
      drift, div = drift_and_divergence(drift_fn, x, sde.batch_time(t, batch, x.device), probe)
      return torch.cat([drift.reshape(-1), div]).to(state.dtype)

    with torch.no_grad():
      init = torch.cat([data.reshape(-1), torch.zeros(batch, device=data.device, dtype=data.dtype)])
      state, _ = ode_solvers.solve(ode_fn, init.double(), eps, sde.T, method, rtol, atol, num_steps)
      z, delta_logp = state[:batch * dim].reshape(shape), state[batch * dim:]
      logp = sde.prior_logp(z) + delta_logp
      bpd = -logp / np.log(2) / dim + offset
    return bpd.to(data.dtype), z.to(data.dtype), score_model.nfe - start

  return likelihood_fn


def _expected_neg_prior_logp(sde, mean, std):
  """E[-log p_T(mean + std z)] (B,) for the isotropic Gaussian priors here, in closed form:
  -log p_T(mean) + D std^2 / (2 sigma_T^2), with 1 / (2 sigma_T^2) read off prior_logp."""
  dim = mean[0].numel()
  ones = torch.ones_like(mean[:1])
  half_precision = float(sde.prior_logp(torch.zeros_like(ones)) - sde.prior_logp(ones)) / dim
  return -sde.prior_logp(mean) + dim * std ** 2 * half_precision


def _sub_eps_term(score_model, data, eps, noise):
  """The t < eps term (reference: `get_likelihood_offset_fn`), (B,) nats: with x_eps = a x + s z,
  E[-log q(x | x_eps)] - H(p(x_eps | x)), q = N(x_eps / a + s^2 score / a, (s / a)^2 I) the
  Gaussian decoder of Tweedie's formula. The SDE model ends at x_eps; this extends its density to
  x(0) = x by a variational step, so the sum stays a bound."""
  sde, dim = score_model.sde, data[0].numel()
  t = torch.full((data.shape[0],), float(eps), device=data.device)
  a, s = score_model.coefficients(data, t)  # (B, 1, 1, 1) each
  x_eps = a * data + s * noise
  q_mean, q_std = (x_eps + s ** 2 * score_model(x_eps, t)) / a, (s / a).reshape(-1)
  recon = (dim / 2. * torch.log(2 * np.pi * q_std ** 2)
           + torch.sum((data - q_mean) ** 2, dim=tuple(range(1, data.ndim))) / (2 * q_std ** 2))
  entropy = dim / 2. * (np.log(2 * np.pi) + 2 * torch.log(s.reshape(-1)) + 1.)
  return recon.reshape(-1) - entropy


def get_likelihood_bound_fn(sde, inverse_scaler, eps=1e-5, num_samples=1000,
                            importance_weighting=True, exact_prior=False, eps_offset=True):
  """The variational bound of the SDE model's likelihood (Song, Durkan, Murray & Ermon 2021,
  Theorem 1 with the denoising form of Theorem 3), in bits/dim.

  -log p_SDE(x) <= E[-log p_T(x_T)]
                   + 1/2 int_eps^T E[g^2 (||s - grad log p_0t||^2 - ||grad log p_0t||^2)] dt
                   - int_eps^T div f dt  (+ the t < eps term),
  expectations over x_t ~ p_0t(. | x); grad log p_0t(x_t | x) = -z / std(t). The time integral
  is estimated from `num_samples` draws of t per image (importance-sampled as the loss is, with
  weight Z std^2 / g^2, or uniform), the divergence of the linear drift exactly. Bits/dim as
  `get_likelihood_fn` (same offset), so the two numbers compare; the bound belongs to the
  reverse SDE, the ODE number to the probability-flow model, and neither bounds the other.

  Args:
    sde: VE, VP or sub-VP `sde_lib.SDE`.
    inverse_scaler: model space -> data space (sets the bits/dim offset).
    eps: the smallest time; below it the `eps_offset` term.
    num_samples: time samples per image (one network forward pass of the batch each).
    importance_weighting: draw t from p(t) ~ g^2 / std^2 (`importance.py`), else uniform.
    exact_prior: E[-log p_T(x_T)] in closed form instead of from one draw of x_T.
    eps_offset: add the t < eps term (a Gaussian decoder from x_eps); without it the number is
      the bound of the model's density at time eps, not a bound on the data.
  Returns:
    bound_fn(model, data (B, C, H, W), generator=None) -> bpd (B,); `model` the network (called
    as continuous-time) or a `models.utils.ScoreModel` (its `nfe` counts the num_samples + 1 or
    + 2 forward passes per call); all noise from `generator`.
  """
  import importance  # the closed forms; raises a ValueError for other SDEs
  if num_samples < 1:
    raise ValueError(f'num_samples (config.eval.bound_num_samples) is {num_samples}; use 1 or more.')
  Z = importance.normalizer(sde, eps) if importance_weighting else None
  div_integral = importance.drift_divergence_integral(sde, eps)
  offset = bits_per_dim_offset(inverse_scaler)

  def bound_fn(model, data, generator=None):
    score_model = mutils.ScoreModel.of(sde, model, continuous=True)
    batch, dim = data.shape[0], data[0].numel()
    device = data.device if generator is None else generator.device
    noise = lambda: torch.randn(data.shape, generator=generator, device=device).to(data)
    dims = tuple(range(1, data.ndim))
    with torch.no_grad():
      integral = torch.zeros(batch, dtype=torch.float64, device=data.device)
      for _ in range(num_samples):
        if importance_weighting:
          t = importance.sample_time(sde, batch, eps, generator, device).to(data.device)
        else:
          t = (torch.rand(batch, generator=generator, device=device) * (sde.T - eps) + eps).to(data.device)
        z = noise()
        mean, std = score_model.coefficients(data, t)
        x_t = mean * data + std * z
        score = score_model(x_t, t)
        # g^2 (||s + z/std||^2 - ||z/std||^2) = (g^2 / std^2) (||std s + z||^2 - ||z||^2)
        diff = torch.sum((std * score + z) ** 2 - z ** 2, dim=dims).double()
        if importance_weighting:
          integral += Z * diff
        else:
          integral += (sde.T - eps) * importance.weight(sde, t.cpu()).to(data.device) * diff
      nlogp = 0.5 * integral / num_samples - dim * div_integral
      mean_T, std_T = score_model.coefficients(data, sde.batch_time(sde.T, batch, data.device))
      if exact_prior:
        nlogp += _expected_neg_prior_logp(sde, mean_T * data, std_T).double()
      else:
        nlogp += -sde.prior_logp(mean_T * data + std_T * noise()).double()
      if eps_offset:
        nlogp += _sub_eps_term(score_model, data, eps, noise()).double()
      bpd = nlogp / np.log(2) / dim + offset
    return bpd.to(data.dtype)

  return bound_fn


DEQUANTIZATIONS = ('uniform', 'variational', 'none')


def eval_functions(config, sde, inverse_scaler, flow=None):
  """The bits/dim functions of `--mode eval` that config.eval enables: 'likelihood_fn' (the
  probability-flow ODE, `enable_bpd`) and 'bound_fn' (the SDE model's bound, `enable_bound`), each
  (model, data, generator=None) -> (bpd (B,), z or None, nfe), on data dequantized as
  `config.eval.dequantization` says: 'uniform' expects uniformly dequantized data; 'variational'
  the 8-bit data, dequantized by `flow` (`dequantizer.Dequantizer`, the checkpoint's), with
  log q(u | x) / (D log 2) added (`dequantizer.variational_bpd_fn`).

  Raises:
    ValueError for an unknown dequantization, for 'variational' without a flow (a model trained
    without config.training.dequantizer), and for 'none' with bits/dim enabled: every dataset
    here is 8-bit, and a continuous density evaluated on 256 levels has no bits/dim meaning (it
    can come out negative: the density at the levels grows without bound as the model sharpens).
  """
  ev = config.eval
  if ev.dequantization not in DEQUANTIZATIONS:
    raise ValueError(f'config.eval.dequantization is {ev.dequantization!r}; use one of '
                     f'{", ".join(DEQUANTIZATIONS)} ("uniform" is the paper\'s).')
  fns = {}
  if ev.dequantization == 'none' and (ev.enable_bpd or ev.enable_bound):
    raise ValueError('config.eval.dequantization="none" gives no bits/dim of 8-bit images: a '
                     'density on 256 levels is not a probability of them (it can be negative in '
                     'bits/dim). Use --config.eval.dequantization=uniform (the paper\'s).')
  if ev.dequantization == 'variational' and flow is None and (ev.enable_bpd or ev.enable_bound):
    raise ValueError('config.eval.dequantization="variational" evaluates with the variational '
                     'dequantizer trained with the model, and this config has none '
                     '(config.training.dequantizer=False): use --config.eval.dequantization=uniform, '
                     'or train with --config.training.dequantizer=True.')
  if ev.enable_bpd:
    fns['likelihood_fn'] = get_likelihood_fn(sde, inverse_scaler, rtol=ev.bpd_rtol, atol=ev.bpd_atol)
  if ev.enable_bound:
    bound_fn = get_likelihood_bound_fn(sde, inverse_scaler, num_samples=ev.bound_num_samples)

    def bound_with_nfe(model, data, generator=None):
      score_model = mutils.ScoreModel.of(sde, model, continuous=True)
      start = score_model.nfe
      return bound_fn(score_model, data, generator=generator), None, score_model.nfe - start

    fns['bound_fn'] = bound_with_nfe
  if ev.dequantization == 'variational':
    import dequantizer
    fns = {name: dequantizer.variational_bpd_fn(fn, flow, config) for name, fn in fns.items()}
  return fns
