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


def assert_same_run(a, b):
  """Two training checkpoints (dicts) hold the same step, weights, EMA, Adam state, gradient
  scaler and, for every rank, the same torch and loss-noise RNG states: bit for bit."""
  assert a['step'] == b['step']
  for key, value in a['model'].items():
    assert torch.equal(value, b['model'][key]), key
  for x, y in zip(a['ema']['shadow_params'], b['ema']['shadow_params']):
    assert torch.equal(x, y)
  for i, state in a['optimizer']['state'].items():
    assert all(torch.equal(v, b['optimizer']['state'][i][k]) for k, v in state.items())
  assert len(a['rng']) == len(b['rng'])
  for x, y in zip(a['rng'], b['rng']):
    assert torch.equal(x['noise'], y['noise']) and torch.equal(x['torch'], y['torch'])
  assert a.get('grad_scaler') == b.get('grad_scaler')


@pytest.fixture
def fixtures_dir():
  return FIXTURES
