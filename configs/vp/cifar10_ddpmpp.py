"""DDPM++ on CIFAR-10 trained on DDPM's N = 1000 discrete steps (VP, not continuous): Song et
al. (2021), Table 3, FID 2.78 / IS 9.64. DDPM++ is NCSN++ without FIR resampling or the
progressive input path. The DDPM++ cont. config on discrete steps, with ancestral sampling."""
from configs.vp.cifar10_ddpmpp_continuous import get_config as get_continuous_config


def get_config():
  config = get_continuous_config()
  config.training.continuous = False
  config.sampling.predictor = 'ancestral_sampling'
  return config
