"""ODE solvers that keep the state on the device, and one `solve` entry point that also reaches
scipy's black-box solvers (the paper's RK45).

`solve(fn, y0, t0, t1, method, ...)` integrates dy/dt = fn(t, y) from t0 to t1 (either direction)
and returns (y(t1), nfe). `fn` takes a Python float t and a tensor y of y0's shape and dtype.

Methods:
  - scipy ('RK45', 'RK23', 'DOP853', 'Radau', 'BDF', 'LSODA'): the state goes through host numpy
    float64 at every evaluation, as in score_sde_pytorch.
  - 'dopri5': adaptive Dormand-Prince 5(4) on the device, with scipy RK45's error norm, step-size
    controller and initial-step rule, so it takes the same steps as RK45 up to rounding.
  - 'euler', 'midpoint', 'heun', 'rk4': fixed steps, `num_steps` uniform steps.
"""
import math

import numpy as np
import torch
from scipy import integrate

from registry import Registry

SCIPY_METHODS = ('RK45', 'RK23', 'DOP853', 'Radau', 'BDF', 'LSODA')
FIXED_STEP_SOLVERS = Registry('fixed-step ODE solver')
ADAPTIVE_SOLVERS = Registry('adaptive ODE solver')


def method_names():
  """Every name `solve` accepts."""
  return list(SCIPY_METHODS) + ADAPTIVE_SOLVERS.names() + FIXED_STEP_SOLVERS.names()


def is_fixed_step(method):
  """Whether `method` takes a fixed number of steps (no error control)."""
  return method in FIXED_STEP_SOLVERS.names()


def check_method(method):
  """Raise a ValueError listing the known methods if `method` is not one of them."""
  if method not in method_names():
    raise ValueError(f'Unknown ODE method {method!r}. Known methods: {", ".join(method_names())} '
                     f'(scipy: {", ".join(SCIPY_METHODS)}; the others keep the state on the device).')


def solve(fn, y0, t0, t1, method='RK45', rtol=1e-5, atol=1e-5, num_steps=100, max_steps=100000):
  """Integrate dy/dt = fn(t, y) from t0 to t1.

  Args:
    fn: callable (t: float, y: tensor like y0) -> dy/dt, a tensor like y0.
    y0: initial state (any shape); the device solvers keep its device and dtype.
    t0, t1: start and end times (t1 < t0 integrates backwards).
    method: a name from `method_names()`.
    rtol, atol: tolerances of the adaptive methods (RMS norm of error / (atol + rtol |y|)).
    num_steps: number of uniform steps of the fixed-step methods.
    max_steps: the adaptive device solver gives up (RuntimeError) after this many steps.
  Returns:
    (y1, nfe): the state at t1 (y0's shape, dtype and device) and the number of calls to fn.
  """
  check_method(method)
  if method in SCIPY_METHODS:
    return _solve_scipy(fn, y0, t0, t1, method, rtol, atol)
  if method in ADAPTIVE_SOLVERS:
    return ADAPTIVE_SOLVERS.get(method)(fn, y0, t0, t1, rtol, atol, max_steps)
  return FIXED_STEP_SOLVERS.get(method)(fn, y0, t0, t1, num_steps)


def _solve_scipy(fn, y0, t0, t1, method, rtol, atol):
  shape, dtype, device = y0.shape, y0.dtype, y0.device

  def numpy_fn(t, y):
    y = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
    return fn(float(t), y).detach().reshape(-1).cpu().numpy().astype(np.float64)

  y0_np = y0.detach().reshape(-1).cpu().numpy().astype(np.float64)
  solution = integrate.solve_ivp(numpy_fn, (t0, t1), y0_np, rtol=rtol, atol=atol, method=method)
  if not solution.success:
    raise RuntimeError(f'scipy {method} failed: {solution.message}')
  y1 = torch.from_numpy(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
  return y1, solution.nfev


# --- Fixed-step explicit Runge-Kutta methods. ---

def _axpy(y, h, coeffs, ks):
  """y + h sum_j coeffs_j ks_j, one fused op per nonzero term (the solvers' arithmetic is what
  the ODE samplers spend outside the network, so it is kept to as few ops as possible)."""
  out = None
  for c, k in zip(coeffs, ks):
    if c != 0.:
      out = torch.add(y, k, alpha=h * c) if out is None else out.add_(k, alpha=h * c)
  return y.clone() if out is None else out


def _fixed_step(step):
  """Turn a one-step rule step(fn, t, y, h) -> (y_next, nfe) into a uniform-step solver."""

  def solver(fn, y0, t0, t1, num_steps):
    if num_steps < 1:
      raise ValueError(f'num_steps must be >= 1 for fixed-step ODE solvers, got {num_steps}.')
    h = (t1 - t0) / num_steps
    y, nfe = y0, 0
    for i in range(num_steps):
      y, n = step(fn, t0 + i * h, y, h)
      nfe += n
    return y, nfe

  solver.__doc__ = step.__doc__
  return solver


@FIXED_STEP_SOLVERS.register(name='euler')
@_fixed_step
def _euler_step(fn, t, y, h):
  """Euler: y + h f(t, y)."""
  return _axpy(y, h, (1.,), (fn(t, y),)), 1


@FIXED_STEP_SOLVERS.register(name='midpoint')
@_fixed_step
def _midpoint_step(fn, t, y, h):
  """Explicit midpoint: y + h f(t + h/2, y + h/2 f(t, y))."""
  k1 = fn(t, y)
  return _axpy(y, h, (1.,), (fn(t + h / 2, _axpy(y, h / 2, (1.,), (k1,))),)), 2


@FIXED_STEP_SOLVERS.register(name='heun')
@_fixed_step
def _heun_step(fn, t, y, h):
  """Heun's second-order method (explicit trapezoid)."""
  k1 = fn(t, y)
  k2 = fn(t + h, _axpy(y, h, (1.,), (k1,)))
  return _axpy(y, h, (0.5, 0.5), (k1, k2)), 2


@FIXED_STEP_SOLVERS.register(name='rk4')
@_fixed_step
def _rk4_step(fn, t, y, h):
  """Classical fourth-order Runge-Kutta."""
  k1 = fn(t, y)
  k2 = fn(t + h / 2, _axpy(y, h / 2, (1.,), (k1,)))
  k3 = fn(t + h / 2, _axpy(y, h / 2, (1.,), (k2,)))
  k4 = fn(t + h, _axpy(y, h, (1.,), (k3,)))
  return _axpy(y, h, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4)), 4


