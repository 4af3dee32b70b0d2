"""configs/: the 39 configs of score_sde_pytorch, their values, loading, and the networks and
SDEs they build.

Reference facts: tests/fixtures/state_dicts/<config>.json (one per config: model name, image
size, state-dict keys and shapes, parameter counts) and the `config` dicts recorded in the
parity and checkpoint fixtures (every key of four configs).
"""
import json
import pathlib

import ml_collections
import pytest
import torch
from absl import flags
from ml_collections import config_flags

import workdir
import sde_lib
from configs import list_configs, load_config
from conftest import FIXTURES, ROOT

STATE_DICTS = FIXTURES / 'state_dicts'
REFERENCE_CONFIGS = sorted(p.stem.replace('__', '/') for p in STATE_DICTS.glob('*.json'))
DEFAULTS = ['default_celeba_configs', 'default_cifar10_configs', 'default_lsun_configs']
# Configs this project adds (not in score_sde_pytorch); nothing else may appear unannounced.
PROJECT_CONFIGS = {'ve/digits_ncsnpp_continuous', 'vp/digits_ddpmpp_continuous',
                   'vp/digits_ddpmpp_likelihood', 'vp/digits_ddpmpp_likelihood_deq',
                   'vp/cifar10_ddpmpp_deep_likelihood', 'vp/cifar10_ddpmpp_deep_likelihood_deq',
                   'subvp/cifar10_ddpmpp_deep_likelihood', 'subvp/cifar10_ddpmpp_deep_likelihood_deq'}
# Keys this project adds to the defaults, with their default values.
NEW_KEYS = {'data.root': None, 'data.download': False, 'sampling.num_steps': 18,
            'sampling.order': None, 'sampling.progress': True,
            'sampling.dpm_method': None, 'sampling.dpm_algorithm': 'dpmsolver++',
            'sampling.dpm_schedule': None, 'sampling.denoise_to_zero': None,
            'sampling.unipc_variant': None, 'sampling.step_ladder': '',
            'sampling.heun_schedule': 'edm',
            'sampling.heun_rho': 7., 'sampling.churn': 0., 'sampling.ode_method': 'RK45',
            'sampling.ode_rtol': 1e-5, 'sampling.ode_atol': 1e-5, 'sampling.ode_num_steps': 100,
            # the noise-conditional classifier (config.classifier of the defaults)
            'classifier.blocks_per_group': 4, 'classifier.channel_multiplier': 10,
            'classifier.embedding_size': 128, 'classifier.fourier_scale': 16.,
            'classifier.ema_rate': 0.999, 'classifier.n_iters': None, 'classifier.log_freq': None,
            'classifier.eval_freq': None, 'classifier.snapshot_freq': None,
            'classifier.snapshot_freq_for_preemption': None,
            'classifier.eval_times': [0., 0.25, 0.5],
            # evaluation (eval_lib.py, evaluation.py)
            'eval.bpd_rtol': 1e-5, 'eval.bpd_atol': 1e-5, 'eval.inception_path': None,
            'eval.inception_mode': 'legacy_tensorflow', 'eval.inception_batch_size': 100,
            'eval.stats_file': None, 'eval.is_splits': 10, 'eval.ckpt_timeout_s': 259200.,
            'eval.ckpt_poll_s': 60., 'eval.feature_network': 'auto', 'eval.bpd_num_repeats': None,
            # maximum-likelihood training (importance.py, likelihood.py)
            'training.importance_weighting': False, 'training.smallest_time': 1e-5,
            'training.dequantizer': False, 'training.dequantizer_nf': 32,
            'training.dequantizer_couplings': 4,
            'eval.enable_bound': False, 'eval.bound_num_samples': 1000,
            'eval.dequantization': 'uniform',
            # post-hoc EMA (phema.py, phema_lib.py)
            'training.phema_sigma_rels': [], 'training.phema_snapshot_freq': 25000,
            'training.phema_snapshot_dtype': 'float32',
            'phema.sigma_rels': '0.02,0.04,0.06,0.08,0.1,0.13,0.16,0.2', 'phema.ema_rates': '',
            'phema.step': 'latest', 'phema.sweep': False, 'phema.sweep_num_samples': 256,
            'phema.sweep_repeats': 3, 'phema.sweep_baseline': True,
            # precision and speed (precision.py); data loading
            'training.precision': 'fp32', 'training.compile': False,
            'training.compile_mode': 'default', 'training.cudnn_benchmark': None,
            'training.tf32': None, 'sampling.precision': 'fp32', 'sampling.compile': False,
            'sampling.compile_mode': 'default', 'eval.precision': 'fp32',
            'model.channels_last': False, 'optim.adam_impl': 'default', 'data.num_workers': None,
            'model.checkpointing': 'none',  # activation checkpointing (docs/memory.md)
            # runs on a cluster (preemption.py, datasets.check_image_folder)
            'training.max_runtime_s': None, 'data.skip_unreadable': False,
            # --mode sample (sample_lib.py)
            'sample.ckpt': 'latest', 'sample.num': 64, 'sample.batch_size': 64,
            'sample.ema': True, 'sample.pc_steps': 0, 'sample.seeds': '', 'sample.out': '', 'sample.task': 'generate',
            'sample.input': '', 'sample.mask': 'center', 'sample.class_label': -1,
            'sample.classifier_ckpt': ''}
