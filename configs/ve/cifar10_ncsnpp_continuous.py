"""NCSN++ cont. (VE SDE) on CIFAR-10: Song et al. (2021), Table 3, FID 2.38 / IS 9.83."""
from configs.default_cifar10_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())
  config.training.continuous = True
  config.model.fourier_scale = 16
  return config
