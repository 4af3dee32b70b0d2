"""Controllable generation from the command line: an alias of `main.py --mode sample` with
config.sample.task = inpaint, colorize or conditional (sample_lib.py, sample_tasks.py).

  python scripts/controllable.py --config configs/ve/digits_ncsnpp_continuous.py \
      --workdir runs/digits_ve --tasks inpaint,conditional

runs `main.py --mode sample --config.sample.task=<task>` for each task, with --num, --mask,
--seed, --checkpoint, --classifier_checkpoint and --steps as config.sample.num, .mask,
config.seed, config.sample.ckpt, .classifier_ckpt and .pc_steps. Tasks the data or the files do
not allow (colorize on 1-channel data, conditional without a classifier checkpoint) are skipped
with a message. Each task writes OUT/generated/<step>_<task>_<hash>/ (images/, samples.npz,
grid.png, meta.json; inpaint and colorize also inputs.png and masked.png, what the sampler is
given); `conditional` also by_class.png, one row per class. OUT defaults to WORKDIR.
"""
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections.config_flags import config_flags  # noqa: E402

import sample_lib  # noqa: E402
from checkpoints import latest_checkpoint, resolve_checkpoint  # noqa: E402
from sample_tasks import make_mask  # noqa: E402,F401  (its old home)

TASKS = ('inpaint', 'colorize', 'conditional')


def run(config, checkpoint, out_dir, tasks=TASKS, num=16, mask='center', seed=None,
        classifier_checkpoint=None, steps=None):
  """Run `tasks` with the score model of `checkpoint` into out_dir/generated/; returns {name: path
  of each grid}: {task}_output (grid.png), {task}_input and {task}_masked for inpaint and
  colorize, conditional_output (by_class.png)."""
  written = {}
  for task in tasks:
    if task == 'colorize' and config.data.num_channels != 3:
      print(f'colorize skipped: it needs RGB data, {config.data.dataset} has '
            f'{config.data.num_channels} channel(s).')
      continue
    if task == 'conditional' and classifier_checkpoint is None:
      print('conditional skipped: no classifier checkpoint (train one with main.py --mode '
            'train_classifier, or pass --classifier_checkpoint).')
      continue
    task_config = ml_collections.ConfigDict(config.to_dict())
    classes = config.data.get('num_classes', 10)  # what the classifier was trained with
    task_num = classes * max(1, num // classes) if task == 'conditional' else num  # whole rows
    task_config.seed = config.seed if seed is None else seed
    task_config.sample.update(task=task, ckpt=str(checkpoint), mask=mask, seeds='', out='',
                              num=task_num,
                              classifier_ckpt=str(classifier_checkpoint or ''),
                              class_label=-1, pc_steps=steps or 0)
    folder = sample_lib.sample(task_config, str(out_dir))
    written[f'{task}_output'] = str(folder / 'grid.png')
    if task == 'conditional':  # image k has class k mod classes: one row per class
      samples = np.load(folder / 'samples.npz')['samples']
      order = np.argsort(np.arange(len(samples)) % classes, kind='stable')
      sample_lib.save_grid(samples[order], folder / 'by_class.png', nrow=len(samples) // classes)
      written['conditional_output'] = str(folder / 'by_class.png')
    else:
      written[f'{task}_input'] = str(folder / 'inputs.png')
      written[f'{task}_masked'] = str(folder / 'masked.png')
  for name, path in written.items():
    print(f'{name}: {path}')
  return written


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The score model\'s config (configs/*.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Training workdir (checkpoints/, classifier/checkpoints/).')
flags.DEFINE_string('checkpoint', None, "Score checkpoint; default: WORKDIR's latest.")
flags.DEFINE_string('classifier_checkpoint', None,
                    'Classifier checkpoint; default: newest in WORKDIR/classifier/checkpoints.')
flags.DEFINE_string('out', None, 'Output folder (results go to OUT/generated/); default WORKDIR.')
flags.DEFINE_list('tasks', list(TASKS), 'Tasks to run: ' + ', '.join(TASKS) + '.')
flags.DEFINE_integer('num', 16, 'Images per task.')
flags.DEFINE_enum('mask', 'center', ['center', 'right', 'random'], 'Inpainting mask.')
flags.DEFINE_integer('seed', None, "config.seed (default: the config's); image k's noise "
                     'comes from (seed, k).')
flags.DEFINE_integer('steps', None, 'PC steps (continuous-time models); default model.num_scales.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}.')
  unknown = sorted(set(FLAGS.tasks) - set(TASKS))
  if unknown:
    raise app.UsageError(f'Unknown task(s) {unknown}; choose from {", ".join(TASKS)}.')
  workdir = FLAGS.workdir
  if not (FLAGS.checkpoint or workdir):
    raise app.UsageError('No score checkpoint: pass --checkpoint, or a --workdir with '
                         'checkpoints/checkpoint_N.pth.')
  checkpoint = FLAGS.checkpoint or resolve_checkpoint(workdir, 'latest')
  classifier_ckpt = FLAGS.classifier_checkpoint or (
    workdir and latest_checkpoint(os.path.join(workdir, 'classifier', 'checkpoints')))
  out = FLAGS.out or workdir or '.'
  run(FLAGS.config, checkpoint, out, FLAGS.tasks, FLAGS.num, FLAGS.mask, FLAGS.seed,
      classifier_ckpt or None, FLAGS.steps)


if __name__ == '__main__':
  app.run(main)
