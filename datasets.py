"""Image datasets as iterables of float batches, with torchvision loaders (no TensorFlow).

`get_dataset(config)` returns `(train_ds, eval_ds, dataset)`. Iterating `train_ds` or `eval_ds`
yields float32 tensors of shape (B, C, H, W) with values in [0, 1] (uniform dequantization puts
them in [0, 1) as (255 x + u) / 256, u ~ U[0, 1)); apply `get_data_scaler(config)` before the
network. `dataset` is the underlying train-split `torch.utils.data.Dataset` of uint8 images.

Datasets (`config.data.dataset`):
  DIGITS     scikit-learn's 1,797 handwritten 8x8 digits, shipped inside the scikit-learn wheel,
             upsampled to 16x16 (1 channel); a fixed split of 1,497 train / 300 test. No download.
  CIFAR10, SVHN   torchvision; `config.data.download=True` fetches them into `config.data.root`.
  CELEBA     torchvision CelebA; centre crop 140x140, then resize (as the paper's code).
  LSUN       torchvision LSUN lmdb folders `{root}/{category}_train_lmdb`, `_val_lmdb`.
  FFHQ, CelebAHQ  a folder of images (`config.data.root`, searched recursively); training
             refuses unreadable files, or skips them (`check_image_folder`).
`config.data.root` defaults to $SCORESDE_DATA or ./data.

Order and augmentation are a pure function of (config.seed, epoch, position), so an iterator can
start at any batch (`train_ds.iterate(start)`, used to resume training exactly), and under
torch.distributed each rank gets its DistributedSampler shard of every global batch with the
flips and dequantization noise one process would have drawn for those images.
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import distributed
import preemption
from registry import Registry
from seeds import DATA_AUGMENTATION, DATA_LOADER, derive_seed
from workdir import read_json, write_json_atomic

DATASETS = Registry('dataset')
_IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.webp', '.bmp'}


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is not on disk; the message says where to put it or how to download it."""


def get_data_scaler(config):
  """Map data in [0, 1] to the network's range: [-1, 1] if `config.data.centered`, else as is."""
  if config.data.centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(config):
  """Inverse of `get_data_scaler`: back to [0, 1]."""
  if config.data.centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


def data_root(config):
  """`config.data.root`, else $SCORESDE_DATA, else ./data."""
  root = config.data.root
  return pathlib.Path(root or os.environ.get('SCORESDE_DATA', 'data')).expanduser().absolute()


