"""NCSN on CelebA with NCSNv2's techniques 1, 2, 4 and 5 (Song & Ermon 2020): as celeba_124
plus an EMA of the weights (rate 0.999)."""
from configs.ve.ncsn.celeba_124 import get_config as get_base_config


def get_config():
  config = get_base_config()
  config.model.ema_rate = 0.999  # technique 5: an EMA of the weights
  return config
