"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", NVlabs/edm2 `training/phema.py`): track power-function EMAs of the weights during
training, store snapshots of them, and reconstruct after training an EMA of any length by least
squares over the snapshots.

A power-function EMA of exponent gamma averages the weights theta_tau of training time tau in
[0, t] with the profile p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1); its relative width
sigma_rel (the profile's standard deviation over t) is sqrt((gamma+1) / ((gamma+2)^2 (gamma+3))),
at most 1/sqrt(12) = 0.2887 (gamma = 0, the plain mean). Time is counted in optimizer steps: after
step s (0-based) of a run, t = s + 1 updates have been made, and the tracked average moves by
  avg <- beta avg + (1 - beta) theta,   beta = (1 - 1/t)^(gamma + 1)        (EDM2 eq. 127)
which is exact for p_t on the grid of steps up to O(1/t). A snapshot of width sigma_rel at t
holds p_t's average; the EMA of another width (or another time) is the combination of the
snapshots whose profile is nearest in L2 (`solve_coefficients`, EDM2 Algorithm 3; the inner
products of two profiles are the closed form `correlation`). An exponential EMA of the classic
kind (decay 0.999, with score_sde's warm-up) is fitted the same way to its exact discrete
profile (`exponential_coefficients`).

On disk (WORKDIR/phema-snapshots/phema_{step}.pth, `Tracker.save_snapshot`): {'step': s, 't':
s + 1, 'sigma_rels': [...], 'dtype': 'float32' | 'float16', 'averages': [[tensor per trainable
parameter] per sigma_rel]}, the parameters in `model.parameters()` order (as
ExponentialMovingAverage.shadow_params). The tracker's float32 state rides in the resume
checkpoint under 'phema', so kill and resume stays bit-identical.
"""
import logging
import math
import os
import re
import shutil

import numpy as np
import torch

from workdir import torch_save_atomic

MAX_SIGMA_REL = 1 / math.sqrt(12)  # gamma -> 0: the uniform average of all the weights so far
SNAPSHOT_DIR = 'phema-snapshots'
DTYPES = {'float32': torch.float32, 'float16': torch.float16}


# --- Closed forms (EDM2 appendix) ---------------------------------------------------------------

def sigma_rel_to_gamma(sigma_rel):
  """The exponent gamma of a power-function profile of relative width `sigma_rel` (a float or an
  array): the largest real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0,
  i.e. sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)) (EDM2 eqs. 123-126)."""
  s = np.asarray(sigma_rel, dtype=np.float64)
  roots = [np.roots([1., 7., 16. - x ** -2, 12. - x ** -2]) for x in s.reshape(-1)]
  gamma = [r[np.abs(r.imag) < 1e-9].real.max() for r in roots]
  return np.asarray(gamma, dtype=np.float64).reshape(s.shape)


def gamma_to_sigma_rel(gamma):
  """The relative width of the power-function profile of exponent `gamma`."""
  g = np.asarray(gamma, dtype=np.float64)
  return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def beta(gamma, t):
  """The decay of the tracked average at update t = 1, 2, ... (t = 1: beta 0, the weights)."""
  return (1. - 1. / t) ** (gamma + 1.)


def correlation(t_a, sigma_a, t_b, sigma_b):
  """<p_a, p_b> = integral of the product of the power-function profiles of widths sigma_a /
  sigma_b ending at times t_a / t_b (numpy broadcasting; EDM2 eq. 151):
  (g_a + 1)(g_b + 1) (t_a / t_b)^(g_b if t_a < t_b else -g_a) / ((g_a + g_b + 1) max(t_a, t_b))."""
  t_a, t_b = np.asarray(t_a, np.float64), np.asarray(t_b, np.float64)
  g_a, g_b = sigma_rel_to_gamma(sigma_a), sigma_rel_to_gamma(sigma_b)
  power = np.where(t_a < t_b, g_b, -g_a)
  return ((g_a + 1) * (g_b + 1) * (t_a / t_b) ** power
          / ((g_a + g_b + 1) * np.maximum(t_a, t_b)))


def solve_coefficients(in_t, in_sigma, out_t, out_sigma):
  """Coefficients X (n_in, n_out): sum_i X[i, j] snapshot_i is the L2-nearest combination of the
  snapshot profiles (times in_t, widths in_sigma) to the profile (out_t[j], out_sigma[j]),
  rescaled so each column sums to 1 (a combination of averages is then an average: constant
  weights stay constant). The Gram matrix A = <p_i, p_k> and B = <p_i, q_j> are closed forms."""
  in_t, in_sigma = (np.ravel(x).astype(np.float64) for x in np.broadcast_arrays(in_t, in_sigma))
  out_t, out_sigma = (np.ravel(x).astype(np.float64) for x in np.broadcast_arrays(out_t, out_sigma))
  A = correlation(in_t[:, None], in_sigma[:, None], in_t[None, :], in_sigma[None, :])
  B = correlation(in_t[:, None], in_sigma[:, None], out_t[None, :], out_sigma[None, :])
  X = np.linalg.solve(A, B)
  return X / X.sum(axis=0, keepdims=True)


# --- Exact discrete profiles (what the trackers actually average) -------------------------------

def tracked_profile(sigma_rel, t):
  """(t,) float64: the weight the average tracked with `beta` gives the weights after updates
  1..t (sums to 1)."""
  gamma = float(sigma_rel_to_gamma(sigma_rel))
  k = np.arange(1, t + 1, dtype=np.float64)
  b = np.where(k > 1, (1. - 1. / np.maximum(k, 2.)) ** (gamma + 1.), 0.)
  # weight_k = (1 - b_k) prod_{j > k} b_j; the products from the right as cumulative log sums.
  logs = np.log(np.where(k > 1, b, 1.))
  tail = np.concatenate([np.cumsum(logs[::-1])[::-1][1:], [0.]])
  return (1. - b) * np.exp(tail)


def exponential_profile(decay, t, warmup=True):
  """(t,) float64: the weights ExponentialMovingAverage(decay) gives the weights after updates
  1..t, starting from the initial weights (index 0 of a (t + 1,) vector is theta_0); with
  score_sde's warm-up the decay of update n is min(decay, (1 + n) / (10 + n))."""
  n = np.arange(1, t + 1, dtype=np.float64)
  d = np.minimum(decay, (1. + n) / (10. + n)) if warmup else np.full_like(n, decay)
  logs = np.log(d)
  tail = np.concatenate([np.cumsum(logs[::-1])[::-1][1:], [0.]])
  return np.concatenate([[np.exp(logs.sum())], (1. - d) * np.exp(tail)])


