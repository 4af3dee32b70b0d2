"""NCSN++ cont. (VE SDE) on CelebA-HQ 1024x1024 (Song et al. 2021, Fig. 1; the paper's
1024px samples): nf 16 doubling per level up to 512 channels, sigma_max 1348, batch 8.

The official file is self-contained; here it starts from the 256x256 defaults and the VE NCSN++
setup (ve/_ncsnpp.py) and sets the values of that file which differ from them, so it also
carries the keys the other configs have (eval.enable_*, ...).
"""
from configs.default_lsun_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())

  training = config.training
  training.batch_size = 8
  training.continuous = True

  config.sampling.snr = 0.15

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.begin_ckpt = 1

  data = config.data
  data.dataset = 'CelebAHQ'
  data.image_size = 1024
  data.tfrecords_path = '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'

  model = config.model
  model.sigma_max = 1348.
  model.ema_rate = 0.9999
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.fourier_scale = 16

  config.optim.amsgrad = False
  return config
