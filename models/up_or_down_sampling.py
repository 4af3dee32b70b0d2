"""FIR up/down-sampling (StyleGAN2's `upfirdn2d`) in pure PyTorch, for CPU and CUDA.

`upfirdn2d` zero-upsamples an image, pads it, convolves every channel with the same 2-D FIR
filter and keeps every `down`-th sample. Here it is a depthwise (grouped) convolution, or a
depthwise transposed convolution when upsampling, so there is no compiled extension. `Conv2d` is the fused "resample + 3x3 conv" layer of NCSN++, with the
parameter names (`weight`, `bias`) of the official checkpoints.
"""
import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def setup_kernel(k):
  """A 1-D (separable, taken as outer(k, k)) or 2-D FIR filter normalised to sum 1, float32."""
  k = np.asarray(k, dtype=np.float32)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'FIR kernel must be 1-D or square 2-D, got shape {k.shape}.')
  return k / np.sum(k)


@functools.lru_cache(maxsize=64)
def _kernel_tensor(k, scale, device, dtype):
  # Cached so a forward pass does not rebuild (or re-upload to the GPU) the same 16 numbers;
  # built outside inference mode, or a first call under torch.inference_mode() would cache an
  # inference tensor that no later training step could save for backward.
  kernel = setup_kernel(k) * np.float32(scale)
  with torch.inference_mode(False):
    return torch.tensor(kernel, device=device).to(dtype)


def fir_kernel(k, scale, like):
  """The normalised FIR kernel of `k` times `scale`, on `like`'s device and dtype."""
  k = tuple(tuple(r) for r in np.asarray(k).tolist()) if np.ndim(k) == 2 else tuple(k)
  return _kernel_tensor(k, float(scale), like.device, like.dtype)


def upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
  """Upsample by zero insertion, pad, convolve with `kernel`, keep every `down`-th pixel.

  Same result as StyleGAN2's `upfirdn2d_native` (a true convolution, i.e. correlation with the
  flipped kernel), computed as one depthwise (grouped) convolution, transposed when up > 1.
  On CPU, bf16 / fp16 inputs (or float32 ones under autocast) are filtered in float32 and the
  result is returned in the input's dtype.

  Args:
    x: (N, C, H, W) images.
    kernel: (kh, kw) filter, same dtype and device as `x`.
    up, down: integer factors, applied to both axes.
    pad: (before, after) padding of both axes on the upsampled grid; negative values crop.
  Returns:
    (N, C, (H * up + before + after - kh) // down + 1, ...) images.
  """
  if x.device.type == 'cpu' and (x.dtype in (torch.bfloat16, torch.float16) or (
      x.dtype == torch.float32 and torch.is_autocast_enabled('cpu'))):
    # On CPU, depthwise convolutions in bf16/fp16 take slow paths: the transposed one (up)
    # ~14 ms against ~0.2 ms in float32 at 8x256x16x16, the backward of the strided one (down)
    # 3-6x float32's (bench/bench_fir.py). The filter is 16 multiply-adds per pixel, so
    # float32 costs next to nothing here and is also more accurate.
    with torch.autocast('cpu', enabled=False):
      return upfirdn2d(x.float(), kernel.float(), up, down, pad).to(x.dtype)
  return depthwise_fir(x, kernel, up, down, pad)


def depthwise_fir(x, kernel, up=1, down=1, pad=(0, 0)):
  """`upfirdn2d`'s filter as one depthwise (grouped) convolution in x's dtype, with no CPU
  float32 detour (as CUDA runs it). Arguments and shapes as `upfirdn2d`."""
  c = x.shape[1]
  kh, kw = kernel.shape
  p0, p1 = pad
  if up > 1:
    # A stride-`up` transposed convolution is the full convolution of the zero-upsampled image
    # with the kernel, without multiplying the inserted zeros (~10x faster on CPU than zero
    # insertion + conv). Its output starts kh - 1 - p0 samples before ours and ends
    # kh - up - p1 samples after; crop (negative pad) or zero-pad to match.
    weight = kernel.expand(c, 1, kh, kw)
    crop_h, crop_w = (kh - 1 - p0, kh - up - p1), (kw - 1 - p0, kw - up - p1)
    if crop_h == crop_w and crop_h[0] == crop_h[1] >= 0:  # the usual case: let the op crop
      x = F.conv_transpose2d(x, weight, stride=up, padding=crop_h[0], groups=c)
    else:
      x = F.conv_transpose2d(x, weight, stride=up, groups=c)
      x = F.pad(x, (-crop_w[0], -crop_w[1], -crop_h[0], -crop_h[1]))
    return x[:, :, ::down, ::down] if down > 1 else x
  if p0 or p1:
    x = F.pad(x, (p0, p1, p0, p1))
  weight = torch.flip(kernel, (0, 1)).expand(c, 1, kh, kw)
  return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x, k=None, factor=2, gain=1):
  """Upsample (N, C, H, W) -> (N, C, H * factor, W * factor) with FIR filter `k`.

  The filter is normalised so that a constant image stays constant (times `gain`) away from
  the borders; pixels outside the image count as zero. The default `k = [1] * factor` is
  nearest-neighbour upsampling.
  """
  _check_factor(factor)
  k = [1] * factor if k is None else k
  kernel = fir_kernel(k, gain * factor ** 2, x)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=None, factor=2, gain=1):
  """Downsample (N, C, H, W) -> (N, C, H // factor, W // factor) with FIR filter `k`.

  The default `k = [1] * factor` is average pooling.
  """
  _check_factor(factor)
  k = [1] * factor if k is None else k
  kernel = fir_kernel(k, gain, x)
  p = kernel.shape[0] - factor
  return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k=None, factor=2, gain=1):
  """`upsample_2d(x, k)` followed by a 'same' convolution with `w`, fused (StyleGAN2).

  A stride-`factor` transposed convolution with the flipped weights, then one FIR pass; the
  result equals `F.conv2d(upsample_2d(x, k), w, padding=kernel // 2)` away from the borders
  (StyleGAN2's fused op pads differently there).
  (score_sde_pytorch's version slices a tensor with a negative step and cannot run; no official
  config reaches it.)

  Args:
    x: (N, C_in, H, W); w: (C_out, C_in, kernel, kernel), kernel odd.
  Returns:
    (N, C_out, H * factor, W * factor).
  """
  _check_factor(factor)
  out_ch, in_ch, conv_h, conv_w = w.shape
  if conv_h != conv_w:
    raise ValueError(f'upsample_conv_2d needs a square kernel, got {conv_h}x{conv_w}.')
  k = [1] * factor if k is None else k
  kernel = fir_kernel(k, gain * factor ** 2, x)
  p = (kernel.shape[0] - factor) - (conv_w - 1)
  # conv_transpose2d takes (C_in, C_out, kh, kw); flipping turns its scatter into a correlation.
  w_t = torch.flip(w, (2, 3)).transpose(0, 1)
  x = F.conv_transpose2d(x, w_t, stride=factor)
  return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=None, factor=2, gain=1):
  """A convolution with `w` followed by `downsample_2d(x, k)`, fused (StyleGAN2).

  One FIR pass with the padding of both operations, then a stride-`factor` convolution.

  Args:
    x: (N, C_in, H, W); w: (C_out, C_in, kernel, kernel).
  Returns:
    (N, C_out, H // factor, W // factor).
  """
  _check_factor(factor)
  conv_w = w.shape[-1]
  if w.shape[-2] != conv_w:
    raise ValueError(f'conv_downsample_2d needs a square kernel, got {tuple(w.shape[-2:])}.')
  k = [1] * factor if k is None else k
  kernel = fir_kernel(k, gain, x)
  p = (kernel.shape[0] - factor) + (conv_w - 1)
  x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
  return F.conv2d(x, w, stride=factor)


