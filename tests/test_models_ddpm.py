"""DDPM ('ddpm'): reference parity, checkpoint format, the unconditional build, options."""
import pathlib

import pytest
import torch

from conftest import FIXTURES
from model_checks import (build_on_meta, check_parity, check_state_dict_format, full_size_config,
                          load_parity, load_state_dict_spec, parity_config, randomize_)
from models import layers
from models import utils as mutils


def test_reference_parity():
  check_parity('vp__ddpm__cifar10')


def test_full_size_state_dict_format():
  config = full_size_config('vp/ddpm/cifar10')
  check_state_dict_format(build_on_meta(config), load_state_dict_spec('vp/ddpm/cifar10'))


def unconditional_config():
  """configs/vp/ddpm/cifar10_unconditional, or vp/ddpm/cifar10 with conditional=False (the only
  difference) while that file is not written."""
  try:
    return full_size_config('vp/ddpm/cifar10_unconditional')
  except FileNotFoundError:
    config = full_size_config('vp/ddpm/cifar10')
    config.model.conditional = False
    return config


def test_unconditional_config_builds_with_reference_keys():
  # score_sde_pytorch cannot build this config (`modules` is undefined without conditioning).
  config = unconditional_config()
  assert not config.model.conditional
  check_state_dict_format(build_on_meta(config),
                          load_state_dict_spec('vp/ddpm/cifar10_unconditional'))


_DDPM_SPECS = sorted(p.stem.replace('__', '/') for p in (FIXTURES / 'state_dicts').glob('*.json')
                     if load_state_dict_spec(p.stem)['model_name'] == 'ddpm')


@pytest.mark.parametrize('config_name', _DDPM_SPECS)
def test_every_official_ddpm_config_has_reference_keys(config_name):
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / f'{config_name}.py'
  if not path.exists():
    pytest.skip(f'configs/{config_name}.py is not written yet')
  config = full_size_config(config_name)
  check_state_dict_format(build_on_meta(config), load_state_dict_spec(config_name))


def small_config(**overrides):
  config = parity_config(load_parity('vp__ddpm__cifar10'))
  for key, value in overrides.items():
    section, name = key.split('__') if '__' in key else ('model', key)
    config[section][name] = value
  return config


def build(config, seed=0):
  torch.manual_seed(seed)
  return randomize_(mutils.create_model(config), seed).eval()


def _inputs(batch=3, seed=1):
  x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
  return x, torch.tensor([0., 400.5, 999.])[:batch]


def test_unconditional_small_model_runs_and_ignores_the_label():
  model = build(small_config(conditional=False))
  x, labels = _inputs()
  with torch.no_grad():
    out = model(x, labels)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(model(x, labels.flip(0)), out)
  conditional = build(small_config())
  with torch.no_grad():
    assert not torch.allclose(conditional(x, labels), conditional(x, labels.flip(0)))


def test_scale_by_sigma_divides_by_float64_sigmas_at_the_label():
  scaled = build(small_config(scale_by_sigma=True))
  unscaled = build(small_config(scale_by_sigma=False))
  x = _inputs()[0]
  labels = torch.tensor([0, 500, 999])
  with torch.no_grad():
    out = scaled(x, labels)
    assert out.dtype == torch.float64
    expected = unscaled(x, labels) / scaled.sigmas[labels][:, None, None, None]
    torch.testing.assert_close(out, expected)


def test_centered_data_skips_rescaling():
  raw = build(small_config(data__centered=False))
  centered = build(small_config(data__centered=True))
  x, labels = _inputs()
  with torch.no_grad():
    torch.testing.assert_close(raw(x, labels), centered(2 * x - 1, labels))


@pytest.mark.parametrize('resamp_with_conv', [True, False])
def test_training_step_reaches_every_parameter(resamp_with_conv):
  model = build(small_config(ch_mult=(1, 2), resamp_with_conv=resamp_with_conv)).train()
  x, labels = _inputs(batch=2)
  model(x, labels[:2]).pow(2).mean().backward()
  assert all(p.grad is not None for p in model.parameters())


def test_ddpm_blocks_use_32_groups_and_zero_init_output():
  torch.manual_seed(0)
  model = mutils.create_model(small_config())
  norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
  assert norms and all(n.num_groups == 32 for n in norms)
  # The last conv and each block's Conv_1 start at scale 1e-10 (DDPM's zero init).
  last = model.all_modules[-1]
  assert last.weight.abs().max() < 1e-4 and torch.count_nonzero(last.bias) == 0
  blocks = [m for m in model.modules() if isinstance(m, layers.ResnetBlockDDPM)]
  assert all(b.Conv_1.weight.abs().max() < 1e-4 for b in blocks)
  with torch.no_grad():
    assert model(*_inputs()).abs().max() < 1e-3
