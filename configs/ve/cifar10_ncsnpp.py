"""NCSN++ on CIFAR-10 trained on SMLD's N = 1000 discrete noise levels (VE, not continuous):
Song et al. (2021), Table 3, FID 2.45 / IS 9.73."""
from configs.default_cifar10_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())
  config.training.continuous = False
  config.model.embedding_type = 'positional'  # discrete noise-level index, not sigma
  return config
