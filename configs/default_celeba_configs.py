"""Defaults shared by the CelebA configs (64x64): the CIFAR-10 defaults with CelebA's data,
noise range (sigma_max 90), corrector snr and checkpoint range. Keys are documented in
`default_cifar10_configs`."""
from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs():
  config = _cifar10_defaults()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = 'CELEBA'
  config.data.image_size = 64
  config.model.sigma_max = 90.
  return config
