"""What TensorBoard shows of a run: the snapshot sample grids (small images upscaled, nearest
neighbour) at the snapshot steps, and `--mode eval`'s results at the training step of each
checkpoint, read back from the event files."""
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import eval_lib
import run_lib
import visuals
from test_train import tiny_config


def test_upscale_repeats_pixels():
  x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
  y = visuals.upscale(x, min_side=48)
  assert y.shape == (2, 1, 48, 48)
  assert torch.equal(y[:, :, ::6, ::6], x) and torch.equal(y[:, :, 5::6, 5::6], x)
  assert visuals.upscale(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)  # large: as it is


def test_samples_and_eval_scalars_reach_tensorboard(tmp_path):
  config = tiny_config(10, **{'training.snapshot_freq': 5, 'training.snapshot_sampling': True,
                              'training.batch_size': 4})
  run_lib.train(config, str(tmp_path))
  events = EventAccumulator(str(tmp_path / 'tensorboard'), size_guidance={'images': 0}).Reload()
  images = {e.step: e for e in events.Images('samples')}
  assert sorted(images) == [5, 10]
  # 4 images of 8x8 upscaled 6x (48 px) in a 2x2 grid with 2 px padding: 2 + 2 * (48 + 2).
  assert (images[10].width, images[10].height) == (102, 102)
  with Image.open(tmp_path / 'samples' / 'iter_10' / 'sample.png') as png:
    assert png.size == (102, 102)
    grid = np.asarray(png.convert('L'))
  tile = grid[2:50, 2:50]  # the first image: 6x6 blocks of one value each
  assert (tile == np.repeat(np.repeat(tile[::6, ::6], 6, 0), 6, 1)).all()

  ev = config.eval
  ev.begin_ckpt, ev.end_ckpt = 1, 2
  ev.enable_loss, ev.enable_bpd, ev.enable_sampling = True, False, True
  ev.batch_size = ev.num_samples = 20
  ev.ckpt_timeout_s = 0.
  eval_lib.evaluate(config, str(tmp_path))
  events = EventAccumulator(str(tmp_path / 'tensorboard' / 'eval')).Reload()
  report = __import__('json').loads((tmp_path / 'eval' / 'report.json').read_text())
  for tag in ('eval/loss', 'eval/digits_fd', 'eval/digits_cs', 'eval/digits_fd_floor'):
    scalars = {e.step: e.value for e in events.Scalars(tag)}
    assert sorted(scalars) == [5, 10], tag  # checkpoint_1 holds step 5, checkpoint_2 step 10
    for ckpt, step in (('1', 5), ('2', 10)):
      assert scalars[step] == pytest.approx(report[ckpt][tag[5:]], rel=1e-6)
