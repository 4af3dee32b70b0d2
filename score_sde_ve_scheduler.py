"""diffusers' `ScoreSdeVeScheduler`: the VE SDE's noise ladder and the predictor / corrector
steps of the PC sampler, with the same signatures, config attributes and step rules as diffusers'
class, and its scheduler_config.json folder format.

Its own module so that `pipelines` (the sampling loop) and `diffusers_convert` (pipeline folders)
both use it without importing each other; `pipelines` re-exports every name here.
diffusers itself is never imported.
"""
import dataclasses
import importlib.metadata
import json
import math
import os
import warnings

import torch

import hub
from sde_lib import randn as _randn  # diffusers' randn_tensor: a list of B generators, one per row
from workdir import write_atomic

_CONFIG_NAME = 'scheduler_config.json'


def diffusers_format_version():
  """Version written as `_diffusers_version`: the installed diffusers', else the one tested."""
  try:
    return importlib.metadata.version('diffusers')
  except importlib.metadata.PackageNotFoundError:
    return '0.42.1'


class FrozenConfig(dict):
  """A read-only dict whose keys are also attributes (`scheduler.config.snr`)."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(f'The config has no entry {name!r}; it has {sorted(self)}.') from None

  def _readonly(self, *args, **kwargs):
    raise AttributeError('The config is frozen; build a new object with the changed values, '
                         'e.g. ScoreSdeVeScheduler.from_config({**scheduler.config, "snr": 0.16}).')

  __setattr__ = __setitem__ = __delitem__ = update = pop = setdefault = _readonly

  def __reduce__(self):  # copy / deepcopy / pickle rebuild from the items, not by setting them
    return (FrozenConfig, (dict(self),))


class _Output:
  """Dataclass outputs that also index like diffusers' (`out[0]`, `out.to_tuple()`)."""

  def to_tuple(self):
    return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

  def __getitem__(self, index):
    if isinstance(index, str):
      return getattr(self, index)
    return self.to_tuple()[index]


@dataclasses.dataclass
class SchedulerOutput(_Output):
  """Result of `step_correct`: `prev_sample` (B, C, H, W), the next input of the model."""
  prev_sample: torch.Tensor


@dataclasses.dataclass
class SdeVeOutput(_Output):
  """Result of `step_pred`: the noisy next sample and its noise-free mean, (B, C, H, W) each."""
  prev_sample: torch.Tensor
  prev_sample_mean: torch.Tensor


