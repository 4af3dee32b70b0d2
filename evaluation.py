"""Sample-quality metrics: Inception-v3 features, FID, KID, Inception Score, dataset statistics.

Features come from clean-fid's TorchScript Inception-v3 (`inception-2015-12-05.pt`, NVIDIA's
translation of the TensorFlow graph that TF-GAN, the original FID code and the score_sde paper
use). One forward pass gives both the 2048-d `pool_3` features (FID, KID) and the 1008-way
`logits` (IS). Two ways to feed it images:
  'legacy_tensorflow': the network resizes to 299x299 itself, emulating TensorFlow's bilinear
    resize; this is what TF-GAN (the reference) does, so use it with the reference's
    `cifar10_stats.npz` to reproduce the paper's numbers.
  'clean': clean-fid's PIL bicubic resize outside the network; use it with clean-fid's
    published statistics.

Dataset statistics live in `assets/stats/<dataset>_stats.npz` (see `stats_file`); `load_stats`
reads ours, the reference's (raw `pool_3` activations) or clean-fid's (`mu`, `sigma`).
"""
import logging
import os
import pathlib
import shutil
import urllib.error
import urllib.request
import warnings

import numpy as np
import torch

import workdir

INCEPTION_FILE = 'inception-2015-12-05.pt'
INCEPTION_URL = ('https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/'
                 + INCEPTION_FILE)
# Where clean-fid itself caches the file on Linux/macOS, so one download serves both.
CLEANFID_CACHE = pathlib.Path('/tmp') / INCEPTION_FILE
INCEPTION_ENV = 'SCORESDE_INCEPTION'
MODES = ('legacy_tensorflow', 'clean')
_ROOT = pathlib.Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- Inception network

def inception_candidates():
  """Cached copies tried for the Inception weights when no path is given: clean-fid's cache
  (/tmp/inception-2015-12-05.pt), then ~/.cache/scoresde/inception-2015-12-05.pt."""
  return [CLEANFID_CACHE, pathlib.Path.home() / '.cache' / 'scoresde' / INCEPTION_FILE]


def _download(url, dest, timeout):
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(f'{dest.name}.{os.getpid()}.part')  # processes downloading at once
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, 'wb') as f:
      shutil.copyfileobj(response, f)
    os.replace(tmp, dest)
  finally:
    tmp.unlink(missing_ok=True)


