"""NCSN++ checkpoints <-> diffusers' `UNet2DModel` (the NCSN++ variant) and pipeline folders.

diffusers is not imported: its folder format is plain JSON plus safetensors (or torch .bin).

Which NCSN++ configs diffusers can hold. Its skip blocks hard-code the NCSN++ options of the
high-resolution configs: BigGAN residual blocks, FIR kernel [1, 3, 3, 1], progressive
'output_skip', progressive_input 'input_skip' combined by 'sum', skip_rescale, Fourier features,
swish, 3 channels, outputs divided by sigma. So the CelebA-HQ (256, 1024), FFHQ (256, 1024), LSUN
church and bedroom NCSN++ configs convert; the CIFAR-10 / CelebA-64 NCSN++ configs (progressive
'none', progressive_input 'residual'), DDPM++ (positional embedding, no FIR skips) and NCSN/NCSNv2
do not, and `check_convertible` says which options stand in the way.

Small-width limit: diffusers uses 32 groups in the attention norms of its skip blocks (ours use
min(C/4, 32)) and computes the group count of the attention up-blocks' residual blocks with a
precedence slip, so a model is exact in diffusers only when every attention level has >= 128
channels and every concatenated input of an attention up-block has >= 128. Narrower models are
refused rather than converted into a different network.

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
import math
import os
import warnings

import torch

import pipelines
import utils

UNET_WEIGHTS = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
FIR_KERNEL = [1, 3, 3, 1]
_SKIP_DOWN, _ATTN_DOWN = 'SkipDownBlock2D', 'AttnSkipDownBlock2D'
_SKIP_UP, _ATTN_UP = 'SkipUpBlock2D', 'AttnSkipUpBlock2D'

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


# --- which configs diffusers can represent --------------------------------------------------------
def _attention_levels(config):
  size = config.data.image_size
  return [size // 2 ** i in tuple(config.model.attn_resolutions)
          for i in range(len(config.model.ch_mult))]


def _width_problems(block_out_channels, attention, layers_per_block):
  """Where diffusers' hard-coded group counts differ from NCSN++'s min(C/4, 32) (see docstring)."""
  problems = []
  levels = len(block_out_channels)
  for i, (width, attn) in enumerate(zip(block_out_channels, attention)):
    if attn and width < 128:
      problems.append(f'attention at level {i} has {width} channels; diffusers normalises it with '
                      f'32 groups where NCSN++ uses {min(width // 4, 32)} (needs >= 128 channels)')
  reversed_widths = list(reversed(block_out_channels))
  for u in range(levels):
    if not attention[levels - 1 - u]:
      continue
    out_ch, skip_ch = reversed_widths[u], reversed_widths[min(u + 1, levels - 1)]
    prev_ch = reversed_widths[max(u - 1, 0)]
    for j in range(layers_per_block + 1):
      res_in = prev_ch if j == 0 else out_ch
      res_skip = skip_ch if j == layers_per_block else out_ch
      if min(res_in + res_skip // 4, 32) != min((res_in + res_skip) // 4, 32):
        problems.append(f'up level {levels - 1 - u} block {j} has {res_in + res_skip} input '
                        'channels; diffusers\' AttnSkipUpBlock2D gives it a different group count '
                        '(needs >= 128)')
  return problems


def conversion_problems(config):
  """The reasons `config` (an NCSN++ ConfigDict) has no exact diffusers UNet2DModel; [] if none."""
  m = config.model
  if m.name != 'ncsnpp':
    return [f'model.name is {m.name!r}; only NCSN++ (\'ncsnpp\') has a diffusers counterpart']
  wanted = [('embedding_type', 'fourier'), ('resblock_type', 'biggan'),
            ('progressive', 'output_skip'), ('progressive_input', 'input_skip'),
            ('progressive_combine', 'sum'), ('nonlinearity', 'swish')]
  problems = [f'model.{key} is {m[key]!r}, diffusers needs {value!r}'
              for key, value in wanted if str(m[key]).lower() != value]
  if config.training.sde.lower() != 'vesde' or not config.training.continuous:
    problems.append(f'training.sde is {config.training.sde!r} (continuous='
                    f'{config.training.continuous}); the ScoreSdeVe pipeline samples the '
                    'continuous VE SDE')
  for key in ('conditional', 'fir', 'skip_rescale', 'scale_by_sigma'):
    if not m[key]:
      problems.append(f'model.{key} is False, diffusers needs True')
  if m.fir and list(m.fir_kernel) != FIR_KERNEL:
    problems.append(f'model.fir_kernel is {list(m.fir_kernel)}, diffusers needs {FIR_KERNEL}')
  if config.data.num_channels != 3:
    problems.append(f'data.num_channels is {config.data.num_channels}; diffusers\' skip convs are '
                    'fixed to 3 channels')
  widths = [m.nf * c for c in m.ch_mult]
  return problems + _width_problems(widths, _attention_levels(config), m.num_res_blocks)


def check_convertible(config):
  """Raise a ValueError listing every option of `config` that diffusers cannot represent."""
  problems = conversion_problems(config)
  if problems:
    raise ValueError('This NCSN++ config has no exact diffusers UNet2DModel counterpart:\n  - '
                     + '\n  - '.join(problems) + '\nConvertible: the output_skip/input_skip '
                     'configs (ve/celebahq_256, ffhq_256, ffhq, celebahq, church, bedroom '
                     'ncsnpp_continuous); not: CIFAR-10/CelebA-64 NCSN++ (residual input), DDPM++.')


# --- configs both ways ----------------------------------------------------------------------------
def unet_config(config):
  """diffusers `UNet2DModel` config (a JSON-able dict) of the NCSN++ `config`."""
  check_convertible(config)
  m = config.model
  attention = _attention_levels(config)
  return {
    '_class_name': 'UNet2DModel',
    '_diffusers_version': pipelines._diffusers_format_version(),
    'sample_size': config.data.image_size,
    'in_channels': 3,
    'out_channels': 3,
    'center_input_sample': not config.data.centered,  # NCSN++ maps [0, 1] data to [-1, 1]
    'time_embedding_type': 'fourier',
    'down_block_types': [_ATTN_DOWN if a else _SKIP_DOWN for a in attention],
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': [_ATTN_UP if a else _SKIP_UP for a in reversed(attention)],
    'block_out_channels': [m.nf * c for c in m.ch_mult],
    'layers_per_block': m.num_res_blocks,
    'mid_block_scale_factor': math.sqrt(2.),  # skip_rescale
    'dropout': float(m.dropout),
    'act_fn': 'silu',
    'attention_head_dim': None,  # one head, as NCSN++ (diffusers' default 8 splits into heads)
    'norm_num_groups': None,  # min(C/4, 32) groups, as NCSN++
    'norm_eps': 1e-6,
    'resnet_time_scale_shift': 'default',
    'add_attention': True,
  }


def scheduler_from_config(config):
  """`ScoreSdeVeScheduler` with the config's VE SDE and PC-sampler settings."""
  return pipelines.ScoreSdeVeScheduler(
    num_train_timesteps=config.model.num_scales, snr=config.sampling.snr,
    sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, sampling_eps=1e-5,
    correct_steps=config.sampling.n_steps_each)


