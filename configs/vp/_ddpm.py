"""The DDPM setup (Ho et al. 2020) that the vp/ddpm configs on different dataset defaults share.

Not a config (`list_configs` skips files whose names start with '_'): vp/ddpm/cifar10 and
vp/ddpm/bedroom (and the configs built on them) start from it, each on its own dataset's
defaults, which is why it is a function of those defaults rather than a config. Its VP training
and sampling recipe (`set_vp`) is DDPM++'s too (vp/cifar10_ddpmpp_continuous).
"""


def set_vp(config, *, continuous, predictor):
  """Sets on `config` the VP SDE as DDPM and DDPM++ train and sample it: `continuous` time (else
  N discrete steps), a per-pixel mean loss, data in [-1, 1], and the PC sampler's `predictor`
  without a corrector. Returns `config`."""
  training = config.training
  training.sde = 'vpsde'
  training.continuous = continuous
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = predictor
  sampling.corrector = 'none'

  config.data.centered = True
  return config


def set_ddpm(config):
  """Sets on `config` (a dataset's defaults) DDPM as published: the VP SDE on N discrete steps,
  a per-pixel mean loss, data in [-1, 1], ancestral sampling, and CIFAR-10's U-Net (nf 128,
  ch_mult (1, 2, 2, 2), two res-blocks per level, attention at 16x16, EMA 0.9999).
  Returns `config`.
  """
  set_vp(config, continuous=False, predictor='ancestral_sampling')

  model = config.model
  model.name = 'ddpm'
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  return config
