"""Building blocks of the DDPM-family score networks (Ho et al. 2020), shared with NCSN++/DDPM++.

Initialisation follows the official code: JAX-style variance scaling (`default_init`), applied
after PyTorch's own init so that `torch.manual_seed(s)` gives the same weights as
score_sde_pytorch. Parameter names (`GroupNorm_0`, `Conv_0`, `NIN_0`, `W`, `b`, ...) are those of
the official checkpoints.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from . import up_or_down_sampling

_ACTIVATIONS = {
  'elu': nn.ELU,
  'relu': nn.ReLU,
  'lrelu': lambda: nn.LeakyReLU(negative_slope=0.2),
  'swish': nn.SiLU,
}


# config.model.checkpointing: which activations the training forward pass keeps for backward.
# 'blocks' keeps only the inputs of each residual block and attention layer (the up path's skip
# concatenation included) and recomputes their insides; 'all' also the resamplers, the input /
# output pyramids and the output heads (docs/memory.md measures both).
CHECKPOINTING = ('none', 'blocks', 'all')


def checkpointing(config):
  """config.model.checkpointing, checked."""
  value = config.model.checkpointing
  if value not in CHECKPOINTING:
    raise ValueError(f'Unknown config.model.checkpointing {value!r}; known: '
                     f'{", ".join(CHECKPOINTING)}.')
  return value


def call(fn, *args, checkpoint=False):
  """fn(*args); with `checkpoint`, its activations are freed and recomputed in the backward pass.

  torch.utils.checkpoint, non-reentrant (composes with autocast, torch.compile and DDP) and with
  the RNG state preserved: the recomputation draws the same dropout mask and runs the same
  kernels on the same inputs, so gradients are bitwise those of the plain call. Callers pass
  checkpoint=False in eval mode and under no_grad (a plain call, no overhead).
  """
  if checkpoint:
    return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False,
                                             preserve_rng_state=True)
  return fn(*args)


class RecomputedHalves:
  """A residual block's two halves (GN-act-conv + temb; GN-act-dropout-conv), recomputable one
  at a time.

  With `checkpoint_halves` (set by `checkpoint_halves(model)` for model.checkpointing 'blocks'
  and 'all'), each half is a checkpoint nested in the block's: when the backward pass recomputes
  the block, it keeps only the halves' inputs and then recomputes one half at a time, so the
  insides of both are never held at once. On CelebA-HQ 256 this cuts the up path's peak (a
  256-channel concatenation at 256 x 256) by a sixth (docs/memory.md). Same kernels on the same
  inputs and the RNG state preserved: the gradients stay bitwise those without checkpointing.
  """
  checkpoint_halves = False

  def _two_halves(self, x, temb):
    """GN-act-(resample)-Conv_0 (+ Dense_0(act(temb))), then GN-act-dropout-Conv_1: (B, out, H', W')."""
    inner = self.checkpoint_halves and self.training and torch.is_grad_enabled()
    h = call(self._first_half, x, temb, checkpoint=inner)
    return call(self._second_half, h, checkpoint=inner)

  def _add_temb(self, h, temb):
    if temb is not None:
      h += self.Dense_0(self.act(temb))[:, :, None, None]
    return h

  def _second_half(self, h):
    return self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))


def checkpoint_halves(model, on=True):
  """Nest the halves' checkpoints (RecomputedHalves) in every residual block of `model` (or not:
  the model sets this for its model.checkpointing; whoever changes that later calls it again)."""
  for module in model.modules():
    if isinstance(module, RecomputedHalves):
      module.checkpoint_halves = on


class _CatChannels(torch.autograd.Function):
  """torch.cat([h, skip], 1) whose backward returns the two gradients as tensors of their own.

  Plain cat hands back views into one gradient of the concatenation; the skip's view waits for
  the down path's gradient (the end of the backward pass) and keeps the whole 2x-wide storage
  alive, 128 MiB per up-path block at 256 x 256 at batch 2. Same values, so the same sums.
  """

  @staticmethod
  def forward(ctx, h, skip):
    ctx.channels = h.shape[1]
    return torch.cat([h, skip], dim=1)

  @staticmethod
  def backward(ctx, grad):
    return grad[:, :ctx.channels].clone(), grad[:, ctx.channels:].clone()


def cat_call(block, h, skip, temb):
  """block(cat([h, skip], channels), temb): an up-path block with its skip concatenation, so a
  checkpoint keeps h and skip (the latter alive anyway) instead of the 2x wider concatenation."""
  return block(_CatChannels.apply(h, skip), temb)


def get_act(config):
  """The activation module named by `config.model.nonlinearity` (elu, relu, lrelu, swish)."""
  name = config.model.nonlinearity.lower()
  if name not in _ACTIVATIONS:
    raise ValueError(f'Unknown config.model.nonlinearity {config.model.nonlinearity!r}; '
                     f'known: {", ".join(sorted(_ACTIVATIONS))}.')
  return _ACTIVATIONS[name]()


def variance_scaling(scale, mode, distribution, in_axis=1, out_axis=0, dtype=torch.float32,
                     device=None):
  """JAX's variance-scaling initialiser: Var[w] = scale / fan, fan chosen by `mode`.

  Fans of a weight of shape `shape`: fan_in = shape[in_axis] * receptive field, fan_out =
  shape[out_axis] * receptive field; `mode` is 'fan_in', 'fan_out' or 'fan_avg' (their mean).
  `distribution` 'uniform' draws U(-sqrt(3 var), sqrt(3 var)), 'normal' draws N(0, var).
  Returns init(shape, dtype, device) -> tensor (on the default device when device is None).
  """
  if mode not in ('fan_in', 'fan_out', 'fan_avg'):
    raise ValueError(f'Invalid variance-scaling mode {mode!r}; use fan_in, fan_out or fan_avg.')
  if distribution not in ('uniform', 'normal'):
    raise ValueError(f'Invalid variance-scaling distribution {distribution!r}.')

  def init(shape, dtype=dtype, device=device):
    receptive_field = np.prod(shape) / shape[in_axis] / shape[out_axis]
    fan_in = shape[in_axis] * receptive_field
    fan_out = shape[out_axis] * receptive_field
    denominator = {'fan_in': fan_in, 'fan_out': fan_out, 'fan_avg': (fan_in + fan_out) / 2}[mode]
    variance = scale / denominator
    # Same draws and arithmetic as score_sde_pytorch, so seeds reproduce its weights.
    if distribution == 'normal':
      return torch.randn(*shape, dtype=dtype, device=device) * np.sqrt(variance)
    return (torch.rand(*shape, dtype=dtype, device=device) * 2. - 1.) * np.sqrt(3 * variance)

  return init


def default_init(scale=1.):
  """DDPM's initialiser: uniform variance scaling, fan_avg; scale 0 means 1e-10 (near zero)."""
  return variance_scaling(1e-10 if scale == 0 else scale, 'fan_avg', 'uniform')


