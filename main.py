"""Command line: train, evaluate or sample from a score-based model.

    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train
    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode sample \
        --config.sample.num=256   # -> runs/digits/generated/<out>/ (see sample_lib.py)
    python main.py --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/c10 --mode eval \
        --config.eval.batch_size=256
    torchrun --nproc_per_node=4 main.py --config ... --workdir ... --mode train   # DDP

Any config entry can be overridden with --config.section.key=value (ml_collections).
"""
import importlib

from absl import app, flags
from ml_collections.config_flags import config_flags


def _train(config):
  import run_lib
  run_lib.train(config, FLAGS.workdir)


def _eval(config):
  import run_lib
  run_lib.evaluate(config, FLAGS.workdir, FLAGS.eval_folder)


def _from_module(module_name, function_name):
  """A mode served by `module_name.function_name(config, workdir)`, imported when chosen."""

  def run(config):
    getattr(importlib.import_module(module_name), function_name)(config, FLAGS.workdir)

  return run


# Mode name -> function(config). Add new modes here; --mode lists the keys.
MODES = {
  'train': _train,
  'eval': _eval,
  'fid_stats': _from_module('eval_lib', 'fid_stats'),  # Inception statistics of the train split
  'train_classifier': _from_module('classifier_lib', 'train_classifier'),  # for conditional sampling
  'sample': _from_module('sample_lib', 'sample'),  # images from a checkpoint (config.sample)
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration (a configs/*.py file).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints, samples, logs).')
flags.DEFINE_enum('mode', None, list(MODES), 'Running mode: ' + ', '.join(MODES) + '.')
flags.DEFINE_string('eval_folder', 'eval', 'Folder under --workdir for evaluation results.')
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}. Flags take the form --name=value.')
  MODES[FLAGS.mode](FLAGS.config)


if __name__ == '__main__':
  app.run(main)
