"""Run controllable generation on a trained checkpoint and write PNG grids (paper, Sec. 5).

  python scripts/controllable.py --config configs/ve/digits_ncsnpp_continuous.py \
      --workdir runs/digits_ve --tasks inpaint,conditional

Tasks (--tasks, comma-separated; default all that the data allows):
  inpaint      test images with a region hidden (--mask center|right|random) filled in
  colorize     test images turned gray, then coloured (3-channel data only)
  conditional  --num samples of classes 0, 1, 2, ... with a noise-conditional classifier
               (trained by `main.py --mode train_classifier`; needs --classifier_checkpoint or
               WORKDIR/classifier/checkpoints/)

Writes OUT/{task}_input.png (the test images), OUT/{task}_masked.png (what the sampler is given:
hidden pixels shown mid-gray, or the gray image) and OUT/{task}_output.png; for `conditional`
only OUT/conditional_output.png (one row per class). OUT defaults to WORKDIR/controllable.
The score checkpoint defaults to the newest WORKDIR/checkpoints/checkpoint_N.pth, used with its
EMA weights. The sampler is the config's (sampling.predictor / corrector / snr / n_steps_each,
model.num_scales steps, or --steps for continuous-time models); override sampling entries with
--config.sampling.key=value.
"""
import math
import os
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections.config_flags import config_flags  # noqa: E402

TASKS = ('inpaint', 'colorize', 'conditional')


def latest_checkpoint(folder):
  """The checkpoint_N.pth of `folder` with the largest N, or None."""
  folder = pathlib.Path(folder)
  found = [(int(m.group(1)), p) for p in folder.glob('checkpoint_*.pth')
           if (m := re.fullmatch(r'checkpoint_(\d+)\.pth', p.name))] if folder.is_dir() else []
  return max(found)[1] if found else None


