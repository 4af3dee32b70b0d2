"""NCSN++ cont. (VE SDE) on FFHQ 1024x1024 (the official ve/ffhq_1024_ncsnpp_continuous
checkpoint): nf 16 doubling per level up to 512 channels, sigma_max 1348, batch 8.

The official file is self-contained; here it starts from the 256x256 defaults and sets every
value that file sets, so it also carries the keys the other configs have (eval.enable_*, ...).
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
  config = get_default_configs()

  training = config.training
  training.batch_size = 8
  training.sde = 'vesde'
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  sampling.snr = 0.15

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 96

  data = config.data
  data.dataset = 'FFHQ'
  data.image_size = 1024
  data.tfrecords_path = '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'

  model = config.model
  model.name = 'ncsnpp'
  model.scale_by_sigma = True
  model.sigma_max = 1348.
  model.num_scales = 2000
  model.ema_rate = 0.9999
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.dropout = 0.
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'output_skip'
  model.progressive_input = 'input_skip'
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.fourier_scale = 16
  model.conv_size = 3
  model.embedding_type = 'fourier'

  optim = config.optim
  optim.amsgrad = False
  return config
