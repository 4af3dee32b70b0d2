"""FIR resampling (models/up_or_down_sampling.py) against direct formulas."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import up_or_down_sampling as uds


def _upfirdn_loops(x, k, up, down, p0, p1):
  """StyleGAN2's upfirdn2d by definition, with explicit loops (numpy, float64)."""
  n, c, h, w = x.shape
  u = np.zeros((n, c, h * up, w * up))
  u[:, :, ::up, ::up] = x
  size = (h * up + p0 + p1, w * up + p0 + p1)
  padded = np.zeros((n, c) + size)
  # Place u at offset p0 (negative p0 crops).
  src = u[:, :, max(-p0, 0):h * up - max(-p1, 0), max(-p0, 0):w * up - max(-p1, 0)]
  padded[:, :, max(p0, 0):max(p0, 0) + src.shape[2], max(p0, 0):max(p0, 0) + src.shape[3]] = src
  kh, kw = k.shape
  out_h, out_w = (size[0] - kh) // down + 1, (size[1] - kw) // down + 1
  out = np.zeros((n, c, out_h, out_w))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(kh):
        for b in range(kw):  # true convolution: kernel index runs backwards
          out[:, :, i, j] += padded[:, :, i * down + a, j * down + b] * k[kh - 1 - a, kw - 1 - b]
  return out


@pytest.mark.parametrize('up,down,pad', [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)),
                                         (2, 2, (0, 3)), (3, 1, (-1, 2))])
def test_upfirdn2d_matches_definition(up, down, pad):
  g = torch.Generator().manual_seed(0)
  x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
  k = torch.randn(4, 3, generator=g, dtype=torch.float64)  # asymmetric: catches a missing flip
  ours = uds.upfirdn2d(x, k, up=up, down=down, pad=pad)
  expected = _upfirdn_loops(x.numpy(), k.numpy(), up, down, *pad)
  np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_upsample_2d_fir_is_half_pixel_linear_interpolation():
  # With k = (1, 3, 3, 1), y[2i] = x[i-1]/4 + 3 x[i]/4, y[2i+1] = 3 x[i]/4 + x[i+1]/4 per axis,
  # pixels outside the image being zero.
  g = torch.Generator().manual_seed(1)
  x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64)

  def up_axis(a, axis):
    a = np.moveaxis(a, axis, -1)
    z = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(1, 1)])
    out = np.empty(a.shape[:-1] + (2 * a.shape[-1],))
    out[..., 0::2] = 0.25 * z[..., :-2] + 0.75 * z[..., 1:-1]
    out[..., 1::2] = 0.75 * z[..., 1:-1] + 0.25 * z[..., 2:]
    return np.moveaxis(out, -1, axis)

  expected = up_axis(up_axis(x.numpy(), 2), 3)
  np.testing.assert_allclose(uds.upsample_2d(x, (1, 3, 3, 1)).numpy(), expected, atol=1e-13)


def test_downsample_2d_fir_formula():
  # With k = (1, 3, 3, 1): y[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8 per axis.
  g = torch.Generator().manual_seed(2)
  x = torch.randn(2, 1, 6, 8, generator=g, dtype=torch.float64)

  def down_axis(a, axis):
    a = np.moveaxis(a, axis, -1)
    z = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(1, 1)])
    out = (z[..., 0:-2:2] + 3 * z[..., 1:-1:2] + 3 * z[..., 2::2] + z[..., 3::2]) / 8
    return np.moveaxis(out, -1, axis)

  expected = down_axis(down_axis(x.numpy(), 2), 3)
  np.testing.assert_allclose(uds.downsample_2d(x, (1, 3, 3, 1)).numpy(), expected, atol=1e-13)


