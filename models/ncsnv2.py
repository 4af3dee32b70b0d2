"""NCSN (Song & Ermon 2019) and NCSNv2 (Song & Ermon 2020): RefineNet score networks.

One `RefineNet` class builds all four registered models from a stage table:

  'ncsn'        NCSN v1, 32-64 px: every norm conditioned on the noise-level index
                (ConditionalInstanceNorm2dPlus with num_scales classes).
  'ncsnv2_64'   NCSNv2 for images up to ~64 px, unconditional; the output is divided by sigma_y.
  'ncsnv2_128'  NCSNv2 for 96-128 px (one more stage, 4 nf channels at the bottom).
  'ncsnv2_256'  NCSNv2 for 128-256 px (one more down-sampling stage, 'res31').

The network takes (x, y): x (B, C, H, W) in [0, 1] (or [-1, 1] when data.centered) and y (B,)
int64, the index into the geometric sigma ladder (0 = sigma_max), and returns the score
(B, C, H, W). Module names and creation order follow score_sde_pytorch, so its checkpoints load
strictly; that code cannot build these models as it stands (tests/fixtures/README.md lists the
fixes, which are made here).
"""
import functools

import torch
import torch.nn as nn

from models.layers import get_act
from models.ncsn_layers import RefineBlock, ResidualBlock
from models.normalization import get_normalization
from models.utils import get_sigmas, register_model

# Stages, shallow to deep: (name, channels / nf, resample, dilation, name of its RefineBlock).
# Each stage is two residual blocks; a dilated 'down' stage keeps the resolution.
_STAGES_64 = (('res1', 1, None, 1, 'refine4'),
              ('res2', 2, 'down', 1, 'refine3'),
              ('res3', 2, 'down', 2, 'refine2'),
              ('res4', 2, 'down', 4, 'refine1'))
_STAGES_128 = (('res1', 1, None, 1, 'refine5'),
               ('res2', 2, 'down', 1, 'refine4'),
               ('res3', 2, 'down', 1, 'refine3'),
               ('res4', 4, 'down', 2, 'refine2'),
               ('res5', 4, 'down', 4, 'refine1'))
_STAGES_256 = (('res1', 1, None, 1, 'refine5'),
               ('res2', 2, 'down', 1, 'refine4'),
               ('res3', 2, 'down', 1, 'refine3'),
               ('res31', 2, 'down', 1, 'refine31'),
               ('res4', 4, 'down', 2, 'refine2'),
               ('res5', 4, 'down', 4, 'refine1'))


