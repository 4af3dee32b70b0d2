"""A run on disk: the workdir's layout, its config.json, atomic writes of every kind, and the guard
that keeps a folder from mixing the files of two runs (`folder_lock` keeps two processes from
writing one folder at once).

    WORKDIR/config.json                        the resolved config (`check_and_save_config`)
    WORKDIR/.lock                              held while a process trains here (`folder_lock`)
    WORKDIR/stdout.txt, tensorboard/           logs
    WORKDIR/checkpoints/checkpoint_N.pth       snapshots (`Layout.snapshot(N)`)
    WORKDIR/checkpoints-meta/checkpoint.pth    the resume checkpoint (`Layout.resume`)
    WORKDIR/checkpoints-meta.prev/checkpoint.pth  its previous version (`Layout.resume_previous`)
    WORKDIR/image_check.json                   the readable files of an image-folder dataset
    WORKDIR/samples/iter_S/                    snapshot samples of training
    WORKDIR/<eval_folder>/                     --mode eval (eval_config.json records its settings)
    WORKDIR/generated/<out>/                   --mode sample (meta.json records its identity)
    WORKDIR/classifier/...                     the same layout for the noise-conditional classifier

Every file a run writes goes through `write_atomic` (or `torch_save_atomic` for checkpoints, which
are also synced to disk): a file that exists is complete, and a write that fails or is killed
leaves the previous file and no temporary one. A write that fails for lack of space or an I/O
error raises `StorageError`, naming the file, its size and the space left. Writes hold back an
interrupting SIGTERM until the file is complete (`preemption.deferred`).
"""
import dataclasses
import errno
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import torch

import preemption


# ----------------------------------------------------------------------------- the layout

@dataclasses.dataclass(frozen=True)
class Layout:
  """Paths of a training run (of the score model, or of the classifier under root/classifier)."""
  root: str

  @property
  def resume(self):
    """The resume checkpoint, overwritten every snapshot_freq_for_preemption steps."""
    return os.path.join(self.root, 'checkpoints-meta', 'checkpoint.pth')

  @property
  def resume_previous(self):
    """The resume checkpoint it replaced, kept for a newest one that cannot be read (a folder of
    its own: checkpoints-meta/ holds the one file that tools, the reference's included, read)."""
    return os.path.join(self.root, 'checkpoints-meta.prev', 'checkpoint.pth')

  @property
  def image_check(self):
    """The index of an image-folder dataset's unreadable files (`datasets.check_image_folder`)."""
    return os.path.join(self.root, 'image_check.json')

  @property
  def snapshots(self):
    return os.path.join(self.root, 'checkpoints')

  def snapshot(self, n):
    """checkpoints/checkpoint_{n}.pth (n = step // snapshot_freq)."""
    return os.path.join(self.snapshots, f'checkpoint_{n}.pth')

  @property
  def samples(self):
    return os.path.join(self.root, 'samples')

  @property
  def classifier(self):
    """The layout of the classifier trained for this run's conditional sampling."""
    return Layout(os.path.join(self.root, 'classifier'))

  def generated(self, out=''):
    """--mode sample's folder for `out` (WORKDIR/generated/<out>)."""
    return os.path.join(self.root, 'generated', out)

  def make(self):
    """Create the run's folders (idempotent)."""
    for path in (os.path.dirname(self.resume), self.snapshots):
      os.makedirs(path, exist_ok=True)


# ----------------------------------------------------------------------------- atomic writes

class StorageError(OSError):
  """A write that failed for lack of space (ENOSPC, EDQUOT, EFBIG) or an I/O error (EIO): the
  message names the file, the size it needed and the space left. errno is the original's."""


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _size(n):
  """'12.3 MB' (decimal units)."""
  if n < 1000:
    return f'{n} bytes'
  for unit in ('KB', 'MB', 'GB', 'TB'):
    n /= 1000
    if n < 1000 or unit == 'TB':
      return f'{n:.1f} {unit}'


def _file_size(path):
  try:
    return os.path.getsize(path) if path is not None else 0
  except OSError:
    return 0


