"""datasets.py: the embedded digits, augmentation, resumable and sharded batch streams, image
folders, and the messages for data that is not on disk."""
import os

import ml_collections
import numpy as np
import pytest
import torch

import datasets
from configs import with_defaults


def _config(**data):
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.training = dict(batch_size=16)
  config.eval = dict(batch_size=100)
  config.data = dict(dataset='DIGITS', image_size=16, num_channels=1, random_flip=False,
                     centered=False, uniform_dequantization=False, root=None, download=False)
  config.data.update(data)
  return with_defaults(config)  # the entry that completes every config (main, load_config)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_digits_shapes_range_and_fixed_split():
  train_ds, eval_ds, train_set = datasets.get_dataset(_config())
  assert len(train_set) == 1497 and len(eval_ds.dataset) == 300
  batch = next(iter(train_ds))
  assert batch.shape == (16, 1, 16, 16) and batch.dtype == torch.float32
  assert batch.min() >= 0 and batch.max() <= 1 and batch.max() > 0.9
  torch.testing.assert_close(batch * 255, (batch * 255).round())  # 8-bit images
  # The split is fixed: no test image appears in the training set.
  train_keys = {img.numpy().tobytes() for img in train_set.images}
  overlap = sum(img.numpy().tobytes() in train_keys for img in eval_ds.dataset.images)
  assert overlap <= 3  # a few digits are drawn identically by different writers


def test_evaluation_is_one_pass_without_flips():
  _, eval_ds, _ = datasets.get_dataset(_config(random_flip=True), evaluation=True)
  batches = list(eval_ds)
  assert len(batches) == len(eval_ds) == 3 and all(b.shape[0] == 100 for b in batches)
  seen = (torch.cat(batches) * 255).round().to(torch.uint8)
  # The pass covers every test image once (in a shuffled order), unflipped.
  assert sorted(x.numpy().tobytes() for x in seen) == sorted(
    x.numpy().tobytes() for x in eval_ds.dataset.images)


def test_split_images_is_the_split_get_dataset_reads():
  config = _config()
  _, eval_ds, train_set = datasets.get_dataset(config)
  for train, expected in ((True, train_set), (False, eval_ds.dataset)):
    images = datasets.split_images(config, train)
    assert isinstance(images, datasets.InMemoryImages)
    torch.testing.assert_close(images.images, expected.images)
    torch.testing.assert_close(images.labels, expected.labels)


def test_labels_on_request():
  train_ds, _, train_set = datasets.get_dataset(_config(), with_labels=True)
  images, labels = next(iter(train_ds))
  assert labels.shape == (16,) and set(labels.tolist()) <= set(range(10))


def test_random_flip_and_uniform_dequantization():
  plain = _take(iter(datasets.get_dataset(_config())[0]), 4)
  aug = _take(iter(datasets.get_dataset(_config(random_flip=True), uniform_dequantization=True)[0]), 4)
  plain, aug = torch.cat(plain), torch.cat(aug)
  # Dequantized y = (u + 255 x) / 256 with u in [0, 1): floor(256 y) recovers the 8-bit value.
  assert aug.min() >= 0 and aug.max() < 1
  recovered = torch.floor(aug * 256) / 255
  assert not torch.equal(aug, recovered)
  same = (recovered == plain).flatten(1).all(1)
  flipped = (recovered == plain.flip(-1)).flatten(1).all(1)
  symmetric = (plain == plain.flip(-1)).flatten(1).all(1)
  assert torch.all(same | flipped)
  assert (flipped & ~symmetric).sum() > 10 and (same & ~symmetric).sum() > 10  # ~half flipped


def test_stream_restarts_at_any_batch_across_epochs():
  train_ds = datasets.get_dataset(_config(random_flip=True), uniform_dequantization=True)[0]
  n = len(train_ds)  # 93 batches per epoch
  full = _take(train_ds.iterate(0), n + 5)
  for start in (1, n - 1, n, n + 2):
    resumed = _take(train_ds.iterate(start), 3)
    for a, b in zip(resumed, full[start:start + 3]):
      assert torch.equal(a, b)
  assert not torch.equal(full[0], full[n])  # a new epoch is reshuffled


def test_shards_of_two_ranks_make_the_single_process_batch():
  config = _config(random_flip=True)
  one = datasets.get_dataset(config, uniform_dequantization=True)[0]
  dataset = one.dataset
  shards = [datasets.ImageBatches(dataset, 16, random_flip=True, uniform_dequantization=True,
                                  seed=config.seed, rank=r, world_size=2) for r in range(2)]
  for start in (0, 92):
    whole = next(one.iterate(start))
    parts = [next(s.iterate(start)) for s in shards]
    assert parts[0].shape[0] == 8
    # DistributedSampler interleaves: rank r holds global rows r, r + 2, ...
    torch.testing.assert_close(torch.stack(parts, 1).reshape(whole.shape), whole, rtol=0, atol=0)


