"""NCSN++ cont. (VP SDE) on CIFAR-10: the architecture study of Song et al. (2021), Appendix H.
The DDPM++ cont. config with NCSN++'s FIR resampling and residual input path."""
from configs.vp.cifar10_ddpmpp_continuous import get_config as get_ddpmpp_config


def get_config():
  config = get_ddpmpp_config()
  model = config.model
  model.fir = True
  model.progressive_input = 'residual'
  return config
