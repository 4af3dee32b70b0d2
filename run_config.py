"""A run's resolved config in its workdir (config.json): written at the start of training and
checked when a run resumes, so that a workdir never mixes two configs.
"""
import json
import os

import utils

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
                     'data.download', 'data.num_workers', 'classifier.', 'sample.')
# Keys added to the defaults after runs were written, with the value those runs had in effect:
# a config.json without one reads as holding that value, so such runs still resume.
ADDED_KEYS = {'training.precision': 'fp32', 'training.tf32': None, 'model.channels_last': False,
              'optim.adam_impl': 'default'}


def jsonable(value):
  """A config value (nested dicts, tuples, devices, dtypes) as plain JSON values."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)  # torch.device, dtypes


def flatten_config(tree, prefix=''):
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten_config(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = value
  return flat


def differences(saved, now, allowed=(), limit=8):
  """Where two JSON trees (nested dicts) differ: (sorted flattened keys, 'key: a there, b now; ...'
  for the first `limit`). Keys equal to an entry of `allowed`, or under one ending in '.', are
  left out."""
  saved, now = flatten_config(saved), flatten_config(now)
  keys = sorted(k for k in set(saved) | set(now)
                if saved.get(k, '<absent>') != now.get(k, '<absent>')
                and not any(k == p or (p.endswith('.') and k.startswith(p)) for p in allowed))
  details = '; '.join(f'{k}: {saved.get(k, "<absent>")!r} there, {now.get(k, "<absent>")!r} now'
                      for k in keys[:limit])
  return keys, details


def check_and_save_config(config, workdir):
  """Write the resolved config to workdir/config.json, refusing a workdir of another run.

  Raises:
    ValueError naming the entries that differ (changes in RESUMABLE_CHANGES are allowed).
  """
  path = os.path.join(workdir, 'config.json')
  current = jsonable(config.to_dict())
  if os.path.exists(path):
    with open(path) as f:
      saved = dict(ADDED_KEYS, **flatten_config(json.load(f)))
    differ, details = differences(saved, current, RESUMABLE_CHANGES)
    if differ:
      raise ValueError(f'Workdir {workdir} holds a run of another config ({details}). Use a new '
                       '--workdir, or the config saved in config.json to resume that run.')
  utils.write_json_atomic(path, current, indent=2, sort_keys=True)
