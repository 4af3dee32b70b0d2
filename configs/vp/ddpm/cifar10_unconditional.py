"""DDPM on CIFAR-10 without time conditioning (NCSNv2's technique 3: the network is not told
the noise level)."""
from configs.vp.ddpm.cifar10 import get_config as get_ddpm_config


def get_config():
  config = get_ddpm_config()
  config.model.conditional = False
  return config
