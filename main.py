"""Command line: train, evaluate or sample from a score-based model.

    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train
    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode sample \
        --config.sample.num=256   # -> runs/digits/generated/<out>/ (see sample_lib.py)
    python main.py --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/c10 --mode eval \
        --config.eval.batch_size=256
    torchrun --nproc_per_node=4 main.py --config ... --workdir ... --mode train   # DDP
    python main.py --config ... --workdir ... --mode phema --config.phema.sweep=True  # post-hoc EMA

Any config entry can be overridden with --config.section.key=value (ml_collections). A mistake in
what was asked for (an unknown sampler, a bad seed range, a missing checkpoint or dataset, a
workdir of another run, a non-finite loss) ends with its message and exit status 1; --traceback
shows where it was raised. Programming errors keep their traceback. A run stopped by SIGTERM /
SIGUSR1 or by training.max_runtime_s saves what it must and exits with status 75 (preempted: start
it again to resume; docs/cluster.md).
"""
import sys

from absl import app, flags
from ml_collections.config_flags import config_flags


# One entry per mode: its driver, imported only when chosen (--mode sample loads no training code).
def _train(config, workdir):
  import run_lib
  return run_lib.train(config, workdir)


def _eval(config, workdir):
  import eval_lib
  return eval_lib.evaluate(config, workdir, FLAGS.eval_folder)


def _fid_stats(config, workdir):
  import eval_lib
  return eval_lib.fid_stats(config, workdir)  # Inception statistics of the train split


def _train_classifier(config, workdir):
  import classifier_lib
  return classifier_lib.train_classifier(config, workdir)  # for conditional sampling


def _sample(config, workdir):
  import sample_lib
  return sample_lib.sample(config, workdir)  # images from a checkpoint (config.sample)


def _phema(config, workdir):
  import phema_lib
  return phema_lib.run(config, workdir)  # post-hoc EMA checkpoints (config.phema), sweep


# Mode name -> function(config, workdir). Add new modes here; --mode lists the keys.
MODES = {'train': _train, 'eval': _eval, 'fid_stats': _fid_stats,
         'train_classifier': _train_classifier, 'sample': _sample, 'phema': _phema}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration (a configs/*.py file).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory (checkpoints, samples, logs).')
flags.DEFINE_enum('mode', None, list(MODES), 'Running mode: ' + ', '.join(MODES) + '.')
flags.DEFINE_string('eval_folder', 'eval', 'Folder under --workdir for evaluation results.')
flags.DEFINE_bool('traceback', False, 'Show the traceback of a usage error too (a bad setting, '
                  'a missing file), not only its message.')
flags.mark_flags_as_required(['config', 'workdir', 'mode'])


def user_errors():
  """The exceptions that report a mistake in what was asked for, each raised with a message that
  says what to change: shown as that message alone."""
  from checkpoints import CheckpointError
  from folder_lock import FolderBusyError  # another process writes the folder
  from workdir import StorageError  # a full or failing disk
  return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
          TimeoutError, FloatingPointError, CheckpointError, FolderBusyError, StorageError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}. Flags take the form --name=value.')
  from configs import with_defaults
  config = with_defaults(FLAGS.config)
  try:
    MODES[FLAGS.mode](config, FLAGS.workdir)
  except user_errors() as e:
    if FLAGS.traceback:
      raise
    print(f'\nmain.py --mode {FLAGS.mode} stopped: {type(e).__name__}: {e}\n(--traceback shows '
          'where it was raised.)', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
