"""NCSN (Song & Ermon 2019) on CIFAR-10 as published: 10 noise levels from 1 to 0.01, annealed
Langevin dynamics with 100 steps per level, no EMA."""
from configs.default_cifar10_configs import get_default_configs
from configs.ve._ncsn import set_ncsn


def get_config():
  return set_ncsn(get_default_configs())
