"""DDPM cont. (sub-VP SDE) on CIFAR-10: DDPM's U-Net trained on continuous time, Song et al.
(2021), Table 2 (3.05 bits/dim).
The VP config with the sub-VP SDE."""
from configs.vp.ddpm.cifar10_continuous import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.sde = 'subvpsde'
  return config
