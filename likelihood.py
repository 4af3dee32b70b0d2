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
