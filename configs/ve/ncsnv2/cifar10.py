"""NCSNv2 (Song & Ermon 2020) on CIFAR-10: 232 noise levels from 50 to 0.01, annealed Langevin
dynamics with 5 steps per level at snr 0.176, EMA 0.999. NCSN with techniques 1, 2, 4 and 5
(ve/ncsn/cifar10_1245) plus technique 3, in NCSNv2's network, at lr 1e-4."""
from configs.ve.ncsn.cifar10_1245 import get_config as get_base_config


def get_config():
  config = get_base_config()
  config.model.name = 'ncsnv2_64'
  config.model.scale_by_sigma = True  # technique 3: the output divided by sigma
  config.optim.lr = 1e-4
  return config
