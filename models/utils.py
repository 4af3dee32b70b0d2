"""The model registry, `create_model(config)` (the one place a config becomes a network), and
`ScoreModel` (`get_score_fn`), the one place a network's output becomes a score."""
import numpy as np
import torch

from registry import Registry
from sde_lib import bcast

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
  if config.model.channels_last:
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


class ScoreModel:
  """A score network seen as the time-dependent score s(x, t) of `sde`, with the denoiser and
  noise prediction that follow from it, in the spirit of EDM's preconditioning classes: the one
  place where a network's output becomes a score, and where network evaluations are counted.

  The label the network sees and the scaling of its output follow the official checkpoints
  (`sde.noise_label`, `sde.output_to_score`): VE gives sigma(t) (continuous) or the reversed
  discrete index; VP gives 999 t (continuous) or (N - 1) t and divides the output by -std;
  sub-VP is always continuous.

  Args:
    sde: an `sde_lib.SDE`.
    network: the score network, called as network(x, labels) -> (B, C, H, W).
    continuous: the network was trained on continuous time.
    train: run the network in train mode (dropout on).
  Attributes:
    nfe: network evaluations made so far (one per forward pass, counted in `output`); samplers
      report the difference before / after their run.

  Calling it is `score`, so it serves wherever a score function (x, t) -> score is expected.
  Times t are (B,) tensors, or one Python float for the whole batch (`sde.batch_time`).
  """

  def __init__(self, sde, network, continuous=False, train=False):
    self.sde, self.network = sde, network
    self.continuous, self.train = continuous, train
    self.nfe = 0
    self._forward = get_model_fn(network, train=train)

  @classmethod
  def of(cls, sde, model, continuous=False, train=False):
    """`model` itself if it is a ScoreModel (with its own continuous / train), else a ScoreModel
    over the network `model`: samplers take either."""
    return model if isinstance(model, ScoreModel) else cls(sde, model, continuous, train)

  @classmethod
  def of_score_fn(cls, sde, score_fn):
    """`score_fn` itself if it is a ScoreModel, else a ScoreModel over a given score function
    (x, t) -> score (an exact score, a guided one), each call counting as one evaluation."""
    return score_fn if isinstance(score_fn, ScoreModel) else _GivenScore(sde, score_fn)

  def output(self, x, labels):
    """The network's raw output at x (B, C, H, W) and labels (B,): every evaluation passes here."""
    self.nfe += 1
    return self._forward(x, labels)

  def score(self, x, t):
    """s(x, t) = grad_x log p_t(x): x (B, C, H, W), t (B,) or a float -> (B, C, H, W)."""
    labels = self.sde.noise_label(t, self.continuous)
    if not torch.is_tensor(labels):  # t was one Python float for the whole batch
      labels = torch.full((x.shape[0],), labels, device=x.device)
    return self.sde.output_to_score(self.output(x, labels), t, labels, self.continuous)

  def __call__(self, x, t):
    return self.score(x, t)

  def coefficients(self, x, t):
    """The perturbation x_t = a(t) x_0 + std(t) z of `sde.marginal_prob`: a and std, each (B,)
    reshaped to broadcast against x (a Python float for a float t where the SDE gives one)."""
    a, std = self.sde.marginal_prob(torch.ones(x.shape[0], device=x.device, dtype=x.dtype), t)
    return bcast(a, x), bcast(std, x)

  def noise(self, x, t, std=None):
    """The noise prediction eps(x, t) = -std(t) s(x, t) (B, C, H, W); `std` (broadcastable to
    x) replaces `sde.marginal_prob`'s when the caller has it in another form."""
    std = self.coefficients(x, t)[1] if std is None else bcast(std, x)
    return -std * self.score(x, t)

  def denoised(self, x, t):
    """Tweedie's data prediction D(x, t) = E[x_0 | x_t = x] = (x + std^2 s(x, t)) / a(t),
    (B, C, H, W)."""
    a, std = self.coefficients(x, t)
    return (x + std ** 2 * self.score(x, t)) / a


class _GivenScore(ScoreModel):
  """`ScoreModel.of_score_fn`: the score function stands for the network, called at (x, t)."""

  def __init__(self, sde, score_fn):
    self.sde, self.network, self.continuous, self.train = sde, score_fn, None, False
    self.nfe = 0
    self._forward = score_fn

  def score(self, x, t):
    return self.output(x, t)


def get_score_fn(sde, model, train=False, continuous=False):
  """Wrap `model` as the time-dependent score s(x, t) of `sde` (score_sde_pytorch's function).

  Args:
    sde: an `sde_lib.SDE`.
    model: the score network, called as model(x, labels).
    train: run the network in train mode (dropout on).
    continuous: the network was trained on continuous time.
  Returns:
    A `ScoreModel`: score_fn(x (B, C, H, W), t (B,) or a Python float) -> score (B, C, H, W),
    which also counts its evaluations (`nfe`) and gives `denoised` / `noise`.
  """
  return ScoreModel(sde, model, continuous=continuous, train=train)


def to_flattened_numpy(x):
  """Flatten a tensor into a 1-D numpy array (for scipy's ODE solvers)."""
  return x.detach().cpu().numpy().reshape((-1,))


def from_flattened_numpy(x, shape):
  """Reshape a flat numpy array into a tensor of `shape`."""
  return torch.from_numpy(x.reshape(shape))
