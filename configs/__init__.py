"""Training configs of score_sde_pytorch (ml_collections `ConfigDict`s), by path under configs/.

    from configs import load_config, list_configs
    config = load_config('ve/cifar10_ncsnpp_continuous')   # or 'configs/ve/...py', or any file
    config.model.nf = 64                                    # same as --config.model.nf=64

Every config starts from one of `default_{cifar10,celeba,lsun}_configs.get_default_configs()`,
where each key is defined once and explained, and states only what makes it different: its SDE,
sampler and network, through a family's setup (`ve/_ncsnpp.py`, `ve/_ncsn.py`, `vp/_ddpm.py`;
files starting with '_' are not configs) or as changes to the config it varies (a deep, discrete
or other-dataset version imports its base's `get_config`).
"""
import difflib
import importlib.util
import pathlib

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent
_DEFAULTS_PREFIX = 'default_'


def _name_of(path):
  """'…/configs/ve/ncsn/cifar10.py' -> 've/ncsn/cifar10'."""
  return path.relative_to(CONFIG_DIR).with_suffix('').as_posix()


def list_configs(include_defaults=False):
  """Sorted names of the configs under configs/, e.g. 've/cifar10_ncsnpp_continuous'.

  Args:
    include_defaults: also list the shared defaults ('default_cifar10_configs', ...).
  """
  names = []
  for path in CONFIG_DIR.rglob('*.py'):
    if path.name.startswith('_'):
      continue
    name = _name_of(path)
    if name.startswith(_DEFAULTS_PREFIX) and not include_defaults:
      continue
    names.append(name)
  return sorted(names)


def _resolve(path_or_name):
  """The config file named by a path (absolute or relative) or a name under configs/."""
  text = str(path_or_name)
  path = pathlib.Path(text)
  if path.suffix == '.py' and path.is_file():
    return path.resolve()
  name = text.replace('\\', '/')
  for prefix in ('./', 'configs/'):
    if name.startswith(prefix):
      name = name[len(prefix):]
  if name.endswith('.py'):
    name = name[:-3]
  path = CONFIG_DIR / f'{name}.py'
  if name and not name.startswith('_') and path.is_file():
    return path
  known = list_configs(include_defaults=True)
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = (f'Close matches: {", ".join(close)}.' if close
          else f'Known configs: {", ".join(list_configs())}.')
  raise ValueError(f'Unknown config {text!r}: no file configs/{name}.py (nor a .py file at that '
                   f'path). {hint} `configs.list_configs()` lists all {len(known)}.')


def config_name(path_or_name):
  """The name under configs/ ('ve/digits_ncsnpp_continuous') of a config path or name; a
  ValueError for a file outside configs/ or an unknown name."""
  path = _resolve(path_or_name)
  try:
    return _name_of(path)
  except ValueError:
    raise ValueError(f'{path} is not under {CONFIG_DIR}.') from None


def load_config(path_or_name):
  """Build the `ConfigDict` of a config file.

  Args:
    path_or_name: 've/cifar10_ncsnpp_continuous', 'configs/ve/cifar10_ncsnpp_continuous.py',
      or the path of any .py file with a `get_config()` (a defaults file's
      `get_default_configs()` also works).
  Returns:
    A fresh `ml_collections.ConfigDict`; changing it does not change later loads.
  Raises:
    ValueError: the name matches no config (the message lists close matches).
  """
  path = _resolve(path_or_name)
  try:
    module_name = 'configs.' + _name_of(path).replace('/', '.')
  except ValueError:  # a file outside configs/
    module_name = f'_scoresde_config_{path.stem}'
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for builder in ('get_config', 'get_default_configs'):
    if hasattr(module, builder):
      return with_defaults(getattr(module, builder)())
  raise ValueError(f'{path} defines neither get_config() nor get_default_configs().')


def _complete(config, defaults):
  """Add to `config` (unlocked) every entry of `defaults` it lacks, recursively."""
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(config[key], ml_collections.ConfigDict):
      _complete(config[key], value)


def with_defaults(config):
  """`config` completed with every key of the defaults (`default_cifar10_configs`, where each key
  is defined and explained once) that it lacks: the one place a config missing newer keys (one of
  score_sde_pytorch's configs, an older run's) gets them, so library code reads every key
  directly. The entries it has are kept; a locked config stays locked. Returns `config`."""
  from configs.default_cifar10_configs import get_default_configs
  with config.unlocked():
    _complete(config, get_default_configs())
  return config
