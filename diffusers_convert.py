"""NCSN++ checkpoints <-> diffusers' `UNet2DModel` (the NCSN++ variant) and pipeline folders:
the weight-key mapping and the folders' files. Which configs convert, and the configs both ways,
are in `diffusers_configs.py` (its functions are importable from here too).

diffusers is not imported: its folder format is plain JSON plus safetensors (or torch .bin).

Key mapping (our `all_modules` order): Fourier `W` -> `time_proj.weight`; dense layers ->
`time_embedding.linear_1/2`; first conv -> `conv_in`; each down level's residual blocks (and
attention) -> `down_blocks.i.resnets.j` (`attentions.j`), its downsampling block -> `resnet_down`,
its input-skip 1x1 conv -> `skip_conv`; middle -> `mid_block.resnets.0`, `attentions.0`,
`resnets.1`; each up level's blocks -> `up_blocks.u.resnets.j`, `attentions.0`, then the output
head norm/conv -> `skip_norm`/`skip_conv` and the upsampling block -> `resnet_up` (the last
level's head is `conv_norm_out`/`conv_out`). Attention `NIN` weights are stored (in, out) and
transposed into `Linear` (out, in). The `sigmas` buffer is not stored in diffusers. Measured:
the full-size CelebA-HQ 256 network (65.6M parameters) agrees with diffusers' to 4.6e-7 of its
largest output, and folder -> NCSN++ -> folder is bit-exact.
"""
import json
import os
import warnings

import torch

from checkpoints import check_state_dict_matches
from diffusers_configs import (  # noqa: F401 (re-exported: the conversion's API in one place)
    attention_levels, check_convertible, conversion_problems, ncsnpp_config,
    scheduler_from_config, unet_config)
from score_sde_ve_scheduler import ScoreSdeVeScheduler, diffusers_format_version
from workdir import torch_save_atomic, write_atomic, write_json_atomic

UNET_WEIGHTS = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')

# Sub-keys of each kind of module, ours -> diffusers'. 'T' marks NIN weights to transpose.
_RESNET = {f'{a}.{p}': f'{b}.{p}' for a, b in [('GroupNorm_0', 'norm1'), ('Conv_0', 'conv1'),
                                              ('Dense_0', 'time_emb_proj'),
                                              ('GroupNorm_1', 'norm2'), ('Conv_1', 'conv2'),
                                              ('Conv_2', 'conv_shortcut')]
           for p in ('weight', 'bias')}
_ATTN = {'GroupNorm_0.weight': 'group_norm.weight', 'GroupNorm_0.bias': 'group_norm.bias'}
for _nin, _lin in [('NIN_0', 'to_q'), ('NIN_1', 'to_k'), ('NIN_2', 'to_v'), ('NIN_3', 'to_out.0')]:
  _ATTN[f'{_nin}.W'] = (f'{_lin}.weight', 'T')
  _ATTN[f'{_nin}.b'] = f'{_lin}.bias'
_PLAIN = {'weight': 'weight', 'bias': 'bias'}
_SUBKEYS = {'fourier': {'W': 'weight'}, 'plain': _PLAIN, 'resnet': _RESNET, 'attn': _ATTN,
            'combine': {'Conv_0.weight': 'weight', 'Conv_0.bias': 'bias'}}
# Attention names of diffusers < 0.14 folders (the hub's NCSN++ repositories predate the rename).
_OLD_ATTN_NAMES = {'.query.': '.to_q.', '.key.': '.to_k.', '.value.': '.to_v.',
                   '.proj_attn.': '.to_out.0.'}