def _sum_2x2(x):
  """Sums of the 2x2 blocks of x (N, C, 2H, 2W) -> (N, C, H, W), added as (a00 + a01) + (a10 + a11).

  That is the order of torch's sum / mean over the two block dimensions of the (N, C, H, 2, W, 2)
  view, so the results are bit-identical to the reference's `mean(dim=(3, 5))`; two slices and
  adds cost ~1/10 of that strided size-2 reduction on the CPU (2.3 ms vs 0.15 ms at
  64x32x16x16, one thread), where it took ~10 % of the digits network's forward pass.
  """
  n, c, h, w = x.shape
  blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
  rows = blocks[..., 0] + blocks[..., 1]  # (N, C, H, 2, W): a_r0 + a_r1 for r = 0, 1
  return rows[:, :, :, 0] + rows[:, :, :, 1]


class _NearestUpsample2(torch.autograd.Function):
  """Nearest-neighbour upsampling by 2 whose gradient sums each 2x2 block with `_sum_2x2`: the
  same numbers as autograd's sum over the expanded dimensions of the reference's
  reshape-expand-reshape, at ~1/4 of its forward + backward cost on the CPU."""

  @staticmethod
  def forward(ctx, x):
    return F.interpolate(x, scale_factor=2, mode='nearest')  # a copy: exact

  @staticmethod
  def backward(ctx, grad):
    return _sum_2x2(grad)


def naive_upsample_2d(x, factor=2):
  """Nearest-neighbour upsampling by an integer factor."""
  if factor == 2:
    return _NearestUpsample2.apply(x)
  n, c, h, w = x.shape
  x = x.reshape(n, c, h, 1, w, 1).expand(n, c, h, factor, w, factor)
  return x.reshape(n, c, h * factor, w * factor)


def naive_downsample_2d(x, factor=2):
  """Average pooling over factor x factor blocks."""
  if factor == 2:
    return _sum_2x2(x) / 4
  n, c, h, w = x.shape
  return x.reshape(n, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


def _check_factor(factor):
  if not (isinstance(factor, int) and factor >= 1):
    raise ValueError(f'Resampling factor must be a positive int, got {factor!r}.')


class Conv2d(nn.Module):
  """Convolution with optional fused FIR upsampling or downsampling by 2 (StyleGAN2).

  Parameters `weight` (out_ch, in_ch, kernel, kernel) and `bias` (out_ch,), as in the official
  NCSN++ checkpoints.
  """

  def __init__(self, in_ch, out_ch, kernel, up=False, down=False,
               resample_kernel=(1, 3, 3, 1), use_bias=True, kernel_init=None):
    super().__init__()
    if up and down:
      raise ValueError('Conv2d cannot both upsample and downsample.')
    if kernel < 1 or kernel % 2 != 1:
      raise ValueError(f'Conv2d kernel size must be odd and positive, got {kernel}.')
    self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel, kernel))
    if kernel_init is not None:
      with torch.no_grad():
        self.weight.copy_(kernel_init(self.weight.shape))
    if use_bias:
      self.bias = nn.Parameter(torch.zeros(out_ch))
    self.up = up                                 # FIR-upsample by 2 before the convolution
    self.down = down                             # FIR-downsample by 2 after the convolution
    self.resample_kernel = tuple(resample_kernel)  # 1-D FIR filter taps
    self.kernel = kernel                         # spatial size of the convolution
    self.use_bias = use_bias

  def forward(self, x):
    if self.up:
      x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
    elif self.down:
      x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
    else:
      x = F.conv2d(x, self.weight, padding=self.kernel // 2)
    if self.use_bias:
      x = x + self.bias.reshape(1, -1, 1, 1)
    return x
