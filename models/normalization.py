"""Normalization layers of the NCSN family (Song & Ermon 2019, 2020).

Unconditional layers are called as `norm(x)`, conditional ones as `norm(x, y)` where `y` (B,) int64
indexes a learned per-class (per noise level) embedding of the affine parameters. Parameter names
(`embed`, `alpha`, `gamma`, `beta`, `bn`) are those of score_sde_pytorch, so checkpoints load.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5  # variance floor shared by every layer here (nn.InstanceNorm2d's default)


def get_normalization(config, conditional=False):
  """The normalization class named by `config.model.normalization`.

  Unconditional: 'InstanceNorm' (nn.InstanceNorm2d), 'InstanceNorm++' (InstanceNorm2dPlus),
  'VarianceNorm' (VarianceNorm2d), 'GroupNorm' (nn.GroupNorm, which needs a group count, so the
  NCSN networks cannot use it). Conditional: 'InstanceNorm++', 'InstanceNorm', 'VarianceNorm',
  conditioned on the noise-level index, so `num_classes = config.model.num_scales` (as the JAX
  score_sde builds NCSN v1).

  Returns:
    A callable `norm(num_features)` (or `norm(num_features[, bias])` for the conditional ones,
    with `num_classes` already bound).
  """
  name = config.model.normalization
  table = _CONDITIONAL if conditional else _UNCONDITIONAL
  if name not in table:
    kind = 'conditional ' if conditional else ''
    raise ValueError(f'Unknown {kind}normalization {name!r} in config.model.normalization. '
                     f'Known: {", ".join(sorted(table))}.')
  if conditional:
    return functools.partial(table[name], num_classes=config.model.num_scales)
  return table[name]


def _instance_norm_plus(x, gamma, alpha, beta):
  """InstanceNorm++ (NCSN paper, eq. in App. A): with mu_c, s_c^2 the spatial mean and variance
  of channel c and m, v the mean and (unbiased) variance of mu over channels,

    out = gamma_c ((x - mu_c) / sqrt(s_c^2 + eps) + alpha_c (mu_c - m) / sqrt(v + eps)) + beta_c.

  x: (B, C, H, W); gamma, alpha, beta: (C,) or (B, C); beta may be None.
  """
  mu = x.mean(dim=(2, 3))
  mu_m = mu.mean(dim=1, keepdim=True)
  mu_v = mu.var(dim=1, keepdim=True)
  shift = gamma * alpha * (mu - mu_m) * torch.rsqrt(mu_v + EPS)
  if beta is not None:
    shift = shift + beta
  # F.instance_norm is one fused kernel (forward and backward); the affine part is one addcmul.
  # torch.var_mean over (H, W) is several times slower on CPU.
  h = F.instance_norm(x, eps=EPS)
  return torch.addcmul(shift[..., None, None], h, gamma[..., None, None])


class _Embedded(nn.Module):
  """Base of the conditional layers: `embed` holds per-class affine parameters (gamma, ...)."""

  def __init__(self, num_features, num_classes, num_params, bias):
    super().__init__()
    self.num_features = num_features  # channels C
    self.bias = bias  # learn a per-class shift beta as well as the scale(s)
    self.embed = nn.Embedding(num_classes, num_params * num_features)

  def _params(self, y):
    """The embedded rows for labels y (B,), split into `num_params` tensors of shape (B, C)."""
    if y.is_floating_point():
      raise TypeError('Conditional normalization takes integer class / noise-level indices y, '
                      f'got dtype {y.dtype}.')
    return self.embed(y).split(self.num_features, dim=1)


class _ScaleShift(_Embedded):
  """normalize(x) times a per-class scale gamma_y (and plus a shift beta_y if `bias`)."""

  def __init__(self, num_features, num_classes, bias=True):
    super().__init__(num_features, num_classes, 2 if bias else 1, bias)
    with torch.no_grad():
      self.embed.weight[:, :num_features].uniform_()  # reference init: scale ~ U(0, 1)
      self.embed.weight[:, num_features:].zero_()

  def normalize(self, x):
    raise NotImplementedError

  def forward(self, x, y):
    params = self._params(y)
    out = self.normalize(x) * params[0][..., None, None]
    return out + params[1][..., None, None] if self.bias else out


class ConditionalBatchNorm2d(_ScaleShift):
  """BatchNorm (no affine) followed by a per-class scale gamma_y (and shift beta_y)."""

  def __init__(self, num_features, num_classes, bias=True):
    super().__init__(num_features, num_classes, bias)
    self.bn = nn.BatchNorm2d(num_features, affine=False)

  def normalize(self, x):
    return self.bn(x)


class ConditionalInstanceNorm2d(_ScaleShift):
  """InstanceNorm (no affine) followed by a per-class scale gamma_y (and shift beta_y)."""

  def normalize(self, x):
    return F.instance_norm(x, eps=EPS)


class ConditionalVarianceNorm2d(_Embedded):
  """x / sqrt(Var_spatial(x) + eps) (unbiased variance, no centering) times gamma_y."""

  def __init__(self, num_features, num_classes, bias=False):
    super().__init__(num_features, num_classes, 1, bias)  # `bias` is accepted but unused
    with torch.no_grad():
      self.embed.weight.normal_(1, 0.02)

  def forward(self, x, y):
    var = torch.var(x, dim=(2, 3), keepdim=True)
    return x * torch.rsqrt(var + EPS) * self._params(y)[0][..., None, None]


class VarianceNorm2d(nn.Module):
  """x / sqrt(Var_spatial(x) + eps) (unbiased variance, no centering) times alpha_c."""

  def __init__(self, num_features, bias=False):
    super().__init__()
    self.num_features = num_features  # channels C
    self.bias = bias  # accepted for a uniform signature; unused
    self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))

  def forward(self, x):
    var = torch.var(x, dim=(2, 3), keepdim=True)
    return x * torch.rsqrt(var + EPS) * self.alpha[:, None, None]


class ConditionalNoneNorm2d(_ScaleShift):
  """No normalization, only the per-class scale gamma_y (and shift beta_y)."""

  def normalize(self, x):
    return x


class NoneNorm2d(nn.Module):
  """Identity with a normalization layer's signature."""

  def __init__(self, num_features, bias=True):
    super().__init__()

  def forward(self, x):
    return x


