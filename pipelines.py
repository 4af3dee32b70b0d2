"""diffusers-compatible VE sampling: `ScoreSdeVePipeline`, and `ScoreSdeVeScheduler` (defined in
`score_sde_ve_scheduler.py`, importable from here).

Same signatures, config attributes and step rules as diffusers' classes of those names, so code
written for `diffusers.ScoreSdeVePipeline` runs on our NCSN++ (or any module called as
`model(x, sigma)`), and a diffusers pipeline folder loads into our model (`from_pretrained`) and
back (`save_pretrained`; the weight mapping is in `diffusers_convert.py`). `from_pretrained`
also takes a hub id such as 'google/ncsnpp-celebahq-256', fetched through huggingface_hub's cache
(`hub.py`). diffusers itself is never imported here.

The loop is the PC sampler of Song et al. (2021, Alg. 2 predictor + Alg. 4 corrector) on the VE
SDE: per step, `correct_steps` Langevin corrections at sigma(t_i), then one reverse-diffusion
(ancestral SMLD) prediction; it matches `sampling.get_pc_sampler` with `ReverseDiffusionPredictor`
+ `LangevinCorrector` on `VESDE(N=num_inference_steps)`, continuous, denoise=True.
"""
import dataclasses
import json
import os

import torch

import precision as precision_lib
import sde_lib
from models import utils as mutils
# The scheduler has its own module, which diffusers_convert (imported where it is used) imports
# too, so neither imports the other; its names stay importable from here, where users and tests
# find them (pipelines.ScoreSdeVeScheduler).
from score_sde_ve_scheduler import (  # noqa: F401 (re-exported)
    FrozenConfig, SchedulerOutput, ScoreSdeVeScheduler, SdeVeOutput, _Output,
    diffusers_format_version, diffusers_format_version as _diffusers_format_version,
    resolve_folder as _resolve)
from sde_lib import randn as _randn  # diffusers' randn_tensor: a list of B generators, one per row


@dataclasses.dataclass
class ImagePipelineOutput(_Output):
  """Result of the pipeline: a list of PIL images, or a float array (B, H, W, C) in [0, 1]."""
  images: object


def numpy_to_pil(images):
  """(B, H, W, C) floats in [0, 1] -> list of PIL images, rounding to uint8 (as diffusers)."""
  from PIL import Image
  if images.ndim == 3:
    images = images[None]
  images = (images * 255).round().astype('uint8')
  if images.shape[-1] == 1:
    return [Image.fromarray(image[..., 0], mode='L') for image in images]
  return [Image.fromarray(image) for image in images]


class _UNetScore(torch.nn.Module):
  """The unet as `ScoreModel` calls a network, (x, sigma) -> output, under autocast in
  `precision`, the output (diffusers': `.sample`) as float32; `.module` for `mutils.unwrap`."""

  def __init__(self, unet, precision):
    super().__init__()
    self.module, self.precision = unet, precision

  def forward(self, sample, sigma):
    with precision_lib.autocast(self.precision, sample.device.type):
      out = self.module(sample, sigma)
    out = out.sample if hasattr(out, 'sample') else out
    return out.float()


