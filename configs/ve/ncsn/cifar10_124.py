"""NCSN on CIFAR-10 with NCSNv2's techniques 1, 2 and 4 (Song & Ermon 2020): sigma_max 50,
232 geometric noise levels, 5 Langevin steps per level at snr 0.176; no EMA."""
from configs.ve.ncsn.cifar10 import get_config as get_base_config


def get_config():
  config = get_base_config()
  config.model.sigma_max = 50.    # technique 1: the largest distance between training images
  config.model.num_scales = 232   # technique 2: the number of geometric noise levels
  config.sampling.n_steps_each = 5  # technique 4: the Langevin steps and their step size
  config.sampling.snr = 0.176
  return config