def _reinit_(module, init_scale=1.):
  """Overwrite `module.weight` with `default_init(init_scale)` and zero its bias."""
  with torch.no_grad():
    module.weight.copy_(default_init(init_scale)(module.weight.shape))
    if module.bias is not None:
      module.bias.zero_()
  return module


def ddpm_conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1., padding=0):
  """1x1 convolution with DDPM initialisation."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=padding, bias=bias)
  return _reinit_(conv, init_scale)


def ddpm_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.,
                 padding=1):
  """3x3 convolution with DDPM initialisation."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=padding,
                   dilation=dilation, bias=bias)
  return _reinit_(conv, init_scale)


def dense(in_features, out_features):
  """nn.Linear with DDPM initialisation (weights `default_init()`, zero bias)."""
  return _reinit_(nn.Linear(in_features, out_features))


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """Sinusoidal embedding of (possibly fractional) time steps (Vaswani et al. 2017; DDPM).

  emb[:, i] = sin(t * f_i), emb[:, half + i] = cos(t * f_i), f_i = max_positions^(-i / (half - 1)).

  Args:
    timesteps: (B,) tensor of labels (float or int).
    embedding_dim: output width; odd widths are zero-padded.
  Returns:
    (B, embedding_dim) float32.
  """
  if timesteps.dim() != 1:
    raise ValueError(f'timesteps must be 1-D (B,), got shape {tuple(timesteps.shape)}.')
  half_dim = embedding_dim // 2
  rate = math.log(max_positions) / (half_dim - 1)
  freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -rate)
  emb = timesteps.float()[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
  if embedding_dim % 2 == 1:
    emb = F.pad(emb, (0, 1))
  return emb


class NIN(nn.Module):
  """Network-in-network: a per-pixel linear map over channels (a 1x1 convolution).

  Parameters `W` (in_dim, num_units) and `b` (num_units,). y[b, o, h, w] = sum_c x[b, c, h, w]
  W[c, o] + b[o].
  """

  def __init__(self, in_dim, num_units, init_scale=0.1):
    super().__init__()
    self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)))
    self.b = nn.Parameter(torch.zeros(num_units))

  def forward(self, x):
    n, c, h, w = x.shape
    # One batched GEMM on the channels-first layout; the output stays contiguous.
    y = torch.matmul(self.W.t(), x.reshape(n, c, h * w)) + self.b[:, None]
    return y.reshape(n, -1, h, w)


