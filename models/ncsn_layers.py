"""RefineNet blocks of NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020).

Each block exists once, with an optional noise-level conditioning: pass `num_classes` and a
conditional `normalizer` (e.g. ConditionalInstanceNorm2dPlus) and every norm inside is called as
`norm(h, y)`; otherwise the block is unconditional. The reference's `Cond*` names are thin
wrappers with its argument order. Submodule names and creation order follow score_sde_pytorch,
so state-dict keys (a file format) and the parameter order seen by the EMA match.

Two reference bugs are fixed here: dilated 3x3 convs use SAME padding (padding = dilation, as
the JAX score_sde and ermongroup/ncsnv2 do; the reference pads by 1 and cannot run), and a
bias-free conv is not rescaled by `init_scale` on its missing bias.
"""
import functools

import torch.nn as nn
import torch.nn.functional as F

from models.normalization import ConditionalInstanceNorm2dPlus


def _ncsn_conv(in_planes, out_planes, kernel_size, stride, bias, dilation, init_scale, padding):
  conv = nn.Conv2d(in_planes, out_planes, kernel_size, stride=stride, padding=padding,
                   dilation=dilation, bias=bias)
  # PyTorch's default init scaled by init_scale (0 means 1e-10, as in the reference).
  init_scale = 1e-10 if init_scale == 0 else init_scale
  if init_scale != 1.:
    conv.weight.data.mul_(init_scale)
    if bias:
      conv.bias.data.mul_(init_scale)
  return conv


def ncsn_conv1x1(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=0):
  """1x1 convolution with PyTorch's default init times `init_scale` (NCSN v1/v2)."""
  return _ncsn_conv(in_planes, out_planes, 1, stride, bias, dilation, init_scale, padding)


def ncsn_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1.,
                 padding=None):
  """3x3 convolution with PyTorch's default init times `init_scale` (NCSN v1/v2).

  `padding` defaults to `dilation` (SAME padding: the spatial size is kept at stride 1).
  """
  padding = dilation if padding is None else padding
  return _ncsn_conv(in_planes, out_planes, 3, stride, bias, dilation, init_scale, padding)


def _normalize(norm, h, y):
  """Call a norm layer the way it was built: norm(h, y) if conditional, else norm(h)."""
  return norm(h) if y is None else norm(h, y)


class ConvMeanPool(nn.Module):
  """Convolution (SAME padding) then 2x2 mean pooling: (B, C, H, W) -> (B, C', H/2, W/2)."""

  def __init__(self, input_dim, output_dim, kernel_size=3, biases=True, adjust_padding=False):
    super().__init__()
    conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride=1, padding=kernel_size // 2,
                     bias=biases)
    # adjust_padding (28 px inputs) pads one row/column at the top-left first, so 7 -> 4.
    self.conv = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), conv) if adjust_padding else conv

  def forward(self, x):
    return F.avg_pool2d(self.conv(x), 2)


class ResidualBlock(nn.Module):
  """Pre-activation residual block: norm, act, conv, norm, act, conv, plus a shortcut.

  resample='down' halves the resolution (conv then mean pool) unless `dilation` > 1, where the
  block uses dilated convs at the same resolution instead (NCSNv2's deeper stages).
  """

  def __init__(self, input_dim, output_dim, resample=None, act=nn.ELU(),
               normalization=nn.InstanceNorm2d, adjust_padding=False, dilation=1,
               num_classes=None):
    super().__init__()
    if resample not in (None, 'down'):
      raise ValueError(f"resample must be None or 'down', got {resample!r}.")
    dilation = 1 if dilation is None else dilation
    self.non_linearity = act
    self.input_dim = input_dim  # input channels
    self.output_dim = output_dim  # output channels
    self.resample = resample  # None or 'down'
    self.conditional = num_classes is not None  # norms take the noise-level index y
    norm = (normalization if num_classes is None
            else functools.partial(normalization, num_classes=num_classes))
    dilated = dilation > 1
    conv = functools.partial(ncsn_conv3x3, dilation=dilation)
    mid_dim = input_dim if resample == 'down' else output_dim
    # Creation order (conv1, normalize2, conv2, shortcut, normalize1) is the reference's.
    self.conv1 = conv(input_dim, mid_dim)
    self.normalize2 = norm(mid_dim)
    self.has_shortcut = resample is not None or input_dim != output_dim
    if resample == 'down' and not dilated:
      self.conv2 = ConvMeanPool(input_dim, output_dim, 3, adjust_padding=adjust_padding)
      self.shortcut = ConvMeanPool(input_dim, output_dim, 1, adjust_padding=adjust_padding)
    else:
      self.conv2 = conv(mid_dim, output_dim)
      if self.has_shortcut:
        self.shortcut = (conv(input_dim, output_dim) if dilated
                         else ncsn_conv1x1(input_dim, output_dim))
    self.normalize1 = norm(input_dim)

  def forward(self, x, y=None):
    """x: (B, input_dim, H, W); y: (B,) int64 labels, required iff conditional."""
    if self.conditional != (y is not None):
      raise ValueError(f'This block is {"" if self.conditional else "un"}conditional: '
                       f'call it with{"" if self.conditional else "out"} labels y.')
    h = self.non_linearity(_normalize(self.normalize1, x, y))
    h = self.conv1(h)
    h = self.non_linearity(_normalize(self.normalize2, h, y))
    h = self.conv2(h)
    return h + (self.shortcut(x) if self.has_shortcut else x)


