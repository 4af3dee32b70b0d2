"""NCSN (Song & Ermon 2019) on CelebA 64x64 as published: 10 noise levels from 1 to 0.01,
annealed Langevin dynamics with 100 steps per level, no EMA.

The official file sets `training.loss = 'vesde'`, a typo that leaves `training.sde` undefined;
here it is `training.sde`."""
from configs.default_celeba_configs import get_default_configs
from configs.ve._ncsn import set_ncsn


def get_config():
  return set_ncsn(get_default_configs())
