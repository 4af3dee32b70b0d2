"""Test setup: repo root on sys.path, 1 torch thread (tiny networks; more threads only add
synchronisation cost on 2-core machines), fixtures folder."""
import os
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / 'tests' / 'fixtures'

torch.set_num_threads(int(os.environ.get('SCORESDE_TEST_THREADS', '1')))


def assert_close_scaled(actual, expected, rel=1e-4, name=''):
  """The reference fixtures' rule: |a - b| <= rel |b| + rel max|b| elementwise."""
  actual = torch.as_tensor(actual).double()
  expected = torch.as_tensor(expected).double()
  assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != {expected.shape}'
  bound = rel * expected.abs() + rel * expected.abs().max()
  excess = (actual - expected).abs() - bound
  worst = excess.max().item()
  assert worst <= 0, (f'{name}: max |a-b| = {(actual - expected).abs().max().item():.3g} exceeds the '
                      f'bound by {worst:.3g} (max|b| = {expected.abs().max().item():.3g})')


def _assert_same_trainable(a, b, what):
  """Weights, EMA and Adam state of two checkpoint entries, bit for bit."""
  for key, value in a['model'].items():
    assert torch.equal(value, b['model'][key]), f'{what}: {key}'
  for x, y in zip(a['ema']['shadow_params'], b['ema']['shadow_params']):
    assert torch.equal(x, y), f'{what}: EMA'
  for i, state in a['optimizer']['state'].items():
    assert all(torch.equal(v, b['optimizer']['state'][i][k]) for k, v in state.items()), what


def assert_same_run(a, b):
  """Two training checkpoints (dicts) hold the same step, weights, EMA, Adam state, gradient
  scaler, variational dequantizer (weights, EMA, Adam state) and, for every rank, the same torch
  and loss-noise RNG states: bit for bit."""
  assert a['step'] == b['step']
  _assert_same_trainable(a, b, 'score model')
  assert ('dequantizer' in a) == ('dequantizer' in b)
  if 'dequantizer' in a:
    _assert_same_trainable(a['dequantizer'], b['dequantizer'], 'dequantizer')
  assert len(a['rng']) == len(b['rng'])
  for x, y in zip(a['rng'], b['rng']):
    assert torch.equal(x['noise'], y['noise']) and torch.equal(x['torch'], y['torch'])
  assert a.get('grad_scaler') == b.get('grad_scaler')


def _as_rank(rank, world, port, worker, args):
  os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                    WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
  torch.set_num_threads(1)
  worker(rank, world, *args)


def spawn_ranks(worker, *args, world=2):
  """Run worker(rank, world, *args) in `world` processes with the environment torchrun gives
  (a free port on 127.0.0.1) and one torch thread each; returns when all have finished."""
  import socket
  import torch.multiprocessing as mp
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  mp.spawn(_as_rank, args=(world, port, worker, args), nprocs=world, join=True)


def whole_and_resumed_runs(tmp_path, overrides, n_iters=20, stop_at=10):
  """The resume checkpoints of two runs of test_train.tiny_config(**overrides): one trained to
  n_iters, one stopped at stop_at and resumed to n_iters."""
  import run_lib
  from test_train import tiny_config
  run_lib.train(tiny_config(n_iters, **overrides), str(tmp_path / 'whole'))
  run_lib.train(tiny_config(stop_at, **overrides), str(tmp_path / 'stopped'))
  run_lib.train(tiny_config(n_iters, **overrides), str(tmp_path / 'stopped'))
  return tuple(torch.load(tmp_path / run / 'checkpoints-meta' / 'checkpoint.pth',
                          map_location='cpu', weights_only=True) for run in ('whole', 'stopped'))


@pytest.fixture
def fixtures_dir():
  return FIXTURES
