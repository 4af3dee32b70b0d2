"""Tests of digits_quality: the shipped digits classifier and the offline quality number.

Real held-out digits must sit at the floor, noise and blank images far from it, and a sample
set missing classes must score worse on both numbers: properties a wrong feature network, a
wrong Frechet distance or a wrong score formula break."""
import numpy as np
import pytest
import torch

import digits_quality as dq
import evaluation


@pytest.fixture(scope='module')
def tools():
  features = dq.DigitsFeatures.load()
  return features, dq.reference_statistics(features)


def test_the_shipped_classifier_classifies_held_out_digits():
  net = dq.load_digits_classifier()
  x, y = dq.digits_split(train=False)
  assert dq.accuracy(net, x, y) >= 0.97
  assert sum(p.numel() for p in net.parameters()) < 150_000  # ships small
  weights = torch.load(dq.WEIGHTS, weights_only=True)
  assert all(v.dtype == torch.float32 for v in weights.values())


def test_held_out_digits_sit_at_the_floor_and_noise_far_from_it(tools):
  features, reference = tools
  test = dq.real_uint8(train=False)
  real = dq.score_outputs(features(test[:256]), reference)
  assert real['digits_fd'] == pytest.approx(real['digits_fd_floor'], rel=1e-12)
  assert real['digits_cs'] == pytest.approx(real['digits_cs_floor'], rel=1e-12)
  assert 9.0 < real['digits_cs'] <= 10.0  # confident and balanced over 10 classes
  rng = np.random.default_rng(0)
  noise = dq.score_outputs(features(rng.integers(0, 256, (256, 16, 16, 1)).astype(np.uint8)),
                           reference)
  assert noise['digits_fd'] > 20 * real['digits_fd_floor']
  assert noise['digits_cs'] < 3
  # Another sample of real digits (training digits, 256 of them) also sits near the floor.
  train = dq.score_outputs(features(dq.real_uint8(train=True)[:256]), reference)
  assert train['digits_fd'] < 1.5 * real['digits_fd_floor'] and train['digits_cs'] > 9


def test_missing_classes_and_blurred_digits_score_worse(tools):
  features, reference = tools
  x, y = dq.digits_split(train=False)
  images = dq.real_uint8(train=False)
  floor = dq.score_outputs(features(images), reference)
  only_low = images[(y < 5).numpy()]  # half of the classes
  half = dq.score_outputs(features(only_low), reference)
  assert half['digits_cs'] < 0.6 * floor['digits_cs']
  assert half['digits_fd'] > 2 * half['digits_fd_floor']
  blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
  blurred = (blurred * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
  assert dq.score_outputs(features(blurred), reference)['digits_fd'] > 2 * floor['digits_fd_floor']


def test_the_fd_is_the_frechet_distance_of_the_classifier_features(tools):
  features, reference = tools
  images = dq.real_uint8(train=True)[:100]
  pool = features(images)['pool_3']
  assert pool.shape == (100, dq.FEATURES) and (pool >= 0).all()
  mu, sigma = evaluation.feature_statistics(pool)
  expected = evaluation.frechet_distance(mu, sigma, reference['mu'], reference['sigma'])
  assert dq.score_outputs(features(images), reference)['digits_fd'] == pytest.approx(expected)
  # Samples of another size are resized to the classifier's 16x16.
  big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
  assert features(big)['pool_3'].shape == (100, dq.FEATURES)
  with pytest.raises(ValueError, match='digit images'):
    features(np.zeros((2, 16, 16, 3), np.uint8))
