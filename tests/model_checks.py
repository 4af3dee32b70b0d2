"""Shared checks for the score-network tests: reference parity and the state-dict format."""
import json
import math

import ml_collections
import torch

import sde_lib
from configs import with_defaults
from conftest import FIXTURES, assert_close_scaled
from models import utils as mutils


def load_parity(variant):
  return torch.load(FIXTURES / 'parity' / f'{variant}.pt', map_location='cpu', weights_only=True)


def parity_config(fixture):
  config = ml_collections.ConfigDict(fixture['config'])
  config.device = 'cpu'
  # a reference config: completed with the keys added since, as every entry does
  return with_defaults(config)


def check_parity(variant):
  """Load the fixture's weights strictly and compare the network output and the score."""
  fixture = load_parity(variant)
  config = parity_config(fixture)
  model = mutils.create_model(config)
  model.load_state_dict(fixture['state_dict'], strict=True)
  model.eval()
  with torch.no_grad():
    output = model(fixture['x'], fixture['labels'])
    assert output.dtype == fixture['model_output'].dtype
    assert_close_scaled(output, fixture['model_output'], name=f'{variant} output')
    sde_cls = getattr(sde_lib, fixture['sde']['class'])
    sde = sde_cls(**fixture['sde']['params'])
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=fixture['continuous'])
    assert_close_scaled(score_fn(fixture['x'], fixture['t']), fixture['score'],
                        name=f'{variant} score')


def full_size_config(config_name):
  """The full-size config: from configs/ when that file exists, else un-shrinking the parity
  fixture made from it (`shrink` records {"section.key": [full, small]})."""
  try:
    from configs import load_config
    config = load_config(config_name)
    config.device = torch.device('cpu')
    return config
  except (ImportError, ValueError):
    pass
  fixture = load_parity(config_name.replace('/', '__'))
  config = parity_config(fixture)
  for key, change in fixture['shrink'].items():
    if not key.startswith('_'):
      section, name = key.split('.')
      config[section][name] = change[0]
  return config


def load_state_dict_spec(config_name):
  with open(FIXTURES / 'state_dicts' / f'{config_name.replace("/", "__")}.json') as f:
    return json.load(f)


def build_on_meta(config):
  """Build `config`'s network without allocating or initialising weights (shapes only)."""
  with torch.device('meta'):
    return mutils.get_model(config.model.name)(config)


def check_state_dict_format(model, spec):
  """Keys (in order), shapes, dtypes, parameter counts and EMA-tracked count as the reference."""
  state = model.state_dict()
  assert [[k, list(v.shape)] for k, v in state.items()] == spec['keys']
  assert sum(p.numel() for p in model.parameters()) == spec['num_params']
  assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
    spec['num_trainable_params']
  assert [name for name, _ in model.named_buffers()] == spec['buffers']
  non_float32 = {k: str(v.dtype).replace('torch.', '') for k, v in state.items()
                 if v.dtype != torch.float32}
  assert non_float32 == spec['non_float32']
  assert sum(1 for p in model.parameters() if p.requires_grad) == spec['ema_num_shadow_params']


def randomize_(model, seed=0):
  """Non-trivial weights (the official init zeroes several layers); Fourier W is kept."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if not p.requires_grad:
        continue
      noise = torch.randn(p.shape, generator=g)
      if p.dim() > 1:
        p.copy_(noise / math.sqrt(p[0].numel() if p.dim() > 2 else p.shape[0]))
      elif 'GroupNorm' in name and name.endswith('weight'):
        p.copy_(1 + 0.05 * noise)
      else:
        p.copy_(0.05 * noise)
  return model
