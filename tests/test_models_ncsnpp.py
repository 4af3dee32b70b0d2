"""NCSN++ / DDPM++ ('ncsnpp'): reference parity, checkpoint format, options, blocks."""
import itertools
import math
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES
from model_checks import (build_on_meta, check_parity, check_state_dict_format, full_size_config,
                          load_parity, load_state_dict_spec, parity_config, randomize_)
from models import layers, layerspp
from models import utils as mutils


@pytest.mark.parametrize('variant', ['ve__cifar10_ncsnpp_continuous',
                                     'vp__cifar10_ddpmpp_continuous'])
def test_reference_parity(variant):
  check_parity(variant)


@pytest.mark.parametrize('config_name', ['ve/cifar10_ncsnpp_continuous',
                                         'vp/cifar10_ddpmpp_continuous'])
def test_full_size_state_dict_format(config_name):
  config = full_size_config(config_name)
  check_state_dict_format(build_on_meta(config), load_state_dict_spec(config_name))


_NCSNPP_SPECS = sorted(p.stem.replace('__', '/') for p in (FIXTURES / 'state_dicts').glob('*.json')
                       if load_state_dict_spec(p.stem)['model_name'] == 'ncsnpp')


@pytest.mark.parametrize('config_name', _NCSNPP_SPECS)
def test_every_official_ncsnpp_config_has_reference_keys(config_name):
  path = pathlib.Path(__file__).resolve().parents[1] / 'configs' / f'{config_name}.py'
  if not path.exists():
    pytest.skip(f'configs/{config_name}.py is not written yet')
  config = full_size_config(config_name)
  check_state_dict_format(build_on_meta(config), load_state_dict_spec(config_name))


def test_full_size_model_builds_and_runs():
  config = full_size_config('ve/cifar10_ncsnpp_continuous')
  torch.manual_seed(0)
  model = mutils.create_model(config).eval()
  x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
  with torch.no_grad():
    out = model(x, torch.tensor([3.0]))
  assert out.shape == x.shape and torch.isfinite(out).all()


def small_config(**model_overrides):
  """A 16x16 NCSN++ (VE, continuous, Fourier) small enough for option sweeps."""
  config = parity_config(load_parity('ve__cifar10_ncsnpp_continuous'))
  config.model.nf = 8
  config.model.ch_mult = (1, 2)
  for key, value in model_overrides.items():
    section, name = key.split('__') if '__' in key else ('model', key)
    config[section][name] = value
  return config


def build(config, seed=0):
  torch.manual_seed(seed)
  return randomize_(mutils.create_model(config), seed).eval()


def _inputs(config, batch=3, seed=1):
  g = torch.Generator().manual_seed(seed)
  x = torch.rand(batch, config.data.num_channels, 16, 16, generator=g)
  if config.model.embedding_type == 'fourier':
    labels = torch.tensor([0.01, 1.0, 50.0])[:batch]
  else:
    labels = torch.tensor([0., 400., 999.])[:batch]
  return x, labels


_GRID = list(itertools.product(['none', 'output_skip', 'residual'],
                               ['none', 'input_skip', 'residual'],
                               ['ddpm', 'biggan'], [False, True]))


@pytest.mark.parametrize('progressive,progressive_input,resblock_type,fir', _GRID)
def test_every_option_combination_runs_and_trains(progressive, progressive_input, resblock_type,
                                                  fir):
  config = small_config(progressive=progressive, progressive_input=progressive_input,
                        resblock_type=resblock_type, fir=fir)
  model = build(config)
  x, labels = _inputs(config)
  out = model(x, labels)
  assert out.shape == x.shape and torch.isfinite(out).all()
  # The label matters, and every trainable parameter receives a gradient.
  other = model(x, labels.flip(0))
  assert (out - other).abs().amax(dim=(1, 2, 3))[0] > 1e-3
  out.pow(2).mean().backward()
  missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
  assert not missing