SDE_CLASSES = {'vesde': sde_lib.VESDE, 'vpsde': sde_lib.VPSDE, 'subvpsde': sde_lib.subVPSDE}
# Full-size models are built on the meta device (shapes only, no memory, no init cost).
META = torch.device('meta')


def _json(name):
  return json.loads((STATE_DICTS / (name.replace('/', '__') + '.json')).read_text())


def _flatten(tree):
  """{'model': {'nf': 128}} -> {'model.nf': 128}, with tuples as lists (as config.json holds
  them; `workdir`'s own conversion)."""
  return workdir.flatten_config(workdir.jsonable(tree))


# --- Which configs exist, and how they load ---------------------------------------------------

def test_the_reference_configs_and_defaults_are_all_here():
  assert len(REFERENCE_CONFIGS) == 39
  names = set(list_configs())
  assert not set(REFERENCE_CONFIGS) - names, f'missing: {sorted(set(REFERENCE_CONFIGS) - names)}'
  assert names - set(REFERENCE_CONFIGS) <= PROJECT_CONFIGS, \
      f'unexpected configs: {sorted(names - set(REFERENCE_CONFIGS) - PROJECT_CONFIGS)}'
  assert sorted(set(list_configs(include_defaults=True)) - names) == DEFAULTS
  for name in REFERENCE_CONFIGS + DEFAULTS:
    assert (ROOT / 'configs' / f'{name}.py').is_file(), name


@pytest.mark.parametrize('form', ['ve/cifar10_ncsnpp_continuous',
                                  've/cifar10_ncsnpp_continuous.py',
                                  'configs/ve/cifar10_ncsnpp_continuous.py',
                                  str(ROOT / 'configs' / 've' / 'cifar10_ncsnpp_continuous.py')])
def test_load_config_accepts_names_and_paths(form):
  config = load_config(form)
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.model.name == 'ncsnpp' and config.training.sde == 'vesde'


def test_load_config_returns_a_fresh_config_each_time():
  first = load_config('vp/ddpm/cifar10')
  first.model.nf = 8
  assert load_config('vp/ddpm/cifar10').model.nf == 128


def test_load_config_reads_a_file_outside_configs(tmp_path):
  path = tmp_path / 'my_config.py'
  path.write_text('from configs.default_cifar10_configs import get_default_configs\n\n\n'
                  'def get_config():\n  config = get_default_configs()\n'
                  '  config.model.nf = 12\n  return config\n')
  assert load_config(path).model.nf == 12
  assert load_config('default_lsun_configs').data.image_size == 256  # defaults load too


@pytest.mark.parametrize('bad, close', [
    ('ve/cifar10_ncsnp_continuous', 've/cifar10_ncsnpp_continuous'),
    ('configs/vp/ddpm/cifar10_continous.py', 'vp/ddpm/cifar10_continuous'),
    ('cifar10_ddpmpp_continuous', 'vp/cifar10_ddpmpp_continuous')])
def test_unknown_config_is_a_clear_error_with_close_matches(bad, close):
  with pytest.raises(ValueError, match='Unknown config') as info:
    load_config(bad)
  assert close in str(info.value).split('Close matches:')[1]