def test_num_workers_default_and_override(tmp_path):
  """data.num_workers None: no worker process for in-memory data, min(4, CPUs) for files; a
  number is used as given, and in-memory data then goes through a DataLoader with the same
  batches and without drawing from the global RNG."""
  config = _config(num_workers=None)
  train_ds, _, train_set = datasets.get_dataset(config)
  assert datasets.loader_workers(config, train_set) == 0 == train_ds.num_workers
  folder = datasets.ImageFolderFlat(tmp_path, transform=None)
  assert datasets.loader_workers(config, folder) == min(4, os.cpu_count() or 1)
  config.data.num_workers = 1
  with_worker, _, _ = datasets.get_dataset(config)
  assert with_worker.num_workers == 1
  torch.manual_seed(0)
  global_rng = torch.get_rng_state()
  for a, b in zip(_take(train_ds.iterate(3), 2), _take(with_worker.iterate(3), 2)):
    assert torch.equal(a, b)
  # The loader leaves the global RNG (dropout's) alone: training noise does not depend on workers.
  assert torch.equal(torch.get_rng_state(), global_rng)


def test_targets_that_are_not_class_labels_read_as_minus_one():
  """torchvision's CelebA with target_type=[] gives None, and attribute vectors are no labels."""
  from PIL import Image
  transform = datasets.pil_transform(8, crop=140)
  for target in (None, torch.zeros(40, dtype=torch.long)):
    image, label = datasets.TransformedImages([(Image.new('RGB', (178, 218)), target)],
                                              transform)[0]
    assert label == -1 and image.shape == (3, 8, 8) and image.dtype == torch.uint8
  assert datasets.TransformedImages([(Image.new('RGB', (8, 8)), 3)], transform)[0][1] == 3


def test_batch_not_divisible_by_processes_is_refused():
  dataset = datasets.get_dataset(_config())[2]
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    datasets.ImageBatches(dataset, 16, world_size=3)


def test_scalers():
  x = torch.tensor([0., 0.25, 1.])
  centered = _config(centered=True)
  torch.testing.assert_close(datasets.get_data_scaler(centered)(x), torch.tensor([-1., -0.5, 1.]))
  torch.testing.assert_close(datasets.get_data_inverse_scaler(centered)(datasets.get_data_scaler(centered)(x)), x)
  assert datasets.get_data_scaler(_config())(x) is x


def test_image_folder_is_cropped_and_resized(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  for i in range(5):
    (tmp_path / 'sub').mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / 'sub' / f'{i}.png')
  config = _config(dataset='FFHQ', image_size=8, num_channels=3, root=str(tmp_path), num_workers=0)
  config.training.batch_size = 4
  train_ds, eval_ds, dataset = datasets.get_dataset(config)
  assert len(dataset) == 5
  batch = next(iter(train_ds))
  assert batch.shape == (4, 3, 8, 8) and 0 <= batch.min() and batch.max() <= 1
  # Loader workers started by spawn / forkserver (macOS, Windows, Python 3.14) unpickle it.
  import pickle
  image = Image.open(tmp_path / 'sub' / '0.png')
  transform = datasets.pil_transform(8, crop='square')
  assert torch.equal(pickle.loads(pickle.dumps(transform))(image), transform(image))


@pytest.mark.parametrize('name, needle', [
  ('CIFAR10', 'download=True'),
  ('SVHN', 'download=True'),
  ('CELEBA', 'download=True'),
  ('LSUN', 'fyu/lsun'),
  ('FFHQ', '--config.data.root'),
  ('CelebAHQ', '--config.data.root'),
])
def test_missing_dataset_says_where_to_put_it(tmp_path, monkeypatch, name, needle):
  config = _config(dataset=name, image_size=32, num_channels=3, category='church_outdoor')
  if name not in ('FFHQ', 'CelebAHQ'):
    config.data.root = str(tmp_path / 'empty')
  monkeypatch.setenv('SCORESDE_DATA', str(tmp_path / 'nowhere'))
  with pytest.raises(datasets.DatasetNotFoundError, match=name) as info:
    datasets.get_dataset(config)
  message = str(info.value)
  assert needle in message, message
  if name in ('FFHQ', 'CelebAHQ'):  # no root given: no path to blame, and why none is guessed
    assert 'do not fall back to $SCORESDE_DATA' in message and 'nowhere' not in message, message
  else:
    assert 'was not found at' in message, message


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError, match='Known datasets: .*CIFAR10.*DIGITS'):
    datasets.get_dataset(_config(dataset='MNIST'))