@pytest.mark.parametrize('method,extra', [('sum', 0), ('cat', 1)])
def test_input_skip_combine_methods(method, extra):
  config = small_config(progressive_input='input_skip', progressive_combine=method)
  model = build(config)
  combiners = [m for m in model.all_modules if isinstance(m, layerspp.Combine)]
  assert len(combiners) == len(config.model.ch_mult) - 1
  # 'cat' doubles the channels after each merge, and the next block is built for that.
  first_block_after = model.all_modules[list(model.all_modules).index(combiners[0]) + 1]
  assert first_block_after.in_ch == config.model.nf * config.model.ch_mult[0] * (1 + extra)
  x, labels = _inputs(config)
  assert model(x, labels).shape == x.shape


@pytest.mark.parametrize('resblock_type,resamp_with_conv', [('biggan', True), ('ddpm', False)])
def test_fir_with_box_kernel_equals_nearest_and_average_pooling(resblock_type, resamp_with_conv):
  # FIR resampling with the kernel (1, 1) is nearest-neighbour upsampling and 2x2 average
  # pooling, which is what fir=False does; same weights must give the same output.
  kw = dict(resblock_type=resblock_type, resamp_with_conv=resamp_with_conv,
            progressive='output_skip', progressive_input='input_skip')
  fir_model = build(small_config(fir=True, fir_kernel=(1, 1), **kw))
  plain_model = build(small_config(fir=False, **kw))
  plain_model.load_state_dict(fir_model.state_dict(), strict=True)
  x, labels = _inputs(small_config())
  with torch.no_grad():
    torch.testing.assert_close(fir_model(x, labels), plain_model(x, labels))


def test_scale_by_sigma_fourier_divides_by_the_sigma_label():
  scaled = build(small_config(scale_by_sigma=True))
  unscaled = build(small_config(scale_by_sigma=False))
  x, sigmas = _inputs(small_config())
  with torch.no_grad():
    torch.testing.assert_close(scaled(x, sigmas) * sigmas[:, None, None, None],
                               unscaled(x, sigmas), rtol=1e-5, atol=1e-6)


def test_scale_by_sigma_positional_uses_float64_sigmas_buffer():
  kw = dict(embedding_type='positional', training__continuous=False)
  scaled = build(small_config(scale_by_sigma=True, **kw))
  unscaled = build(small_config(scale_by_sigma=False, **kw))
  assert scaled.sigmas.dtype == torch.float64
  x = _inputs(small_config())[0]
  labels = torch.tensor([0, 500, 999])
  with torch.no_grad():
    out = scaled(x, labels)
    assert out.dtype == torch.float64
    expected = unscaled(x, labels) / scaled.sigmas[labels][:, None, None, None]
    torch.testing.assert_close(out, expected)
  assert scaled.sigmas[0] == pytest.approx(50.) and scaled.sigmas[-1] == pytest.approx(0.01)


def test_centered_data_skips_rescaling():
  raw = build(small_config(data__centered=False))
  centered = build(small_config(data__centered=True))
  x, labels = _inputs(small_config())
  with torch.no_grad():
    torch.testing.assert_close(raw(x, labels), centered(2 * x - 1, labels))


def test_unconditional_model_ignores_the_label():
  model = build(small_config(conditional=False))
  x, labels = _inputs(small_config())
  with torch.no_grad():
    out = model(x, labels)
    # scale_by_sigma still divides by sigma, so compare sigma * output.
    torch.testing.assert_close(out * labels[:, None, None, None],
                               (model(x, labels.flip(0)) * labels.flip(0)[:, None, None, None]),
                               rtol=1e-5, atol=1e-5)


