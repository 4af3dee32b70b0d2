"""DDPM cont. (VP SDE) on CIFAR-10: DDPM's U-Net trained on continuous time, Song et al. (2021),
Table 2 (3.21 bits/dim). The DDPM config on continuous time, sampled with Euler-Maruyama."""
from configs.vp.ddpm.cifar10 import get_config as get_ddpm_config


def get_config():
  config = get_ddpm_config()
  config.training.continuous = True
  config.sampling.predictor = 'euler_maruyama'
  return config
