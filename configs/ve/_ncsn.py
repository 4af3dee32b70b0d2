"""NCSN (Song & Ermon 2019) as published, which the NCSN and NCSNv2 configs share.

Not a config (`list_configs` skips files whose names start with '_'): ve/ncsn/cifar10,
ve/ncsn/celeba and ve/ncsnv2/bedroom start from it, each on its own dataset's defaults, which is
why it is a function of those defaults rather than a config. The NCSNv2 techniques configs
(ve/ncsn/*_124, *_1245, *_5) and ve/ncsnv2/{cifar10,celeba} change from those two NCSN configs.
"""


def set_ncsn(config):
  """Sets on `config` (a dataset's defaults) NCSN as published: 10 discrete VE noise levels from
  sigma_max 1 to sigma_min 0.01, annealed Langevin dynamics (100 steps per level, snr 0.316) with
  no predictor, the RefineNet `ncsn` network without scaling by sigma, no EMA, and Adam at
  lr 1e-3 with no warm-up or gradient clipping. Returns `config`.
  """
  training = config.training
  training.sde = 'vesde'
  training.continuous = False

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'none'
  sampling.corrector = 'ald'
  sampling.n_steps_each = 100
  sampling.snr = 0.316

  model = config.model
  model.name = 'ncsn'
  model.scale_by_sigma = False
  model.sigma_max = 1.
  model.num_scales = 10
  model.ema_rate = 0.
  model.normalization = 'InstanceNorm++'
  model.nonlinearity = 'elu'
  model.nf = 128
  model.interpolation = 'bilinear'

  optim = config.optim
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 1e-3
  optim.beta1 = 0.9
  optim.amsgrad = False
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.
  return config
