"""DDPM (Ho et al. 2020) on LSUN bedroom 256x256: N = 1000 discrete VP steps, lr 2e-5."""
from configs.default_lsun_configs import get_default_configs
from configs.vp._ddpm import set_ddpm


def get_config():
  config = set_ddpm(get_default_configs())
  config.data.category = 'bedroom'
  model = config.model
  model.num_scales = 1000
  model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.optim.lr = 2e-5
  return config
