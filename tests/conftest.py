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


@pytest.fixture
def fixtures_dir():
  return FIXTURES
