"""NCSN++ cont. (deep, VP SDE) on CIFAR-10, 8 residual blocks per level: the architecture study
of Song et al. (2021), Appendix H. The NCSN++ cont. config with twice the res-blocks, 950k
steps."""
from configs.vp.cifar10_ncsnpp_continuous import get_config as get_ncsnpp_config


def get_config():
  config = get_ncsnpp_config()
  config.training.n_iters = 950001
  config.model.num_res_blocks = 8
  return config
