"""DDPM++ cont. (deep, VP SDE) on CIFAR-10, 8 residual blocks per level: Song et al. (2021),
Table 3 (FID 2.41 / IS 9.68) and Table 2 (3.13 bits/dim). The DDPM++ cont. config with twice
the res-blocks, 950k steps."""
from configs.vp.cifar10_ddpmpp_continuous import get_config as get_ddpmpp_config


def get_config():
  config = get_ddpmpp_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
