"""Checkpoints: reading and writing them (strictly, atomically; score_sde_pytorch's official files
as well as ours), building the state they restore into, loading a score model or a classifier
from one, and resolving which file a user means (N, 'latest' or a path).

A checkpoint is a dict {'optimizer': state_dict, 'model': state_dict, 'ema': {'decay',
'num_updates', 'shadow_params'}, 'step': int, ...}; the model keys carry DataParallel's `module.`
prefix, as the official files do, so checkpoints move both ways between the two codebases. Extra
entries of `state` (RNG states, the classifier's architecture) are saved and restored as they are.
Where the files of a run lie is `workdir.Layout`'s. The resume checkpoint keeps its previous
version (`link_or_copy` before each write), which `restore_resume_checkpoint` falls back to.
"""
import errno
import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import zipfile

import numpy as np
import torch

import dequantizer
import losses
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from models.wideresnet import architecture, classifier_config, create_classifier
from models.utils import unwrap
from workdir import Layout, torch_save_atomic, write_atomic

_PREFIX = 'module.'


class CheckpointError(RuntimeError):
  """A checkpoint file that cannot be read as it is: corrupt, truncated, or holding Python objects
  that weights_only loading refuses (the message says which, and what to do)."""

_SIGNATURES = pathlib.Path(__file__).resolve().parent / 'assets' / 'model_signatures.json'


def numpy_scalar_globals():
  """numpy objects that official checkpoints pickle (the warm-up lr is a numpy float64).

  They are plain data, so allowing them keeps `weights_only=True` safe; files written under
  numpy 1.x name the scalar constructor `numpy.core.multiarray.scalar`.
  """
  scalar = np._core.multiarray.scalar if hasattr(np, '_core') else np.core.multiarray.scalar
  allowed = [scalar, (scalar, 'numpy.core.multiarray.scalar'), np.dtype]
  allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType')]
  return allowed


