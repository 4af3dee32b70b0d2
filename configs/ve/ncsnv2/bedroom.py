"""NCSNv2 (Song & Ermon 2020) on LSUN bedroom 128x128: 1086 noise levels from 190 to 0.01,
annealed Langevin dynamics with 3 steps per level at snr 0.095, EMA 0.9999.

The official file sets `training.continuouse = False`, a typo that leaves NCSNv2, a discrete
model, with `training.continuous = True`; here it is `training.continuous`."""
from configs.default_lsun_configs import get_default_configs
from configs.ve._ncsn import set_ncsn


def get_config():
  config = set_ncsn(get_default_configs())  # NCSN's setup, then NCSNv2's values for bedroom
  config.training.batch_size = 128

  sampling = config.sampling
  sampling.n_steps_each = 3
  sampling.snr = 0.095

  data = config.data
  data.category = 'bedroom'
  data.image_size = 128

  model = config.model
  model.name = 'ncsnv2_128'
  model.scale_by_sigma = True
  model.sigma_max = 190.
  model.sigma_min = 0.01
  model.num_scales = 1086
  model.ema_rate = 0.9999

  config.optim.lr = 1e-4
  return config