def exponential_coefficients(in_t, in_sigma, decay, out_t, warmup=True):
  """(n_in,) least-squares coefficients of the snapshots (in_t, in_sigma) for the classic EMA of
  `decay` at update out_t, on the exact discrete profiles (the snapshots' as `tracked_profile`;
  the EMA's start, theta_0's weight, is treated as update 1's). Columns sum to 1."""
  T = int(out_t)
  target = exponential_profile(decay, T, warmup)
  target = np.concatenate([[target[0] + target[1]], target[2:]])  # theta_0 ~ theta_1
  basis = np.zeros((len(in_t), T))
  for i, (t, s) in enumerate(zip(in_t, in_sigma)):
    basis[i, :int(t)] = tracked_profile(s, int(t))
  x = np.linalg.solve(basis @ basis.T, basis @ target)
  return x / x.sum()


# --- Config -------------------------------------------------------------------------------------

def parse_widths(value, key):
  """A tuple of relative widths from a tuple / list of numbers or a comma-separated string;
  ValueError naming `key` when one is outside (0, 0.2887)."""
  if isinstance(value, str):
    try:
      value = [float(v) for v in value.split(',') if v.strip()]
    except ValueError:
      raise ValueError(f'{key}={value!r}: expected comma-separated numbers, e.g. '
                       f'--config.{key}=0.05,0.1.') from None
  widths = tuple(float(v) for v in value)
  bad = [w for w in widths if not 0 < w < MAX_SIGMA_REL]
  if bad:
    raise ValueError(f'{key}: relative widths must lie in (0, {MAX_SIGMA_REL:.4f}) (0.2887 is the '
                     f'plain average of all weights), got {bad}. EDM2 tracks 0.05,0.1.')
  return widths