# UNet2DModel's defaults, for keys a config.json leaves out.
_UNET_DEFAULTS = dict(in_channels=3, out_channels=3, center_input_sample=False,
                      time_embedding_type='positional', mid_block_type='UNetMidBlock2D',
                      layers_per_block=2, mid_block_scale_factor=1., dropout=0., act_fn='silu',
                      attention_head_dim=8, norm_num_groups=32, attn_norm_num_groups=None,
                      norm_eps=1e-5, resnet_time_scale_shift='default', add_attention=True,
                      class_embed_type=None, num_class_embeds=None, time_embedding_dim=None)


def ncsnpp_config(unet_cfg, scheduler=None):
  """Our NCSN++ ConfigDict (all framework keys, from the 256-px defaults) for a diffusers
  `UNet2DModel` config dict; VE schedule and sampler settings from `scheduler` if given.

  Raises a ValueError listing every unsupported setting (block types, embedding, widths, ...).
  """
  from configs import load_config
  errors = []
  unet_cfg = {**_UNET_DEFAULTS, **unet_cfg}
  get = unet_cfg.get

  def expect(key, ok, wanted):
    if not ok(unet_cfg[key]):
      errors.append(f'{key} is {unet_cfg[key]!r}, NCSN++ needs {wanted}')

  widths = list(get('block_out_channels') or [])
  down, up = list(get('down_block_types') or []), list(get('up_block_types') or [])
  if not widths or len(down) != len(widths) or len(up) != len(widths):
    raise ValueError(f'UNet2DModel config needs block_out_channels, down_block_types and '
                     f'up_block_types of one length; got {widths}, {down}, {up}.')
  nf = widths[0]
  expect('time_embedding_type', lambda v: v == 'fourier', "'fourier'")
  expect('in_channels', lambda v: v == 3, '3')
  expect('out_channels', lambda v: v == 3, '3')
  expect('mid_block_type', lambda v: v == 'UNetMidBlock2D', "'UNetMidBlock2D'")
  expect('add_attention', lambda v: v is True, 'True')
  expect('act_fn', lambda v: v in ('silu', 'swish'), "'silu'")
  expect('resnet_time_scale_shift', lambda v: v == 'default', "'default'")
  expect('class_embed_type', lambda v: v is None, 'None')
  expect('num_class_embeds', lambda v: v is None, 'None')
  expect('mid_block_scale_factor',
          lambda v: v is not None and abs(v - math.sqrt(2.)) < 1e-6, 'sqrt(2) (skip_rescale)')
  expect('norm_eps', lambda v: v is not None and abs(v - 1e-6) < 1e-12, '1e-6')
  expect('norm_num_groups',
          lambda v: v is None or v == min(nf // 4, 32) == min(widths[-1] // 4, 32),
          'None (min(C/4, 32) groups)')
  expect('attn_norm_num_groups', lambda v: v is None or v == min(widths[-1] // 4, 32), 'None')
  expect('time_embedding_dim', lambda v: v in (None, 4 * nf), f'{4 * nf}')
  bad_types = [t for t in down if t not in (_SKIP_DOWN, _ATTN_DOWN)]
  bad_types += [t for t in up if t not in (_SKIP_UP, _ATTN_UP)]
  if bad_types:
    errors.append(f'block types {sorted(set(bad_types))} are not NCSN++ blocks; supported: '
                  f'{_SKIP_DOWN}, {_ATTN_DOWN}, {_SKIP_UP}, {_ATTN_UP}')
  attention = [t == _ATTN_DOWN for t in down]
  if [t == _ATTN_UP for t in reversed(up)] != attention:
    errors.append(f'attention in up_block_types {up} does not mirror down_block_types {down}')
  if any(w % nf for w in widths):
    errors.append(f'block_out_channels {widths} are not multiples of the first ({nf})')
  size = get('sample_size')
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      errors.append(f'sample_size {size} is not square')
    size = size[0]
  if not isinstance(size, int) or size % 2 ** (len(widths) - 1):
    errors.append(f'sample_size {size!r} must be an int divisible by 2^{len(widths) - 1}')
  if not bad_types:
    errors += _width_problems(widths, attention, get('layers_per_block', 2))
  if errors:
    raise ValueError('This UNet2DModel is not an NCSN++ that scoresde can load:\n  - '
                     + '\n  - '.join(errors))
  head_dim = get('attention_head_dim', 8)
  heads = {w // head_dim for w, a in zip(widths + [widths[-1]], attention + [True])
           if a and head_dim is not None}
  if heads - {1}:
    counts = '/'.join(map(str, sorted(heads)))
    warnings.warn(f'attention_head_dim={head_dim} makes diffusers split attention into {counts} '
                  'heads; NCSN++ (and the weights it was trained with) use one, which is what '
                  'scoresde runs. Outputs will differ from diffusers\' slightly.')

  config = load_config('default_lsun_configs')
  config.training.sde = 'vesde'
  config.training.continuous = True
  config.data.image_size = size
  config.data.num_channels = 3
  config.data.centered = not get('center_input_sample', False)
  m = config.model
  m.name = 'ncsnpp'
  m.nf = nf
  m.ch_mult = tuple(w // nf for w in widths)
  m.num_res_blocks = get('layers_per_block', 2)
  m.attn_resolutions = tuple(size // 2 ** i for i, a in enumerate(attention) if a)
  m.dropout = float(get('dropout', 0.) or 0.)
  m.update(dict(scale_by_sigma=True, nonlinearity='swish', resamp_with_conv=True, conditional=True,
                fir=True, fir_kernel=list(FIR_KERNEL), skip_rescale=True, resblock_type='biggan',
                progressive='output_skip', progressive_input='input_skip',
                progressive_combine='sum', embedding_type='fourier', fourier_scale=16,
                init_scale=0., ema_rate=0.999, normalization='GroupNorm', attention_type='ddpm',
                conv_size=3))
  config.sampling.update(dict(method='pc', predictor='reverse_diffusion', corrector='langevin'))
  if scheduler is not None:
    m.sigma_min = float(scheduler.config.sigma_min)
    m.sigma_max = float(scheduler.config.sigma_max)
    m.num_scales = int(scheduler.config.num_train_timesteps)
    config.sampling.snr = float(scheduler.config.snr)
    config.sampling.n_steps_each = int(scheduler.config.correct_steps)
  return config


# --- state dicts both ways ------------------------------------------------------------------------
def _module_plan(config):
  """(kind, diffusers prefix) for each entry of NCSN++'s `all_modules`, in order."""
  levels, blocks = len(config.model.ch_mult), config.model.num_res_blocks
  attention = _attention_levels(config)
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
  scheduler = pipelines.ScoreSdeVeScheduler.from_pretrained(folder, subfolder='scheduler',
                                                            **scheduler_overrides)
  config = ncsnpp_config(unet_cfg, scheduler)
  config.device = torch.device(device)
  state_dict = from_diffusers_state_dict(read_unet_weights(os.path.join(folder, 'unet')), config)
  from models.utils import create_model
  from utils import check_state_dict_matches
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
    utils.write_atomic(os.path.join(unet_dir, UNET_WEIGHTS[0]), write)
  else:
    utils.torch_save_atomic(weights, os.path.join(unet_dir, UNET_WEIGHTS[1]))
  # Weights of the other format left by an earlier export would be read instead of (safetensors)
  # or besides these, by diffusers and by read_unet_weights alike.
  other = os.path.join(unet_dir, UNET_WEIGHTS[1 if safe_serialization else 0])
  if os.path.exists(other):
    os.remove(other)
  utils.write_json_atomic(os.path.join(unet_dir, 'config.json'), unet_config(config), indent=2,
                          sort_keys=True)
  scheduler.save_pretrained(os.path.join(folder, 'scheduler'))
  index = {'_class_name': 'ScoreSdeVePipeline',
           '_diffusers_version': pipelines._diffusers_format_version(),
           'scheduler': ['diffusers', 'ScoreSdeVeScheduler'], 'unet': ['diffusers', 'UNet2DModel']}
  utils.write_json_atomic(os.path.join(folder, 'model_index.json'), index, indent=2,
                          sort_keys=True)


def load_checkpoint_model(config, checkpoint_path, use_ema=True, device='cpu'):
  """Our NCSN++ from a training checkpoint (ours or score_sde_pytorch's), with the EMA weights
  (what the paper samples with) unless `use_ema` is False."""
  from models.ema import ExponentialMovingAverage
  from models.utils import create_model
  from utils import restore_checkpoint
  config.device = torch.device(device)
  model = create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  state = restore_checkpoint(checkpoint_path, dict(model=model, ema=ema, step=0), device)
  if use_ema:
    ema.copy_to(model.parameters())
  return model.eval(), state['step']

