"""NCSN++ and DDPM++ (Song et al. 2021, appendix H), registered as 'ncsnpp'.

A U-Net over `config.data.image_size` images: `num_res_blocks` residual blocks per resolution
(channels nf * ch_mult[level]), self-attention at `attn_resolutions`, a middle
block-attention-block, and a mirrored upsampling path fed with the skip activations. Options
(all under `config.model`):

  resblock_type        'ddpm' (DDPM block + separate resampler) or 'biggan' (resampling block)
  fir, fir_kernel      FIR resampling (StyleGAN2) instead of nearest / box filters
  progressive          output path: 'none', 'output_skip' (sum of upsampled per-level RGB
                       outputs) or 'residual' (upsampled features added at every level)
  progressive_input    input path: 'none', 'input_skip' (downsampled image merged at every
                       level) or 'residual' (learned downsampling of a running residual)
  progressive_combine  how 'input_skip' merges: 'sum' or 'cat'
  embedding_type       'fourier' (Gaussian Fourier features of log sigma; continuous only)
                       or 'positional' (sinusoidal embedding of the label)
  conditional          condition the blocks on the time embedding
  scale_by_sigma       divide the output by sigma (NCSN-style score parameterisation)
  skip_rescale         divide residual sums by sqrt(2)
  init_scale           scale of the last conv of each block (0 means near-zero init)
  checkpointing        'none' | 'blocks' | 'all': activations recomputed in the backward pass
                       (layers.call; same gradients, less memory: docs/memory.md)

`forward(x, time_cond)`: x (B, C, H, W) in [0, 1] (or [-1, 1] with `data.centered`); time_cond
(B,) is sigma for 'fourier' and the (possibly fractional) label for 'positional'. Module order
in `all_modules` is the official checkpoints' file format: build and forward walk it in step.
"""
import functools

import torch
import torch.nn as nn

from . import layers, layerspp, utils

_CHOICES = {
  'resblock_type': ('ddpm', 'biggan'),
  'progressive': ('none', 'output_skip', 'residual'),
  'progressive_input': ('none', 'input_skip', 'residual'),
  'progressive_combine': ('sum', 'cat'),
  'embedding_type': ('fourier', 'positional'),
}


def _option(config, key):
  value = config.model[key].lower()
  if value not in _CHOICES[key]:
    raise ValueError(f'config.model.{key} = {config.model[key]!r} is not one of '
                     f'{", ".join(_CHOICES[key])}.')
  return value