def _tensor_bytes(tree):
  """Bytes of the tensors of `tree` (dicts, lists): about the size of its checkpoint file."""
  if torch.is_tensor(tree):
    return tree.numel() * tree.element_size()
  if isinstance(tree, dict):
    tree = list(tree.values())
  return sum(_tensor_bytes(v) for v in tree) if isinstance(tree, (list, tuple)) else 0


def storage_error(error, path, needed):
  """The `StorageError` of writing `needed` bytes to `path` that failed with OSError `error`."""
  folder = pathlib.Path(path).parent
  try:
    free = _size(shutil.disk_usage(folder).free)
  except OSError:
    free = 'unknown space'
  return StorageError(error.errno, f'Writing {path} failed ({error.strerror or error}): it needed '
                      f'about {_size(needed)}, and {free} is free on the filesystem of {folder}. '
                      'The previous version of the file is intact and no temporary file is left: '
                      'free space (or move the run to a larger filesystem), then run the same '
                      'command again.')


def _sync_folder(folder):
  """fsync a folder, so that the renames in it survive a power loss (where the OS allows)."""
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def torch_save_atomic(obj, path, mode=None):
  """torch.save `obj` to `path` atomically: a temporary file in the same folder, synced, then
  renamed, so a crash or SIGKILL during the write leaves the previous file at `path` untouched.
  `mode` sets the file's permissions (the temporary file is created 0600).

  Raises:
    StorageError (an OSError) when the disk is full or fails, naming the size it needed.
  """
  path, tmp = pathlib.Path(path), None
  with preemption.deferred():
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
      with os.fdopen(fd, 'wb') as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
      if mode is not None:
        os.chmod(tmp, mode)
      os.replace(tmp, path)
      _sync_folder(path.parent)
    except BaseException as e:
      written = _file_size(tmp)
      if tmp is not None and os.path.exists(tmp):
        os.remove(tmp)
      if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        raise storage_error(e, path, max(written, _tensor_bytes(obj))) from e
      raise


def write_atomic(path, write, suffix='.tmp'):
  """Call `write(tmp)` for a temporary path beside `path`, then rename it onto `path`: a file
  that exists is complete, and a failed write leaves the previous one (the temporary file is
  removed). `suffix` ends the temporary name, for writers that append their own extension
  (np.savez: '.npz'). For checkpoints, which are also synced to disk, see `torch_save_atomic`.

  Raises:
    StorageError (an OSError) when the disk is full or fails, naming the size it needed (what
    was written before the failure, or the previous version's size).
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f'.{path.name}.{os.getpid()}{suffix}')  # one per process
  with preemption.deferred():
    try:
      write(str(tmp))
      os.replace(tmp, path)
    except BaseException as e:
      written = _file_size(tmp)
      tmp.unlink(missing_ok=True)
      if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        raise storage_error(e, path, max(written, _file_size(path))) from e
      raise


def write_json_atomic(path, value, **dump_options):
  """json.dump `value` to `path` atomically (`write_atomic`). `dump_options` go to json.dump
  (indent, sort_keys)."""
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(value, f, **dump_options)
  write_atomic(path, write)


def savez_atomic(path, *args, **arrays):
  """np.savez_compressed, atomically (`write_atomic`): a file that exists is complete."""
  write_atomic(path, lambda tmp: np.savez_compressed(tmp, *args, **arrays), suffix='.tmp.npz')


def write_png(path, image):
  """Write a uint8 (H, W, C) image (C = 1 or 3) as a PNG, atomically."""
  from PIL import Image
  picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  write_atomic(path, lambda tmp: picture.save(tmp, format='PNG'))


def read_json(path):
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- one run per folder

def jsonable(value):
  """A config value (nested dicts, tuples, devices, dtypes) as plain JSON values."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)  # torch.device, dtypes


def as_json(tree):
  """`tree` as it reads back from a JSON file (tuples become lists, devices strings)."""
  return json.loads(json.dumps(jsonable(tree)))