class ConditionalResidualBlock(ResidualBlock):
  """ResidualBlock conditioned on the noise level (reference signature)."""

  def __init__(self, input_dim, output_dim, num_classes, resample=None, act=nn.ELU(),
               normalization=ConditionalInstanceNorm2dPlus, adjust_padding=False, dilation=None):
    super().__init__(input_dim, output_dim, resample=resample, act=act,
                     normalization=normalization, adjust_padding=adjust_padding,
                     dilation=dilation, num_classes=num_classes)


class CRPBlock(nn.Module):
  """Chained residual pooling: x = act(x); repeat n_stages: path = conv(pool(path)); x += path.

  Conditional: path = conv(pool(norm(path, y))) with 5x5 average pooling.
  """

  def __init__(self, features, n_stages, act=nn.ReLU(), maxpool=True, num_classes=None,
               normalizer=None):
    super().__init__()
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList() if num_classes is not None else None
    for _ in range(n_stages):  # norm i is created before conv i, as in the reference
      if self.norms is not None:
        self.norms.append(normalizer(features, num_classes=num_classes, bias=True))
      self.convs.append(ncsn_conv3x3(features, features, stride=1, bias=False))
    self.n_stages = n_stages
    pool = nn.MaxPool2d if maxpool else nn.AvgPool2d
    self.pool = pool(kernel_size=5, stride=1, padding=2)
    self.act = act

  def forward(self, x, y=None):
    x = self.act(x)
    path = x
    for i, conv in enumerate(self.convs):
      if self.norms is not None:
        path = self.norms[i](path, y)
      path = conv(self.pool(path))
      x = path + x
    return x


