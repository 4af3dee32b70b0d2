"""DDPM (Ho et al. 2020) on CIFAR-10: N = 1000 discrete VP steps, ancestral sampling. The
official vp/cifar10_ddpm checkpoint has FID 3.24 and 3.28 bits/dim (score_sde README)."""
from configs.default_cifar10_configs import get_default_configs
from configs.vp._ddpm import set_ddpm


def get_config():
  return set_ddpm(get_default_configs())