def test_unknown_config_without_close_match_lists_the_configs():
  with pytest.raises(ValueError, match=r'Unknown config .*Known configs: .*ve/ncsnv2/cifar10'):
    load_config('zzz_qqq')
  with pytest.raises(ValueError, match=r"Unknown config '__init__'"):
    load_config('__init__')


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # ml_collections' loader
def test_command_line_overrides_work():
  """What main.py's `--config.model.nf=64` does: ml_collections' config_flags on our files."""
  argv = ['main.py', f'--config={ROOT}/configs/ve/cifar10_ncsnpp_continuous.py',
          '--config.model.nf=64', '--config.model.sigma_max=60.5', '--config.model.ch_mult=(1, 2)',
          '--config.data.root=/data/ffhq', '--config.sampling.num_steps=10',
          '--config.training.continuous=False']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  assert config.model.nf == 64 and config.model.sigma_max == 60.5
  assert tuple(config.model.ch_mult) == (1, 2) and config.data.root == '/data/ffhq'
  assert config.sampling.num_steps == 10 and config.training.continuous is False


# --- Values -------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', REFERENCE_CONFIGS)
def test_config_matches_its_state_dict_record(name):
  config, record = load_config(name), _json(name)
  assert record['config'] == name
  assert config.model.name == record['model_name']
  assert config.data.image_size == record['image_size']


SPOT_CHECKS = {
  've/cifar10_ncsnpp_continuous': {
    'training.sde': 'vesde', 'training.continuous': True, 'model.sigma_min': 0.01,
    'model.sigma_max': 50, 'model.num_scales': 1000, 'model.nf': 128, 'model.ch_mult': [1, 2, 2, 2],
    'model.num_res_blocks': 4, 'model.attn_resolutions': [16], 'model.ema_rate': 0.999,
    'model.embedding_type': 'fourier', 'model.fourier_scale': 16, 'model.fir': True,
    'model.progressive_input': 'residual', 'model.scale_by_sigma': True, 'sampling.snr': 0.16,
    'sampling.predictor': 'reverse_diffusion', 'sampling.corrector': 'langevin',
    'data.centered': False, 'optim.lr': 2e-4, 'optim.warmup': 5000, 'training.batch_size': 128},
  've/cifar10_ncsnpp_deep_continuous': {'model.num_res_blocks': 8, 'training.n_iters': 950001},
  've/cifar10_ncsnpp': {'training.continuous': False, 'model.embedding_type': 'positional'},
  'vp/cifar10_ddpmpp_continuous': {
    'training.sde': 'vpsde', 'model.beta_min': 0.1, 'model.beta_max': 20, 'data.centered': True,
    'training.reduce_mean': True, 'model.embedding_type': 'positional', 'model.fir': False,
    'model.progressive_input': 'none', 'model.scale_by_sigma': False, 'model.ema_rate': 0.9999,
    'sampling.predictor': 'euler_maruyama', 'sampling.corrector': 'none'},
  'vp/cifar10_ddpmpp': {'training.continuous': False, 'sampling.predictor': 'ancestral_sampling'},
  'subvp/cifar10_ddpmpp_deep_continuous': {'training.sde': 'subvpsde', 'model.num_res_blocks': 8},
  've/ffhq_ncsnpp_continuous': {
    'data.image_size': 1024, 'data.dataset': 'FFHQ', 'model.sigma_max': 1348, 'model.nf': 16,
    'model.num_scales': 2000, 'model.ch_mult': [1, 2, 4, 8, 16, 32, 32, 32],
    'model.num_res_blocks': 1,
    'model.ema_rate': 0.9999, 'training.batch_size': 8, 'training.reduce_mean': True,
    'sampling.snr': 0.15, 'model.progressive': 'output_skip',
    'model.progressive_input': 'input_skip',
    'model.dropout': 0.},
  've/celebahq_ncsnpp_continuous': {'data.image_size': 1024, 'model.sigma_max': 1348,
                                    'training.reduce_mean': False, 'data.dataset': 'CelebAHQ'},
  've/church_ncsnpp_continuous': {'model.sigma_max': 380, 'data.category': 'church_outdoor',
                                  'model.ch_mult': [1, 1, 2, 2, 2, 2, 2], 'sampling.snr': 0.075,
                                  'data.image_size': 256, 'model.num_scales': 2000},
  've/bedroom_ncsnpp_continuous': {'model.sigma_max': 378, 'data.category': 'bedroom'},
  've/ffhq_256_ncsnpp_continuous': {'model.sigma_max': 348, 'data.dataset': 'FFHQ'},
  've/celeba_ncsnpp': {'model.sigma_max': 90, 'sampling.snr': 0.17, 'data.image_size': 64,
                       'training.continuous': False, 'data.dataset': 'CELEBA'},
  've/cifar10_ddpm': {'model.name': 'ddpm', 'model.scale_by_sigma': True, 'training.sde': 'vesde'},
  'vp/ddpm/cifar10': {'model.ch_mult': [1, 2, 2, 2], 'model.num_res_blocks': 2,
                      'sampling.predictor': 'ancestral_sampling', 'training.continuous': False},
  'vp/ddpm/bedroom': {'model.ch_mult': [1, 1, 2, 2, 4, 4], 'optim.lr': 2e-5,
                      'model.num_scales': 1000},
  'vp/ddpm/cifar10_unconditional': {'model.conditional': False},
  've/ncsn/cifar10': {'model.sigma_max': 1, 'model.num_scales': 10, 'sampling.n_steps_each': 100,
                      'sampling.snr': 0.316, 'model.ema_rate': 0., 'optim.lr': 1e-3,
                      'optim.grad_clip': -1, 'optim.warmup': 0, 'sampling.corrector': 'ald'},
  've/ncsn/cifar10_1245': {'model.sigma_max': 50, 'model.num_scales': 232, 'model.ema_rate': 0.999,
                           'sampling.snr': 0.176, 'sampling.n_steps_each': 5},
  've/ncsn/celeba': {'training.sde': 'vesde'},  # the reference's `training.loss` typo, fixed
  've/ncsn/celeba_124': {'model.sigma_max': 90, 'model.num_scales': 500, 'sampling.snr': 0.128},
  've/ncsnv2/cifar10': {'model.num_scales': 232, 'model.ema_rate': 0.999, 'optim.lr': 1e-4},
  've/ncsnv2/bedroom': {'data.image_size': 128, 'model.sigma_max': 190, 'model.num_scales': 1086,
                        'training.batch_size': 128, 'sampling.snr': 0.095,
                        'training.continuous': False},  # the reference's `continuouse` typo, fixed
}


