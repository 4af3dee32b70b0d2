"""NCSN++ cont. (deep, sub-VP SDE) on CIFAR-10, 8 residual blocks per level: the architecture
study of Song et al. (2021), Appendix H.
The VP config with the sub-VP SDE."""
from configs.vp.cifar10_ncsnpp_deep_continuous import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.sde = 'subvpsde'
  return config