@pytest.mark.parametrize('k', [(1, 3, 3, 1), (1, 2, 1), (1, 4, 6, 4, 1), (1, 1)])
@pytest.mark.parametrize('gain', [1., 2.5])
def test_constant_image_stays_constant_inside(k, gain):
  x = torch.full((1, 2, 12, 12), 0.7, dtype=torch.float64)
  up = uds.upsample_2d(x, k, factor=2, gain=gain)
  down = uds.downsample_2d(x, k, factor=2, gain=gain)
  assert up.shape == (1, 2, 24, 24) and down.shape == (1, 2, 6, 6)
  m = len(k)  # the filter reaches at most len(k) pixels past the border
  torch.testing.assert_close(up[..., m:-m, m:-m], torch.full_like(up[..., m:-m, m:-m], 0.7 * gain))
  torch.testing.assert_close(down[..., 2:-2, 2:-2],
                             torch.full_like(down[..., 2:-2, 2:-2], 0.7 * gain))
  if len(k) > 2:  # zeros outside the image pull the border down
    assert up[0, 0, 0, 0].item() < 0.7 * gain and down[0, 0, 0, 0].item() < 0.7 * gain


def test_default_kernel_is_nearest_and_box():
  x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
  torch.testing.assert_close(uds.upsample_2d(x), F.interpolate(x, scale_factor=2, mode='nearest'))
  torch.testing.assert_close(uds.downsample_2d(x), F.avg_pool2d(x, 2))
  torch.testing.assert_close(uds.naive_upsample_2d(x), F.interpolate(x, scale_factor=2))
  torch.testing.assert_close(uds.naive_downsample_2d(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize('channels_last', [False, True])
def test_naive_resampling_by_2_is_bit_identical_to_the_reference_formulas(channels_last):
  """The fast factor-2 paths give the reference's numbers exactly: its reshape-mean and
  reshape-expand, forward and gradient (autograd sums the expanded dimensions)."""
  g = torch.Generator().manual_seed(4)
  x = torch.randn(3, 5, 8, 6, generator=g) * 10 ** torch.randint(-3, 4, (3, 5, 1, 1), generator=g)
  if channels_last:
    x = x.contiguous(memory_format=torch.channels_last)
  n, c, h, w = x.shape
  reference = {
    'down': lambda v: v.reshape(n, c, h // 2, 2, w // 2, 2).mean(dim=(3, 5)),
    'up': lambda v: v.reshape(n, c, h, 1, w, 1).expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)}
  ours = {'down': uds.naive_downsample_2d, 'up': uds.naive_upsample_2d}
  for name in ('down', 'up'):
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out = reference[name](a), ours[name](b)
    grad = torch.randn(out.shape, generator=g)
    out_ref.backward(grad)
    out.backward(grad)
    assert torch.equal(out, out_ref) and torch.equal(b.grad, a.grad), name


@pytest.mark.parametrize('k', [(1, 3, 3, 1), (1, 2, 1), (1, 1)])
def test_fused_resampling_conv_equals_unfused_inside(k):
  # The fused ops pad once instead of twice, so they agree with the composition except near
  # the border.
  g = torch.Generator().manual_seed(4)
  x = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
  w = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
  up = uds.upsample_conv_2d(x, w, k)
  up_ref = F.conv2d(uds.upsample_2d(x, k), w, padding=1)
  down = uds.conv_downsample_2d(x, w, k)
  down_ref = uds.downsample_2d(F.conv2d(x, w, padding=1), k)
  assert up.shape == (2, 5, 24, 24) and down.shape == (2, 5, 6, 6)
  torch.testing.assert_close(up[..., 4:-4, 4:-4], up_ref[..., 4:-4, 4:-4])
  torch.testing.assert_close(down[..., 2:-2, 2:-2], down_ref[..., 2:-2, 2:-2])
  if k == (1, 1):  # nearest / box: no filter tails, so the borders agree too
    torch.testing.assert_close(up, up_ref)


def test_conv2d_module_parameters_and_modes():
  torch.manual_seed(0)
  conv = uds.Conv2d(4, 6, kernel=3, up=True, kernel_init=lambda s: torch.randn(s))
  assert [(n, tuple(p.shape)) for n, p in conv.named_parameters()] == [
    ('weight', (6, 4, 3, 3)), ('bias', (6,))]
  with torch.no_grad():
    conv.bias.normal_()
  x = torch.randn(2, 4, 8, 8)
  assert conv(x).shape == (2, 6, 16, 16)
  conv.up, conv.down = False, True
  assert conv(x).shape == (2, 6, 4, 4)
  conv.down = False
  torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
  with pytest.raises(ValueError, match='both'):
    uds.Conv2d(4, 6, kernel=3, up=True, down=True)
  with pytest.raises(ValueError, match='odd'):
    uds.Conv2d(4, 6, kernel=2)


def test_gradients_match_finite_differences():
  g = torch.Generator().manual_seed(5)
  x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
  w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
  assert torch.autograd.gradcheck(lambda a: uds.upsample_2d(a, (1, 3, 3, 1)), (x,))
  assert torch.autograd.gradcheck(lambda a: uds.downsample_2d(a, (1, 3, 3, 1)), (x,))
  assert torch.autograd.gradcheck(lambda a, b: uds.upsample_conv_2d(a, b, (1, 3, 3, 1)), (x, w))
  assert torch.autograd.gradcheck(lambda a, b: uds.conv_downsample_2d(a, b, (1, 3, 3, 1)), (x, w))



@pytest.mark.parametrize('resample', [uds.upsample_2d, uds.downsample_2d])
def test_cpu_reduced_precision_filters_in_float32(resample):
  """On CPU the FIR filter runs in float32 whatever autocast or the input's dtype say (bf16
  depthwise convolutions take slow paths there): a float32 input under bf16 autocast gives the
  float32 result bit for bit, a bf16 input gives the float32 result of its values rounded once."""
  g = torch.Generator().manual_seed(7)
  x = torch.randn(2, 8, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
  exact = resample(x, (1, 3, 3, 1))
  with torch.autocast('cpu', dtype=torch.bfloat16):
    under_autocast = resample(x, (1, 3, 3, 1))
  assert under_autocast.dtype == torch.float32
  assert torch.equal(under_autocast, exact)
  half = x.bfloat16().requires_grad_()
  out = resample(half, (1, 3, 3, 1))
  assert out.dtype == torch.bfloat16
  assert torch.equal(out, resample(half.detach().float(), (1, 3, 3, 1)).bfloat16())
  out.float().sum().backward()
  assert half.grad.dtype == torch.bfloat16 and half.grad.abs().sum() > 0

def test_training_after_inference_mode():
  """The cached FIR kernel is built outside inference mode: a first forward pass under
  torch.inference_mode() (sampling) does not make later training steps fail in backward."""
  uds._kernel_tensor.cache_clear()
  with torch.inference_mode():
    uds.upsample_2d(torch.randn(1, 2, 4, 4), (1, 3, 3, 1))
    uds.downsample_2d(torch.randn(1, 2, 4, 4), (1, 3, 3, 1))
  x = torch.randn(1, 2, 4, 4, requires_grad=True)
  (uds.upsample_2d(x, (1, 3, 3, 1)).sum() + uds.downsample_2d(x, (1, 3, 3, 1)).sum()).backward()
  assert x.grad.abs().sum() > 0


def test_bad_arguments_raise():
  x = torch.zeros(1, 1, 4, 4)
  with pytest.raises(ValueError, match='factor'):
    uds.upsample_2d(x, factor=1.5)
  with pytest.raises(ValueError, match='kernel'):
    uds.setup_kernel(np.ones((2, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_cuda_matches_cpu():
  g = torch.Generator().manual_seed(6)
  x = torch.randn(2, 3, 8, 8, generator=g)
  w = torch.randn(4, 3, 3, 3, generator=g)
  for fn in (lambda a: uds.upsample_2d(a, (1, 3, 3, 1)),
             lambda a: uds.downsample_2d(a, (1, 3, 3, 1)),
             lambda a: uds.upsample_conv_2d(a, w.to(a.device), (1, 3, 3, 1)),
             lambda a: uds.conv_downsample_2d(a, w.to(a.device), (1, 3, 3, 1))):
    torch.testing.assert_close(fn(x.cuda()).cpu(), fn(x), rtol=1e-4, atol=1e-4)
