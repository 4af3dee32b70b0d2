"""DDPM (Ho et al. 2020) on LSUN church_outdoor 256x256: N = 1000 discrete VP steps, lr 2e-5.
The bedroom config on another LSUN category."""
from configs.vp.ddpm.bedroom import get_config as get_bedroom_config


def get_config():
  config = get_bedroom_config()
  config.data.category = 'church_outdoor'
  return config