@utils.register_model(name='ncsnpp')
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ score network (see the module docstring for the options)."""

  def __init__(self, config):
    super().__init__()
    cm = config.model
    self.config = config
    self.act = act = layers.get_act(config)
    self.register_buffer('sigmas', torch.tensor(utils.get_sigmas(config)))  # float64, as saved

    self.nf = nf = cm.nf
    ch_mult = cm.ch_mult
    self.num_res_blocks = num_res_blocks = cm.num_res_blocks
    self.attn_resolutions = attn_resolutions = tuple(cm.attn_resolutions)
    self.num_resolutions = num_resolutions = len(ch_mult)
    self.all_resolutions = [config.data.image_size // (2 ** i) for i in range(num_resolutions)]
    self.conditional = conditional = cm.conditional
    self.centered = config.data.centered
    self.scale_by_sigma = cm.scale_by_sigma
    self.checkpointing = layers.checkpointing(config)  # recompute activations in backward
    fir, fir_kernel = cm.fir, tuple(cm.fir_kernel)
    self.skip_rescale = skip_rescale = cm.skip_rescale
    self.resblock_type = resblock_type = _option(config, 'resblock_type')
    self.progressive = progressive = _option(config, 'progressive')
    self.progressive_input = progressive_input = _option(config, 'progressive_input')
    self.embedding_type = embedding_type = _option(config, 'embedding_type')
    combine_method = _option(config, 'progressive_combine')
    init_scale = cm.init_scale
    channels = config.data.num_channels

    modules = []
    # Noise-level embedding.
    if embedding_type == 'fourier':
      if not config.training.continuous:
        raise ValueError('embedding_type "fourier" embeds sigma and needs continuous training '
                         '(config.training.continuous = True); use "positional" otherwise.')
      modules.append(layerspp.GaussianFourierProjection(embedding_size=nf, scale=cm.fourier_scale))
      embed_dim = 2 * nf
    else:
      embed_dim = nf
    if conditional:
      modules.append(layers.dense(embed_dim, nf * 4))
      modules.append(layers.dense(nf * 4, nf * 4))

    AttnBlock = functools.partial(layerspp.AttnBlockpp, init_scale=init_scale,
                                  skip_rescale=skip_rescale)
    Upsample = functools.partial(layerspp.Upsample, with_conv=cm.resamp_with_conv, fir=fir,
                                 fir_kernel=fir_kernel)
    Downsample = functools.partial(layerspp.Downsample, with_conv=cm.resamp_with_conv, fir=fir,
                                   fir_kernel=fir_kernel)
    if progressive == 'output_skip':
      self.pyramid_upsample = layerspp.Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
    pyramid_upsample = functools.partial(layerspp.Upsample, fir=fir, fir_kernel=fir_kernel,
                                         with_conv=True)
    if progressive_input == 'input_skip':
      self.pyramid_downsample = layerspp.Downsample(fir=fir, fir_kernel=fir_kernel,
                                                    with_conv=False)
    pyramid_downsample = functools.partial(layerspp.Downsample, fir=fir, fir_kernel=fir_kernel,
                                           with_conv=True)
    if resblock_type == 'ddpm':
      ResnetBlock = functools.partial(layerspp.ResnetBlockDDPMpp, act=act, dropout=cm.dropout,
                                      init_scale=init_scale, skip_rescale=skip_rescale,
                                      temb_dim=nf * 4)
    else:
      ResnetBlock = functools.partial(layerspp.ResnetBlockBigGANpp, act=act, dropout=cm.dropout,
                                      fir=fir, fir_kernel=fir_kernel, init_scale=init_scale,
                                      skip_rescale=skip_rescale, temb_dim=nf * 4)

    def output_head(in_ch, out_ch, init_scale=1.):
      return [layers.group_norm(in_ch), layerspp.conv3x3(in_ch, out_ch, init_scale=init_scale)]

    # Downsampling path.
    input_pyramid_ch = channels
    modules.append(layerspp.conv3x3(channels, nf))
    hs_c = [nf]
    in_ch = nf
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch, out_ch=out_ch))
        in_ch = out_ch
        if self.all_resolutions[i_level] in attn_resolutions:
          modules.append(AttnBlock(channels=in_ch))
        hs_c.append(in_ch)
      if i_level != num_resolutions - 1:
        if resblock_type == 'ddpm':
          modules.append(Downsample(in_ch=in_ch))
        else:
          modules.append(ResnetBlock(down=True, in_ch=in_ch))
        if progressive_input == 'input_skip':
          modules.append(layerspp.Combine(dim1=input_pyramid_ch, dim2=in_ch,
                                          method=combine_method))
          if combine_method == 'cat':
            in_ch *= 2
        elif progressive_input == 'residual':
          modules.append(pyramid_downsample(in_ch=input_pyramid_ch, out_ch=in_ch))
          input_pyramid_ch = in_ch
        hs_c.append(in_ch)

    # Middle.
    in_ch = hs_c[-1]
    modules.append(ResnetBlock(in_ch=in_ch))
    modules.append(AttnBlock(channels=in_ch))
    modules.append(ResnetBlock(in_ch=in_ch))

    # Upsampling path.
    pyramid_ch = 0
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
        in_ch = out_ch
      if self.all_resolutions[i_level] in attn_resolutions:
        modules.append(AttnBlock(channels=in_ch))
      if progressive == 'output_skip':
        modules.extend(output_head(in_ch, channels, init_scale=init_scale))
        pyramid_ch = channels
      elif progressive == 'residual':
        if i_level == num_resolutions - 1:
          modules.extend(output_head(in_ch, in_ch))
        else:
          modules.append(pyramid_upsample(in_ch=pyramid_ch, out_ch=in_ch))
        pyramid_ch = in_ch
      if i_level != 0:
        if resblock_type == 'ddpm':
          modules.append(Upsample(in_ch=in_ch))
        else:
          modules.append(ResnetBlock(in_ch=in_ch, up=True))
    assert not hs_c

    if progressive != 'output_skip':
      modules.extend(output_head(in_ch, channels, init_scale=init_scale))
    self.all_modules = nn.ModuleList(modules)
    if self.checkpointing != 'none':
      layers.checkpoint_halves(self)  # nested in the blocks' checkpoints

  def forward(self, x, time_cond):
    """Network output for images x (B, C, H, W) at noise labels time_cond (B,).

    With `scale_by_sigma` the output is divided by sigma; for 'positional' embeddings sigma is
    the float64 `sigmas` buffer at the label, so the output is then float64 (as in the
    official code).
    """
    modules = iter(self.all_modules)
    # Activation checkpointing (model.checkpointing) only where a backward pass will follow.
    train = self.training and torch.is_grad_enabled()
    blocks = train and self.checkpointing != 'none'  # residual blocks, attention, skip cats
    whole = train and self.checkpointing == 'all'    # also resamplers, pyramids, heads

    def block(*args):
      return layers.call(next(modules), *args, checkpoint=blocks)

    def other(*args):
      return layers.call(next(modules), *args, checkpoint=whole)

    if self.embedding_type == 'fourier':
      used_sigmas = time_cond
      temb = next(modules)(torch.log(time_cond))
    else:
      temb = layers.get_timestep_embedding(time_cond, self.nf)
    if self.conditional:
      temb = next(modules)(temb)
      temb = next(modules)(self.act(temb))
    else:
      temb = None
    if not self.centered:
      x = 2 * x - 1.  # data in [0, 1] -> [-1, 1]

    # Downsampling path; hs keeps every activation the upsampling path consumes.
    input_pyramid = x
    hs = [next(modules)(x)]
    for i_level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = block(hs[-1], temb)
        if self.all_resolutions[i_level] in self.attn_resolutions:
          h = block(h)
        hs.append(h)
      if i_level != self.num_resolutions - 1:
        if self.resblock_type == 'ddpm':
          h = other(hs[-1])
        else:
          h = block(hs[-1], temb)
        if self.progressive_input == 'input_skip':
          input_pyramid = self.pyramid_downsample(input_pyramid)
          h = other(input_pyramid, h)
        elif self.progressive_input == 'residual':
          input_pyramid = layers.call(_residual, next(modules), input_pyramid, h,
                                      self.skip_rescale, checkpoint=whole)
          h = input_pyramid
        hs.append(h)

    # Middle.
    h = hs[-1]
    h = block(h, temb)
    h = block(h)
    h = block(h, temb)

    # Upsampling path.
    pyramid = None
    for i_level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = layers.call(layers.cat_call, next(modules), h, hs.pop(), temb, checkpoint=blocks)
      if self.all_resolutions[i_level] in self.attn_resolutions:
        h = block(h)
      if self.progressive == 'output_skip':
        pyramid_h = self._head(modules, h, whole)
        if pyramid is None:
          pyramid = pyramid_h
        else:
          pyramid = self.pyramid_upsample(pyramid) + pyramid_h
      elif self.progressive == 'residual':
        if pyramid is None:
          pyramid = self._head(modules, h, whole)
        else:
          pyramid = layers.call(_residual, next(modules), pyramid, h, self.skip_rescale,
                                checkpoint=whole)
          h = pyramid
      if i_level != 0:
        if self.resblock_type == 'ddpm':
          h = other(h)
        else:
          h = block(h, temb)
    assert not hs

    if self.progressive == 'output_skip':
      h = pyramid
    else:
      h = self._head(modules, h, whole)
    assert next(modules, None) is None, 'forward did not use every module'

    if self.scale_by_sigma:
      if self.embedding_type == 'positional':
        used_sigmas = self.sigmas[time_cond.long()]
      h = h / used_sigmas.reshape(-1, *([1] * (h.dim() - 1)))
    return h

  def _head(self, modules, h, checkpoint=False):
    norm, conv = next(modules), next(modules)  # GroupNorm then conv3x3, in list order
    return layers.call(_head, norm, self.act, conv, h, checkpoint=checkpoint)


def _head(norm, act, conv, h):
  """conv(act(norm(h))): an output head (full resolution at level 0)."""
  return conv(act(norm(h)))


def _residual(resample, pyramid, h, skip_rescale):
  """The 'residual' pyramids' step: resample(pyramid) + h (over sqrt(2) with skip_rescale)."""
  return layers.residual_sum(resample(pyramid), h, skip_rescale)