def make_mask(kind, shape, generator=None):
  """A 0/1 mask (1 = known) of `shape` (B, C, H, W): the centre square of half the side hidden,
  the right half hidden, or half of the pixels hidden at random (same over channels)."""
  b, _, h, w = shape
  mask = torch.ones(b, 1, h, w)
  if kind == 'center':
    mask[:, :, h // 4:h - h // 4, w // 4:w - w // 4] = 0.
  elif kind == 'right':
    mask[:, :, :, w // 2:] = 0.
  elif kind == 'random':
    mask = (torch.rand(b, 1, h, w, generator=generator) < 0.5).float()
  else:
    raise ValueError(f'Unknown mask {kind!r}; use center, right or random.')
  return mask.expand(shape).contiguous()


def load_score_model(config, checkpoint):
  """The score network of `checkpoint` with its EMA weights, in eval mode."""
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage
  from utils import restore_checkpoint
  model = mutils.create_model(config)
  state = dict(model=model, ema=ExponentialMovingAverage(model.parameters(), config.model.ema_rate),
               step=0)
  restore_checkpoint(checkpoint, state, config.device)
  state['ema'].copy_to(model.parameters())
  return model.eval()


def _save_grid(images, path, nrow):
  from torchvision.utils import make_grid, save_image
  save_image(make_grid(images.detach().clamp(0, 1).cpu(), nrow=nrow, padding=2), path)
  return str(path)


def run(config, checkpoint, out_dir, tasks=TASKS, num=16, mask='center', seed=0,
        classifier_checkpoint=None, steps=None):
  """Run `tasks` with the score model of `checkpoint`; returns {name: path of each PNG written}.

  `steps` (continuous-time models only) samples with that many PC steps instead of
  config.model.num_scales, which also sizes the network's buffers and so must stay as trained.

  Tasks that the data or the files do not allow (colorize on 1-channel data, conditional without
  a classifier checkpoint) are skipped with a message.
  """
  import controllable_generation as cg
  import datasets
  import sde_lib

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  device = torch.device(config.device)
  sde_config = config
  if steps:
    if not config.training.continuous:
      raise ValueError('--steps needs a continuous-time model: a discrete one is tied to its '
                       'model.num_scales noise levels.')
    sde_config = ml_collections.ConfigDict(config.to_dict())
    sde_config.model.num_scales = steps
  sde, eps = sde_lib.get_sde(sde_config)
  scaler = datasets.get_data_scaler(config)
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  model = load_score_model(config, checkpoint)
  s = config.sampling
  common = dict(predictor=s.predictor, corrector=s.corrector, inverse_scaler=inverse_scaler,
                snr=s.snr, n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                continuous=config.training.continuous, denoise=s.noise_removal, eps=eps)
  generator = torch.Generator(device=device).manual_seed(seed)
  nrow = int(math.ceil(math.sqrt(num)))
  written = {}

  images = None
  if 'inpaint' in tasks or 'colorize' in tasks:
    _, test_ds, _ = datasets.get_dataset(config, evaluation=True)
    images = next(iter(test_ds))[:num].to(device)  # in [0, 1]

  if 'inpaint' in tasks:
    m = make_mask(mask, images.shape, torch.Generator().manual_seed(seed)).to(device)
    out = cg.get_pc_inpainter(sde, **common)(model, scaler(images), m, generator=generator)
    written['inpaint_input'] = _save_grid(images, out_dir / 'inpaint_input.png', nrow)
    written['inpaint_masked'] = _save_grid(images * m + 0.5 * (1 - m),
                                           out_dir / 'inpaint_masked.png', nrow)
    written['inpaint_output'] = _save_grid(out, out_dir / 'inpaint_output.png', nrow)

  if 'colorize' in tasks:
    if images.shape[1] != 3:
      print(f'colorize skipped: it needs RGB data, {config.data.dataset} has '
            f'{images.shape[1]} channel(s).')
    else:
      gray = images.mean(1, keepdim=True).expand(-1, 3, -1, -1)
      out = cg.get_pc_colorizer(sde, **common)(model, scaler(gray), generator=generator)
      written['colorize_input'] = _save_grid(images, out_dir / 'colorize_input.png', nrow)
      written['colorize_masked'] = _save_grid(gray, out_dir / 'colorize_masked.png', nrow)
      written['colorize_output'] = _save_grid(out, out_dir / 'colorize_output.png', nrow)

  if 'conditional' in tasks:
    if classifier_checkpoint is None:
      print('conditional skipped: no classifier checkpoint (train one with main.py --mode '
            'train_classifier, or pass --classifier_checkpoint).')
    else:
      import classifier_lib
      classifier = classifier_lib.load_classifier(config, classifier_checkpoint)
      num_classes = classifier.num_classes
      per_class = max(1, num // num_classes)
      labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
      shape = (len(labels), config.data.num_channels, config.data.image_size,
               config.data.image_size)
      sampler = cg.get_pc_conditional_sampler(sde, model, classifier, shape, **common)
      out = sampler(labels, generator=generator)
      written['conditional_output'] = _save_grid(out, out_dir / 'conditional_output.png',
                                                 per_class)
  for name, path in written.items():
    print(f'{name}: {path}')
  return written


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The score model\'s config (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints/, classifier/checkpoints/).')
flags.DEFINE_string('checkpoint', None, 'Score checkpoint; default: newest in WORKDIR/checkpoints.')
flags.DEFINE_string('classifier_checkpoint', None,
                    'Classifier checkpoint; default: newest in WORKDIR/classifier/checkpoints.')
flags.DEFINE_string('out', None, 'Output folder; default WORKDIR/controllable.')
flags.DEFINE_list('tasks', list(TASKS), 'Tasks to run: ' + ', '.join(TASKS) + '.')
flags.DEFINE_integer('num', 16, 'Images per task.')
flags.DEFINE_enum('mask', 'center', ['center', 'right', 'random'], 'Inpainting mask.')
flags.DEFINE_integer('seed', 0, 'Seed of the sampler noise.')
flags.DEFINE_integer('steps', None, 'PC steps (continuous-time models); default model.num_scales.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  unknown = sorted(set(FLAGS.tasks) - set(TASKS))
  if unknown:
    raise app.UsageError(f'Unknown task(s) {unknown}; choose from {", ".join(TASKS)}.')
  workdir = FLAGS.workdir
  checkpoint = FLAGS.checkpoint or (
    workdir and latest_checkpoint(os.path.join(workdir, 'checkpoints')))
  if not checkpoint:
    raise app.UsageError('No score checkpoint: pass --checkpoint, or a --workdir with '
                         'checkpoints/checkpoint_N.pth.')
  classifier_ckpt = FLAGS.classifier_checkpoint or (
    workdir and latest_checkpoint(os.path.join(workdir, 'classifier', 'checkpoints')))
  out = FLAGS.out or os.path.join(workdir or '.', 'controllable')
  run(FLAGS.config, checkpoint, out, FLAGS.tasks, FLAGS.num, FLAGS.mask, FLAGS.seed,
      classifier_ckpt or None, FLAGS.steps)


if __name__ == '__main__':
  app.run(main)