class ScoreSdeVeScheduler:
  """Discretisation of the VE SDE sigma(t) = sigma_min (sigma_max / sigma_min)^t, with diffusers'
  `ScoreSdeVeScheduler` API.

  Args:
    num_train_timesteps: N, the size of the discrete sigma ladder set at construction.
    snr: signal-to-noise ratio r of the Langevin corrector (Alg. 4).
    sigma_min, sigma_max: ends of the noise scale range.
    sampling_eps: last continuous time; the timesteps run from 1 down to it.
    correct_steps: corrector steps per predictor step.
  """

  order = 1

  def __init__(self, num_train_timesteps=2000, snr=0.15, sigma_min=0.01, sigma_max=1348.0,
               sampling_eps=1e-5, correct_steps=1):
    self.config = FrozenConfig(num_train_timesteps=num_train_timesteps, snr=snr,
                               sigma_min=sigma_min, sigma_max=sigma_max,
                               sampling_eps=sampling_eps, correct_steps=correct_steps)
    self.init_noise_sigma = sigma_max  # std of the prior the sampler starts from
    self.timesteps = None
    self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

  # --- config in and out, as diffusers' ConfigMixin -------------------------------------------
  @classmethod
  def from_config(cls, config, **overrides):
    """Build from a dict (e.g. another scheduler's `.config` or a parsed scheduler_config.json).
    Keys starting with '_' (diffusers' bookkeeping) are skipped; other unknown keys (such as old
    diffusers' 'tensor_format') are skipped with a warning, as diffusers does."""
    known = {'num_train_timesteps', 'snr', 'sigma_min', 'sigma_max', 'sampling_eps',
             'correct_steps'}
    values = {k: v for k, v in dict(config).items() if not k.startswith('_')}
    values.update(overrides)
    unknown = sorted(set(values) - known)
    if unknown:
      warnings.warn(f'ScoreSdeVeScheduler has no parameter(s) {unknown}; they are ignored '
                    f'(known: {sorted(known)}).')
    return cls(**{k: v for k, v in values.items() if k in known})

  @classmethod
  def from_pretrained(cls, folder, subfolder=None, revision=None, cache_dir=None, **overrides):
    """Read `folder[/subfolder]/scheduler_config.json` (a diffusers scheduler folder); `folder`
    may be a hub id such as 'google/ncsnpp-celebahq-256' (see `hub.resolve_folder`)."""
    folder = resolve_folder(folder, revision, cache_dir, weights=False)
    path = os.path.join(folder, subfolder or '', _CONFIG_NAME)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'No {_CONFIG_NAME} at {path}: not a diffusers scheduler folder.')
    with open(path) as f:
      config = json.load(f)
    name = config.get('_class_name', cls.__name__)
    if name != cls.__name__:
      raise ValueError(f'{path} describes a {name}, not a {cls.__name__}.')
    return cls.from_config(config, **overrides)

  def save_pretrained(self, folder):
    """Write `folder/scheduler_config.json` as diffusers does."""
    os.makedirs(folder, exist_ok=True)
    data = {'_class_name': type(self).__name__, '_diffusers_version': diffusers_format_version(),
            **self.config}

    def write(tmp):
      with open(tmp, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')  # as diffusers' to_json_string

    write_atomic(os.path.join(folder, _CONFIG_NAME), write)

  save_config = save_pretrained

  def __len__(self):
    return self.config.num_train_timesteps

  def __repr__(self):
    return f'{type(self).__name__}({", ".join(f"{k}={v!r}" for k, v in self.config.items())})'

  # --- schedule -------------------------------------------------------------------------------
  def scale_model_input(self, sample, timestep=None):
    """The VE model takes the sample unscaled; kept for API compatibility."""
    return sample

  def set_timesteps(self, num_inference_steps, sampling_eps=None, device=None):
    """timesteps = linspace(1, sampling_eps, num_inference_steps), continuous times t_i."""
    sampling_eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
    self.timesteps = torch.linspace(1, sampling_eps, num_inference_steps, device=device)

  def set_sigmas(self, num_inference_steps, sigma_min=None, sigma_max=None, sampling_eps=None):
    """Set `discrete_sigmas` (geometric ladder of `num_inference_steps` values from sigma_min to
    sigma_max, the VE SDE's SMLD chain) and `sigmas[i] = sigma(t_i)` (the marginal std at each
    timestep). Timesteps are set first only if none are (diffusers' rule)."""
    sigma_min = self.config.sigma_min if sigma_min is None else sigma_min
    sigma_max = self.config.sigma_max if sigma_max is None else sigma_max
    sampling_eps = self.config.sampling_eps if sampling_eps is None else sampling_eps
    if self.timesteps is None:
      self.set_timesteps(num_inference_steps, sampling_eps)
    self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max),
                                                    num_inference_steps))
    # Element by element: torch's vectorised pow can differ from the scalar one in the last bit,
    # and diffusers evaluates one timestep at a time.
    ratio = sigma_max / sigma_min
    self.sigmas = torch.stack([sigma_min * ratio ** t for t in self.timesteps.cpu()])

  def get_adjacent_sigma(self, timesteps, t):
    """sigma_{i-1} of each discrete index i (B,), 0 below the ladder's first entry."""
    previous = self.discrete_sigmas[(timesteps - 1).clamp(min=0)].to(timesteps.device)
    return torch.where(timesteps == 0, torch.zeros_like(t.to(timesteps.device)), previous)

  def _require_timesteps(self):
    if self.timesteps is None:
      raise ValueError('No timesteps: call set_timesteps(num_inference_steps) before stepping.')

  # --- steps ----------------------------------------------------------------------------------
  def step_pred(self, model_output, timestep, sample, generator=None, return_dict=True):
    """Reverse-diffusion predictor (paper Eq. 47, the reverse of SMLD's chain):
    x_mean = x + G^2 s(x, t), x' = x_mean + G z with G^2 = sigma_i^2 - sigma_{i-1}^2 and
    i = floor(t (len(timesteps) - 1)) indexing `discrete_sigmas` (sigma_{-1} = 0).

    Args:
      model_output: the score s(x, t), (B, C, H, W).
      timestep: continuous t (a float or 0-dim tensor, usually an entry of `timesteps`).
      sample: x, (B, C, H, W).
      generator: torch.Generator, or a list of B of them, for z.
    Returns:
      SdeVeOutput(prev_sample, prev_sample_mean), or that tuple if not `return_dict`.
    """
    self._require_timesteps()
    t = timestep * torch.ones(sample.shape[0], device=sample.device)
    index = (t * (len(self.timesteps) - 1)).long().to(self.discrete_sigmas.device)
    sigma = self.discrete_sigmas[index].to(sample.device)
    adjacent_sigma = self.get_adjacent_sigma(index, t).to(sample.device)
    g = ((sigma ** 2 - adjacent_sigma ** 2) ** 0.5).reshape(-1, *([1] * (sample.ndim - 1)))
    noise = _randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)
    prev_sample_mean = sample + g ** 2 * model_output
    prev_sample = prev_sample_mean + g * noise
    if not return_dict:
      return prev_sample, prev_sample_mean
    return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_sample_mean)

  def step_correct(self, model_output, sample, generator=None, return_dict=True):
    """Langevin corrector (paper Alg. 4) with one step size for the whole batch:
    eps = 2 (snr mean_b ||z_b|| / mean_b ||s_b||)^2, x' = x + eps s + sqrt(2 eps) z.

    Args:
      model_output: the score s(x, t) at the current sigma, (B, C, H, W).
      sample: x, (B, C, H, W).
      generator: torch.Generator, or a list of B of them, for z (drawn on the CPU without one).
    Returns:
      SchedulerOutput(prev_sample), or that 1-tuple if not `return_dict`.
    """
    self._require_timesteps()
    noise = _randn(sample.shape, generator, device='cpu').to(sample.device)
    batch = sample.shape[0]
    grad_norm = torch.linalg.vector_norm(model_output.reshape(batch, -1), dim=-1).mean()
    noise_norm = torch.linalg.vector_norm(noise.reshape(batch, -1), dim=-1).mean()
    step_size = 2 * (self.config.snr * noise_norm / grad_norm) ** 2
    prev_sample = sample + step_size * model_output + (2 * step_size) ** 0.5 * noise
    if not return_dict:
      return (prev_sample,)
    return SchedulerOutput(prev_sample=prev_sample)

  def add_noise(self, original_samples, noise, timesteps):
    """x + sigma_i z for discrete indices `timesteps` (B,) into `discrete_sigmas`."""
    sigmas = self.discrete_sigmas.to(original_samples.device)[timesteps.to(original_samples.device)]
    sigmas = sigmas.reshape(-1, *([1] * (original_samples.ndim - 1)))
    if noise is None:
      noise = torch.randn_like(original_samples)
    return original_samples + noise * sigmas


def resolve_folder(folder, revision, cache_dir, weights):
  """A hub id ('org/name' that is no local folder) -> its folder in the huggingface_hub cache;
  anything else is returned as given (the loaders then say what is missing)."""
  if os.path.isdir(folder) or not hub.looks_like_hub_id(folder):
    return folder
  return hub.resolve_folder(folder, revision=revision, cache_dir=cache_dir, weights=weights)
