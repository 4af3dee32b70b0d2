"""NCSN++ on CIFAR-10 trained on DDPM's N = 1000 discrete steps (VP, not continuous): the
architecture study of Song et al. (2021), Appendix H. The NCSN++ cont. config on discrete
steps, with reverse-diffusion sampling."""
from configs.vp.cifar10_ncsnpp_continuous import get_config as get_continuous_config


def get_config():
  config = get_continuous_config()
  config.training.continuous = False
  config.sampling.predictor = 'reverse_diffusion'
  del config.model.fourier_scale  # not in the official file: the embedding is positional
  return config