class InstanceNorm2dPlus(nn.Module):
  """InstanceNorm++ with learned per-channel alpha, gamma (and beta); see `_instance_norm_plus`."""

  def __init__(self, num_features, bias=True):
    super().__init__()
    self.num_features = num_features  # channels C
    self.bias = bias  # learn the shift beta
    self.alpha = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
    self.gamma = nn.Parameter(torch.empty(num_features).normal_(1, 0.02))
    if bias:
      self.beta = nn.Parameter(torch.zeros(num_features))

  def forward(self, x):
    return _instance_norm_plus(x, self.gamma, self.alpha, self.beta if self.bias else None)


class ConditionalInstanceNorm2dPlus(_Embedded):
  """InstanceNorm++ whose gamma, alpha (and beta) are rows of `embed` picked by the label y.

  `embed.weight` is (num_classes, 3C) laid out as [gamma | alpha | beta] ((num_classes, 2C)
  without bias).
  """

  def __init__(self, num_features, num_classes, bias=True):
    super().__init__(num_features, num_classes, 3 if bias else 2, bias)
    with torch.no_grad():
      self.embed.weight[:, :2 * num_features].normal_(1, 0.02)
      self.embed.weight[:, 2 * num_features:].zero_()

  def forward(self, x, y):
    params = self._params(y)
    return _instance_norm_plus(x, params[0], params[1], params[2] if self.bias else None)


_UNCONDITIONAL = {
  'InstanceNorm': nn.InstanceNorm2d,
  'InstanceNorm++': InstanceNorm2dPlus,
  'VarianceNorm': VarianceNorm2d,
  'GroupNorm': nn.GroupNorm,
}
_CONDITIONAL = {
  'InstanceNorm': ConditionalInstanceNorm2d,
  'InstanceNorm++': ConditionalInstanceNorm2dPlus,
  'VarianceNorm': ConditionalVarianceNorm2d,
}
