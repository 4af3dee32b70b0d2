"""An offline sample-quality number for the embedded DIGITS dataset (no Inception, no download).

A small CNN classifier trained on the 1,497 training digits (`DigitsNet`, 99 % test accuracy)
plays Inception's part: its 64-d penultimate activations give a Frechet distance (`digits_fd`,
FID's formula) against the training digits, and its softmax a classifier score (`digits_cs`,
the Inception Score's formula, at most 10). Both come with the real-data floor: the same numbers
for n held-out test digits, n being the number of samples scored (FD is biased upwards at small
n, so a sample set is judged against real data of its own size).

The weights ship in assets/digits_classifier.pt (~0.4 MB); `train_digits_classifier()` rebuilds
them deterministically (`python digits_quality.py --train`, ~1 minute on 2 CPU cores).

    features = DigitsFeatures.load()                      # same interface as InceptionFeatures
    print(score_samples(samples_uint8_nhwc, features))   # {'digits_fd': ..., 'digits_fd_floor': ...}
"""
import argparse
import logging
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import evaluation

WEIGHTS = pathlib.Path(__file__).resolve().parent / 'assets' / 'digits_classifier.pt'
SIZE = 16  # the classifier's input size; samples of another size are resized to it
FEATURES = 64


class DigitsNet(nn.Module):
  """(N, 1, 16, 16) images in [0, 1] -> 64-d features -> 10 logits."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Sequential(
      nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 8x8
      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 4x4
    )
    self.fc = nn.Linear(64 * 4 * 4, FEATURES)
    self.head = nn.Linear(FEATURES, 10)

  def features(self, x):
    """Penultimate activations (N, 64), after the ReLU (as Inception's pool_3)."""
    return F.relu(self.fc(self.conv(x).flatten(1)))

  def forward(self, x):
    return self.head(self.features(x))


def digits_split(train):
  """The DIGITS split as float (N, 1, 16, 16) in [0, 1] and labels (N,) (datasets.py's split)."""
  import datasets
  from configs import load_config
  config = load_config('ve/digits_ncsnpp_continuous')
  config.data.image_size = SIZE
  ds = datasets.DATASETS.get('DIGITS')(config, train, None, False)
  return ds.images.float() / 255., ds.labels


def _shift(x, generator):
  """Random translations of up to 1 pixel (zero fill), the classifier's only augmentation."""
  padded = F.pad(x, (1, 1, 1, 1))
  dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
  return padded[..., dy:dy + SIZE, dx:dx + SIZE]


def accuracy(net, images, labels):
  with torch.no_grad():
    return float((net(images).argmax(1) == labels).float().mean())


def train_digits_classifier(seed=0, epochs=30, batch_size=64, lr=2e-3):
  """Train `DigitsNet` on the training digits (Adam, shift augmentation). Returns (net, test
  accuracy)."""
  torch.manual_seed(seed)
  g = torch.Generator().manual_seed(seed)
  net = DigitsNet()
  opt = torch.optim.Adam(net.parameters(), lr=lr)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
  x, y = digits_split(train=True)
  for epoch in range(epochs):
    order = torch.randperm(len(x), generator=g)
    net.train()
    for i in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[i:i + batch_size]
      loss = F.cross_entropy(net(_shift(x[idx], g)), y[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    sched.step()
  net.eval()
  test_x, test_y = digits_split(train=False)
  return net, accuracy(net, test_x, test_y)


def load_digits_classifier(path=WEIGHTS, device='cpu'):
  """The shipped classifier in eval mode; FileNotFoundError saying how to rebuild it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No digits classifier at {path}. Rebuild it with '
                            '`python digits_quality.py --train` (~1 minute on 2 CPU cores).')
  net = DigitsNet()
  net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
  return net.to(device).eval()


class DigitsFeatures:
  """uint8 images (N, H, W, 1) -> {'pool_3': (N, 64), 'logits': (N, 10)} float64, the interface
  of `evaluation.InceptionFeatures` (so eval_lib's sampling rounds use either)."""

  mode = 'digits'

  def __init__(self, net, device='cpu', batch_size=500):
    self.net, self.device, self.batch_size = net, device, batch_size

  @classmethod
  def load(cls, device='cpu'):
    return cls(load_digits_classifier(device=device), device)

  def _prepare(self, images):
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
      raise ValueError(f'Expected uint8 digit images (N, H, W, 1), got shape {images.shape}.')
    x = torch.from_numpy(images.astype(np.float32) / 255.).permute(0, 3, 1, 2)
    if x.shape[-1] != SIZE or x.shape[-2] != SIZE:
      x = F.interpolate(x, size=(SIZE, SIZE), mode='bilinear', align_corners=False,
                        antialias=x.shape[-1] > SIZE)
    return x.to(self.device)

  @torch.no_grad()
  def __call__(self, images):
    pools, logits = [], []
    for i in range(0, len(images), self.batch_size):
      features = self.net.features(self._prepare(images[i:i + self.batch_size]))
      pools.append(features.double().cpu().numpy())
      logits.append(self.net.head(features).double().cpu().numpy())
    return {'pool_3': np.concatenate(pools), 'logits': np.concatenate(logits)}


def real_uint8(train):
  """The DIGITS split as uint8 (N, 16, 16, 1), the format samples are scored in."""
  x, _ = digits_split(train)
  return (x * 255.).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _fd_and_cs(outputs, reference):
  mu, sigma = evaluation.feature_statistics(outputs['pool_3'])
  return (evaluation.frechet_distance(mu, sigma, reference['mu'], reference['sigma']),
          evaluation.inception_score(outputs['logits'], num_splits=1)[0])


def reference_statistics(features):
  """Features of the training digits: {'mu', 'sigma'} and the test digits' outputs (the floor)."""
  mu, sigma = evaluation.feature_statistics(features(real_uint8(train=True))['pool_3'])
  return {'mu': mu, 'sigma': sigma, 'test': features(real_uint8(train=False))}


def score_outputs(outputs, reference):
  """digits_fd / digits_cs of classifier outputs of n samples, and their real-data floor: the same
  numbers for the first min(n, 300) test digits."""
  n = len(outputs['pool_3'])
  floor = {k: v[:n] for k, v in reference['test'].items()}
  if n > len(floor['pool_3']):
    logging.warning('The floor uses all %d test digits, fewer than the %d samples.',
                    len(floor['pool_3']), n)
  fd, cs = _fd_and_cs(outputs, reference)
  fd_floor, cs_floor = _fd_and_cs(floor, reference)
  return {'digits_fd': fd, 'digits_cs': cs, 'digits_fd_floor': fd_floor,
          'digits_cs_floor': cs_floor}


def score_samples(samples, features=None, reference=None):
  """Quality of uint8 samples (N, H, W, 1) in one call (loads the classifier if not given)."""
  features = features or DigitsFeatures.load()
  reference = reference or reference_statistics(features)
  return score_outputs(features(samples), reference)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--train', action='store_true', help=f'retrain and write {WEIGHTS.name}')
  parser.add_argument('--samples', help='score an npz of uint8 samples (key "samples")')
  args = parser.parse_args()
  if args.train:
    net, acc = train_digits_classifier()
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(net.state_dict(), WEIGHTS)
    print(f'test accuracy {acc:.4f}; wrote {WEIGHTS}')
  if args.samples:
    with np.load(args.samples) as f:
      print(score_samples(f['samples']))
