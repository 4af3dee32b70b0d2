"""Tests of evaluation.py: FID/KID/IS against closed forms, the Inception feature path with a
stand-in network of the same TorchScript interface, statistics files, and the offline error."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from ml_collections import ConfigDict

import evaluation
from configs import with_defaults


def _random_spd(rng, dim, scale=1.):
  a = rng.standard_normal((dim, dim))
  return scale * (a @ a.T / dim + 0.5 * np.eye(dim))


def _scipy_fid(mu1, s1, mu2, s2):
  """The textbook formula with a general matrix square root (as the original FID code)."""
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ----------------------------------------------------------------------------- FID

def test_frechet_distance_diagonal_closed_form():
  # Commuting covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
  got = evaluation.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(1)
  for dim in (8, 64, 256):
    mu1, mu2 = rng.standard_normal(dim), 0.1 * rng.standard_normal(dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim, scale=2.)
    got = evaluation.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6), dim


def test_fid_of_sampled_gaussians_approaches_closed_form():
  rng = np.random.default_rng(2)
  dim, n = 5, 200_000
  mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
  s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim, scale=3.)
  x = rng.multivariate_normal(mu1, s1, size=n)
  y = rng.multivariate_normal(mu2, s2, size=n)
  expected = _scipy_fid(mu1, s1, mu2, s2)
  assert evaluation.fid_from_features(x, y) == pytest.approx(expected, rel=0.02)


def test_fid_of_a_set_with_itself_is_zero():
  x = np.random.default_rng(3).standard_normal((500, 64)) * 3 + 1
  assert abs(evaluation.fid_from_features(x, x)) < 1e-8 * 64 * 9


# ----------------------------------------------------------------------------- KID

def _brute_force_mmd2(x, y):
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
  rng = np.random.default_rng(4)
  x, y = rng.standard_normal((12, 3)), rng.standard_normal((9, 3)) + 0.3
  kid, _ = evaluation.kernel_distance(x, y)
  assert kid == pytest.approx(_brute_force_mmd2(x, y), rel=1e-10)
  # Blocks: the mean of the per-block estimates (TF-GAN), remainders going to the last blocks.
  x, y = rng.standard_normal((25, 3)), rng.standard_normal((21, 3))
  kid, _ = evaluation.kernel_distance(x, y, max_block_size=10)
  blocks = [_brute_force_mmd2(x[a:b], y[c:d])
            for (a, b), (c, d) in zip([(0, 8), (8, 16), (16, 25)], [(0, 7), (7, 14), (14, 21)])]
  assert kid == pytest.approx(np.mean(blocks), rel=1e-10)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(5)
  # Many small draws: a biased (V-statistic) estimate would average clearly above 0.
  same = [evaluation.kernel_distance(rng.standard_normal((20, 8)),
                                     rng.standard_normal((20, 8)))[0] for _ in range(300)]
  mean, sem = np.mean(same), np.std(same) / np.sqrt(len(same))
  assert abs(mean) < 3 * sem, (mean, sem)
  kid, std = evaluation.kernel_distance(rng.standard_normal((3000, 8)),
                                        rng.standard_normal((3000, 8)) * 1.5 + 0.2)
  assert kid > 10 * std > 0


# ----------------------------------------------------------------------------- IS

def test_inception_score_extremes():
  classes, per_class_per_split, splits = 10, 7, 10
  labels = np.tile(np.arange(classes), per_class_per_split * splits)
  logits = np.full((len(labels), classes), -60.)
  logits[np.arange(len(labels)), labels] = 60.
  mean, std = evaluation.inception_score(logits, num_splits=splits)
  assert mean == pytest.approx(classes, rel=1e-9) and std < 1e-9
  same = np.tile(np.random.default_rng(6).standard_normal(classes), (100, 1))
  assert evaluation.inception_score(same)[0] == pytest.approx(1., abs=1e-12)


def test_inception_score_is_exp_mutual_information():
  # Two splits with different class balance: each split's score is computed on its own.
  probs = np.array([[0.9, 0.1], [0.1, 0.9]] * 5 + [[0.9, 0.1]] * 10)
  mean, _ = evaluation.inception_score(np.log(probs), num_splits=2)
  kl = (0.9 * np.log(0.9 / 0.5) + 0.1 * np.log(0.1 / 0.5))
  assert mean == pytest.approx((np.exp(kl) + 1.) / 2, rel=1e-12)


# ----------------------------------------------------------------------------- features

class StandIn(torch.nn.Module):
  """Tiny network with the TorchScript Inception's interface: `layers`, `output`, and
  forward(img, return_features) that resizes to 299 and normalises inside."""

  def __init__(self, features=16, classes=12):
    super().__init__()
    self.layers = torch.nn.Sequential(torch.nn.AvgPool2d(13), torch.nn.Conv2d(3, features, 3),
                                      torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1))
    self.output = torch.nn.Linear(features, classes)

  def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
    x = F.interpolate(img.float(), size=(299, 299), mode='bilinear', align_corners=False)
    features = self.layers((x - 128.) / 128.).reshape(img.shape[0], -1)
    if return_features:
      return features
    return torch.softmax(self.output(features), dim=1)


def save_stand_in(path, seed=0):
  torch.manual_seed(seed)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
    torch.jit.script(StandIn()).save(str(path))
  return path


@pytest.fixture
def stand_in(tmp_path):
  return evaluation.load_inception(save_stand_in(tmp_path / 'standin.pt'))


def _images(n, seed, channels=3, size=8):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize('mode', evaluation.MODES)
def test_features_are_pool_and_logits_of_one_pass(stand_in, mode):
  images = _images(5, 7)
  out = evaluation.InceptionFeatures(stand_in, mode=mode, batch_size=2)(images)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
  if mode == 'clean':
    from cleanfid.resize import build_resizer
    resize = build_resizer('clean')
    x = torch.from_numpy(np.stack([resize(i) for i in images])).permute(0, 3, 1, 2)
    pool = stand_in.layers((x - 128) / 128).reshape(5, -1)
  else:
    pool = stand_in(x, return_features=True)
  probs = stand_in(torch.from_numpy(images).permute(0, 3, 1, 2).float())
  assert out['pool_3'].shape == (5, 16) and out['logits'].shape == (5, 12)
  np.testing.assert_allclose(out['pool_3'], pool.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['logits'], stand_in.output(pool).detach().numpy(),
                             rtol=1e-5, atol=1e-6)
  if mode == 'legacy_tensorflow':  # the logits are those the network's own softmax uses
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(out['logits']), 1).numpy(),
                               probs.detach().numpy(), rtol=1e-5, atol=1e-7)


def test_grayscale_images_are_repeated_to_rgb(stand_in):
  gray = _images(3, 8, channels=1)
  feats = evaluation.InceptionFeatures(stand_in)
  np.testing.assert_array_equal(feats(gray)['pool_3'], feats(np.repeat(gray, 3, -1))['pool_3'])
  with pytest.raises(ValueError, match='uint8 images'):
    feats(gray[..., 0])
  with pytest.raises(ValueError, match='lacks'):
    evaluation.InceptionFeatures(torch.nn.Linear(2, 2))


def test_metrics_end_to_end_with_stand_in(stand_in, tmp_path):
  feats = evaluation.InceptionFeatures(stand_in)
  data = feats(_images(40, 9))
  evaluation.save_stats(tmp_path / 'toy_stats.npz', data['pool_3'], mode=feats.mode)
  stats = evaluation.load_stats(tmp_path / 'toy_stats.npz', mode=feats.mode)
  same = evaluation.compute_metrics(data['pool_3'], data['logits'], stats, num_splits=2)
  assert abs(same['fid']) < 1e-6 and abs(same['kid']) < 1e-2
  dark = feats(_images(40, 10) // 4)
  other = evaluation.compute_metrics(dark['pool_3'], dark['logits'], stats, num_splits=2)
  assert other['fid'] > 100 * max(abs(same['fid']), 1e-9) and other['kid'] > same['kid']
  assert 1 <= other['IS'] <= 12 and 1 <= other['IS_1split'] <= 12


def test_few_samples_give_nan_kid_and_fewer_is_splits_not_a_crash(caplog):
  """64 samples against 50,000 features (a quick --mode eval on CIFAR-10): KID's 49 blocks would
  hold 1 or 2 samples, so KID is NaN with a warning; FID and IS are still reported, and 6
  samples use 6 IS splits instead of 10 empty ones."""
  rng = np.random.default_rng(0)
  stats = {'pool_3': rng.normal(size=(50000, 8)).astype(np.float32)}
  stats['mu'], stats['sigma'] = evaluation.feature_statistics(stats['pool_3'])
  logits = rng.normal(size=(64, 10))
  metrics = evaluation.compute_metrics(rng.normal(size=(64, 8)), logits, stats)
  assert np.isnan(metrics['kid']) and np.isnan(metrics['kid_std'])
  assert np.isfinite(metrics['fid']) and metrics['fid'] > 0
  assert metrics['IS'] == pytest.approx(evaluation.inception_score(logits, 10)[0])
  assert 'KID is not computed' in caplog.text and 'num_samples' in caplog.text
  few = evaluation.compute_metrics(rng.normal(size=(6, 8)), logits[:6], stats)
  assert few['IS'] == pytest.approx(evaluation.inception_score(logits[:6], 6)[0])
  assert np.isfinite(few['IS']) and np.isfinite(few['IS_std'])


# ----------------------------------------------------------------------------- statistics files

def test_stats_files_of_all_three_origins(tmp_path):
  feats = np.random.default_rng(11).standard_normal((50, 6))
  np.savez(tmp_path / 'reference.npz', pool_3=feats.astype(np.float32))   # score_sde's format
  mu, sigma = evaluation.feature_statistics(feats)
  np.savez(tmp_path / 'cleanfid.npz', mu=mu, sigma=sigma)                 # clean-fid's format
  evaluation.save_stats(tmp_path / 'ours.npz', feats, mode='clean')
  for name in ('reference', 'cleanfid', 'ours'):
    stats = evaluation.load_stats(tmp_path / f'{name}.npz', mode='clean')
    np.testing.assert_allclose(stats['mu'], mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats['sigma'], sigma, rtol=1e-5, atol=1e-6)
  assert evaluation.load_stats(tmp_path / 'cleanfid.npz')['pool_3'] is None
  metrics = evaluation.compute_metrics(feats, feats, evaluation.load_stats(tmp_path / 'cleanfid.npz'))
  assert np.isnan(metrics['kid']) and abs(metrics['fid']) < 1e-8
  with pytest.raises(ValueError, match="computed with Inception mode 'clean'"):
    evaluation.load_stats(tmp_path / 'ours.npz', mode='legacy_tensorflow')
  with pytest.raises(FileNotFoundError, match='--mode fid_stats'):
    evaluation.load_stats(tmp_path / 'missing.npz')


def test_stats_file_names_follow_the_reference():
  config = with_defaults(ConfigDict({'data': {'dataset': 'LSUN', 'category': 'church_outdoor',
                                              'image_size': 256}, 'eval': {}}))
  assert evaluation.stats_file(config).name == 'lsun_church_outdoor_256_stats.npz'
  config.data.dataset = 'CIFAR10'
  assert evaluation.stats_file(config).parts[-3:] == ('assets', 'stats', 'cifar10_stats.npz')
  config.eval.stats_file = '/somewhere/x.npz'
  assert str(evaluation.stats_file(config)) == '/somewhere/x.npz'


# ----------------------------------------------------------------------------- offline

def test_offline_without_weights_names_the_file_and_where_to_put_it(tmp_path, monkeypatch):
  cache = tmp_path / 'cache' / evaluation.INCEPTION_FILE
  monkeypatch.setattr(evaluation, 'CLEANFID_CACHE', cache)
  monkeypatch.setattr(evaluation, 'inception_candidates', lambda: [cache])
  monkeypatch.delenv(evaluation.INCEPTION_ENV, raising=False)
  # A refused connection stands in for "no network".
  with pytest.raises(FileNotFoundError) as err:
    evaluation.load_inception(url='http://127.0.0.1:9/' + evaluation.INCEPTION_FILE, timeout=5)
  message = str(err.value)
  for needle in (evaluation.INCEPTION_URL, str(cache), evaluation.INCEPTION_ENV, 'failed'):
    assert needle in message, needle
  assert not cache.exists() and not cache.with_name(cache.name + '.part').exists()
  # A path given by the environment variable must exist.
  monkeypatch.setenv(evaluation.INCEPTION_ENV, str(tmp_path / 'nowhere.pt'))
  with pytest.raises(FileNotFoundError, match='nowhere.pt'):
    evaluation.load_inception()
  # ... and is what gets loaded when it does.
  monkeypatch.setenv(evaluation.INCEPTION_ENV, str(save_stand_in(tmp_path / 'standin.pt')))
  config = with_defaults(ConfigDict({'device': 'cpu', 'eval': {'inception_mode': 'clean'}}))
  model = evaluation.get_inception_model(config)
  assert model.mode == 'clean' and model.net.output.weight.shape == (12, 16)
