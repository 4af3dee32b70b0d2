"""NCSNv2 (Song & Ermon 2020) on LSUN bedroom 128x128: 1086 noise levels from 190 to 0.01,
annealed Langevin dynamics with 3 steps per level at snr 0.095, EMA 0.9999.

The official file sets `training.continuouse = False`, a typo that leaves NCSNv2, a discrete
model, with `training.continuous = True`; here it is `training.continuous`."""
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.batch_size = 128
  training.sde = 'vesde'
  training.continuous = False

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'none'
  sampling.corrector = 'ald'
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
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.nf = 128
  model.interpolation = 'bilinear'

  optim = config.optim
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 1e-4
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.
  return config