# --- state dicts both ways ------------------------------------------------------------------------
def _module_plan(config):
  """(kind, diffusers prefix) for each entry of NCSN++'s `all_modules`, in order."""
  levels, blocks = len(config.model.ch_mult), config.model.num_res_blocks
  attention = attention_levels(config)
  plan = [('fourier', 'time_proj'), ('plain', 'time_embedding.linear_1'),
          ('plain', 'time_embedding.linear_2'), ('plain', 'conv_in')]
  for i in range(levels):
    for j in range(blocks):
      plan.append(('resnet', f'down_blocks.{i}.resnets.{j}'))
      if attention[i]:
        plan.append(('attn', f'down_blocks.{i}.attentions.{j}'))
    if i != levels - 1:
      plan += [('resnet', f'down_blocks.{i}.resnet_down'),
               ('combine', f'down_blocks.{i}.skip_conv')]
  plan += [('resnet', 'mid_block.resnets.0'), ('attn', 'mid_block.attentions.0'),
           ('resnet', 'mid_block.resnets.1')]
  for u, i in enumerate(reversed(range(levels))):
    plan += [('resnet', f'up_blocks.{u}.resnets.{j}') for j in range(blocks + 1)]
    if attention[i]:
      plan.append(('attn', f'up_blocks.{u}.attentions.0'))
    if i != 0:
      plan += [('plain', f'up_blocks.{u}.skip_norm'), ('plain', f'up_blocks.{u}.skip_conv'),
               ('resnet', f'up_blocks.{u}.resnet_up')]
    else:
      plan += [('plain', 'conv_norm_out'), ('plain', 'conv_out')]
  return plan


def _key_table(config):
  """{our key: (diffusers key, transpose?)} for every tensor the two formats share."""
  table = {}
  for index, (kind, prefix) in enumerate(_module_plan(config)):
    for ours, theirs in _SUBKEYS[kind].items():
      theirs, transpose = (theirs if isinstance(theirs, tuple) else (theirs, None))
      table[f'all_modules.{index}.{ours}'] = (f'{prefix}.{theirs}', transpose == 'T')
  return table


def to_diffusers_state_dict(state_dict, config):
  """Our NCSN++ state dict (keys 'all_modules.k...', 'module.' prefix allowed) -> UNet2DModel's."""
  check_convertible(config)
  table = _key_table(config)
  out = {}
  for key, value in state_dict.items():
    key = key[len('module.'):] if key.startswith('module.') else key
    if key == 'sigmas':
      continue  # derived from the config; diffusers has no such buffer
    if key not in table:
      raise ValueError(f'State-dict key {key!r} has no diffusers counterpart: the weights do not '
                       'belong to an NCSN++ built from this config.')
    name, transpose = table[key]
    out[name] = (value.t() if transpose else value).contiguous()
  return out


def from_diffusers_state_dict(state_dict, config):
  """UNet2DModel state dict (new or pre-0.14 attention names) -> our NCSN++'s, without `sigmas`."""
  inverse = {name: (ours, transpose) for ours, (name, transpose) in _key_table(config).items()}
  state_dict = dict(state_dict)
  # diffusers before ~0.4 registered the Fourier projection twice, as `W` and `weight` (its old
  # conversion script set both); today's UNet2DModel ignores the extra key.
  old_w = state_dict.pop('time_proj.W', None)
  if old_w is not None:
    if 'time_proj.weight' not in state_dict:
      state_dict['time_proj.weight'] = old_w
    elif not torch.equal(old_w, state_dict['time_proj.weight']):
      raise ValueError('The weights hold time_proj.W and time_proj.weight with different values; '
                       'one Fourier projection was expected.')
  out = {}
  for key, value in state_dict.items():
    for old, new in _OLD_ATTN_NAMES.items():
      if '.attentions.' in key:
        key = key.replace(old, new)
    if key not in inverse:
      raise ValueError(f'UNet2DModel weight {key!r} has no NCSN++ counterpart (is the folder\'s '
                       'config.json the one these weights were saved with?).')
    ours, transpose = inverse[key]
    out[ours] = (value.t() if transpose else value).contiguous()
  return out


# --- folders --------------------------------------------------------------------------------------
def _read_json(path, what):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} not found: {path} is missing. A diffusers ScoreSdeVe folder '
                            'holds model_index.json, unet/config.json with '
                            'unet/diffusion_pytorch_model.safetensors (or .bin), and '
                            'scheduler/scheduler_config.json.')
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON ({e}).') from e


def _safetensors():
  try:
    import safetensors.torch
  except ImportError:
    raise ImportError('Reading or writing .safetensors needs the safetensors package (pip install '
                      'safetensors); or save with safe_serialization=False (torch .bin).') from None
  return safetensors.torch


def read_unet_weights(unet_dir):
  """The state dict in `unet_dir` (safetensors preferred, else torch .bin)."""
  for name in UNET_WEIGHTS:
    path = os.path.join(unet_dir, name)
    if not os.path.isfile(path):
      continue
    if name.endswith('.safetensors'):
      return _safetensors().load_file(path)
    return torch.load(path, map_location='cpu', weights_only=True)
  raise FileNotFoundError(f'No weights in {unet_dir}: expected one of {", ".join(UNET_WEIGHTS)} '
                          '(sharded or variant-only weights are not supported).')


