"""NCSN on CIFAR-10 with NCSNv2's technique 5 only (Song & Ermon 2020): the original 10 noise
levels and sampler, plus an EMA of the weights (rate 0.999)."""
from configs.ve.ncsn.cifar10 import get_config as get_base_config


def get_config():
  config = get_base_config()
  config.model.ema_rate = 0.999  # technique 5: an EMA of the weights
  return config