def load_inception(path=None, device='cpu', download=True, url=INCEPTION_URL, timeout=60):
  """Load clean-fid's TorchScript Inception-v3, downloading it to clean-fid's cache if absent.

  Args:
    path: the weights file; default $SCORESDE_INCEPTION, else the caches of
      `inception_candidates()`.
    device: where the network runs.
    download: when no path is given and no cache holds the file, fetch it from `url` into
      clean-fid's cache.
  Returns:
    The TorchScript module in eval mode.
  Raises:
    FileNotFoundError naming the file, where to put it and how to point to it, when it is not
    on disk and cannot be downloaded (e.g. no network).
  """
  path = path or os.environ.get(INCEPTION_ENV)
  if path:
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f'No Inception weights at {path} (given by config.eval.inception_path'
                              f' or ${INCEPTION_ENV}).' + _where_to_put())
    return _jit_load(path, device)
  found = next((p for p in inception_candidates() if p.is_file()), None)
  reason = ''
  if found is None and download:
    found = inception_candidates()[0]
    try:
      logging.info('Downloading the Inception weights from %s to %s', url, found)
      _download(url, found, timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
      found, reason = None, f' Downloading {url} failed ({e}).'
  if found is None:
    raise FileNotFoundError('The Inception-v3 weights for FID/IS/KID are not on this machine.'
                            + reason + _where_to_put())
  return _jit_load(found, device)


def _jit_load(path, device):
  with warnings.catch_warnings():  # the file is TorchScript; torch.jit.load is the way to read it
    warnings.filterwarnings('ignore', message='`torch.jit.load` is deprecated', category=FutureWarning)
    return torch.jit.load(str(path), map_location=device).eval()


def _where_to_put():
  return (f'\nDownload {INCEPTION_URL} on a machine with network access and place the file '
          f'{INCEPTION_FILE} at {CLEANFID_CACHE} (clean-fid\'s cache), or anywhere and point to it '
          f'with the environment variable {INCEPTION_ENV}=/path/to/{INCEPTION_FILE} (or '
          'config.eval.inception_path). Loss and bits/dim evaluation do not need it.')


class InceptionFeatures:
  """Images -> {'pool_3': (N, 2048) float64, 'logits': (N, 1008) float64} in one network pass.

  `net` is clean-fid's TorchScript Inception or any module with the same interface: attribute
  `layers` (normalized 299x299 images -> pool features), attribute `output` (the final linear
  layer) and `forward(img, return_features=True)` (resize inside, then pool features).
  """

  def __init__(self, net, mode='legacy_tensorflow', device='cpu', batch_size=100):
    if mode not in MODES:
      raise ValueError(f'Unknown Inception mode {mode!r}; choose one of {MODES}.')
    missing = [a for a in ('layers', 'output') if not hasattr(net, a)]
    if missing:
      raise ValueError(f'The Inception network lacks {missing}: expected clean-fid\'s TorchScript '
                       f'{INCEPTION_FILE} (submodules `layers` and `output`).')
    self.net, self.mode, self.device, self.batch_size = net, mode, device, batch_size
    if mode == 'clean':
      from cleanfid.resize import build_resizer
      self._resize = build_resizer('clean')

  def _prepare(self, images):
    """uint8 (N, H, W, C) with C in {1, 3} -> float (N, 3, H', W') in [0, 255] on device."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'Expected uint8 images (N, H, W, 1 or 3), got shape {images.shape}.')
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    if self.mode == 'clean':
      images = np.stack([self._resize(img) for img in images])
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    return x.to(self.device)

  @torch.no_grad()
  def _batch(self, images):
    x = self._prepare(images)
    if self.mode == 'clean':
      pool = self.net.layers((x - 128.) / 128.)  # clean-fid's normalisation at 299x299
    else:
      pool = self.net(x, return_features=True)
    pool = pool.reshape(x.shape[0], -1)
    logits = torch.nn.functional.linear(pool, self.net.output.weight, self.net.output.bias)
    return pool.double().cpu().numpy(), logits.double().cpu().numpy()

  def __call__(self, images):
    pools, logits = [], []
    for i in range(0, len(images), self.batch_size):
      p, l = self._batch(images[i:i + self.batch_size])
      pools.append(p)
      logits.append(l)
    return {'pool_3': np.concatenate(pools), 'logits': np.concatenate(logits)}


def get_inception_model(config):
  """`InceptionFeatures` as `config.eval` asks: inception_path, inception_mode, and the device."""
  net = load_inception(config.eval.inception_path, device=config.device)
  return InceptionFeatures(net, mode=config.eval.inception_mode,
                           device=config.device,
                           batch_size=config.eval.inception_batch_size)


# ----------------------------------------------------------------------------- metrics

def feature_statistics(features):
  """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
  features = np.asarray(features, dtype=np.float64)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm_psd(a):
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017):

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}).

  Tr (sigma1 sigma2)^{1/2} is the sum of square roots of the eigenvalues of the symmetric PSD
  matrix sigma1^{1/2} sigma2 sigma1^{1/2}, which has the same spectrum as sigma1 sigma2; two
  symmetric eigendecompositions avoid the complex round-off of a general matrix square root.
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f'Statistics of different dimensions: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {sigma1.shape} vs {sigma2.shape}. Were both computed with the same '
                     'feature network?')
  root1 = _sqrtm_psd(sigma1)
  middle = root1 @ sigma2 @ root1
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2. * tr_covmean)


def fid_from_features(features1, features2):
  """FID between two feature sets (N1, D) and (N2, D)."""
  return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _block_bounds(n, n_blocks):
  sizes = np.full(n_blocks, n // n_blocks)
  sizes[n_blocks - n % n_blocks:] += 1  # TF-GAN gives the remainder to the last blocks
  return np.concatenate([[0], np.cumsum(sizes)])


def kernel_distance(features1, features2, max_block_size=1024):
  """Kernel Inception Distance (Binkowski et al. 2018), as TF-GAN computes it.

  Unbiased estimate of MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3:
    sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1)) - 2 mean k(x_i, y_j),
  computed on ceil(max(N1, N2) / max_block_size) disjoint blocks of each set and averaged.
  Its expectation is 0 when both sets come from one distribution (it can be slightly negative).

  Returns:
    (kid, std): the mean over blocks and the standard error of that mean.
  """
  x = np.asarray(features1, dtype=np.float64)
  y = np.asarray(features2, dtype=np.float64)
  dim = x.shape[1]
  n_blocks = int(np.ceil(max(len(x), len(y)) / max_block_size))
  bx, by = _block_bounds(len(x), n_blocks), _block_bounds(len(y), n_blocks)
  if min(np.diff(bx).min(), np.diff(by).min()) < 2:
    raise ValueError(f'KID needs at least 2 samples per block; got {len(x)} and {len(y)} samples '
                     f'in {n_blocks} blocks.')
  estimates = []
  for i in range(n_blocks):
    a, b = x[bx[i]:bx[i + 1]], y[by[i]:by[i + 1]]
    m, n = len(a), len(b)
    k_aa = (a @ a.T / dim + 1) ** 3
    k_bb = (b @ b.T / dim + 1) ** 3
    k_ab = (a @ b.T / dim + 1) ** 3
    estimates.append((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
                     + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1)) - 2. * k_ab.mean())
  estimates = np.asarray(estimates)
  std = estimates.std(ddof=1) / np.sqrt(n_blocks) if n_blocks > 1 else float('nan')
  return float(estimates.mean()), float(std)


