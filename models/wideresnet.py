"""Noise-conditional Wide-ResNet classifier for class-conditional sampling (App. I.4).

The architecture of the JAX score_sde's `models/wideresnet_noise_conditional.py` (itself
Zagoruyko & Komodakis' WRN as in the AutoAugment code): per-image standardisation, a Gaussian
Fourier embedding of log(sigma) fed through two dense layers into every residual block, three
groups of pre-activation blocks with GroupNorm, identity skips that average-pool and zero-pad when
the shape changes, global average pooling and a dense head. The JAX original is built with
blocks_per_group=4, channel_multiplier=10, 10 classes (WRN-28-10 on 32x32 CIFAR-10).

`sigma` is the std of the forward marginal at t (`sde.marginal_prob(x, t)[1]`), for every SDE.
Differences from the Flax code that do not change what the network can represent: stride-2 3x3
convs pad one pixel on both sides (PyTorch) rather than TF's 'SAME' (right/bottom only).
"""
import math

import ml_collections
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _group_norm(channels):
  return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-5)


def _conv3x3(in_ch, out_ch, stride=1):
  conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
  # Kaiming normal, fan-out mode, gain 2 (as the JAX original).
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  return conv


def _dense(in_features, out_features):
  # Flax's default Dense init: LeCun normal kernel, zero bias.
  dense = nn.Linear(in_features, out_features)
  nn.init.normal_(dense.weight, std=1. / math.sqrt(in_features))
  nn.init.zeros_(dense.bias)
  return dense


class GaussianFourierProjection(nn.Module):
  """[sin(2 pi W s), cos(2 pi W s)] with fixed random W ~ N(0, scale^2) (Tancik et al. 2020)."""

  def __init__(self, embedding_size=128, scale=16.):
    super().__init__()
    self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

  def forward(self, s):
    s_proj = s[:, None] * self.W[None, :] * 2 * np.pi
    return torch.cat([torch.sin(s_proj), torch.cos(s_proj)], dim=-1)


class WideResnetBlock(nn.Module):
  """Pre-activation residual block: GN-ReLU-conv3x3 (+ dense(temb)) GN-ReLU-conv3x3 + skip."""

  def __init__(self, in_ch, out_ch, temb_dim, stride=1, activate_before_residual=False):
    super().__init__()
    self.activate_before_residual = activate_before_residual  # skip starts after the first GN
    self.stride = stride  # of conv1 and of the skip's average pooling
    self.init_bn = _group_norm(in_ch)
    self.conv1 = _conv3x3(in_ch, out_ch, stride)
    self.temb_proj = _dense(temb_dim, out_ch)
    self.bn_2 = _group_norm(out_ch)
    self.conv2 = _conv3x3(out_ch, out_ch)

  def forward(self, x, temb):
    h = F.relu(self.init_bn(x))
    skip = h if self.activate_before_residual else x
    h = self.conv1(h)
    h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(F.relu(self.bn_2(h)))
    if skip.shape[1] != h.shape[1]:
      # Identity skip: average-pool to the new resolution, zero-pad the new channels.
      if self.stride > 1:
        skip = F.avg_pool2d(skip, self.stride, self.stride)
      skip = F.pad(skip, (0, 0, 0, 0, 0, h.shape[1] - skip.shape[1]))
    return h + skip


class WideResNet(nn.Module):
  """Noise-conditional WRN-(6 blocks_per_group + 4)-(channel_multiplier): logits of p_t(y | x)."""

  def __init__(self, num_classes=10, num_channels=3, blocks_per_group=4, channel_multiplier=10,
               embedding_size=128, fourier_scale=16.):
    super().__init__()
    self.num_classes = num_classes  # outputs of the dense head
    self.num_channels = num_channels  # image channels
    temb_dim = 4 * embedding_size
    self.fourier = GaussianFourierProjection(embedding_size, fourier_scale)  # of log(sigma)
    self.temb_dense0 = _dense(2 * embedding_size, temb_dim)
    self.temb_dense1 = _dense(temb_dim, temb_dim)
    self.init_conv = _conv3x3(num_channels, 16)
    blocks, in_ch = [], 16
    for group, (width, stride) in enumerate([(16, 1), (32, 2), (64, 2)]):
      out_ch = width * channel_multiplier
      for i in range(blocks_per_group):
        blocks.append(WideResnetBlock(in_ch, out_ch, temb_dim, stride if i == 0 else 1,
                                      activate_before_residual=(group == 0 and i == 0)))
        in_ch = out_ch
    self.blocks = nn.ModuleList(blocks)
    self.final_bn = _group_norm(in_ch)
    self.head = nn.Linear(in_ch, num_classes)
    # Uniform(-1, 1) / sqrt(num_classes) head, zero bias (the AutoAugment WRN init).
    nn.init.uniform_(self.head.weight, -1. / math.sqrt(num_classes), 1. / math.sqrt(num_classes))
    nn.init.zeros_(self.head.bias)

  def forward(self, x, sigma):
    """Logits (B, num_classes) for x (B, C, H, W) at noise std `sigma` (B,) (or a scalar)."""
    if x.ndim != 4 or x.shape[1] != self.num_channels:
      raise ValueError(f'WideResNet expects images of shape (batch, {self.num_channels}, H, W); '
                       f'got {tuple(x.shape)}.')
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    # Per-image standardisation, the std floored at 1/sqrt(#pixels) as in tf.image.
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp(min=1. / math.sqrt(n))
    h = (x - mean) / std
    temb = self.temb_dense0(self.fourier(torch.log(sigma)))
    temb = self.temb_dense1(F.silu(temb))
    h = self.init_conv(h)
    for block in self.blocks:
      h = block(h, temb)
    h = F.relu(self.final_bn(h))
    return self.head(h.mean(dim=(2, 3)))


# --- Building the classifier of a config -----------------------------------------------------

def classifier_config(config):
  """config.classifier with every key the defaults give it filled in, and its loop settings left
  None taken from config.training (a new ConfigDict). A partial section (config.classifier =
  dict(blocks_per_group=1)) keeps the other defaults; an unknown key is a ValueError."""
  from configs.default_cifar10_configs import get_default_configs
  defaults = get_default_configs().classifier.to_dict()
  given = config.classifier
  given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f'Unknown config.classifier keys {unknown}; known: '
                     f'{", ".join(sorted(defaults))}.')
  merged = dict(defaults, **given)
  for key in ('n_iters', 'log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if merged[key] is None:
      merged[key] = config.training[key]
  return ml_collections.ConfigDict(merged)


ARCHITECTURE_KEYS = ('blocks_per_group', 'channel_multiplier', 'embedding_size', 'fourier_scale')


def architecture(config):
  """The classifier's constructor arguments under `config` (saved in its checkpoints)."""
  cc = classifier_config(config)
  arch = {k: cc[k] for k in ARCHITECTURE_KEYS}
  arch.update(num_classes=config.data.get('num_classes', 10), num_channels=config.data.num_channels)
  return arch


def create_classifier(config, arch=None):
  """The noise-conditional classifier of `config` (or of `arch`, see `architecture`) on
  config.device."""
  return WideResNet(**(arch or architecture(config))).to(config.device)
