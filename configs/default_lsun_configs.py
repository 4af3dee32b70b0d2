"""Defaults shared by the 256x256 configs (LSUN, and FFHQ / CelebA-HQ at 256 and 1024): the
CIFAR-10 defaults with smaller batches, longer training, sigma_max 378, 2000 noise levels and
no dropout. Keys are documented in `default_cifar10_configs`."""
from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs():
  config = _cifar10_defaults()
  training = config.training
  training.batch_size = 64
  training.n_iters = 2400001
  training.snapshot_freq_for_preemption = 5000

  config.sampling.snr = 0.075

  evaluate = config.eval
  evaluate.begin_ckpt = 50
  evaluate.end_ckpt = 96
  evaluate.batch_size = 512
  evaluate.enable_sampling = True

  config.data.dataset = 'LSUN'
  config.data.image_size = 256

  model = config.model
  model.sigma_max = 378.
  model.num_scales = 2000
  model.dropout = 0.
  return config