def inception_score(logits, num_splits=10):
  """Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), p(y) the split's mean.

  Args:
    logits: (N, K) classifier logits.
    num_splits: the samples are cut into this many contiguous parts (10 in the paper; TF-GAN's
      `classifier_score_from_logits`, which the reference calls, is num_splits=1).
  Returns:
    (mean, std) of the per-split scores.
  """
  logits = np.asarray(logits, dtype=np.float64)
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, num_splits):
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0, keepdims=True))
    kl = (p * (part - log_marginal)).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def compute_metrics(pool_3, logits, data_stats, num_splits=10):
  """FID, KID and IS of samples' Inception outputs against `data_stats` (see `load_stats`).

  KID is NaN when the statistics file holds no raw features (clean-fid's mu/sigma files) or when
  there are too few samples for its blocks (TF-GAN's estimator gives NaN there too); IS uses at
  most one split per sample.
  """
  mu, sigma = feature_statistics(pool_3)
  fid = frechet_distance(mu, sigma, data_stats['mu'], data_stats['sigma'])
  kid, kid_std = float('nan'), float('nan')
  if data_stats.get('pool_3') is None:
    logging.warning('The dataset statistics hold no raw features; KID is not computed.')
  else:
    try:
      kid, kid_std = kernel_distance(data_stats['pool_3'], pool_3)
    except ValueError as e:  # e.g. 64 samples against 50,000 features: 49 blocks of 1 or 2
      logging.warning('KID is not computed: %s Draw more samples (config.eval.num_samples).', e)
  if len(logits) < num_splits:
    logging.warning('%d samples for %d Inception Score splits: using %d.', len(logits),
                    num_splits, len(logits))
    num_splits = len(logits)
  is_mean, is_std = inception_score(logits, num_splits)
  is_one_split, _ = inception_score(logits, 1)
  return {'IS': is_mean, 'IS_std': is_std, 'IS_1split': is_one_split, 'fid': fid, 'kid': kid,
          'kid_std': kid_std}


# ----------------------------------------------------------------------------- dataset statistics

def stats_name(config):
  """'cifar10', 'celeba', 'lsun_<category>_<size>' (the reference's names), else the dataset's
  name in lower case."""
  dataset = config.data.dataset
  if dataset.upper() == 'LSUN':
    return f'lsun_{config.data.category}_{config.data.image_size}'
  return dataset.lower()


def stats_file(config):
  """config.eval.stats_file if set, else <repo>/assets/stats/<stats_name>_stats.npz."""
  path = config.eval.stats_file
  return pathlib.Path(path) if path else _ROOT / 'assets' / 'stats' / f'{stats_name(config)}_stats.npz'


def save_stats(path, pool_3, mode):
  """Write raw features and their mean/covariance (plus the Inception mode) to `path` atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  mu, sigma = feature_statistics(pool_3)
  workdir.write_atomic(path, lambda tmp: np.savez(
    tmp, pool_3=np.asarray(pool_3, dtype=np.float32), mu=mu, sigma=sigma, mode=mode),
    suffix='.tmp.npz')


def load_stats(path, mode=None):
  """Dataset statistics {'mu', 'sigma', 'pool_3' or None, 'mode' or None} from an npz file.

  Accepts our files (`save_stats`), the reference's (only `pool_3`) and clean-fid's published
  ones (`mu`, `sigma`). A file that records a different Inception `mode` is refused, since
  features from the two resizes are not comparable.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
      f'No dataset statistics at {path}. Compute them with `python main.py --mode fid_stats '
      '--config <config> --workdir <dir>`, or place the reference\'s cifar10_stats.npz / '
      'clean-fid\'s statistics there (or set config.eval.stats_file).')
  with np.load(path) as f:
    keys = set(f.files)
    stats = {'pool_3': f['pool_3'] if 'pool_3' in keys else None,
             'mode': str(f['mode']) if 'mode' in keys else None}
    if 'mu' in keys and 'sigma' in keys:
      stats['mu'], stats['sigma'] = f['mu'].astype(np.float64), f['sigma'].astype(np.float64)
  if 'mu' not in stats:
    if stats['pool_3'] is None:
      raise ValueError(f'{path} holds neither pool_3 features nor mu/sigma (keys: {sorted(keys)}).')
    stats['mu'], stats['sigma'] = feature_statistics(stats['pool_3'])
  if mode is not None and stats['mode'] is not None and stats['mode'] != mode:
    raise ValueError(f'{path} was computed with Inception mode {stats["mode"]!r} but evaluation '
                     f'uses {mode!r}; set config.eval.inception_mode to match or recompute.')
  return stats
