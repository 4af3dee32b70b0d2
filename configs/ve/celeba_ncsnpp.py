"""NCSN++ on CelebA 64x64 trained on SMLD's discrete noise levels (VE, sigma_max 90)."""
from configs.default_celeba_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())
  config.training.continuous = False
  model = config.model
  model.sigma_begin = 90  # unused (sigma_max is the one read); kept from the official config
  model.embedding_type = 'positional'
  return config
