"""The DDPM U-Net (Ho et al. 2020, as in their diffusion_tf/models/unet.py), registered as 'ddpm'.

`num_res_blocks` DDPM residual blocks per resolution (channels nf * ch_mult[level]),
self-attention at `attn_resolutions`, a block-attention-block middle and a mirrored upsampling
path; GroupNorm always uses 32 groups. `forward(x, labels)`: x (B, C, H, W) in [0, 1] (or
[-1, 1] with `data.centered`), labels (B,) the (possibly fractional) time step, embedded
sinusoidally. Module order in `all_modules` is the official checkpoints' file format.
`model.checkpointing` ('none' | 'blocks' | 'all') recomputes activations in the backward pass
(as in NCSN++; docs/memory.md).
"""
import functools

import torch
import torch.nn as nn

from . import layers, utils


@utils.register_model(name='ddpm')
class DDPM(nn.Module):
  """DDPM score network. Unlike score_sde_pytorch, `model.conditional = False` builds."""

  def __init__(self, config):
    super().__init__()
    cm = config.model
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
    channels = config.data.num_channels
    resamp_with_conv = cm.resamp_with_conv

    ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, temb_dim=4 * nf,
                                    dropout=cm.dropout)
    modules = []
    if conditional:  # time-step embedding MLP
      modules.append(layers.dense(nf, nf * 4))
      modules.append(layers.dense(nf * 4, nf * 4))

    # Downsampling path.
    modules.append(layers.ddpm_conv3x3(channels, nf))
    hs_c = [nf]
    in_ch = nf
    for i_level in range(num_resolutions):
      for _ in range(num_res_blocks):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch, out_ch=out_ch))
        in_ch = out_ch
        if self.all_resolutions[i_level] in attn_resolutions:
          modules.append(layers.AttnBlock(channels=in_ch))
        hs_c.append(in_ch)
      if i_level != num_resolutions - 1:
        modules.append(layers.Downsample(in_ch=in_ch, with_conv=resamp_with_conv))
        hs_c.append(in_ch)

    # Middle.
    in_ch = hs_c[-1]
    modules.append(ResnetBlock(in_ch=in_ch))
    modules.append(layers.AttnBlock(channels=in_ch))
    modules.append(ResnetBlock(in_ch=in_ch))

    # Upsampling path.
    for i_level in reversed(range(num_resolutions)):
      for _ in range(num_res_blocks + 1):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
        in_ch = out_ch
      if self.all_resolutions[i_level] in attn_resolutions:
        modules.append(layers.AttnBlock(channels=in_ch))
      if i_level != 0:
        modules.append(layers.Upsample(in_ch=in_ch, with_conv=resamp_with_conv))
    assert not hs_c

    modules.append(layers.group_norm(in_ch, num_groups=32))
    modules.append(layers.ddpm_conv3x3(in_ch, channels, init_scale=0.))
    self.all_modules = nn.ModuleList(modules)
    if self.checkpointing != 'none':
      layers.checkpoint_halves(self)  # nested in the blocks' checkpoints

  def forward(self, x, labels):
    """Network output (B, C, H, W); divided by sigmas[labels] (float64) with `scale_by_sigma`."""
    modules = iter(self.all_modules)
    # Activation checkpointing (model.checkpointing) only where a backward pass will follow.
    train = self.training and torch.is_grad_enabled()
    blocks = train and self.checkpointing != 'none'  # residual blocks, attention, skip cats
    whole = train and self.checkpointing == 'all'    # also the resamplers and the head

    def block(*args):
      return layers.call(next(modules), *args, checkpoint=blocks)

    if self.conditional:
      temb = layers.get_timestep_embedding(labels, self.nf)
      temb = next(modules)(temb)
      temb = next(modules)(self.act(temb))
    else:
      temb = None
    h = x if self.centered else 2 * x - 1.  # data in [0, 1] -> [-1, 1]

    hs = [next(modules)(h)]
    for i_level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = block(hs[-1], temb)
        if self.all_resolutions[i_level] in self.attn_resolutions:
          h = block(h)
        hs.append(h)
      if i_level != self.num_resolutions - 1:
        hs.append(layers.call(next(modules), hs[-1], checkpoint=whole))

    h = hs[-1]
    h = block(h, temb)
    h = block(h)
    h = block(h, temb)

    for i_level in reversed(range(self.num_resolutions)):
      for _ in range(self.num_res_blocks + 1):
        h = layers.call(layers.cat_call, next(modules), h, hs.pop(), temb, checkpoint=blocks)
      if self.all_resolutions[i_level] in self.attn_resolutions:
        h = block(h)
      if i_level != 0:
        h = layers.call(next(modules), h, checkpoint=whole)
    assert not hs

    norm, conv = next(modules), next(modules)  # GroupNorm then conv3x3, in list order
    h = layers.call(_head, norm, self.act, conv, h, checkpoint=whole)
    assert next(modules, None) is None, 'forward did not use every module'

    if self.scale_by_sigma:
      # NCSN-style parameterisation; the DDPM loss scales by sigma itself, so configs leave it off.
      h = h / self.sigmas[labels.long()].reshape(-1, 1, 1, 1)
    return h


def _head(norm, act, conv, h):
  """conv(act(norm(h))): the full-resolution output head."""
  return conv(act(norm(h)))