def check_training_config(config):
  """The tracked widths (a tuple; () when tracking is off) of config.training, with its
  snapshot frequency and dtype checked (ValueError naming the key and the fix)."""
  tc = config.training
  widths = parse_widths(tc.phema_sigma_rels, 'training.phema_sigma_rels')
  if len(set(widths)) != len(widths):
    raise ValueError(f'training.phema_sigma_rels={widths} repeats a width.')
  if widths and (int(tc.phema_snapshot_freq) <= 0):
    raise ValueError(f'training.phema_snapshot_freq={tc.phema_snapshot_freq}: must be a positive '
                     'number of steps (e.g. n_iters / 50).')
  if tc.phema_snapshot_dtype not in DTYPES:
    raise ValueError(f'training.phema_snapshot_dtype={tc.phema_snapshot_dtype!r}: use one of '
                     f'{", ".join(DTYPES)}.')
  return widths


def snapshot_steps(freq, n_iters, start=0):
  """The steps >= start after which a snapshot is written: every `freq` steps and the last."""
  steps = list(range(max(freq, -(-start // freq) * freq), n_iters + 1, freq))
  if not steps or steps[-1] != n_iters:
    steps.append(n_iters)
  return [s for s in steps if s >= start]


def snapshot_due(step, training):
  """Whether a snapshot follows step `step` under config.training (see `snapshot_steps`)."""
  freq = int(training.phema_snapshot_freq)
  return (step != 0 and step % freq == 0) or step == int(training.n_iters)


def _size(n):
  return f'{n / 1e9:.2f} GB' if n >= 1e8 else f'{n / 1e6:.1f} MB'


# --- Tracking -----------------------------------------------------------------------------------

class Tracker:
  """Power-function EMAs of widths `sigma_rels` of a network's trainable parameters (float32,
  where the parameters live), updated after every optimizer step (`update`)."""

  def __init__(self, sigma_rels, parameters):
    self.sigma_rels = tuple(float(s) for s in sigma_rels)
    self.gammas = [float(g) for g in sigma_rel_to_gamma(self.sigma_rels)]
    self.params = [p for p in parameters if p.requires_grad]
    self.averages = [[p.detach().clone().float() for p in self.params] for _ in self.sigma_rels]
    self.t = 0

  def numel(self):
    return sum(p.numel() for p in self.params)

  @torch.no_grad()
  def update(self):
    """One update (t -> t + 1) of every average towards the current parameters."""
    self.t += 1
    current = [p.detach() for p in self.params]
    for gamma, average in zip(self.gammas, self.averages):
      torch._foreach_lerp_(average, current, 1. - beta(gamma, self.t))  # one multi-tensor op

  def state_dict(self):
    return dict(sigma_rels=list(self.sigma_rels), t=self.t, averages=self.averages)

  def load_state_dict(self, state, source):
    """Take t and the averages of `state` (from the checkpoint `source`, of the same widths:
    `check_resume`); ValueError if it tracked another network."""
    for saved, own in zip(state['averages'], self.averages):
      if len(saved) != len(own) or any(a.shape != b.shape for a, b in zip(saved, own)):
        raise ValueError(f'The power-function EMAs of {source} do not fit this network.')
      for a, b in zip(own, saved):
        a.copy_(b)
    self.t = int(state['t'])

  def save_snapshot(self, folder, step, dtype):
    """Write folder/phema_{step}.pth atomically; returns its path."""
    path = os.path.join(folder, f'phema_{step}.pth')
    averages = [[a.to(DTYPES[dtype]).cpu() for a in average] for average in self.averages]
    torch_save_atomic(dict(step=step, t=self.t, sigma_rels=list(self.sigma_rels), dtype=dtype,
                           averages=averages), path)
    return path


def check_resume(config, initial_step, resumed):
  """The tracked widths of config.training (check_training_config), checked against the resume
  checkpoint's entry `resumed` (its 'phema', or None) of a run at `initial_step`: ValueError when
  a run resumed past step 0 has no tracker state, or one of other widths. Cheap: every rank
  calls it, so a bad resume stops them all."""
  widths = check_training_config(config)
  if widths and resumed is None and initial_step > 0:
    raise ValueError(f'The resume checkpoint (step {initial_step}) holds no power-function EMA '
                     'state: the run was trained with training.phema_sigma_rels=(). Resume it '
                     'with that setting, or start a new --workdir to track them from step 0.')
  if widths and resumed is not None and [float(s) for s in resumed['sigma_rels']] != list(widths):
    raise ValueError(f'The resume checkpoint tracks power-function EMAs of widths '
                     f'{resumed["sigma_rels"]}, training.phema_sigma_rels asks for {list(widths)}: '
                     'resume with the widths it was trained with (config.json).')
  return widths


def tracker_for_run(config, model, root, initial_step, resumed):
  """The tracker of a training run (None when training.phema_sigma_rels is empty), restored from
  the resume checkpoint's entry `resumed` (its 'phema', or None) when the run continues; logs the
  snapshots' disk use. ValueError when a run resumed past step 0 has no tracker state to continue
  from."""
  widths = check_resume(config, initial_step, resumed)
  if not widths:
    return None
  tracker = Tracker(widths, model.parameters())
  if resumed is not None:
    tracker.load_state_dict(resumed, 'the resume checkpoint')
  tc = config.training
  folder = os.path.join(root, SNAPSHOT_DIR)
  os.makedirs(folder, exist_ok=True)
  steps = snapshot_steps(int(tc.phema_snapshot_freq), int(tc.n_iters))
  each = tracker.numel() * len(widths) * DTYPES[tc.phema_snapshot_dtype].itemsize
  logging.info('Post-hoc EMA: tracking sigma_rel %s (%d parameters each); %d snapshots (every %d '
               'steps and the last) of %s each in %s: %s in all (%s left to write; %s free there).',
               ', '.join(f'{w:g}' for w in widths), tracker.numel(), len(steps),
               int(tc.phema_snapshot_freq), _size(each), folder, _size(each * len(steps)),
               _size(each * len(snapshot_steps(int(tc.phema_snapshot_freq), int(tc.n_iters),
                                               initial_step))),
               _size(shutil.disk_usage(folder).free))
  return tracker


# --- Snapshots on disk --------------------------------------------------------------------------

def list_snapshots(root):
  """[(step, path)] of WORKDIR/phema-snapshots, by step."""
  folder = os.path.join(root, SNAPSHOT_DIR)
  found = []
  if os.path.isdir(folder):
    for name in os.listdir(folder):
      m = re.fullmatch(r'phema_(\d+)\.pth', name)
      if m:
        found.append((int(m.group(1)), os.path.join(folder, name)))
  return sorted(found)


def load_snapshot(path):
  return torch.load(path, map_location='cpu', weights_only=True)


def reconstruct(snapshots, coefficients):
  """sum_i c_i averages_i as float32 parameter lists, one per column of `coefficients` (n_in,
  n_out), reading the snapshot files one at a time. `snapshots`: [(path, width index)] per
  input row; the snapshot's averages of that width are used."""
  from tqdm import tqdm
  out, cache = None, {}
  for i, (path, w) in enumerate(tqdm(snapshots, desc='post-hoc EMA', disable=None)):
    if path not in cache:
      cache = {path: load_snapshot(path)}
    average = [a.float() for a in cache[path]['averages'][w]]
    if out is None:
      out = [[torch.zeros_like(a) for a in average] for _ in range(coefficients.shape[1])]
    for j, target in enumerate(out):
      torch._foreach_add_(target, average, alpha=float(coefficients[i, j]))
  return out
