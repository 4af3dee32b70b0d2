"""DDPM's U-Net (Ho et al. 2020) trained on SMLD's N = 1000 discrete VE noise levels on
CIFAR-10, its output divided by sigma to give the score. The DDPM config (vp/ddpm/cifar10) with
the VE SDE and SMLD's choices: summed loss, data in [0, 1], reverse-diffusion + Langevin PC
sampling, EMA 0.999."""
from configs.vp.ddpm.cifar10 import get_config as get_ddpm_config


def get_config():
  config = get_ddpm_config()

  training = config.training
  training.sde = 'vesde'
  training.reduce_mean = False

  sampling = config.sampling
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'

  config.data.centered = False

  model = config.model
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.conv_size = 3
  return config