# --- Adaptive Dormand-Prince 5(4), following scipy's RK45 step by step. ---

_DOPRI_C = (0., 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.)
_DOPRI_A = (
  (),
  (1 / 5,),
  (3 / 40, 9 / 40),
  (44 / 45, -56 / 15, 32 / 9),
  (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
  (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DOPRI_B = (35 / 384, 0., 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# Error weights over the six stages and f(t + h, y_new) (first-same-as-last).
_DOPRI_E = (-71 / 57600, 0., 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.
_ERROR_EXPONENT = -1 / 5  # -1 / (error estimator order 4 + 1)


def _rms(x):
  """Root mean square of a tensor, accumulated in float64, as a Python float (one reduction and
  the host sync; dividing by sqrt(n) on the host is one tensor op fewer per step)."""
  return torch.linalg.vector_norm(x, dtype=torch.float64).item() / math.sqrt(x.numel())


def _initial_step(fn, t0, y0, f0, direction, rtol, atol, span):
  """Hairer, Norsett & Wanner (1993), II.4: the starting step that scipy uses (one extra f call)."""
  scale = atol + y0.abs() * rtol
  d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
  h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
  h0 = min(h0, span)
  f1 = fn(t0 + direction * h0, torch.add(y0, f0, alpha=direction * h0))
  d2 = _rms((f1 - f0) / scale) / h0
  if d1 <= 1e-15 and d2 <= 1e-15:
    h1 = max(1e-6, h0 * 1e-3)
  else:
    h1 = (0.01 / max(d1, d2)) ** (1 / 5)
  return min(100 * h0, h1, span)


@ADAPTIVE_SOLVERS.register(name='dopri5')
def _dopri5(fn, y0, t0, t1, rtol, atol, max_steps):
  """Dormand & Prince (1980) 5(4) with local extrapolation and scipy RK45's step-size control."""
  direction = 1. if t1 >= t0 else -1.
  span = abs(t1 - t0)
  t, y = t0, y0
  f = fn(t, y)
  nfe = 1
  if span == 0:
    return y, nfe
  h_abs = _initial_step(fn, t0, y0, f, direction, rtol, atol, span)
  nfe += 1
  y_abs = y.abs()
  for _ in range(max_steps + 1):  # the check after the last allowed step
    if direction * (t1 - t) <= 0:
      return y, nfe
    if _ == max_steps:
      break
    rejected = False
    while True:
      h_abs = min(h_abs, abs(t1 - t))
      h = direction * h_abs
      t_new = t1 if h_abs == abs(t1 - t) else t + h
      k = [f]
      for c, a in zip(_DOPRI_C[1:], _DOPRI_A[1:]):
        k.append(fn(t + c * h, _axpy(y, h, a, k)))
      y_new = _axpy(y, h, _DOPRI_B, k)
      f_new = fn(t_new, y_new)
      nfe += 6
      k.append(f_new)
      # RMS of the error h sum_j e_j k_j in units of atol + rtol max(|y|, |y_new|).
      y_new_abs = y_new.abs()
      scale = torch.maximum(y_abs, y_new_abs).mul_(rtol).add_(atol)
      error = _axpy(torch.mul(k[0], h * _DOPRI_E[0]), h, _DOPRI_E[1:], k[1:]).div_(scale)
      error_norm = _rms(error)  # the one host sync of a step
      if not math.isfinite(error_norm):
        raise RuntimeError(f'dopri5: non-finite error estimate at t={t:.6g} (the ODE right-hand '
                           'side returned inf/nan).')
      if error_norm < 1:
        factor = _MAX_FACTOR if error_norm == 0 else min(_MAX_FACTOR,
                                                         _SAFETY * error_norm ** _ERROR_EXPONENT)
        if rejected:
          factor = min(1., factor)
        h_abs *= factor
        break
      h_abs *= max(_MIN_FACTOR, _SAFETY * error_norm ** _ERROR_EXPONENT)
      rejected = True
      if h_abs < 10 * np.spacing(max(abs(t), 1.)):
        raise RuntimeError(f'dopri5: step size underflow at t={t:.6g}; loosen rtol/atol.')
    t, y, f, y_abs = t_new, y_new, f_new, y_new_abs
  raise RuntimeError(f'dopri5: more than max_steps={max_steps} steps between t={t0} and t={t1}.')