class RCUBlock(nn.Module):
  """Residual conv units: n_blocks times x += (act, conv) x n_stages (norm first if conditional).

  Submodules are attributes '{i}_{j}_conv' (and '{i}_{j}_norm'), 1-based, as in the reference.
  """

  def __init__(self, features, n_blocks, n_stages, act=nn.ReLU(), num_classes=None,
               normalizer=None):
    super().__init__()
    self.conditional = num_classes is not None
    for i in range(1, n_blocks + 1):
      for j in range(1, n_stages + 1):
        if self.conditional:
          setattr(self, f'{i}_{j}_norm', normalizer(features, num_classes=num_classes, bias=True))
        setattr(self, f'{i}_{j}_conv', ncsn_conv3x3(features, features, stride=1, bias=False))
    self.stride = 1
    self.n_blocks = n_blocks
    self.n_stages = n_stages
    self.act = act

  def forward(self, x, y=None):
    for i in range(1, self.n_blocks + 1):
      residual = x
      for j in range(1, self.n_stages + 1):
        if self.conditional:
          x = getattr(self, f'{i}_{j}_norm')(x, y)
        x = getattr(self, f'{i}_{j}_conv')(self.act(x))
      x = x + residual
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: sum_i resize(conv_i(x_i)) at `shape` (bilinear, corners aligned).

  Conditional: each input is normalized by norms[i](x_i, y) first.
  """

  def __init__(self, in_planes, features, num_classes=None, normalizer=None,
               interpolation='bilinear'):
    super().__init__()
    if not isinstance(in_planes, (list, tuple)):
      raise TypeError(f'in_planes must be a list of channel counts, got {in_planes!r}.')
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList() if num_classes is not None else None
    self.features = features
    self.interpolation = interpolation  # 'bilinear' (align_corners=True) or 'nearest'
    for planes in in_planes:  # conv i then norm i, as in the reference
      self.convs.append(ncsn_conv3x3(planes, features, stride=1, bias=True))
      if self.norms is not None:
        self.norms.append(normalizer(planes, num_classes=num_classes, bias=True))

  def forward(self, xs, shape, y=None):
    total = None
    for i, conv in enumerate(self.convs):
      h = xs[i] if self.norms is None else self.norms[i](xs[i], y)
      h = conv(h)
      if tuple(h.shape[2:]) != tuple(shape):  # resizing to the same size is the identity
        align = True if self.interpolation == 'bilinear' else None
        h = F.interpolate(h, size=tuple(shape), mode=self.interpolation, align_corners=align)
      total = h if total is None else total + h
    return total


class RefineBlock(nn.Module):
  """RefineNet block: RCU on each input, multi-resolution fusion, chained residual pooling,
  output RCU (3 units when `end`, else 1). `start` (one input) has no fusion."""

  def __init__(self, in_planes, features, act=nn.ReLU(), start=False, end=False, maxpool=True,
               num_classes=None, normalizer=None, interpolation='bilinear'):
    super().__init__()
    if not isinstance(in_planes, (list, tuple)):
      raise TypeError(f'in_planes must be a list of channel counts, got {in_planes!r}.')
    cond = dict(num_classes=num_classes, normalizer=normalizer)
    self.n_blocks = len(in_planes)
    self.adapt_convs = nn.ModuleList([RCUBlock(p, 2, 2, act, **cond) for p in in_planes])
    self.output_convs = RCUBlock(features, 3 if end else 1, 2, act, **cond)
    if not start:
      self.msf = MSFBlock(in_planes, features, interpolation=interpolation, **cond)
    self.crp = CRPBlock(features, 2, act, maxpool=maxpool and num_classes is None, **cond)

  def forward(self, xs, output_shape, y=None):
    """xs: list of (B, in_planes[i], H_i, W_i); returns (B, features, *output_shape)."""
    hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
    h = self.msf(hs, output_shape, y) if self.n_blocks > 1 else hs[0]
    return self.output_convs(self.crp(h, y), y)


class CondCRPBlock(CRPBlock):
  """Conditional CRPBlock (reference signature; 5x5 average pooling)."""

  def __init__(self, features, n_stages, num_classes, normalizer, act=nn.ReLU()):
    super().__init__(features, n_stages, act, maxpool=False, num_classes=num_classes,
                     normalizer=normalizer)


class CondRCUBlock(RCUBlock):
  """Conditional RCUBlock (reference signature)."""

  def __init__(self, features, n_blocks, n_stages, num_classes, normalizer, act=nn.ReLU()):
    super().__init__(features, n_blocks, n_stages, act, num_classes=num_classes,
                     normalizer=normalizer)


class CondMSFBlock(MSFBlock):
  """Conditional MSFBlock (reference signature and call order: forward(xs, y, shape))."""

  def __init__(self, in_planes, features, num_classes, normalizer, interpolation='bilinear'):
    super().__init__(in_planes, features, num_classes=num_classes, normalizer=normalizer,
                     interpolation=interpolation)

  def forward(self, xs, y, shape):
    return super().forward(xs, shape, y)


class CondRefineBlock(RefineBlock):
  """Conditional RefineBlock (reference signature and call order: forward(xs, y, shape))."""

  def __init__(self, in_planes, features, num_classes, normalizer, act=nn.ReLU(), start=False,
               end=False, interpolation='bilinear'):
    super().__init__(in_planes, features, act, start=start, end=end, num_classes=num_classes,
                     normalizer=normalizer, interpolation=interpolation)

  def forward(self, xs, y, output_shape):
    return super().forward(xs, output_shape, y)