def flatten_config(tree, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_config(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def differences(saved, now, allowed=(), limit=8, labels=('there', 'now')):
  """Where two JSON trees (nested dicts) differ: (sorted flattened keys, 'key: a there, b now; ...'
  for the first `limit`, `labels` naming the two sides). Keys equal to an entry of `allowed`, or
  under one ending in '.', are left out."""
  saved, now = flatten_config(saved), flatten_config(now)
  keys = sorted(k for k in set(saved) | set(now)
                if saved.get(k, '<absent>') != now.get(k, '<absent>')
                and not any(k == p or (p.endswith('.') and k.startswith(p)) for p in allowed))
  details = '; '.join(f'{k}: {saved.get(k, "<absent>")!r} {labels[0]}, '
                      f'{now.get(k, "<absent>")!r} {labels[1]}' for k in keys[:limit])
  return keys, details


def refuse_other_run(saved, now, what, remedy, allowed=(), limit=8, labels=('there', 'now')):
  """The guard of every folder that records what made its files (config.json, eval_config.json,
  meta.json): a ValueError '`what` (the entries that differ). `remedy`' unless the JSON trees
  `saved` and `now` agree outside `allowed` (see `differences`)."""
  differ, details = differences(saved, now, allowed, limit, labels)
  if differ:
    raise ValueError(f'{what} ({details}). {remedy}')


# Config entries that may change between a run and its resumption (they do not change the
# weights a step produces). Any other difference makes `train` refuse the workdir.
# training.compile / compile_mode / cudnn_benchmark change how kernels are scheduled, not the
# math: like 'device' or the thread count they can move the last bits of float32 rounding, and a
# run may resume on a machine without a compiler or GPU. training.precision, tf32,
# model.channels_last and optim.adam_impl change the numbers of every step (rounding at 1e-3 for
# bf16, other convolution algorithms) and are fixed for a run.
RESUMABLE_CHANGES = ('training.n_iters', 'training.log_freq', 'training.eval_freq',
                     'training.snapshot_freq', 'training.snapshot_freq_for_preemption',
                     'training.snapshot_sampling', 'training.compile', 'training.compile_mode',
                     'training.cudnn_benchmark', 'eval.', 'sampling.', 'device', 'data.root',
                     'data.download', 'data.num_workers', 'classifier.', 'sample.',
                     'training.max_runtime_s', 'data.skip_unreadable', 'model.checkpointing',
                     'training.phema_snapshot_freq', 'training.phema_snapshot_dtype', 'phema.')
# training.max_runtime_s only says when a run stops; data.skip_unreadable only whether it starts
# with unreadable images (the files it trains on are those of WORKDIR/image_check.json);
# model.checkpointing recomputes activations bit for bit (tests/test_checkpointing.py).
# Keys added to the defaults after runs were written, with the value those runs had in effect:
# a config.json without one reads as holding that value, so such runs still resume.
ADDED_KEYS = {'training.precision': 'fp32', 'training.tf32': None, 'model.channels_last': False,
              'optim.adam_impl': 'default', 'training.max_runtime_s': None,
              'data.skip_unreadable': False, 'model.checkpointing': 'none',
              'training.importance_weighting': False, 'training.phema_sigma_rels': [],
              'training.smallest_time': 1e-5, 'training.dequantizer': False,
              'training.dequantizer_nf': 32, 'training.dequantizer_couplings': 4}


def check_and_save_config(config, workdir):
  """Write the resolved config to workdir/config.json, refusing a workdir of another run.

  Raises:
    ValueError naming the entries that differ (changes in RESUMABLE_CHANGES are allowed).
  """
  path = os.path.join(workdir, 'config.json')
  current = jsonable(config.to_dict())
  if os.path.exists(path):
    refuse_other_run(dict(ADDED_KEYS, **flatten_config(read_json(path))), current,
                     f'Workdir {workdir} holds a run of another config',
                     'Use a new --workdir, or the config saved in config.json to resume that run.',
                     allowed=RESUMABLE_CHANGES)
  write_json_atomic(path, current, indent=2, sort_keys=True)