def load_pipeline_folder(folder, device='cpu', **scheduler_overrides):
  """Read a diffusers ScoreSdeVe pipeline folder into (our NCSN++ in eval mode, scheduler).

  The NCSN++ keeps its ConfigDict as `model.config` (with the scheduler's sigma_min/max, N, snr).
  """
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{folder} is not a folder (download a hub model with '
                            'huggingface_hub.snapshot_download first).')
  index = _read_json(os.path.join(folder, 'model_index.json'), 'Pipeline index')
  for part, cls in (('unet', 'UNet2DModel'), ('scheduler', 'ScoreSdeVeScheduler')):
    entry = index.get(part)
    if not entry or entry[-1] != cls:
      raise ValueError(f'{folder}/model_index.json gives {part}={entry!r}; scoresde loads '
                       f'ScoreSdeVe pipelines whose {part} is a {cls}.')
  unet_cfg = _read_json(os.path.join(folder, 'unet', 'config.json'), 'UNet config')
  scheduler = ScoreSdeVeScheduler.from_pretrained(folder, subfolder='scheduler',
                                                            **scheduler_overrides)
  config = ncsnpp_config(unet_cfg, scheduler)
  config.device = torch.device(device)
  state_dict = from_diffusers_state_dict(read_unet_weights(os.path.join(folder, 'unet')), config)
  from models.utils import create_model
  model = create_model(config)
  state_dict['sigmas'] = model.sigmas
  check_state_dict_matches(model, state_dict, source=f'diffusers folder {folder}')
  model.load_state_dict(state_dict, strict=True)
  return model.eval(), scheduler


def save_pipeline_folder(folder, model, scheduler, config=None, safe_serialization=True):
  """Write `model` (an NCSN++, or its state dict with `config`) and `scheduler` as a diffusers
  ScoreSdeVe pipeline folder that `diffusers.ScoreSdeVePipeline.from_pretrained` loads."""
  if isinstance(model, torch.nn.Module):
    config = config if config is not None else getattr(model, 'config', None)
    state_dict = model.state_dict()
  else:
    state_dict = model
  if config is None or not hasattr(config, 'model'):
    raise ValueError('Need our NCSN++ with its ConfigDict (model.config) or config=; a diffusers '
                     'UNet2DModel is saved with its own save_pretrained.')
  weights = to_diffusers_state_dict(state_dict, config)
  if config.data.centered:  # the UNet is exact (center_input_sample=False); the pipeline is not
    warnings.warn('This model samples in [-1, 1] (data.centered): diffusers\' ScoreSdeVePipeline '
                  'clamps its samples to [0, 1] without mapping them, so use its UNet with your '
                  'own (x + 1) / 2, or scoresde\'s pipeline, which maps them.')
  unet_dir = os.path.join(folder, 'unet')
  os.makedirs(unet_dir, exist_ok=True)
  weights = {k: v.detach().cpu() for k, v in weights.items()}
  # Each file is written whole and renamed into place: a crash leaves the previous export.
  if safe_serialization:
    def write(tmp):
      _safetensors().save_file(weights, tmp, metadata={'format': 'pt'})
    write_atomic(os.path.join(unet_dir, UNET_WEIGHTS[0]), write)
  else:
    torch_save_atomic(weights, os.path.join(unet_dir, UNET_WEIGHTS[1]))
  # Weights of the other format left by an earlier export would be read instead of (safetensors)
  # or besides these, by diffusers and by read_unet_weights alike.
  other = os.path.join(unet_dir, UNET_WEIGHTS[1 if safe_serialization else 0])
  if os.path.exists(other):
    os.remove(other)
  write_json_atomic(os.path.join(unet_dir, 'config.json'), unet_config(config), indent=2,
                          sort_keys=True)
  scheduler.save_pretrained(os.path.join(folder, 'scheduler'))
  index = {'_class_name': 'ScoreSdeVePipeline',
           '_diffusers_version': diffusers_format_version(),
           'scheduler': ['diffusers', 'ScoreSdeVeScheduler'], 'unet': ['diffusers', 'UNet2DModel']}
  write_json_atomic(os.path.join(folder, 'model_index.json'), index, indent=2,
                          sort_keys=True)