def residual_sum(x, h, skip_rescale):
  """x + h, divided by sqrt(2) when `skip_rescale` (keeps the variance of two unit inputs)."""
  out = x + h
  return out.div_(np.sqrt(2.)) if skip_rescale else out


def group_norm(channels, num_groups=None):
  """GroupNorm(eps 1e-6) with `num_groups`, or min(channels // 4, 32) groups (DDPM++) if None."""
  if num_groups is None:
    num_groups = min(channels // 4, 32)
  return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=1e-6)


class AttnBlock(nn.Module):
  """Self-attention over the H*W positions of a feature map, with a residual connection.

  out = x + NIN_3(softmax(q^T k / sqrt(C)) v), q, k, v = NIN_{0,1,2}(GroupNorm_0(x));
  divided by sqrt(2) with `skip_rescale`. DDPM's block is AttnBlock(C); DDPM++'s
  (`layerspp.AttnBlockpp`) uses min(C // 4, 32) groups, `init_scale` and `skip_rescale`.
  """

  def __init__(self, channels, num_groups=32, init_scale=0., skip_rescale=False):
    super().__init__()
    self.GroupNorm_0 = group_norm(channels, num_groups)  # None: min(C // 4, 32) groups
    self.NIN_0 = NIN(channels, channels)                  # query
    self.NIN_1 = NIN(channels, channels)                  # key
    self.NIN_2 = NIN(channels, channels)                  # value
    self.NIN_3 = NIN(channels, channels, init_scale=init_scale)  # output projection
    self.skip_rescale = skip_rescale                      # divide the sum by sqrt(2)

  def forward(self, x):
    n, c, h, w = x.shape
    # Work in (B, HW, C): projections are plain GEMMs and attention is fused.
    tokens = self.GroupNorm_0(x).reshape(n, c, h * w).transpose(1, 2).reshape(n * h * w, c)
    q, k, v = (torch.addmm(nin.b, tokens, nin.W).reshape(n, 1, h * w, c)
               for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
    attn = F.scaled_dot_product_attention(q, k, v).reshape(n, h * w, c)
    # NIN_3 as W^T @ attn^T gives the (B, C, HW) layout directly, without a transpose copy.
    out = torch.matmul(self.NIN_3.W.t(), attn.transpose(1, 2)) + self.NIN_3.b[:, None]
    return residual_sum(x, out.reshape(n, c, h, w), self.skip_rescale)


class Upsample(nn.Module):
  """Upsample by 2: nearest neighbour (+ 3x3 conv) or FIR filtering (fused with the conv).

  Parameters: `Conv_0` (no FIR, with_conv) or `Conv2d_0` (FIR, with_conv).
  """

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False,
               fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch or in_ch
    if with_conv and fir:
      self.Conv2d_0 = up_or_down_sampling.Conv2d(in_ch, out_ch, kernel=3, up=True,
                                                 resample_kernel=fir_kernel,
                                                 kernel_init=default_init())
    elif with_conv:
      self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
    if not with_conv and out_ch != in_ch:
      raise ValueError(f'Upsample without a conv cannot change channels ({in_ch} -> {out_ch}).')
    self.with_conv = with_conv             # learnable 3x3 conv after upsampling
    self.fir = fir                         # FIR filter instead of nearest neighbour
    self.fir_kernel = tuple(fir_kernel)    # 1-D FIR taps
    self.out_ch = out_ch

  def forward(self, x):
    if self.fir:
      if self.with_conv:
        return self.Conv2d_0(x)
      return up_or_down_sampling.upsample_2d(x, self.fir_kernel, factor=2)
    n, c, h, w = x.shape
    x = F.interpolate(x, (h * 2, w * 2), mode='nearest')
    return self.Conv_0(x) if self.with_conv else x


class Downsample(nn.Module):
  """Downsample by 2: average pooling / strided 3x3 conv with TF 'SAME' padding, or FIR.

  Parameters: `Conv_0` (no FIR, with_conv) or `Conv2d_0` (FIR, with_conv).
  """

  def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False,
               fir_kernel=(1, 3, 3, 1)):
    super().__init__()
    out_ch = out_ch or in_ch
    if with_conv and fir:
      self.Conv2d_0 = up_or_down_sampling.Conv2d(in_ch, out_ch, kernel=3, down=True,
                                                 resample_kernel=fir_kernel,
                                                 kernel_init=default_init())
    elif with_conv:
      self.Conv_0 = ddpm_conv3x3(in_ch, out_ch, stride=2, padding=0)
    if not with_conv and out_ch != in_ch:
      raise ValueError(f'Downsample without a conv cannot change channels ({in_ch} -> {out_ch}).')
    self.with_conv = with_conv             # learnable strided conv instead of pooling
    self.fir = fir                         # FIR filter instead of box filter
    self.fir_kernel = tuple(fir_kernel)    # 1-D FIR taps
    self.out_ch = out_ch

  def forward(self, x):
    if self.fir:
      if self.with_conv:
        return self.Conv2d_0(x)
      return up_or_down_sampling.downsample_2d(x, self.fir_kernel, factor=2)
    if self.with_conv:
      return self.Conv_0(F.pad(x, (0, 1, 0, 1)))  # TF 'SAME' pads only bottom/right here
    return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlockDDPM(RecomputedHalves, nn.Module):
  """DDPM's residual block: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv, + shortcut.

  The shortcut is identity, a 1x1 NIN (`NIN_0`) or, with `conv_shortcut`, a 3x3 conv (`Conv_2`)
  when the channel count changes. DDPM++ (`layerspp.ResnetBlockDDPMpp`) uses min(C // 4, 32)
  GroupNorm groups (num_groups=None), `init_scale` for the last conv and `skip_rescale`.
  """

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1,
               skip_rescale=False, init_scale=0., num_groups=32):
    super().__init__()
    out_ch = out_ch or in_ch
    self.GroupNorm_0 = group_norm(in_ch, num_groups)
    self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = dense(temb_dim, out_ch)  # time embedding -> per-channel bias
    self.GroupNorm_1 = group_norm(out_ch, num_groups)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)
    self.act = act                      # activation module
    self.in_ch = in_ch
    self.out_ch = out_ch
    self.conv_shortcut = conv_shortcut  # 3x3 conv instead of NIN on the shortcut
    self.skip_rescale = skip_rescale    # divide the sum by sqrt(2)

  def _first_half(self, x, temb):
    return self._add_temb(self.Conv_0(self.act(self.GroupNorm_0(x))), temb)

  def forward(self, x, temb=None):
    h = self._two_halves(x, temb)
    if self.in_ch != self.out_ch:
      x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
    return residual_sum(x, h, self.skip_rescale)