class InMemoryImages(Dataset):
  """uint8 images (N, C, H, W) and integer labels (N,) held in memory."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return self.images[i], self.labels[i]


class TransformedImages(Dataset):
  """A torchvision dataset of (PIL image, target) turned into (uint8 CHW tensor, int label)."""

  def __init__(self, base, transform):
    self.base, self.transform = base, transform

  def __len__(self):
    return len(self.base)

  def __getitem__(self, i):
    image, target = self.base[i]
    # CelebA with target_type=[] gives None; attribute vectors are not class labels either.
    label = int(target) if target is not None and np.ndim(target) == 0 else -1
    return self.transform(image.convert('RGB')), label


class ImageFolderFlat(Dataset):
  """Every image file under `root` (recursively, sorted), label -1."""

  def __init__(self, root, transform):
    self.root = pathlib.Path(root)
    self.files = sorted(p for p in pathlib.Path(root).rglob('*') if p.suffix.lower() in _IMAGE_SUFFIXES)
    self.transform = transform

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from PIL import Image
    with Image.open(self.files[i]) as image:
      return self.transform(image.convert('RGB')), -1


class UnreadableImagesError(ValueError):
  """Files of an image folder that PIL cannot open; the message lists them."""


def _unreadable(path):
  """Why PIL cannot open `path` and read its header, or None."""
  from PIL import Image
  try:
    with Image.open(path):
      return None
  except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, ...: format-dependent
    return f'{type(e).__name__}: {e}'


def check_image_folder(ds, skip_unreadable, index_path):
  """Open every file of the image folder `ds` (an `ImageFolderFlat`) and read its header, once:
  the unreadable ones are recorded in `index_path` (JSON), keyed by the folder's file names, sizes
  and modification times, so that a resumed run reads the index instead. Under torchrun rank 0
  checks and the others read its index.

  Raises:
    UnreadableImagesError naming the unreadable files, unless `skip_unreadable`: they are then
    left out of `ds`, with a warning that counts them.
  """
  rank, _ = distributed.rank_world()
  if rank != 0:
    distributed.barrier()
  try:
    names = [p.relative_to(ds.root).as_posix() for p in ds.files]
    stats = [(n, (st := p.stat()).st_size, st.st_mtime_ns) for n, p in zip(names, ds.files)]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    index = read_json(index_path) if os.path.isfile(index_path) else {}
    if index.get('key') != key:
      logging.info('Checking that the %d images of %s can be read (once: %s keeps the result)',
                   len(names), ds.root, index_path)
      with concurrent.futures.ThreadPoolExecutor(8) as pool:  # file system latency, not CPU
        reasons = pool.map(_unreadable, ds.files)
      index = dict(root=str(ds.root), key=key, files=len(names),
                   unreadable={n: r for n, r in zip(names, reasons) if r is not None})
      if rank == 0:
        write_json_atomic(index_path, index, indent=1)
  finally:
    if rank == 0:
      distributed.barrier()
  bad = index['unreadable']
  if bad and not skip_unreadable:
    raise UnreadableImagesError(
      f'{len(bad)} of the {len(names)} images under {ds.root} cannot be read (all listed in '
      f'{index_path}): ' + '; '.join(f'{n} ({r})' for n, r in list(bad.items())[:10]) + '. '
      'Replace or remove them, or pass --config.data.skip_unreadable=True to train without them.')
  if bad:
    logging.warning('Leaving out %d unreadable image(s) of the %d under %s (data.skip_unreadable; '
                    'listed in %s).', len(bad), len(names), ds.root, index_path)
    ds.files = [p for p, n in zip(ds.files, names) if n not in bad]


def _resize_uint8(images, size, mode='bilinear'):
  """Resize uint8 (N, C, h, w) to (N, C, size, size), antialiased when shrinking."""
  if images.shape[-1] == size and images.shape[-2] == size:
    return images
  x = F.interpolate(images.float() / 255., size=(size, size), mode=mode, align_corners=False,
                    antialias=size < images.shape[-1])
  return (x.clamp(0, 1) * 255.).round().to(torch.uint8)


class _CenterSquare:
  """Centre-crop a PIL image to its largest square (a class, not a lambda: loader workers
  started by spawn / forkserver unpickle the transform)."""

  def __call__(self, image):
    from torchvision.transforms import functional
    return functional.center_crop(image, min(image.size))


def pil_transform(size, crop=None, resize_then_crop=False, interpolation='bilinear'):
  """PIL image -> uint8 (3, size, size): centre crop (`crop` px, or the largest square when
  crop='square'), then an antialiased resize; or with `resize_then_crop` resize the short side to
  `size` and centre-crop."""
  from torchvision import transforms
  interp = getattr(transforms.InterpolationMode, interpolation.upper())
  steps = []
  if resize_then_crop:
    steps += [transforms.Resize(size, interpolation=interp, antialias=True), transforms.CenterCrop(size)]
  else:
    if crop == 'square':
      steps.append(_CenterSquare())
    elif crop is not None:
      steps.append(transforms.CenterCrop(crop))
    steps.append(transforms.Resize((size, size), interpolation=interp, antialias=True))
  steps.append(transforms.PILToTensor())
  return transforms.Compose(steps)


def _not_found(name, where, how):
  return DatasetNotFoundError(f'{name} was not found at {where}. {how}')


def _torchvision(name, cls, root, download, **kwargs):
  """Build a torchvision dataset, turning its 'not found' error into a DatasetNotFoundError."""
  try:
    return cls(root=str(root), download=download, **kwargs)
  except RuntimeError as e:
    if download:
      raise DatasetNotFoundError(f'Downloading {name} into {root} failed ({e}).') from e
    raise _not_found(name, root, 'Set --config.data.download=True to let torchvision download it '
                     'there (CelebA comes from Google Drive, which may refuse when busy), or point '
                     f'--config.data.root at a folder that holds it (torchvision: {e}).') from e


@DATASETS.register(name='DIGITS')
def _digits(config, train, root, download):
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = torch.from_numpy(digits.images / 16.).float()[:, None]  # (1797, 1, 8, 8) in [0, 1]
  images = F.interpolate(images, size=(16, 16), mode='bilinear', align_corners=False)
  images = (images.clamp(0, 1) * 255.).round().to(torch.uint8)
  images = _resize_uint8(images, config.data.image_size)
  labels = torch.from_numpy(digits.target).long()
  order = torch.from_numpy(np.random.default_rng(0).permutation(len(images)))
  keep = order[300:] if train else order[:300]  # fixed split: 1,497 train, 300 test
  return InMemoryImages(images[keep], labels[keep])


@DATASETS.register(name='CIFAR10')
def _cifar10(config, train, root, download):
  from torchvision.datasets import CIFAR10
  ds = _torchvision('CIFAR10', CIFAR10, root, download, train=train)
  images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
  return InMemoryImages(_resize_uint8(images, config.data.image_size), torch.tensor(ds.targets))


@DATASETS.register(name='SVHN')
def _svhn(config, train, root, download):
  from torchvision.datasets import SVHN
  ds = _torchvision('SVHN', SVHN, root, download, split='train' if train else 'test')
  images = torch.from_numpy(ds.data)
  return InMemoryImages(_resize_uint8(images, config.data.image_size), torch.from_numpy(ds.labels).long())


@DATASETS.register(name='CELEBA')
def _celeba(config, train, root, download):
  from torchvision.datasets import CelebA
  base = _torchvision('CELEBA', CelebA, root, download, split='train' if train else 'valid',
                      target_type=[])
  return TransformedImages(base, pil_transform(config.data.image_size, crop=140))


@DATASETS.register(name='LSUN')
def _lsun(config, train, root, download):
  category = config.data.category
  folder = f'{category}_{"train" if train else "val"}'
  if not (root / f'{folder}_lmdb').is_dir():
    raise _not_found(f'LSUN {category}', root / f'{folder}_lmdb',
                     'torchvision cannot download LSUN: fetch it with the official script '
                     f'(https://github.com/fyu/lsun: `python download.py -c {category}`), unzip '
                     f'the {folder}_lmdb folder into {root}, or set --config.data.root.')
  try:
    from torchvision.datasets import LSUN
    base = LSUN(str(root), classes=[folder])
  except ImportError as e:
    raise ImportError(f'Reading LSUN needs the lmdb package: pip install lmdb ({e}).') from e
  size = config.data.image_size
  # The paper's code: at 128 px resize the short side then centre-crop; otherwise centre-crop
  # the largest square and resize it (bicubic).
  transform = (pil_transform(size, resize_then_crop=True) if size == 128
               else pil_transform(size, crop='square', interpolation='bicubic'))
  return TransformedImages(base, transform)


def _image_folder(name, config, root):
  how = (f'{name} is read from a folder of images: put the images (e.g. PNGs at '
         f'{config.data.image_size}x{config.data.image_size}) under a folder and pass '
         '--config.data.root=/path/to/folder.')
  if config.data.root is None:  # every image under ./data would be read
    raise DatasetNotFoundError(f'{how} Image folders need it given: they do not fall back to '
                               '$SCORESDE_DATA or ./data, which hold other datasets.')
  if not root.is_dir():
    raise _not_found(name, root, how)
  ds = ImageFolderFlat(root, pil_transform(config.data.image_size, crop='square'))
  if len(ds) == 0:
    raise _not_found(name, root, f'The folder holds no images ({", ".join(sorted(_IMAGE_SUFFIXES))}).')
  return ds


DATASETS.register(lambda config, train, root, download: _image_folder('FFHQ', config, root), name='FFHQ')
DATASETS.register(lambda config, train, root, download: _image_folder('CelebAHQ', config, root),
                  name='CelebAHQ')


def split_images(config, train):
  """The uint8 images of one split of `config.data.dataset` (the train split when `train`, else
  the eval split) as a torch Dataset of (uint8 (C, H, W), int label); folder datasets (FFHQ,
  CelebAHQ) have one split, returned for both.

  Raises:
    DatasetNotFoundError (a FileNotFoundError) saying where to put or how to fetch the data.
  """
  build = DATASETS.get(config.data.dataset)
  return build(config, train, data_root(config), bool(config.data.download))


def to_uint8(samples):
  """Samples in [0, 1], (B, C, H, W) -> uint8 (B, H, W, C), truncated as the reference does."""
  x = samples.detach().permute(0, 2, 3, 1).cpu().numpy()
  return np.clip(x * 255., 0, 255).astype(np.uint8)


class ImageBatches:
  """An iterable of float batches (B / world_size, C, H, W) in [0, 1] of a uint8 image dataset.

  Each epoch is a DistributedSampler permutation (seed, epoch) cut into global batches of
  `batch_size` (the remainder is dropped, as in the paper's code); this rank keeps its shard.
  Flips and dequantization noise of an image depend only on (seed, epoch, its position in the
  epoch), so the stream does not depend on the number of ranks or on where iteration started.
  """

  def __init__(self, dataset, batch_size, *, shuffle=True, repeat=True, random_flip=False,
               uniform_dequantization=False, seed=0, rank=0, world_size=1, num_workers=0,
               with_labels=False, pin_memory=False):
    if batch_size % world_size:
      raise ValueError(f'The global batch size {batch_size} is not divisible by the {world_size} '
                       'processes; change the batch size or the number of processes.')
    self.dataset, self.batch_size = dataset, batch_size
    self.local_batch_size = batch_size // world_size
    self.shuffle, self.repeat, self.random_flip = shuffle, repeat, random_flip
    self.uniform_dequantization, self.seed = uniform_dequantization, seed
    self.rank, self.world_size = rank, world_size
    self.num_workers, self.with_labels = num_workers, with_labels
    self.pin_memory = pin_memory  # page-locked batches: .to('cuda', non_blocking=True) is async
    if len(self) == 0:
      raise ValueError(f'The dataset has {len(dataset)} images, fewer than one batch of {batch_size}.')

  def __len__(self):
    """Batches per epoch."""
    return len(self.dataset) // self.batch_size

  def iterate(self, start=0):
    """Yield batches from global batch number `start` (counted across epochs) on."""
    epoch, offset = divmod(start, len(self))
    while self.repeat or epoch == 0:
      yield from self._epoch(epoch, offset)
      epoch, offset = epoch + 1, 0

  def __iter__(self):
    return self.iterate(0)

  def _epoch(self, epoch, offset):
    sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank,
                                 shuffle=self.shuffle, seed=self.seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    b = self.local_batch_size
    batches = [indices[i * b:(i + 1) * b] for i in range(offset, len(self))]
    if isinstance(self.dataset, InMemoryImages) and self.num_workers == 0:
      fetched = (self.dataset[torch.tensor(idx)] for idx in batches)  # one gather per batch
    else:
      # A generator of its own: without one, every DataLoader iterator draws its workers' base
      # seed from the global RNG that dropout uses, so the training noise would depend on
      # num_workers and a run resumed mid-epoch would not repeat the uninterrupted one.
      # Workers ignore SIGTERM / SIGUSR1, which the main process handles (preemption.py).
      fetched = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                           worker_init_fn=preemption.ignore_signals,
                           generator=torch.Generator().manual_seed(
                               derive_seed(self.seed, DATA_LOADER, epoch, self.rank)))
    for i, (images, labels) in enumerate(fetched, start=offset):
      images = self._augment(images, epoch, i)
      if self.pin_memory:
        images = images.pin_memory()
      yield (images, labels) if self.with_labels else images

  def _augment(self, images, epoch, batch_index):
    x = images.float() / 255.
    if not (self.random_flip or self.uniform_dequantization):
      return x
    out = []
    for j, image in enumerate(x):
      # DistributedSampler interleaves ranks: local row j is global row rank + world_size * j.
      position = batch_index * self.batch_size + self.rank + self.world_size * j
      g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_AUGMENTATION, epoch, position))
      if self.random_flip and torch.rand((), generator=g) < 0.5:
        image = image.flip(-1)
      if self.uniform_dequantization:
        image = (torch.rand(image.shape, generator=g) + image * 255.) / 256.
      out.append(image)
    return torch.stack(out)


def loader_workers(config, dataset):
  """Worker processes that load `dataset`: config.data.num_workers, or when it is None, 0 for
  in-memory datasets (DIGITS, CIFAR10, SVHN: one tensor gather per batch in this process; on 2
  cores, workers only compete with the training threads) and min(4, CPUs) for file-backed ones."""
  workers = config.data.num_workers
  if workers is None:
    return 0 if isinstance(dataset, InMemoryImages) else min(4, os.cpu_count() or 1)
  return int(workers)


def get_dataset(config, uniform_dequantization=False, evaluation=False, with_labels=False,
                image_check=None):
  """Train and evaluation batches of `config.data.dataset`.

  Args:
    config: uses data.dataset, image_size, random_flip, root, download, num_workers, seed,
      device (batches are pinned for CUDA) and training.batch_size, or eval.batch_size when
      `evaluation`.
    uniform_dequantization: add U[0, 1) / 256 noise to the 8-bit images.
    evaluation: one pass over each split without flips; otherwise both repeat forever and the
      training batches are flipped when `config.data.random_flip`.
    with_labels: yield (images, labels (B,)) pairs instead of images.
    image_check: for an image folder, the index file of `check_image_folder` (training's
      WORKDIR/image_check.json): its files are checked first, once.
  Returns:
    (train_ds, eval_ds, dataset): two `ImageBatches` of float (B, C, H, W) in [0, 1], global
    batch B split over torch.distributed ranks, and the train split's uint8 Dataset.
  Raises:
    DatasetNotFoundError (a FileNotFoundError) saying where to put or how to fetch the data;
    UnreadableImagesError (a ValueError) naming unreadable files of an image folder.
  """
  train_set = split_images(config, True)
  if isinstance(train_set, ImageFolderFlat):  # one split: checked once, used for both
    if image_check is not None:
      check_image_folder(train_set, config.data.skip_unreadable, image_check)
    eval_set = train_set
  else:
    eval_set = split_images(config, False)
  rank, world = distributed.rank_world()
  batch_size = config.eval.batch_size if evaluation else config.training.batch_size
  pin = torch.device(config.device).type == 'cuda' and torch.cuda.is_available()
  common = dict(uniform_dequantization=uniform_dequantization, rank=rank, world_size=world,
                with_labels=with_labels, repeat=not evaluation, pin_memory=pin)
  train_ds = ImageBatches(train_set, batch_size, random_flip=config.data.random_flip and not evaluation,
                          seed=config.seed, num_workers=loader_workers(config, train_set), **common)
  eval_ds = ImageBatches(eval_set, batch_size, seed=config.seed + 1,
                         num_workers=loader_workers(config, eval_set), **common)
  return train_ds, eval_ds, train_set