class ScoreSdeVePipeline:
  """Unconditional VE sampling with a score network, diffusers' `ScoreSdeVePipeline` API.

  Args:
    unet: the score model, called as `unet(x, sigma)` with x (B, C, H, W) and sigma (B,) and
      returning the score (B, C, H, W). Our NCSN++ (continuous VE) is such a model; a diffusers
      `UNet2DModel` (whose output has `.sample`) works too.
    scheduler: a `ScoreSdeVeScheduler`.
    sample_size, num_channels: image shape; read from the model's config when not given
      (`config.data.image_size` / `num_channels` for ours, `config.sample_size` for diffusers').
    precision: 'fp32' | 'bf16' | 'fp16': the network runs under autocast in that precision (as
      config.sampling.precision does); the sampler's arithmetic stays float32.
  """

  def __init__(self, unet, scheduler, sample_size=None, num_channels=None, precision='fp32'):
    self.precision = precision_lib.check(precision)
    self.unet = unet
    self.scheduler = scheduler
    self.sample_size = sample_size
    self.num_channels = num_channels
    self._progress_bar_config = {}

  # --- loading and saving (diffusers folders; see diffusers_convert.py) ------------------------
  @classmethod
  def from_pretrained(cls, folder, device='cpu', revision=None, cache_dir=None, precision='fp32',
                      torch_dtype=None, **scheduler_overrides):
    """Load a diffusers ScoreSdeVe pipeline folder (model_index.json, unet/, scheduler/) into our
    NCSN++ and scheduler. `folder` may be a hub id such as 'google/ncsnpp-celebahq-256': it is
    fetched into huggingface_hub's cache (`revision`, `cache_dir`), or read from there under
    HF_HUB_OFFLINE=1 (see `hub.resolve_folder`). `precision` as in the constructor; diffusers'
    `torch_dtype` (torch.bfloat16 / float16 / float32) selects it too, the weights staying
    float32. `scheduler_overrides` (e.g. snr=0.16) replace scheduler config values."""
    import diffusers_convert
    if torch_dtype is not None:
      dtypes = {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16'}
      if torch_dtype not in dtypes:
        raise ValueError(f'torch_dtype={torch_dtype} is not one of {list(dtypes)}.')
      precision = dtypes[torch_dtype]
    precision_lib.check(precision)
    folder = _resolve(folder, revision, cache_dir, weights=True)
    model, scheduler = diffusers_convert.load_pipeline_folder(folder, device=device,
                                                              **scheduler_overrides)
    return cls(model, scheduler, precision=precision)

  def save_pretrained(self, folder, safe_serialization=True):
    """Write a folder that diffusers' `ScoreSdeVePipeline.from_pretrained` loads. The model must
    be an NCSN++ whose config diffusers' `UNet2DModel` can represent (else a ValueError says which
    option is not)."""
    import diffusers_convert
    diffusers_convert.save_pipeline_folder(folder, self.unet, self.scheduler,
                                           safe_serialization=safe_serialization)

  # --- pipeline plumbing ------------------------------------------------------------------------
  @property
  def device(self):
    for p in self.unet.parameters():
      return p.device
    return torch.device('cpu')

  def to(self, device):
    self.unet.to(device)
    return self

  def set_progress_bar_config(self, **kwargs):
    """Options for the tqdm bar of `__call__` (e.g. disable=True)."""
    self._progress_bar_config = kwargs

  def progress_bar(self, iterable):
    from tqdm.auto import tqdm
    return tqdm(iterable, **self._progress_bar_config)

  numpy_to_pil = staticmethod(numpy_to_pil)

  def _image_shape(self):
    config = getattr(self.unet, 'config', None)
    size, channels = self.sample_size, self.num_channels
    if size is None:
      size = _lookup(config, 'sample_size') or _lookup(config, 'data', 'image_size')
    if channels is None:
      channels = (_lookup(config, 'in_channels') or _lookup(config, 'data', 'num_channels') or 3)
    if size is None:
      raise ValueError('Cannot tell the image size from the model: pass sample_size= to '
                       'ScoreSdeVePipeline.')
    return int(channels), int(size)

  def score_model(self):
    """The unet as a `models.utils.ScoreModel` of the scheduler's VE SDE, continuous time (label
    sigma(t), output the score), run in `precision` and in the mode the unet is in (as diffusers'
    pipeline, which leaves it alone). Its `nfe` counts the evaluations made through it."""
    c = self.scheduler.config
    sde = sde_lib.VESDE(c.sigma_min, c.sigma_max, c.num_train_timesteps)
    return mutils.ScoreModel(sde, _UNetScore(self.unet, self.precision), continuous=True,
                             train=self.unet.training)

  def _score(self, sample, sigma, score_model=None):
    """The score at noise levels sigma (B,): the output at label sigma, as diffusers' (not
    `score(x, t)`, whose sigma(t) may differ in the last bit from the scheduler's `sigmas`)."""
    return (self.score_model() if score_model is None else score_model).output(sample, sigma)

  @torch.no_grad()
  def __call__(self, batch_size=1, num_inference_steps=2000, generator=None, output_type='pil',
               return_dict=True, **kwargs):
    """Draw `batch_size` images with `num_inference_steps` predictor-corrector steps.

    x_0 ~ N(0, sigma_max^2 I) (drawn on the generator's device, else the CPU); for each t_i in
    `scheduler.timesteps`: `correct_steps` x (score at sigma(t_i), step_correct), then the score
    at sigma(t_i) and step_pred.
    The result is the last `prev_sample_mean` (no noise on the final step) clamped to [0, 1];
    for our NCSN++ trained on centred data (config.data.centered) it is first mapped from
    [-1, 1], as the samplers' inverse scaler does.

    Args:
      batch_size: number of images B.
      num_inference_steps: number of predictor steps (model calls: (1 + correct_steps) per step).
      generator: torch.Generator or a list of B of them; all draws come from it.
      output_type: 'pil' (list of PIL images) or 'np' (float array (B, H, W, C) in [0, 1]).
      return_dict: return an ImagePipelineOutput rather than a 1-tuple.
    """
    if output_type not in ('pil', 'np'):
      raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}.")
    channels, size = self._image_shape()
    shape = (batch_size, channels, size, size)
    device = self.device
    sample = (_randn(shape, generator) * self.scheduler.init_noise_sigma).to(device)
    scheduler = self.scheduler
    scheduler.set_timesteps(num_inference_steps)
    scheduler.set_sigmas(num_inference_steps)
    score_model = self.score_model()
    sample_mean = sample
    for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
      sigma_t = scheduler.sigmas[i] * torch.ones(batch_size, device=device)
      for _ in range(scheduler.config.correct_steps):
        sample = scheduler.step_correct(self._score(sample, sigma_t, score_model), sample,
                                        generator=generator).prev_sample
      output = scheduler.step_pred(self._score(sample, sigma_t, score_model), t, sample,
                                   generator=generator)
      sample, sample_mean = output.prev_sample, output.prev_sample_mean
    if _lookup(getattr(self.unet, 'config', None), 'data', 'centered'):
      sample_mean = (sample_mean + 1.) / 2.  # trained on [-1, 1]: sampling's inverse scaler
    images = sample_mean.clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    if output_type == 'pil':
      images = self.numpy_to_pil(images)
    if not return_dict:
      return (images,)
    return ImagePipelineOutput(images=images)


def _lookup(config, *names):
  """config.a.b... or None when any level is missing (works for dicts and ConfigDicts)."""
  for name in names:
    if config is None:
      return None
    try:
      config = config[name] if isinstance(config, dict) else getattr(config, name)
    except (KeyError, AttributeError):
      return None
  return config