def test_default_initialisation():
  config = small_config()
  torch.manual_seed(0)
  model = mutils.create_model(config)
  torch.manual_seed(0)
  again = mutils.create_model(config)
  for (name, p), q in zip(model.state_dict().items(), again.state_dict().values()):
    assert torch.equal(p, q), f'{name} differs between two builds with the same seed'
  fourier = model.all_modules[0]
  assert isinstance(fourier, layerspp.GaussianFourierProjection)
  assert not fourier.W.requires_grad
  assert fourier.W.std().item() == pytest.approx(config.model.fourier_scale, rel=0.5)
  for name, module in model.named_modules():
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
      w = module.weight
      fan_in = w[0].numel()
      fan_out = w.shape[0] * w[0, 0].numel() if w.dim() > 2 else w.shape[0]
      # init_scale = 0 layers (Conv_1 of every block, the output conv) get scale 1e-10.
      zeroed = name.endswith('Conv_1') or name == f'all_modules.{len(model.all_modules) - 1}'
      bound = math.sqrt(3 * (1e-10 if zeroed else 1.) / ((fan_in + fan_out) / 2))
      assert w.abs().max() <= bound * (1 + 1e-6), name
      assert w.abs().max() >= 0.8 * bound, f'{name} does not fill its uniform range'
      assert torch.count_nonzero(module.bias) == 0, name
    elif isinstance(module, layers.NIN):
      assert torch.count_nonzero(module.b) == 0


def test_bad_options_raise_clear_errors():
  with pytest.raises(ValueError, match='progressive'):
    mutils.create_model(small_config(progressive='sideways'))
  with pytest.raises(ValueError, match='continuous'):
    mutils.create_model(small_config(training__continuous=False))


def test_attention_block_matches_explicit_formula():
  torch.manual_seed(0)
  block = randomize_(layerspp.AttnBlockpp(16, skip_rescale=True)).double()
  x = torch.randn(2, 16, 4, 5, dtype=torch.float64)
  with torch.no_grad():
    h = F.group_norm(x, 4, block.GroupNorm_0.weight, block.GroupNorm_0.bias, eps=1e-6)
    q, k, v = (torch.einsum('bchw,co->bohw', h, n.W) + n.b[:, None, None]
               for n in (block.NIN_0, block.NIN_1, block.NIN_2))
    w = torch.einsum('bchw,bcij->bhwij', q, k) / math.sqrt(16)
    w = torch.softmax(w.reshape(2, 4, 5, 20), dim=-1).reshape(2, 4, 5, 4, 5)
    a = torch.einsum('bhwij,bcij->bchw', w, v)
    out = torch.einsum('bchw,co->bohw', a, block.NIN_3.W) + block.NIN_3.b[:, None, None]
    torch.testing.assert_close(block(x), (x + out) / math.sqrt(2.))
    torch.testing.assert_close(block.NIN_0(h), q)


def test_embeddings_match_their_formulas():
  t = torch.tensor([0., 1.5, 999.])
  emb = layers.get_timestep_embedding(t, 8)
  freqs = np.exp(-np.log(10000) * np.arange(4) / 3)
  angles = t.numpy()[:, None] * freqs
  expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  np.testing.assert_allclose(emb.numpy(), expected, rtol=1e-4, atol=1e-4)
  assert layers.get_timestep_embedding(t, 7).shape == (3, 7)
  torch.manual_seed(0)
  fourier = layerspp.GaussianFourierProjection(embedding_size=4, scale=16)
  log_sigma = torch.log(torch.tensor([0.01, 50.]))
  angles = log_sigma.double()[:, None] * fourier.W.double()[None, :] * 2 * np.pi
  torch.testing.assert_close(fourier(log_sigma).double(),
                             torch.cat([angles.sin(), angles.cos()], dim=1), rtol=0, atol=5e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_cuda_matches_cpu():
  fixture = load_parity('ve__cifar10_ncsnpp_continuous')
  model = mutils.create_model(parity_config(fixture))
  model.load_state_dict(fixture['state_dict'], strict=True)
  model.eval()
  with torch.no_grad():
    cpu = model(fixture['x'], fixture['labels'])
    gpu = model.cuda()(fixture['x'].cuda(), fixture['labels'].cuda()).cpu()
  torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3 * cpu.abs().max().item())
