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
  result = _main(f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=draw')
  assert result.returncode != 0
  assert "--mode=draw" in result.stderr and 'train' in result.stderr and 'sample' in result.stderr, result.stderr


def test_missing_config_is_named(tmp_path):
  result = _main(f'--workdir={tmp_path}', '--mode=train')
  assert result.returncode != 0
  assert '--config' in result.stderr and 'must have a value' in result.stderr, result.stderr


def test_mode_table_and_lazy_eval_import():
  code = ('import sys, main, run_lib; print(sorted(main.MODES)); '
          'print("eval_lib" in sys.modules, callable(run_lib.train))')
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


def test_sample_through_the_command_line_from_an_official_checkpoint(tmp_path):
  """--mode sample with config.sample overrides; the checkpoint is the official-format fixture
  (ve/cifar10_ncsnpp_continuous shrunk to 16x16, nf 16), and --workdir only receives the output."""
  import json
  import numpy as np
  ckpt = ROOT / 'tests' / 'fixtures' / 'checkpoints' / 've_ncsnpp_small_checkpoint.pth'
  result = _main('--config=configs/ve/cifar10_ncsnpp_continuous.py', f'--workdir={tmp_path}',
                 '--mode=sample', '--config.data.image_size=16', '--config.model.nf=16',
                 '--config.model.ch_mult=(1, 2, 2)', '--config.model.num_res_blocks=1',
                 '--config.model.attn_resolutions=(8,)', '--config.sampling.method=heun',
                 '--config.sampling.num_steps=2', '--config.sampling.progress=False',
                 f'--config.sample.ckpt={ckpt}', '--config.sample.seeds=3-5',
                 '--config.sample.out=cli')
  assert result.returncode == 0, result.stderr[-3000:]
  folder = tmp_path / 'generated' / 'cli'
  assert np.load(folder / 'samples.npz')['samples'].shape == (3, 16, 16, 3)
  meta = json.loads((folder / 'meta.json').read_text())
  assert meta['seeds'] == [3, 5] and meta['checkpoint'] == {'path': str(ckpt), 'step': 3}
  assert [b['nfe'] for b in meta['batches']] == [3]  # Heun: 2 levels, then the Euler step to 0
  assert 'generate: 3 images (seeds 3-5' in result.stderr


FIXTURE_CKPT = ROOT / 'tests' / 'fixtures' / 'checkpoints' / 've_ncsnpp_small_checkpoint.pth'


@pytest.mark.parametrize('overrides, message', [
  ((f'--config.sample.ckpt={FIXTURE_CKPT}', '--config.sampling.method=nope'),
   "ValueError: Unknown sampler 'nope'"),
  (('--config.sample.seeds=9-3',), "ValueError: config.sample.seeds='9-3' does not parse"),
  (('--config.sample.ckpt=7',), 'FileNotFoundError: No checkpoint'),
])
def test_a_usage_error_ends_with_its_message_not_a_traceback(tmp_path, overrides, message):
  result = _main(f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=sample', *overrides)
  assert result.returncode == 1, result.stderr[-2000:]
  assert message in result.stderr and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert '--traceback' in result.stderr
  shown = _main(f'--config={CONFIG}', f'--workdir={tmp_path}', '--mode=sample', *overrides,
                '--traceback')
  assert shown.returncode != 0 and 'Traceback' in shown.stderr and message.split(': ')[1] in shown.stderr