def _contiguous(tree):
  """Tensors of `tree` (dicts, lists) in the standard contiguous layout: a channels_last model's
  weights are saved with the strides every reader expects."""
  if torch.is_tensor(tree):
    return tree.contiguous()
  if isinstance(tree, dict):
    return {k: _contiguous(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return type(tree)(_contiguous(v) for v in tree)
  return tree


def _portable_optimizer_state(optimizer):
  """optimizer.state_dict() with contiguous tensors and torch's default `foreach` / `fused`
  choice: which Adam implementation ran is a run option (config.optim.adam_impl; a restore keeps
  the optimizer's own), not state, and a file saying fused=True would not load where fused Adam
  is not supported."""
  state_dict = optimizer.state_dict()
  groups = [dict(g, **{k: None for k in ('foreach', 'fused') if k in g})
            for g in state_dict['param_groups']]
  return dict(state_dict, state=_contiguous(state_dict['state']), param_groups=groups)


def save_checkpoint(path, state):
  """Write `state` to `path` atomically (`torch_save_atomic`)."""
  model_sd = unwrap(state['model']).state_dict()
  # Extra entries with a state dict (the dequantizer) are saved as that state dict.
  saved = {k: v.state_dict() if hasattr(v, 'state_dict') else v
           for k, v in state.items() if k not in ('optimizer', 'model', 'ema')}
  saved.update(optimizer=_portable_optimizer_state(state['optimizer']),
               model={_PREFIX + k: _contiguous(v) for k, v in model_sd.items()},
               ema=_contiguous(state['ema'].state_dict()))
  torch_save_atomic(saved, path)


def load_checkpoint_file(path, device='cpu', trusted=False):
  """Read a checkpoint dict; `weights_only` unless `trusted` (for files you made yourself)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No checkpoint at {path}. Check the path (a training run writes '
                            'WORKDIR/checkpoints/checkpoint_N.pth).')
  try:
    if trusted:
      return torch.load(path, map_location=device, weights_only=False)
    with torch.serialization.safe_globals(numpy_scalar_globals()):
      return torch.load(path, map_location=device, weights_only=True)
  except pickle.UnpicklingError as e:
    if 'Unsupported global' in str(e) or 'weights_only' in str(e):
      raise CheckpointError(f'Checkpoint {path} holds Python objects beyond tensors and numbers, so it '
                         'was not loaded with weights_only=True. If you trust the file, pass '
                         f'trusted=True.\n{e}') from e
    raise CheckpointError(f'Checkpoint {path} is corrupt or truncated ({e}).') from e
  except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
    # A truncated file can also fail as OSError EINVAL (the zip reader seeking past its end).
    if isinstance(e, OSError) and e.errno != errno.EINVAL:
      raise
    raise CheckpointError(f'Checkpoint {path} is corrupt or truncated and cannot be read ({e}). '
                       'Restore it from a copy, or resume from an earlier checkpoint.') from e


def _strip_prefix(state_dict):
  if all(k.startswith(_PREFIX) for k in state_dict):
    return {k[len(_PREFIX):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _guess_config(state_dict):
  """Names of the reference configs whose model has as many tensors and elements as this one.

  assets/model_signatures.json lists them for every config (from the reference's state dicts).
  """
  if not _SIGNATURES.is_file():
    return []
  n_tensors = len(state_dict)
  numel = sum(v.numel() for v in state_dict.values())
  sigs = json.loads(_SIGNATURES.read_text())
  return sorted(name for name, s in sigs.items()
                if s['num_tensors'] == n_tensors and s['numel'] == numel)


def check_state_dict_matches(model, state_dict, source='checkpoint'):
  """Raise a ValueError naming the first mismatched keys/shapes if `state_dict` does not fit."""
  expected = model.state_dict()
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected]
  wrong = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
           if k in state_dict and state_dict[k].shape != v.shape]
  if not (missing or unexpected or wrong):
    return
  lines = [f'The {source} does not match the model ({type(model).__name__}, {len(expected)} '
           f'tensors; the {source} has {len(state_dict)}).']
  if wrong:
    lines.append('Shape mismatches (key: checkpoint vs model): ' + '; '.join(
      f'{k}: {a} vs {b}' for k, a, b in wrong[:5]))
  if missing:
    lines.append(f'Missing from the {source}: ' + ', '.join(missing[:5]))
  if unexpected:
    lines.append('Not in the model: ' + ', '.join(unexpected[:5]))
  guesses = _guess_config(state_dict)
  if guesses:
    lines.append('The checkpoint looks like a model of config(s): ' + ', '.join(guesses) + '.')
  lines.append('Build the model from the config the checkpoint was trained with.')
  raise ValueError('\n'.join(lines))


def _load_optimizer_state(optimizer, state_dict):
  """optimizer.load_state_dict, keeping the optimizer's own `foreach` / `fused` choice (torch
  would take the file's; it is config.optim.adam_impl's to decide), with each 'step' count where
  that implementation reads it without a host synchronisation: on the parameter's device for
  fused or capturable Adam, else on the CPU (a count loaded onto a GPU costs one .item() per
  parameter and step). Moment estimates take their parameter's memory layout: files hold them
  contiguous, and fused Adam walks a channels_last weight and its moments in memory order."""
  own = [{k: g[k] for k in ('foreach', 'fused') if k in g} for g in optimizer.param_groups]
  optimizer.load_state_dict(state_dict)
  for group, flags in zip(optimizer.param_groups, own):
    group.update(flags)
    on_device = bool(group.get('fused')) or bool(group.get('capturable'))
    for p in group['params']:
      state = optimizer.state.get(p, {})
      for key, value in state.items():
        if key == 'step' and torch.is_tensor(value):
          state[key] = value.to(p.device if on_device else 'cpu')
        elif torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
          state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def restore_checkpoint(ckpt_path, state, device, trusted=False):
  """Load a checkpoint into `state` in place (strictly) and return it.

  Args:
    ckpt_path: a checkpoint written by `save_checkpoint` or by score_sde_pytorch.
    state: dict with 'model' (module, maybe DataParallel/DDP-wrapped), 'ema'
      (ExponentialMovingAverage), and optionally 'optimizer'; its 'step' and any extra entries
      found in the file are replaced.
    device: where `state` lives (score_sde_pytorch's signature). The file is read on the CPU
      and copied into `state`'s tensors, wherever they are: its extra entries stay on the CPU,
      where RNG states must be (torch.set_rng_state and Generator.set_state refuse CUDA
      tensors).
    trusted: allow arbitrary pickled objects (only for files you trust).
  Raises:
    FileNotFoundError if there is no file; RuntimeError if it is corrupt; ValueError if it does
    not fit the model (naming the first mismatched keys).
  """
  loaded = load_checkpoint_file(ckpt_path, 'cpu', trusted)
  model = unwrap(state['model'])
  model_sd = _strip_prefix(loaded['model'])
  check_state_dict_matches(model, model_sd, source=f'checkpoint {ckpt_path}')
  model.load_state_dict(model_sd, strict=True)
  state['ema'].load_state_dict(loaded['ema'])
  if state.get('optimizer') is not None and 'optimizer' in loaded:
    try:
      _load_optimizer_state(state['optimizer'], loaded['optimizer'])
    except ValueError as e:
      raise ValueError(f'The optimizer state in {ckpt_path} does not fit this optimizer ({e}). '
                       'Was config.optim changed?') from e
  for key, value in loaded.items():
    if key in ('model', 'ema', 'optimizer'):
      continue
    if hasattr(state.get(key), 'load_state_dict'):
      state[key].load_state_dict(value)
    else:
      state[key] = value
  return state


def link_or_copy(path, copy):
  """Make `copy` the file `path` is now (nothing if there is none), atomically: a hard link (no
  data written), or a copy where the filesystem has no hard links. A later atomic write of `path`
  leaves `copy` as it was."""
  if not os.path.isfile(path):
    return
  os.makedirs(os.path.dirname(copy), exist_ok=True)
  tmp = f'{copy}.{os.getpid()}.link'
  try:
    if os.path.lexists(tmp):
      os.remove(tmp)
    os.link(path, tmp)
  except OSError:
    write_atomic(copy, lambda t: shutil.copyfile(path, t))
    return
  os.replace(tmp, copy)


def restore_resume_checkpoint(layout, state, device, repair=True):
  """Restore the resume checkpoint of `layout` (a workdir.Layout) into `state`, or when it cannot
  be read (CheckpointError: corrupt, truncated) its previous version, with a warning naming both.
  With `repair` (rank 0), the unreadable file is kept as <name>.unreadable and replaced by the
  previous version, so that the next checkpoint keeps a readable one as its previous.

  Returns:
    The path restored, or None when there is no resume checkpoint.
  Raises:
    CheckpointError when neither can be read (the newest's message, then the previous one's).
  """
  newest, previous = layout.resume, layout.resume_previous
  if not os.path.exists(newest):
    return None
  try:
    restore_checkpoint(newest, state, device)
    return newest
  except CheckpointError as e:
    if not os.path.isfile(previous):
      raise
    unreadable = e
  try:
    restore_checkpoint(previous, state, device)
  except CheckpointError as e:
    raise CheckpointError(f'{unreadable}\nIts previous version {previous} cannot be read either '
                          f'({e}).') from e
  logging.warning('The resume checkpoint %s cannot be read (%s). Resuming from its previous '
                  'version %s (step %d): the steps after it are trained again, to the same '
                  'weights.%s', newest, unreadable, previous, int(state['step']),
                  f' The unreadable file is kept as {newest}.unreadable.' if repair else '')
  if repair:
    link_or_copy(newest, f'{newest}.unreadable')
    link_or_copy(previous, newest)
  return previous


# ----------------------------------------------------------------------------- building, loading

def build_state(config, optimizer=True):
  """Model, EMA and (unless `optimizer` is False: evaluation and sampling need none) the optimizer
  of `config`, as the state dict that training updates and checkpoints restore into strictly;
  with config.training.dequantizer, also 'dequantizer' (a `dequantizer.DequantizerState`)."""
  model = mutils.create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  opt = losses.get_optimizer(config, model.parameters()) if optimizer else None
  state = dict(optimizer=opt, model=model, ema=ema, step=0)
  if config.training.dequantizer:  # the variational dequantizer trained with it
    state['dequantizer'] = dequantizer.DequantizerState(config, optimizer)
  return state


def build_classifier_state(config, arch=None, optimizer=True):
  """The noise-conditional classifier (of `arch`, else of config.classifier), its EMA and optimizer
  (config.optim), as a checkpointable state dict that records the architecture."""
  classifier = create_classifier(config, arch)
  ema = ExponentialMovingAverage(classifier.parameters(), decay=classifier_config(config).ema_rate)
  opt = losses.get_optimizer(config, classifier.parameters()) if optimizer else None
  return dict(optimizer=opt, model=classifier, ema=ema, step=0,
              architecture=arch or architecture(config))


def load_score_model(config, checkpoint, ema=True):
  """The score network of `checkpoint` (ours or official) on config.device, with its EMA weights
  unless `ema` is False, in eval mode. Returns (model, step). A checkpoint of another config
  raises the ValueError of `check_state_dict_matches`, which names the configs it resembles."""
  state = restore_checkpoint(checkpoint, build_state(config, optimizer=False), config.device)
  if ema:
    state['ema'].copy_to(state['model'].parameters())
  return state['model'].eval(), int(state['step'])


def load_classifier(config, ckpt_path, use_ema=True):
  """The classifier of a checkpoint written by classifier training, in eval mode on
  config.device. The architecture is the one saved in the checkpoint, so config.classifier need
  not repeat it."""
  arch = load_checkpoint_file(ckpt_path, 'cpu').get('architecture')
  state = restore_checkpoint(ckpt_path, build_classifier_state(config, arch, optimizer=False),
                             config.device)
  if use_ema:
    state['ema'].copy_to(state['model'].parameters())
  return state['model'].eval()


# ----------------------------------------------------------------------------- which file

def latest_checkpoint(folder):
  """The checkpoint_N.pth of `folder` with the largest N, or None."""
  folder = pathlib.Path(folder)
  found = [(int(m.group(1)), p) for p in folder.glob('checkpoint_*.pth')
           if (m := re.fullmatch(r'checkpoint_(\d+)\.pth', p.name))] if folder.is_dir() else []
  return max(found)[1] if found else None


def stored_step(path):
  """The step saved in a checkpoint, read without loading its tensors (mmap)."""
  with torch.serialization.safe_globals(numpy_scalar_globals()):
    return int(torch.load(path, map_location='cpu', mmap=True, weights_only=True)['step'])


def resolve_checkpoint(workdir, ckpt):
  """The checkpoint file `ckpt` names: N -> checkpoints/checkpoint_N.pth of the workdir;
  'latest' -> the highest N, or checkpoints-meta/checkpoint.pth when its step is later (or it is
  the only one); anything else -> that file (an official one too). FileNotFoundError otherwise,
  saying what there is."""
  text = str(ckpt).strip()
  layout = Layout(str(workdir))
  snapshots = pathlib.Path(layout.snapshots)
  if re.fullmatch(r'\d+', text):
    path = pathlib.Path(layout.snapshot(text))
    if not path.is_file():
      have = sorted(p.name for p in snapshots.glob('checkpoint_*.pth'))
      raise FileNotFoundError(f'No checkpoint {path}; {snapshots} holds '
                              f'{", ".join(have) or "none"}. Pass one of their numbers, '
                              "'latest', or the path of a checkpoint file.")
    return path.resolve()
  if text == 'latest':
    snapshot = latest_checkpoint(snapshots)
    meta = pathlib.Path(layout.resume)
    found = [p for p in (snapshot, meta) if p is not None and p.is_file()]
    if not found:
      raise FileNotFoundError(f'No checkpoint in {snapshots} or {meta.parent}: train first, or '
                              'pass --config.sample.ckpt=/path/to/checkpoint.pth.')
    if len(found) == 2 and stored_step(meta) <= stored_step(snapshot):
      found = [snapshot]
    return found[-1].resolve()
  path = pathlib.Path(text).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"config.sample.ckpt={text!r} is neither a snapshot number, 'latest', "
                            f'nor a checkpoint file (there is no file {path.absolute()}).')
  return path.resolve()
