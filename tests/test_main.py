"""main.py: flags, the mode table, and one training step through the command line."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/ve/digits_ncsnpp_continuous.py'


def _main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_bad_mode_lists_the_allowed_ones(tmp_path):
  result = _main(f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=sample')
  assert result.returncode != 0
  assert "--mode=sample" in result.stderr and 'train' in result.stderr and 'eval' in result.stderr, result.stderr


def test_missing_config_is_named(tmp_path):
  result = _main(f'--workdir={tmp_path}', '--mode=train')
  assert result.returncode != 0
  assert '--config' in result.stderr and 'must have a value' in result.stderr, result.stderr


def test_mode_table_and_lazy_eval_import():
  code = ('import sys, main, run_lib; print(sorted(main.MODES)); '
          'print("eval_lib" in sys.modules, callable(run_lib.evaluate))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=True).stdout.split('\n')
  assert {'train', 'eval'} <= set(eval(out[0]))
  assert out[1] == 'False True'  # importing run_lib does not need eval_lib


@pytest.mark.slow
def test_train_through_the_command_line_with_overrides(tmp_path):
  result = _main(f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=train',
                 '--config.training.n_iters=1', '--config.training.snapshot_sampling=False',
                 '--config.model.nf=8', '--config.data.image_size=8', '--config.training.batch_size=4')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'checkpoints' / 'checkpoint_0.pth').exists()
  assert (tmp_path / 'checkpoints-meta' / 'checkpoint.pth').exists()
  assert '"nf": 8' in (tmp_path / 'config.json').read_text()
