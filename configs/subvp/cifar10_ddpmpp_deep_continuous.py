"""DDPM++ cont. (deep, sub-VP SDE) on CIFAR-10, 8 residual blocks per level: Song et al. (2021),
Table 3 (FID 2.41 / IS 9.57) and Table 2 (2.99 bits/dim).
The VP config with the sub-VP SDE."""
from configs.vp.cifar10_ddpmpp_deep_continuous import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.sde = 'subvpsde'
  return config