class RefineNet(nn.Module):
  """The NCSN / NCSNv2 RefineNet: residual encoder stages, RefineBlock decoder, norm-act-conv.

  Subclasses set `stages` (a table above) and `conditional` (NCSN v1 conditions every norm on
  y; NCSNv2 conditions only through the final division by sigma_y).
  """
  stages = _STAGES_64
  conditional = False

  def __init__(self, config):
    super().__init__()
    if config.model.normalization == 'GroupNorm':
      raise ValueError("NCSN networks build each norm from its channel count alone; "
                       "config.model.normalization='GroupNorm' needs a group count. "
                       "Use 'InstanceNorm++' (as every NCSN config does).")
    self.centered = config.data.centered
    self.nf = nf = config.model.nf
    self.act = act = get_act(config)
    self.norm = get_normalization(config, conditional=self.conditional)
    num_classes = config.model.num_scales if self.conditional else None
    # Reference behaviour: NCSNv2 always divides by sigma_y; NCSN v1 never stores sigmas, and
    # divides only when model.scale_by_sigma is set (as the JAX score_sde does).
    self.scale_by_sigma = (not self.conditional) or config.model.get('scale_by_sigma', False)
    if self.scale_by_sigma:
      # float64, as the reference's torch.tensor(numpy) buffer: outputs come out float64.
      self.register_buffer('sigmas', torch.tensor(get_sigmas(config)),
                           persistent=not self.conditional)
    channels = config.data.num_channels
    interpolation = config.model.get('interpolation', 'bilinear')

    # Creation order is the reference's: it fixes state-dict order and the EMA's param order.
    self.begin_conv = nn.Conv2d(channels, nf, 3, stride=1, padding=1)
    self.normalizer = self.norm(nf)  # conditional norms come with num_classes bound
    self.end_conv = nn.Conv2d(nf, channels, 3, stride=1, padding=1)

    widths = [mult * nf for _, mult, _, _, _ in self.stages]
    in_width = nf
    for (name, _, resample, dilation, _), width in zip(self.stages, widths):
      block = dict(act=act, normalization=self.norm, dilation=dilation, num_classes=num_classes)
      setattr(self, name, nn.ModuleList([
        ResidualBlock(in_width, width, resample=resample, **block),
        ResidualBlock(width, width, resample=None, **block)]))
      in_width = width

    # Stage i's RefineBlock fuses stage i with the refined stage i+1 and outputs stage i-1's
    # width. Created in sorted-name order (refine3 before refine31), as in the reference.
    last = len(self.stages) - 1
    for i in sorted(range(last + 1), key=lambda i: self.stages[i][4]):
      name = self.stages[i][4]
      setattr(self, name, RefineBlock(
        [widths[i]] * (1 if i == last else 2), widths[max(i - 1, 0)], act=act,
        start=i == last, end=i == 0, num_classes=num_classes, normalizer=self.norm,
        interpolation=interpolation))

  def forward(self, x, y):
    """Score s(x, sigma_y).

    Args:
      x: (B, C, H, W) float images.
      y: (B,) int64 noise-level indices into the sigma ladder (0 is sigma_max).
    Returns:
      (B, C, H, W); float64 when divided by the float64 `sigmas` buffer (NCSNv2).
    """
    if y.is_floating_point():
      raise TypeError(f'{type(self).__name__} takes integer noise-level indices y (B,), got '
                      f'{y.dtype}. These networks are trained on discrete noise levels: use '
                      'training.continuous=False.')
    cond = y if self.conditional else None
    h = x if self.centered else 2 * x - 1.
    h = self.begin_conv(h)
    features = []
    for name, *_ in self.stages:
      for block in getattr(self, name):
        h = block(h, cond)
      features.append(h)

    refined = None
    for i in reversed(range(len(self.stages))):
      inputs = [features[i]] if refined is None else [features[i], refined]
      refined = getattr(self, self.stages[i][4])(inputs, features[i].shape[2:], cond)

    h = self.normalizer(refined) if cond is None else self.normalizer(refined, cond)
    h = self.end_conv(self.act(h))
    if self.scale_by_sigma:
      h = h / self.sigmas[y].view(-1, *([1] * (h.dim() - 1)))
    return h


@register_model(name='ncsn')
class NCSN(RefineNet):
  """NCSN v1 (Song & Ermon 2019): noise-conditional InstanceNorm++ throughout."""
  stages = _STAGES_64
  conditional = True


@register_model(name='ncsnv2_64')
class NCSNv2(RefineNet):
  """NCSNv2 (Song & Ermon 2020) for images below 96 px; output divided by sigma_y."""
  stages = _STAGES_64


@register_model(name='ncsnv2_128')
class NCSNv2_128(RefineNet):
  """NCSNv2 for 96-128 px images."""
  stages = _STAGES_128


@register_model(name='ncsnv2_256')
class NCSNv2_256(RefineNet):
  """NCSNv2 for 128-256 px images."""
  stages = _STAGES_256


def get_network(config):
  """A zero-argument constructor of the NCSNv2 variant suited to `config.data.image_size`
  (below 96 px: ncsnv2_64; up to 128: ncsnv2_128; up to 256: ncsnv2_256), as the reference."""
  size = config.data.image_size
  if size > 256:
    raise ValueError(f'No NCSNv2 network for {size} px images (the largest is 256 px).')
  cls = NCSNv2 if size < 96 else NCSNv2_128 if size <= 128 else NCSNv2_256
  return functools.partial(cls, config=config)
