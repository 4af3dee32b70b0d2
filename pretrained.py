"""The digits score models shipped in assets/pretrained/: the EMA weights of the README's
quick-start runs, in score_sde_pytorch's checkpoint layout, stored in float16 (loaded as float32).

    import pretrained, torchvision
    model, config = pretrained.load('ve_digits')                    # CUDA when present, else CPU
    images, nfe = pretrained.sample(model, config, num=64, seed=0)  # the config's own sampler
    torchvision.utils.save_image(images, 'digits.png', nrow=8)

A file holds {'model': `module.`-prefixed state dict, 'ema': {'decay', 'num_updates',
'shadow_params'}, 'step', 'meta'}, the model entry and the EMA shadows being the same tensors
(stored once). It loads with `utils.restore_checkpoint(path, dict(model=model, ema=ema, step=0),
device)` and `weights_only=True`; 'meta' records how it was made (config, step, date, final eval
loss, the training command). scripts/export_pretrained.py writes these files from a training run.
"""
import pathlib

import torch
import torch.nn.functional as F

import datasets
import fast_sampling
import sampling
import sde_lib
from checkpoints import load_checkpoint_file, load_score_model
from configs import load_config
from models.utils import default_device

PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent / 'assets' / 'pretrained'
MODELS = {  # shipped name -> the config it was trained with
  've_digits': 've/digits_ncsnpp_continuous',
  'vp_digits': 'vp/digits_ddpmpp_continuous',
}


def path_of(name_or_path):
  """assets/pretrained/<name>.pth for a shipped name ('ve_digits'), else the path as given."""
  if name_or_path in MODELS:
    return PRETRAINED_DIR / f'{name_or_path}.pth'
  path = pathlib.Path(name_or_path)
  if not path.exists() and path.suffix == '' and len(path.parts) == 1:
    raise FileNotFoundError(f'{name_or_path!r} is neither a shipped model ({", ".join(MODELS)}) '
                            'nor a checkpoint file.')
  return path


def read_meta(name_or_path):
  """The 'meta' dict of a shipped file (plain str / int / float values); {} if it has none."""
  return dict(load_checkpoint_file(path_of(name_or_path)).get('meta', {}))


def load(name_or_path='ve_digits', config=None, device=None):
  """A shipped model (or any checkpoint) with its EMA weights, in eval mode.

  Args:
    name_or_path: 've_digits', 'vp_digits', or the path of a checkpoint file.
    config: its config (a name under configs/ or a ConfigDict); default: the one in the file's
      meta.
    device: default CUDA when available, else CPU.
  Returns:
    (model, config), config.device set to `device`.
  """
  path = path_of(name_or_path)
  if config is None:
    config = read_meta(path).get('config') or MODELS.get(name_or_path)
    if config is None:
      raise ValueError(f'{path} names no config in its meta: pass config= (a name under configs/).')
  if isinstance(config, str):
    config = load_config(config)
  config.device = torch.device(device or default_device())
  model, _ = load_score_model(config, path)  # as main.py --mode sample loads
  return model, config


def sample(model, config, num=64, seed=0):
  """`num` images from the sampler config.sampling selects, noise from a CPU generator `seed`.

  Returns:
    (images (num, C, H, W) in [0, 1], number of network evaluations).
  """
  sde, eps = sde_lib.get_sde(config)
  shape = (num, config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config),
                                     eps)
  return sampler(model, generator=torch.Generator().manual_seed(seed))


# What the fingerprint is: a deterministic 10-evaluation sampler (DPM-Solver++ 2M) on 4 images,
# average-pooled to 4x4, so that it catches a changed network or file but not CPU rounding.
FINGERPRINT = dict(num=4, seed=0, num_steps=10, order=2, method='multistep', pool=4)


def fingerprint(model, config, pool=FINGERPRINT['pool']):
  """Samples of a fixed seed, average-pooled: (num, C, H / pool, W / pool) float64 on the CPU."""
  f = FINGERPRINT
  sde, eps = sde_lib.get_sde(config)
  shape = (f['num'], config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler = fast_sampling.get_dpm_solver_sampler(
    sde, shape, datasets.get_data_inverse_scaler(config), num_steps=f['num_steps'],
    order=f['order'], method=f['method'], eps=eps, device=config.device)
  images, _ = sampler(model, generator=torch.Generator().manual_seed(f['seed']))
  return F.avg_pool2d(images.double().cpu(), pool)
