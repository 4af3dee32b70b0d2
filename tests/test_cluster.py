"""Runs that survive a cluster (issue #25; docs/cluster.md): one process per folder (a flock that
goes with its holder), SIGTERM / SIGUSR1 / training.max_runtime_s stop training after a step with
its resume checkpoint and exit status 75 (bit-identical when resumed; all DDP ranks at one step),
evaluation and sampling stop at once but never mid-file, a newest resume checkpoint that cannot be
read falls back to its previous version, a full disk names the size it needed, and an image
folder with an unreadable file is refused (or trained without it) before the first step."""
import errno
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import checkpoints
import datasets
import eval_lib
import folder_lock
import preemption
import run_lib
import sample_lib
import workdir
from conftest import assert_same_run, spawn_ranks
from test_train import _load, python_command, tiny_config

N_ITERS = 20


def _is_user_error(cls):
  """Whether main.py reports `cls` as a usage error (message, exit 1). Asked in a subprocess:
  importing main here would define its absl flags in this process, which scripts loaded by
  other tests define again."""
  code = ('import main; print("\\n".join(f"{c.__module__}.{c.__qualname__}" '
          'for c in main.user_errors()))')
  names = subprocess.run([sys.executable, '-c', code], cwd=pathlib.Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
  return any(f'{c.__module__}.{c.__qualname__}' in names for c in cls.__mro__)


def _meta(run):
  return _load(run / 'checkpoints-meta' / 'checkpoint.pth')


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
  """The resume checkpoint of a run of N_ITERS steps that never stopped."""
  folder = tmp_path_factory.mktemp('whole')
  run_lib.train(tiny_config(N_ITERS), str(folder))
  return _meta(folder)


def _signal_at_step(signum, at):
  """Patch code: the training step `at` sends this process `signum` (before its work)."""
  return (f'_step = run_lib.ScoreTrainer.step\n'
          f'def _signalling_step(self, state, step):\n'
          f'  if step == {at}:\n'
          f'    os.kill(os.getpid(), {int(signum)})\n'
          f'  return _step(self, state, step)\n'
          f'run_lib.ScoreTrainer.step = _signalling_step\n')


# --- One writer per folder ----------------------------------------------------------------------

def test_a_busy_folder_is_refused_naming_its_holder_until_it_is_killed(tmp_path):
  run = tmp_path / 'run'
  run_lib.train(tiny_config(2), str(run))  # a checkpoint to sample from
  folders = {'train': run, 'eval': run / 'eval', 'sample': run / 'generated' / 'x'}
  cmd, env = python_command('folder_lock, time', 'locks = [folder_lock.FolderLock(p, m) for m, p in '
                            f'{ {m: str(p) for m, p in folders.items()}!r}.items()]\n'
                            "print('locked', flush=True)\ntime.sleep(600)")
  holder = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    names = f'PID {holder.pid} on host {socket.gethostname()}, running since '
    with pytest.raises(folder_lock.FolderBusyError, match=f'--mode train, {names}.*another --workdir'):
      run_lib.train(tiny_config(4), str(run))
    config = tiny_config(2, **{'eval.begin_ckpt': 0, 'eval.end_ckpt': 0})
    with pytest.raises(folder_lock.FolderBusyError, match=f'--mode eval, {names}.*--eval_folder'):
      eval_lib.evaluate(config, str(run), 'eval')
    config = tiny_config(2, **{'sample.out': 'x', 'sample.num': 2, 'sampling.progress': False})
    with pytest.raises(folder_lock.FolderBusyError, match=f'--mode sample, {names}.*sample.out'):
      sample_lib.sample(config, str(run))
  finally:
    holder.kill()  # SIGKILL: the OS drops its locks
    holder.wait()
  assert _meta(run)['step'] == 3  # the refused run wrote nothing
  for mode, folder in folders.items():
    folder_lock.FolderLock(folder, mode).release()
  assert run_lib.train(tiny_config(4), str(run))['step'] == 5
  assert _is_user_error(folder_lock.FolderBusyError)


# --- Stopping on request ------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_resumes_bit_identically(tmp_path, whole):
  run = tmp_path / 'run'
  cmd, env = python_command('test_train, run_lib, os', _signal_at_step(signal.SIGTERM, 7) +
                            f'run_lib.train(test_train.tiny_config({N_ITERS}), {str(run)!r})')
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == preemption.PREEMPTED == 75, proc.stderr[-3000:]
  assert 'training stopped by SIGTERM: step 7 was its last' in (run / 'stdout.txt').read_text()
  assert _meta(run)['step'] == 8  # step 7 finished, then checkpointed
  assert not [p for p in (run / 'checkpoints-meta').iterdir() if p.name != 'checkpoint.pth']
  run_lib.train(tiny_config(N_ITERS), str(run))
  assert 'Starting training loop at step 8' in (run / 'stdout.txt').read_text()
  assert_same_run(whole, _meta(run))


def test_sigusr1_and_max_runtime_stop_after_a_step_and_resume_bit_identically(
    tmp_path, whole, monkeypatch):
  real_step = run_lib.ScoreTrainer.step

  def signalling_step(self, state, step):
    if step == 11:
      os.kill(os.getpid(), signal.SIGUSR1)
    return real_step(self, state, step)

  monkeypatch.setattr(run_lib.ScoreTrainer, 'step', signalling_step)
  handler = signal.getsignal(signal.SIGUSR1)
  with pytest.raises(preemption.Preempted, match='stopped by SIGUSR1: step 11 was its last') as e:
    run_lib.train(tiny_config(N_ITERS), str(tmp_path))
  assert e.value.code == 75 and _meta(tmp_path)['step'] == 12
  assert signal.getsignal(signal.SIGUSR1) == handler  # put back
  monkeypatch.undo()
  # The time limit alone: 1 ms stops after the first step of the run (step 12).
  with pytest.raises(preemption.Preempted, match=r'max_runtime_s = 0.001 s: step 12 was its last'):
    run_lib.train(tiny_config(N_ITERS, **{'training.max_runtime_s': 0.001}), str(tmp_path))
  assert _meta(tmp_path)['step'] == 13
  run_lib.train(tiny_config(N_ITERS), str(tmp_path))  # a resumable change
  assert_same_run(whole, _meta(tmp_path))
  with pytest.raises(ValueError, match='max_runtime_s is -1'):
    run_lib.train(tiny_config(N_ITERS, **{'training.max_runtime_s': -1}), str(tmp_path))


def _ddp_worker(rank, world, folder):
  limit = 0.001 if rank == 1 else None  # only rank 1 wants to stop
  try:
    run_lib.train(tiny_config(6, **{'model.dropout': 0., 'training.max_runtime_s': limit}), folder)
  except preemption.Preempted as e:
    with open(os.path.join(folder, f'stopped_{rank}'), 'w') as f:
      f.write(str(e))


@pytest.mark.slow
def test_ddp_ranks_agree_on_the_step_to_stop_at(tmp_path):
  spawn_ranks(_ddp_worker, str(tmp_path))
  assert 'stop request of another process: step 0 was its last' in (tmp_path / 'stopped_0').read_text()
  assert 'max_runtime_s = 0.001 s: step 0 was its last' in (tmp_path / 'stopped_1').read_text()
  saved = _meta(tmp_path)
  assert saved['step'] == 1 and len(saved['rng']) == 2


def test_sampling_stops_after_the_batch_it_is_writing(tmp_path, monkeypatch):
  run_lib.train(tiny_config(2), str(tmp_path))
  config = tiny_config(2, **{'sample.out': 'x', 'sample.num': 6, 'sample.batch_size': 2,
                             'sampling.progress': False})
  real_write = sample_lib.write_png
  written = []

  def write_then_signal(path, image):  # SIGTERM in the middle of the second batch's writes
    real_write(path, image)
    written.append(path.name)
    if len(written) == 3:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(sample_lib, 'write_png', write_then_signal)
  with pytest.raises(preemption.Preempted, match='sampling stopped by SIGTERM'):
    sample_lib.sample(config, str(tmp_path))
  folder = tmp_path / 'generated' / 'x'
  assert sorted(p.name for p in (folder / 'images').iterdir()) == [f'00000{k}.png' for k in range(4)]
  assert len(json.loads((folder / 'meta.json').read_text())['batches']) == 2
  assert not [p for p in folder.rglob('.*') if p.name != '.lock']  # no temporary file
  monkeypatch.undo()
  sample_lib.sample(config, str(tmp_path))  # draws the rest
  assert np.load(folder / 'samples.npz')['samples'].shape[0] == 6


def test_evaluation_stops_at_once_while_it_waits(tmp_path):
  config = tiny_config(2, **{'eval.begin_ckpt': 7, 'eval.end_ckpt': 7, 'eval.ckpt_timeout_s': 60.,
                             'eval.ckpt_poll_s': 0.05, 'eval.enable_loss': True})
  timer = threading.Timer(1., os.kill, (os.getpid(), signal.SIGTERM))
  start = time.monotonic()
  timer.start()
  with pytest.raises(preemption.Preempted, match='evaluation stopped by SIGTERM'):
    eval_lib.evaluate(config, str(tmp_path), 'eval')
  assert time.monotonic() - start < 30
  folder_lock.FolderLock(tmp_path / 'eval', 'eval').release()  # released


def test_an_interrupting_signal_waits_for_the_file_being_written(tmp_path):
  path = tmp_path / 'report.json'

  def write(tmp):
    with open(tmp, 'w') as f:
      f.write('{"fid": ')
      os.kill(os.getpid(), signal.SIGTERM)
      f.write('3.0}')

  with preemption.watch('evaluation', interrupt=True):
    with pytest.raises(preemption.Preempted):
      workdir.write_atomic(path, write)
  assert json.loads(path.read_text()) == {'fid': 3.0}
  assert [p.name for p in tmp_path.iterdir()] == ['report.json']


# --- A resume checkpoint that cannot be read ----------------------------------------------------

def test_unreadable_newest_resume_checkpoint_falls_back_to_the_previous(tmp_path, whole, caplog):
  run_lib.train(tiny_config(12), str(tmp_path))  # resume checkpoints after steps 5, 10, 12
  layout = workdir.Layout(str(tmp_path))
  newest, previous = pathlib.Path(layout.resume), pathlib.Path(layout.resume_previous)
  assert _load(newest)['step'] == 13 and _load(previous)['step'] == 11
  data = newest.read_bytes()
  newest.write_bytes(data[:len(data) // 2])
  with caplog.at_level(logging.WARNING):
    run_lib.train(tiny_config(N_ITERS), str(tmp_path))
  warning = ' '.join(r.getMessage() for r in caplog.records)
  assert f'{newest} cannot be read' in warning and f'previous version {previous} (step 11)' in warning
  assert 'Starting training loop at step 11' in (tmp_path / 'stdout.txt').read_text()
  assert_same_run(whole, _meta(tmp_path))
  assert (tmp_path / 'checkpoints-meta' / 'checkpoint.pth.unreadable').read_bytes() == data[:len(data) // 2]
  assert 'prev' not in str(checkpoints.resolve_checkpoint(tmp_path, 'latest'))
  # Neither readable: the error of today, and a word on the previous one.
  for path in (newest, previous):
    path.write_bytes(b'PK\x03\x04 truncated')
  with pytest.raises(checkpoints.CheckpointError, match='(?s)corrupt or truncated.*previous '
                                                         'version .* cannot be read either'):
    run_lib.train(tiny_config(N_ITERS + 2), str(tmp_path))


def test_the_previous_version_is_a_copy_where_there_are_no_hard_links(tmp_path, monkeypatch):
  path, previous = tmp_path / 'meta' / 'checkpoint.pth', tmp_path / 'meta.prev' / 'checkpoint.pth'
  path.parent.mkdir()
  path.write_bytes(b'version 1')
  checkpoints.link_or_copy(path, previous)
  assert os.path.samefile(path, previous)  # a hard link: no data written
  workdir.write_atomic(path, lambda tmp: pathlib.Path(tmp).write_bytes(b'version 2'))
  assert previous.read_bytes() == b'version 1'  # the write replaced the name, not the file

  def no_links(*args):
    raise OSError(errno.EPERM, 'Operation not permitted')

  monkeypatch.setattr(os, 'link', no_links)
  checkpoints.link_or_copy(path, previous)
  assert previous.read_bytes() == b'version 2' and not os.path.samefile(path, previous)
  assert sorted(p.name for p in previous.parent.iterdir()) == ['checkpoint.pth']


# --- A full disk --------------------------------------------------------------------------------

def test_a_full_disk_during_a_checkpoint_keeps_the_old_one_and_names_the_size(tmp_path, monkeypatch):
  real_save, saves = torch.save, []

  def save_or_fill_the_disk(obj, f, *args, **kwargs):  # the 2nd save: the resume checkpoint
    saves.append(1)                                     # of step 10 (no snapshot before 20)
    if len(saves) == 2:
      f.write(b'PK\x03\x04 half a checkpoint')
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(obj, f, *args, **kwargs)

  monkeypatch.setattr(torch, 'save', save_or_fill_the_disk)
  with pytest.raises(workdir.StorageError) as e:
    run_lib.train(tiny_config(N_ITERS), str(tmp_path))
  assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
  message = str(e.value)
  assert str(tmp_path / 'checkpoints-meta' / 'checkpoint.pth') in message
  assert 'No space left on device' in message
  assert re.search(r'needed about \d+\.\d KB, and \d+(\.\d)? [KMGT]?B(ytes)? is free', message), message
  monkeypatch.undo()
  assert _meta(tmp_path)['step'] == 6  # the checkpoint before intact, loadable
  for folder in ('checkpoints-meta', 'checkpoints-meta.prev'):
    assert [p.name for p in (tmp_path / folder).iterdir()] == ['checkpoint.pth']
  assert _is_user_error(type(e.value))


def test_a_full_disk_during_an_evaluation_file_names_its_size(tmp_path):
  path = tmp_path / 'ckpt_1_loss.npz'
  workdir.savez_atomic(path, all_losses=np.zeros(3))

  def fill(tmp):
    with open(tmp, 'wb') as f:
      f.write(b'x' * 2500)
    raise OSError(errno.EIO, 'Input/output error')

  with pytest.raises(workdir.StorageError, match=r'Input/output error\): it needed about 2.5 KB'):
    workdir.write_atomic(path, fill)
  assert np.load(path)['all_losses'].shape == (3,)
  assert [p.name for p in tmp_path.iterdir()] == ['ckpt_1_loss.npz']


# --- Bad data found before the run --------------------------------------------------------------

def _image_folder(folder, n=24):
  from PIL import Image
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f'{i:03d}.png')
  (folder / 'sub').mkdir()
  (folder / 'sub' / 'bad.png').write_bytes(b'\x89PNG but not really')
  return folder


def test_an_unreadable_image_is_refused_before_the_first_step_or_skipped(tmp_path, monkeypatch,
                                                                          caplog):
  data = _image_folder(tmp_path / 'faces')
  overrides = {'data.dataset': 'FFHQ', 'data.root': str(data), 'data.num_channels': 3,
               'data.num_workers': 0}
  run = tmp_path / 'run'
  with pytest.raises(datasets.UnreadableImagesError,
                     match=r'1 of the 25 images under .*faces cannot be read .*sub/bad.png '
                           r'\(UnidentifiedImageError.*skip_unreadable=True'):
    run_lib.train(tiny_config(2, **overrides), str(run))
  assert not (run / 'checkpoints-meta' / 'checkpoint.pth').exists()
  index = json.loads((run / 'image_check.json').read_text())
  assert index['files'] == 25 and list(index['unreadable']) == ['sub/bad.png']

  overrides['data.skip_unreadable'] = True
  with caplog.at_level(logging.WARNING):
    assert run_lib.train(tiny_config(2, **overrides), str(run))['step'] == 3
  assert 'Leaving out 1 unreadable image(s) of the 25' in caplog.text
  # A resume reads the index; a changed folder is checked again.
  opened = []
  real = datasets._unreadable
  monkeypatch.setattr(datasets, '_unreadable', lambda p: opened.append(p) or real(p))
  run_lib.train(tiny_config(4, **overrides), str(run))
  assert opened == []
  (data / 'sub' / 'bad.png').unlink()
  run_lib.train(tiny_config(6, **overrides), str(run))
  assert len(opened) == 24
  assert json.loads((run / 'image_check.json').read_text())['unreadable'] == {}
