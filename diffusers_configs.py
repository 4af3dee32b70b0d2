"""NCSN++ configs <-> diffusers' `UNet2DModel` and `ScoreSdeVeScheduler` configs, each side's
built from the other's (the weights and pipeline folders are `diffusers_convert.py`'s).

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
"""
import math
import warnings

from score_sde_ve_scheduler import ScoreSdeVeScheduler, diffusers_format_version

FIR_KERNEL = [1, 3, 3, 1]
_SKIP_DOWN, _ATTN_DOWN = 'SkipDownBlock2D', 'AttnSkipDownBlock2D'
_SKIP_UP, _ATTN_UP = 'SkipUpBlock2D', 'AttnSkipUpBlock2D'


# --- which configs diffusers can represent --------------------------------------------------------
def attention_levels(config):
  """Whether each level of the NCSN++ `config` (from the top) has attention."""
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
  return problems + _width_problems(widths, attention_levels(config), m.num_res_blocks)


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
  attention = attention_levels(config)
  return {
    '_class_name': 'UNet2DModel',
    '_diffusers_version': diffusers_format_version(),
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
  return ScoreSdeVeScheduler(
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
