"""DDPM++ cont. (VP SDE) on CIFAR-10: Song et al. (2021), Table 3 (FID 2.55 / IS 9.58) and
Table 2 (3.16 bits/dim). DDPM++ is NCSN++ without FIR resampling or the progressive input path."""
from configs.default_cifar10_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp_network
from configs.vp._ddpm import set_vp


def get_config():
  config = set_vp(get_default_configs(), continuous=True, predictor='euler_maruyama')
  model = set_ncsnpp_network(config.model, scale_by_sigma=False, ema_rate=0.9999, fir=False,
                             progressive_input='none')
  model.embedding_type = 'positional'
  model.fourier_scale = 16
  return config
