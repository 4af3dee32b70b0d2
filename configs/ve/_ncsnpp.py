"""The VE NCSN++ setup (Song et al. 2021) that configs on different dataset defaults share, and
the NCSN++ network it uses, which DDPM++ (vp/cifar10_ddpmpp_continuous) shares too.

Not a config (`list_configs` skips files whose names start with '_'): ve/cifar10_ncsnpp*,
ve/celeba_ncsnpp, ve/bedroom_ncsnpp_continuous (and the 256x256 configs built on it),
ve/celebahq_ncsnpp_continuous and ve/digits_ncsnpp_continuous start from it, each on its own
dataset's defaults, which is why it is a function of those defaults rather than a config.
"""


def set_ncsnpp_network(model, *, scale_by_sigma, ema_rate, fir, progressive_input):
  """Sets on `model` (a config's model section) CIFAR-10's NCSN++ network: nf 128, four levels
  of four BigGAN res-blocks, attention at 16x16, GroupNorm and swish. Returns `model`.

  The arguments are what the paper's VE NCSN++ and VP DDPM++ set differently: whether the output
  is divided by sigma (a VE score model), the EMA rate, FIR resampling and the input path
  ('residual' for NCSN++; DDPM++ is NCSN++ without FIR and with 'none').
  """
  model.name = 'ncsnpp'
  model.scale_by_sigma = scale_by_sigma
  model.ema_rate = ema_rate
  model.normalization = 'GroupNorm'
  model.nonlinearity = 'swish'
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = fir
  model.fir_kernel = [1, 3, 3, 1]
  model.skip_rescale = True
  model.resblock_type = 'biggan'
  model.progressive = 'none'
  model.progressive_input = progressive_input
  model.progressive_combine = 'sum'
  model.attention_type = 'ddpm'
  model.init_scale = 0.
  model.conv_size = 3
  return model


def set_ncsnpp(config):
  """Sets on `config` (a dataset's defaults) the VE SDE, the reverse-diffusion + Langevin PC
  sampler and CIFAR-10's NCSN++ network: nf 128, four levels of four BigGAN res-blocks,
  attention at 16x16, FIR resampling, a residual input path. Returns `config`.

  The caller sets `training.continuous` and the time embedding that goes with it: Fourier
  features of sigma (`model.fourier_scale`) when continuous, the positional index of the noise
  level (`model.embedding_type = 'positional'`) when not.
  """
  config.training.sde = 'vesde'

  sampling = config.sampling
  sampling.method = 'pc'
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'

  set_ncsnpp_network(config.model, scale_by_sigma=True, ema_rate=0.999, fir=True,
                     progressive_input='residual')
  return config
