"""NCSN++ cont. (VE SDE) on LSUN church_outdoor 256x256, sigma_max 380 (Song et al. 2021,
samples in the README). The bedroom config on another LSUN category."""
from configs.ve.bedroom_ncsnpp_continuous import get_config as get_bedroom_config


def get_config():
  config = get_bedroom_config()
  config.data.category = 'church_outdoor'
  config.model.sigma_max = 380.
  return config
