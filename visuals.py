"""What a person looks at while a model trains: sample grids made visible (small images upscaled,
nearest neighbour, so 16x16 digits need no zooming) and evaluation results in TensorBoard, against
the training step of the checkpoint they measure."""
import math
import os

import torch

MIN_SIDE = 48  # images smaller than this are upscaled by an integer factor to at least it


def upscale(images, min_side=MIN_SIDE):
  """(N, C, H, W) -> the same images enlarged k = ceil(min_side / min(H, W)) times by pixel
  repetition (k = 1 for images of at least min_side pixels)."""
  k = max(1, math.ceil(min_side / min(images.shape[-2:])))
  return images if k == 1 else images.repeat_interleave(k, -2).repeat_interleave(k, -1)


def grid(images, nrow=None, padding=2, min_side=MIN_SIDE):
  """A (C, H, W) float grid in [0, 1] of `images` (N, C, h, w) in [0, 1], small images upscaled;
  nrow defaults to sqrt(N) (a square grid)."""
  from torchvision.utils import make_grid
  images = upscale(images.detach().float().clamp(0, 1).cpu(), min_side)
  return make_grid(images, nrow=nrow or max(1, int(math.sqrt(len(images)))), padding=padding)


def add_eval_scalars(workdir, step, results, prefix='eval'):
  """Write `results` ({name: number}: loss, bpd, fid, IS, kid, digits_fd, ...) as TensorBoard
  scalars '<prefix>/<name>' at `step` to WORKDIR/tensorboard/<prefix> (a run of its own beside the
  training curves); non-finite values are skipped."""
  from torch.utils.tensorboard import SummaryWriter
  with SummaryWriter(os.path.join(workdir, 'tensorboard', prefix)) as writer:
    for name, value in sorted(results.items()):
      value = float(value)
      if math.isfinite(value):
        writer.add_scalar(f'{prefix}/{name}', value, step)


def add_images(workdir, step, images, prefix='eval'):
  """Write {tag: (C, H, W) grid} as TensorBoard images at `step` under WORKDIR/tensorboard/<prefix>."""
  from torch.utils.tensorboard import SummaryWriter
  with SummaryWriter(os.path.join(workdir, 'tensorboard', prefix)) as writer:
    for tag, image in images.items():
      writer.add_image(f'{prefix}/{tag}', torch.as_tensor(image), step)
