"""Blocks of NCSN++ / DDPM++ (Song et al. 2021, appendix H): Fourier noise embedding, pyramid
combiners, BigGAN-style residual blocks with FIR resampling, and the DDPM blocks with the
"++" options (min(C // 4, 32) GroupNorm groups, `init_scale`, `skip_rescale`).

Parameter names are those of the official checkpoints.
"""
import numpy as np
import torch
import torch.nn as nn

from . import layers
from . import up_or_down_sampling
from .layers import Downsample, Upsample  # noqa: F401  (the "++" resamplers are the same class)

conv1x1 = layers.ddpm_conv1x1
conv3x3 = layers.ddpm_conv3x3
NIN = layers.NIN
default_init = layers.default_init


class GaussianFourierProjection(nn.Module):
  """Random Fourier features of log(sigma) (Tancik et al. 2020), used by continuous NCSN++.

  emb = [sin(2 pi x W), cos(2 pi x W)] with fixed W ~ N(0, scale^2) (`requires_grad=False`, so it
  is saved in the state dict but neither trained nor tracked by the EMA).
  """

  def __init__(self, embedding_size=256, scale=1.0):
    super().__init__()
    self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

  def forward(self, x):
    """x: (B,) -> (B, 2 * embedding_size)."""
    # This operation order matters: the angles reach ~1e3 rad, so premultiplying W by 2 pi
    # changes float32 rounding enough to move outputs by ~4e-5 relative.
    x_proj = x[:, None] * self.W[None, :] * 2 * np.pi
    return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class Combine(nn.Module):
  """Merge the input-pyramid image x into features y: cat([Conv_0(x), y]) or Conv_0(x) + y."""

  def __init__(self, dim1, dim2, method='cat'):
    super().__init__()
    if method not in ('cat', 'sum'):
      raise ValueError(f'Unknown progressive_combine method {method!r}; use cat or sum.')
    self.Conv_0 = conv1x1(dim1, dim2)  # 1x1 projection of the pyramid image to dim2 channels
    self.method = method

  def forward(self, x, y):
    h = self.Conv_0(x)
    return torch.cat([h, y], dim=1) if self.method == 'cat' else h + y


class AttnBlockpp(layers.AttnBlock):
  """DDPM++ self-attention: min(C // 4, 32) GroupNorm groups, `init_scale`, `skip_rescale`."""

  def __init__(self, channels, skip_rescale=False, init_scale=0.):
    super().__init__(channels, num_groups=None, init_scale=init_scale, skip_rescale=skip_rescale)


class ResnetBlockDDPMpp(layers.ResnetBlockDDPM):
  """DDPM residual block with min(C // 4, 32) GroupNorm groups (see `layers.ResnetBlockDDPM`)."""

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
               skip_rescale=False, init_scale=0.):
    super().__init__(act, in_ch, out_ch=out_ch, temb_dim=temb_dim, conv_shortcut=conv_shortcut,
                     dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale,
                     num_groups=None)


class ResnetBlockBigGANpp(layers.RecomputedHalves, nn.Module):
  """BigGAN-style residual block, optionally resampling by 2 (Brock et al. 2019; NCSN++).

  h = GN-act, resampled (FIR or nearest/box), Conv_0, + Dense_0(act(temb)), GN-act-dropout,
  Conv_1; the shortcut is resampled the same way and projected by the 1x1 `Conv_2` when the
  channels change or the block resamples. out = (x + h) / sqrt(2) with `skip_rescale`.
  """

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1,
               fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.):
    super().__init__()
    if up and down:
      raise ValueError('ResnetBlockBigGANpp cannot both upsample and downsample.')
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = layers.group_norm(in_ch)
    self.Conv_0 = conv3x3(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = layers.dense(temb_dim, out_ch)  # time embedding -> per-channel bias
    self.GroupNorm_1 = layers.group_norm(out_ch)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
    if in_ch != out_ch or up or down:
      self.Conv_2 = conv1x1(in_ch, out_ch)
    self.act = act                      # activation module
    self.in_ch = in_ch
    self.out_ch = out_ch
    self.up = up                        # upsample by 2 before Conv_0
    self.down = down                    # downsample by 2 before Conv_0
    self.fir = fir                      # FIR resampling instead of nearest / box filter
    self.fir_kernel = tuple(fir_kernel)  # 1-D FIR taps
    self.skip_rescale = skip_rescale    # divide the sum by sqrt(2)

  def _resample(self, x):
    if self.up:
      if self.fir:
        return up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
      return up_or_down_sampling.naive_upsample_2d(x, factor=2)
    if self.down:
      if self.fir:
        return up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
      return up_or_down_sampling.naive_downsample_2d(x, factor=2)
    return x

  def _first_half(self, x, temb):
    return self._add_temb(self.Conv_0(self._resample(self.act(self.GroupNorm_0(x)))), temb)

  def forward(self, x, temb=None):
    h = self._two_halves(x, temb)
    x = self._resample(x)
    if self.in_ch != self.out_ch or self.up or self.down:
      x = self.Conv_2(x)
    return layers.residual_sum(x, h, self.skip_rescale)
