"""NCSN++ cont. (VE SDE) on LSUN bedroom 256x256 (Song et al. 2021, samples in the README)."""
from configs.default_lsun_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())
  config.training.continuous = True
  config.data.category = 'bedroom'

  model = config.model  # CIFAR-10's NCSN++ at 256x256: 7 levels, progressive in- and output
  model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
  model.num_res_blocks = 2
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.fourier_scale = 16
  return config