@pytest.mark.parametrize('name', sorted(SPOT_CHECKS))
def test_well_known_values(name):
  values = _flatten(load_config(name).to_dict())
  wrong = {key: (values.get(key, '<absent>'), want) for key, want in SPOT_CHECKS[name].items()
           if values.get(key, '<absent>') != want}
  assert not wrong, f'{name}: (actual, expected) {wrong}'


def _recorded_configs():
  """(config name, to_dict() of the shrunk reference config, shrink) from the fixtures."""
  records = []
  for path in sorted((FIXTURES / 'parity').glob('*.pt')) + [
      FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint_expected.pt']:
    fx = torch.load(path, map_location='cpu', weights_only=True)
    records.append(pytest.param(fx['config_name'], fx['config'], fx['shrink'], id=path.stem))
  return records


@pytest.mark.parametrize('name, reference, shrink', _recorded_configs())
def test_every_key_equals_the_reference_where_the_fixtures_record_it(name, reference, shrink):
  """All keys and values of four reference configs (to_dict, recorded with the fixtures): ours has
  the same values, plus only NEW_KEYS."""
  ours = _flatten(load_config(name).to_dict())
  ours.pop('device')
  reference = _flatten(reference)
  for key, (old, new) in ((k, v) for k, v in shrink.items() if not k.startswith('_')):
    assert ours[key] == old, key
    assert reference[key] == new, key
    reference[key] = old
  assert set(ours) - set(reference) == set(NEW_KEYS)
  assert set(reference) - set(ours) == set()
  wrong = {key: (ours[key], want) for key, want in reference.items() if ours[key] != want}
  assert not wrong, f'(ours, reference) {wrong}'


@pytest.mark.parametrize('name', REFERENCE_CONFIGS + DEFAULTS)
def test_new_keys_seed_and_device(name):
  config = load_config(name)
  values = _flatten(config.to_dict())
  assert {key: values[key] for key in NEW_KEYS} == NEW_KEYS
  assert config.seed == 42
  expected = torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu')
  assert config.device == expected


# --- What the configs build ------------------------------------------------------------------

@pytest.mark.parametrize('name', REFERENCE_CONFIGS)
def test_every_config_builds_its_sde(name):
  config = load_config(name)
  sde, eps = sde_lib.get_sde(config)
  assert type(sde) is SDE_CLASSES[config.training.sde]
  assert sde.N == config.model.num_scales
  if isinstance(sde, sde_lib.VESDE):
    assert (sde.sigma_min, sde.sigma_max) == (config.model.sigma_min, config.model.sigma_max)
    assert eps == 1e-5
    assert sde.discrete_sigmas[-1].item() == pytest.approx(config.model.sigma_max, rel=1e-5)
  else:
    assert (sde.beta_0, sde.beta_1, eps) == (config.model.beta_min, config.model.beta_max, 1e-3)


def _key_diff(actual, expected):
  """A readable difference between two [(key, shape), ...] lists."""
  actual_d, expected_d = dict(actual), dict(expected)
  missing = [k for k in expected_d if k not in actual_d]
  extra = [k for k in actual_d if k not in expected_d]
  shapes = [(k, actual_d[k], expected_d[k]) for k in expected_d
            if k in actual_d and actual_d[k] != expected_d[k]]
  lines = [f'{len(missing)} missing: {missing[:8]}', f'{len(extra)} unexpected: {extra[:8]}',
           f'{len(shapes)} shape (ours, reference): {shapes[:8]}']
  if not (missing or extra or shapes):
    first = next(i for i, (a, b) in enumerate(zip(actual, expected)) if a[0] != b[0])
    ours, reference = ([k for k, _ in keys[first:first + 3]] for keys in (actual, expected))
    lines.append(f'order differs from position {first}: ours {ours}, reference {reference}')
  return '; '.join(lines)


def _build_full_size(config):
  """create_model on the meta device; None (and the reason) if the network cannot do that."""
  from models import utils as mutils
  config.device = META
  torch.manual_seed(0)
  try:
    with META:
      return mutils.create_model(config), None
  except (NotImplementedError, RuntimeError, TypeError, ValueError) as err:
    return None, f'{type(err).__name__}: {err}'


@pytest.mark.parametrize('name', REFERENCE_CONFIGS)
def test_full_size_model_has_the_reference_state_dict(name):
  """Keys, order, shapes, dtypes, buffers, parameter and EMA counts of the full-size network."""
  from models.ema import ExponentialMovingAverage
  config, record = load_config(name), _json(name)
  model, why = _build_full_size(config)
  if model is None:
    if config.data.image_size > 64:
      print(f'{name}: the network cannot be built on the meta device ({why}); skipping its '
            f'{config.data.image_size}px full-size check to keep this file fast.')
      pytest.skip(f'no meta-device construction: {why}')
    config.device = torch.device('cpu')
    from models import utils as mutils
    model = mutils.create_model(config)
  state = model.state_dict()
  actual = [(key, list(value.shape)) for key, value in state.items()]
  expected = [(key, shape) for key, shape in record['keys']]
  assert actual == expected, f'{name}: {_key_diff(actual, expected)}'
  dtypes = {key: str(value.dtype).replace('torch.', '') for key, value in state.items()
            if value.dtype != torch.float32}
  assert dtypes == record['non_float32']
  assert [key for key, _ in model.named_buffers()] == record['buffers']
  params = list(model.parameters())
  assert sum(p.numel() for p in params) == record['num_params']
  assert sum(p.numel() for p in params if p.requires_grad) == record['num_trainable_params']
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  assert len(ema.shadow_params) == record['ema_num_shadow_params']


def shrink(config):
  """The smallest network each architecture allows (the parity fixtures' rule), at 16x16.

  NCSN++ with a progressive / pyramid path keeps three levels; DDPM hard-codes GroupNorm(32, C),
  so its width stays 32.
  """
  model = config.model
  config.data.image_size = 16
  config.device = torch.device('cpu')
  if model.name in ('ncsnpp', 'ddpm'):
    model.num_res_blocks = 1
    model.attn_resolutions = (8,)
  if model.name == 'ddpm':
    model.nf, model.ch_mult = 32, (1, 1)
  elif model.name == 'ncsnpp':
    pyramid = model.progressive != 'none' or model.progressive_input != 'none'
    model.nf, model.ch_mult = 16, ((1, 2, 2) if pyramid else (1, 2))
  else:  # NCSN / NCSNv2: fixed depth, width nf
    model.nf = 16
  return config


@pytest.mark.parametrize('name', REFERENCE_CONFIGS)
def test_shrunken_model_runs_and_gives_a_score(name):
  from models import utils as mutils
  config = shrink(load_config(name))
  sde, eps = sde_lib.get_sde(config)
  torch.manual_seed(0)
  model = mutils.create_model(config)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(2, config.data.num_channels, 16, 16, generator=gen)
  t = torch.tensor([eps, 0.7])
  continuous = config.training.continuous
  with torch.no_grad():
    output = model.eval()(x, sde.noise_label(t, continuous))
    score = mutils.get_score_fn(sde, model, train=False, continuous=continuous)(x, t)
  assert output.shape == x.shape and score.shape == x.shape
  assert torch.isfinite(output).all() and torch.isfinite(score).all()
  torch.testing.assert_close(score, sde.output_to_score(output, t, sde.noise_label(t, continuous),
                                                        continuous))
