"""DDPM++ cont. (sub-VP SDE) on CIFAR-10: Song et al. (2021), Table 3 (FID 2.61 / IS 9.56) and
Table 2 (3.02 bits/dim). DDPM++ is NCSN++ without FIR resampling or the progressive input path.
The VP config with the sub-VP SDE."""
from configs.vp.cifar10_ddpmpp_continuous import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.sde = 'subvpsde'
  return config
