"""The model registry, `create_model(config)` (the one place a config becomes a network), and the
wrappers that turn a network's output into a score (`get_score_fn`)."""
import numpy as np
import torch

from registry import Registry

MODELS = Registry('model')
register_model = MODELS.register


def get_model(name):
  """The model class registered as `name` (e.g. 'ncsnpp', 'ddpm', 'ncsnv2_64')."""
  return MODELS.get(name)


def get_sigmas(config):
  """SMLD noise levels, geometric from sigma_max down to sigma_min (num_scales,), float64 numpy."""
  return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                            config.model.num_scales))


def get_ddpm_params(config):
  """DDPM's discrete schedule (Ho et al. 2020) on 1000 steps, float64 numpy arrays."""
  num_diffusion_timesteps = 1000
  beta_start = config.model.beta_min / config.model.num_scales
  beta_end = config.model.beta_max / config.model.num_scales
  betas = np.linspace(beta_start, beta_end, num_diffusion_timesteps, dtype=np.float64)
  alphas = 1. - betas
  alphas_cumprod = np.cumprod(alphas, axis=0)
  return {
    'betas': betas,
    'alphas': alphas,
    'alphas_cumprod': alphas_cumprod,
    'sqrt_alphas_cumprod': np.sqrt(alphas_cumprod),
    'sqrt_1m_alphas_cumprod': np.sqrt(1. - alphas_cumprod),
    'beta_min': beta_start * (num_diffusion_timesteps - 1),
    'beta_max': beta_end * (num_diffusion_timesteps - 1),
    'num_diffusion_timesteps': num_diffusion_timesteps,
  }


def create_model(config):
  """Build `config.model.name` on `config.device` (a plain module, not DataParallel), in the
  channels_last layout when `config.model.channels_last` (checkpoints are saved contiguous)."""
  import models  # noqa: F401  (registers every architecture)
  model = get_model(config.model.name)(config).to(config.device)
  if config.model.get('channels_last', False):
    model = model.to(memory_format=torch.channels_last)
  return model


def default_device():
  """'cuda' when a GPU is visible, else 'cpu': where samplers run unless told otherwise."""
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def unwrap(model):
  """The network inside any wrappers: DataParallel / DistributedDataParallel and
  `precision.AutocastModel` / `CompiledModel` (`.module`), torch.compile's `._orig_mod`."""
  while True:
    inner = getattr(model, 'module', None)
    if inner is None:
      inner = getattr(model, '_orig_mod', None)
    if not isinstance(inner, torch.nn.Module):
      return model
    model = inner


def get_model_fn(model, train=False):
  """(x, labels) -> network output, with the module in train or eval mode."""

  def model_fn(x, labels):
    # .train() walks every submodule (~3 % of a small forward), so only when the mode changes.
    # The network's own flag decides: evaluation may switch the bare network to eval mode
    # behind a DDP / compiled wrapper whose flag stays True.
    if unwrap(model).training != train or model.training != train:
      model.train(train)
    return model(x, labels)

  return model_fn


def get_score_fn(sde, model, train=False, continuous=False):
  """Wrap `model` as the time-dependent score s(x, t) of `sde`.

  The label the network sees and the scaling of its output follow the official checkpoints
  (`sde.noise_label`, `sde.output_to_score`): VE gives sigma(t) (continuous) or the reversed
  discrete index; VP gives 999 t (continuous) or (N - 1) t and divides the output by -std;
  sub-VP is always continuous.

  Args:
    sde: an `sde_lib.SDE`.
    model: the score network, called as model(x, labels).
    train: run the network in train mode (dropout on).
    continuous: the network was trained on continuous time.
  Returns:
    score_fn(x (B, C, H, W), t (B,) or a Python float) -> score (B, C, H, W).
  """
  model_fn = get_model_fn(model, train=train)

  def score_fn(x, t):
    labels = sde.noise_label(t, continuous)
    if not torch.is_tensor(labels):  # t was one Python float for the whole batch
      labels = torch.full((x.shape[0],), labels, device=x.device)
    return sde.output_to_score(model_fn(x, labels), t, labels, continuous)

  return score_fn


def to_flattened_numpy(x):
  """Flatten a tensor into a 1-D numpy array (for scipy's ODE solvers)."""
  return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape):
  """Reshape a flat numpy array into a tensor of `shape`."""
  return torch.from_numpy(x.reshape(shape))
