"""NCSN v1 / NCSNv2 networks, their blocks and normalization layers (models/ncsnv2.py,
models/ncsn_layers.py, models/normalization.py)."""
import json

import ml_collections
import pytest
import torch
import torch.nn.functional as F

from conftest import FIXTURES, assert_close_scaled
from configs import load_config
from models import ncsn_layers, ncsnv2, normalization
from configs import with_defaults
from models import utils as mutils
from models.ema import ExponentialMovingAverage
import sde_lib

NCSN_CONFIGS = ['ve/ncsn/' + n for n in ('celeba', 'celeba_124', 'celeba_1245', 'celeba_5',
                                          'cifar10', 'cifar10_124', 'cifar10_1245', 'cifar10_5')]
NCSNV2_CONFIGS = ['ve/ncsnv2/bedroom', 've/ncsnv2/celeba', 've/ncsnv2/cifar10']
EPS = 1e-5


# ----------------------------------------------------------------------------- reference files

def test_ncsnv2_parity_fixture():
  """Network output and score of a small NCSNv2 equal the (bug-fixed) reference's."""
  fx = torch.load(FIXTURES / 'parity' / 've__ncsnv2__cifar10.pt', weights_only=True)
  config = ml_collections.ConfigDict(fx['config'])
  config.device = 'cpu'
  config = with_defaults(config)  # a reference config: completed with the keys added since
  model = mutils.create_model(config)
  model.load_state_dict(fx['state_dict'], strict=True)
  model.eval()
  sde, _ = sde_lib.get_sde(config)
  with torch.no_grad():
    output = model(fx['x'], fx['labels'])
    score = mutils.get_score_fn(sde, model, continuous=fx['continuous'])(fx['x'], fx['t'])
  # Divided by the float64 sigmas buffer, as the reference.
  assert output.dtype == fx['model_output'].dtype == torch.float64
  assert_close_scaled(output, fx['model_output'], rel=1e-5, name='model_output')
  assert_close_scaled(score, fx['score'], rel=1e-5, name='score')


@pytest.mark.parametrize('config_name', NCSN_CONFIGS + NCSNV2_CONFIGS)
def test_state_dict_matches_reference(config_name):
  """Full-size models (built on the meta device: shapes only) have the reference's keys,
  shapes, order, parameter count, buffers, dtypes and EMA shadow count."""
  expected = json.loads((FIXTURES / 'state_dicts' /
                         (config_name.replace('/', '__') + '.json')).read_text())
  config = load_config(config_name)
  assert config.model.name == expected['model_name']
  with torch.device('meta'):
    model = mutils.get_model(config.model.name)(config)
  state = model.state_dict()
  assert [[k, list(v.shape)] for k, v in state.items()] == expected['keys']
  assert sum(p.numel() for p in model.parameters()) == expected['num_params']
  assert [name for name, _ in model.named_buffers()] == expected['buffers']
  non_float32 = {k: str(v.dtype).replace('torch.', '') for k, v in state.items()
                 if v.dtype != torch.float32}
  assert non_float32 == expected['non_float32']
  ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
  assert len(ema.shadow_params) == expected['ema_num_shadow_params']


# ----------------------------------------------------------------------------- small networks

def _small_config(name, image_size=16, nf=8, num_scales=6, centered=False):
  config = ml_collections.ConfigDict()
  config.device = 'cpu'
  config.data = ml_collections.ConfigDict(dict(image_size=image_size, num_channels=3,
                                               centered=centered))
  config.model = ml_collections.ConfigDict(dict(
    name=name, nf=nf, num_scales=num_scales, sigma_min=0.01, sigma_max=50.,
    normalization='InstanceNorm++', nonlinearity='elu', interpolation='bilinear',
    scale_by_sigma=name != 'ncsn'))
  # a reference config: completed with the keys added since, as every entry does
  return with_defaults(config)


def _build(config, seed=0):
  torch.manual_seed(seed)
  model = mutils.create_model(config)
  # Non-trivial weights: the default init has beta = 0 and unit-ish scales everywhere.
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _inputs(config, batch=3, seed=2):
  gen = torch.Generator().manual_seed(seed)
  size = config.data.image_size
  x = torch.rand(batch, 3, size, size, generator=gen)
  y = torch.randint(0, config.model.num_scales, (batch,), generator=gen)
  return x, y


@pytest.mark.parametrize('name', ['ncsn', 'ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256'])
def test_forward(name):
  """Shape and dtype (v2: float64 from the sigma division); per-sample independence in eval
  mode; how y enters: NCSNv2 only through the division (sigma_y s(x, y) does not depend on y),
  NCSN v1 through its conditional norms (and it stores no sigmas)."""
  config = _small_config(name)
  model = _build(config)
  x, _ = _inputs(config, batch=2)
  x = torch.cat([x[:1], x])  # samples 0 and 1 are the same image, at different noise levels
  y = torch.tensor([1, 4, 1])
  with torch.no_grad():
    out = model(x, y)
    out_first = model(x[:1], y[:1])
  assert out.shape == x.shape
  assert out.dtype == (torch.float32 if name == 'ncsn' else torch.float64)
  assert torch.isfinite(out).all()
  assert_close_scaled(out_first, out[:1], rel=1e-5, name='single sample')
  if name == 'ncsn':
    assert 'sigmas' not in dict(model.named_buffers())
    assert (out[0] - out[1]).abs().max() > 1e-3 * out[0].abs().max()
  else:
    sigmas = torch.tensor(mutils.get_sigmas(config))
    assert torch.equal(model.sigmas, sigmas)
    assert_close_scaled(out[1] * sigmas[4], out[0] * sigmas[1], rel=1e-6, name='sigma scaling')
    assert (out[0] - out[2]).abs().max() > 1e-3 * out[0].abs().max()  # different images differ


def test_ncsn_v1_scale_by_sigma_option():
  """With model.scale_by_sigma (JAX score_sde semantics) v1 divides by sigma_y; the sigmas
  stay out of the state dict, so checkpoints keep the reference's keys."""
  plain_config = _small_config('ncsn', image_size=8)
  scaled_config = _small_config('ncsn', image_size=8)
  scaled_config.model.scale_by_sigma = True
  plain, scaled = _build(plain_config), _build(scaled_config)
  assert 'sigmas' not in scaled.state_dict()
  x, y = _inputs(plain_config, batch=2)
  sigmas = torch.tensor(mutils.get_sigmas(plain_config))
  with torch.no_grad():
    expected = plain(x, y) / sigmas[y].view(-1, 1, 1, 1)
    assert_close_scaled(scaled(x, y), expected, rel=1e-6)


def test_centered_input():
  """data.centered=False maps [0, 1] images to [-1, 1] first: same result as centered inputs."""
  name = 'ncsnv2_64'
  raw = _build(_small_config(name, image_size=8, centered=False))
  centered = _build(_small_config(name, image_size=8, centered=True))
  x, y = _inputs(_small_config(name, image_size=8), batch=2)
  with torch.no_grad():
    assert_close_scaled(raw(x, y), centered(2 * x - 1, y), rel=1e-6)


@pytest.mark.parametrize('norm', ['InstanceNorm', 'VarianceNorm'])
@pytest.mark.parametrize('name', ['ncsn', 'ncsnv2_64'])
def test_other_normalizations_build_and_run(name, norm):
  """The other norms get_normalization offers plug into both networks (no parameters for plain
  InstanceNorm; `alpha` / `embed` for VarianceNorm)."""
  config = _small_config(name, image_size=8)
  config.model.normalization = norm
  model = _build(config)
  x, y = _inputs(config, batch=2)
  with torch.no_grad():
    out = model(x, y)
  assert out.shape == x.shape and torch.isfinite(out).all()
  expected = {('ncsn', 'InstanceNorm'): ['normalizer.embed.weight'],
              ('ncsn', 'VarianceNorm'): ['normalizer.embed.weight'],
              ('ncsnv2_64', 'InstanceNorm'): [],
              ('ncsnv2_64', 'VarianceNorm'): ['normalizer.alpha']}[name, norm]
  assert [k for k in model.state_dict() if k.startswith('normalizer.')] == expected


def test_get_network_by_image_size():
  config = _small_config('ncsnv2_64')
  for size, cls in ((32, ncsnv2.NCSNv2), (128, ncsnv2.NCSNv2_128), (256, ncsnv2.NCSNv2_256)):
    config.data.image_size = size
    assert type(ncsnv2.get_network(config)()) is cls
  config.data.image_size = 512
  with pytest.raises(ValueError, match='256'):
    ncsnv2.get_network(config)


def test_float_labels_rejected():
  config = _small_config('ncsnv2_64', image_size=8)
  model = _build(config)
  x, _ = _inputs(config, batch=2)
  with pytest.raises(TypeError, match='integer noise-level'):
    model(x, torch.rand(2))


def test_groupnorm_config_rejected():
  config = _small_config('ncsnv2_64')
  config.model.normalization = 'GroupNorm'
  with pytest.raises(ValueError, match='InstanceNorm'):
    mutils.create_model(config)


# ----------------------------------------------------------------------------- normalization

def _instance_norm_plus_formula(x, gamma, alpha, beta):
  """InstanceNorm++ in float64, written out step by step (gamma/alpha/beta: (B or 1, C))."""
  x = x.double()
  mu = x.mean(dim=(2, 3))
  var = ((x - mu[..., None, None]) ** 2).mean(dim=(2, 3))
  m = mu.mean(dim=1, keepdim=True)
  v = ((mu - m) ** 2).sum(dim=1, keepdim=True) / (mu.shape[1] - 1)
  h = (x - mu[..., None, None]) / torch.sqrt(var[..., None, None] + EPS)
  h = h + (alpha * (mu - m) / torch.sqrt(v + EPS))[..., None, None]
  out = gamma.double()[..., None, None] * h
  return out if beta is None else out + beta.double()[..., None, None]


def _randomize(module, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen))
  return module


def _random_x(shape=(4, 6, 5, 7), seed=3):
  gen = torch.Generator().manual_seed(seed)
  # Channel-dependent offsets and scales so that every term of the formulas matters.
  return 3 * torch.randn(shape, generator=gen) * torch.rand(shape[1], 1, 1, generator=gen) + \
    torch.randn(shape[1], 1, 1, generator=gen)


@pytest.mark.parametrize('bias', [True, False])
def test_instance_norm_plus_formula(bias):
  norm = _randomize(normalization.InstanceNorm2dPlus(6, bias=bias))
  assert sorted(n for n, _ in norm.named_parameters()) == (
    ['alpha', 'beta', 'gamma'] if bias else ['alpha', 'gamma'])
  x = _random_x()
  expected = _instance_norm_plus_formula(x, norm.gamma.detach()[None], norm.alpha.detach()[None],
                                         norm.beta.detach()[None] if bias else None)
  assert_close_scaled(norm(x), expected, rel=1e-5)


@pytest.mark.parametrize('bias', [True, False])
def test_conditional_instance_norm_plus_formula(bias):
  """embed rows are [gamma | alpha | beta] of the label's noise level."""
  norm = _randomize(normalization.ConditionalInstanceNorm2dPlus(6, num_classes=5, bias=bias))
  assert norm.embed.weight.shape == (5, (3 if bias else 2) * 6)
  x, y = _random_x(), torch.tensor([4, 0, 2, 4])
  rows = norm.embed.weight.detach()[y]
  expected = _instance_norm_plus_formula(x, rows[:, :6], rows[:, 6:12],
                                         rows[:, 12:] if bias else None)
  assert_close_scaled(norm(x, y), expected, rel=1e-5)


def test_conditional_instance_norm_plus_init():
  """Scales (gamma, alpha) start at N(1, 0.02^2), the shift beta at 0."""
  torch.manual_seed(0)
  norm = normalization.ConditionalInstanceNorm2dPlus(64, num_classes=50)
  w = norm.embed.weight.detach()
  assert torch.equal(w[:, 128:], torch.zeros(50, 64))
  assert abs(w[:, :128].mean().item() - 1) < 0.01 and abs(w[:, :128].std().item() - 0.02) < 0.002


def test_other_norms_formulas():
  """(Conditional) instance, variance, none and batch norms against their formulas."""
  x, y = _random_x(), torch.tensor([1, 0, 2, 1])
  xd = x.double()
  mu = xd.mean(dim=(2, 3), keepdim=True)
  centered = (xd - mu) / torch.sqrt(xd.var(dim=(2, 3), unbiased=False, keepdim=True) + EPS)
  var_scaled = xd / torch.sqrt(xd.var(dim=(2, 3), keepdim=True) + EPS)  # unbiased, no centering

  def rows(norm, i):
    return norm.embed.weight.detach().double()[y][:, 6 * i:6 * (i + 1), None, None]

  cin = _randomize(normalization.ConditionalInstanceNorm2d(6, num_classes=3))
  assert_close_scaled(cin(x, y), rows(cin, 0) * centered + rows(cin, 1), rel=1e-5)
  cvn = _randomize(normalization.ConditionalVarianceNorm2d(6, num_classes=3))
  assert_close_scaled(cvn(x, y), rows(cvn, 0) * var_scaled, rel=1e-5)
  vn = _randomize(normalization.VarianceNorm2d(6))
  assert_close_scaled(vn(x), vn.alpha.detach().double()[:, None, None] * var_scaled, rel=1e-5)
  cnn = _randomize(normalization.ConditionalNoneNorm2d(6, num_classes=3, bias=False))
  assert_close_scaled(cnn(x, y), rows(cnn, 0) * xd, rel=1e-6)
  assert torch.equal(normalization.NoneNorm2d(6)(x), x)
  cbn = _randomize(normalization.ConditionalBatchNorm2d(6, num_classes=3)).train()
  batch_mu = xd.mean(dim=(0, 2, 3), keepdim=True)
  batch_norm = (xd - batch_mu) / torch.sqrt(xd.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
                                            + EPS)
  assert_close_scaled(cbn(x, y), rows(cbn, 0) * batch_norm + rows(cbn, 1), rel=1e-5)
  assert sorted(cbn.state_dict()) == ['bn.num_batches_tracked', 'bn.running_mean',
                                      'bn.running_var', 'embed.weight']


def test_get_normalization():
  config = _small_config('ncsn')
  assert normalization.get_normalization(config) is normalization.InstanceNorm2dPlus
  norm = normalization.get_normalization(config, conditional=True)(4)
  assert isinstance(norm, normalization.ConditionalInstanceNorm2dPlus)
  assert norm.embed.weight.shape == (config.model.num_scales, 12)  # one class per noise level
  config.model.normalization = 'BatchNorm++'
  with pytest.raises(ValueError, match='InstanceNorm\\+\\+'):
    normalization.get_normalization(config)


# ----------------------------------------------------------------------------- blocks

def test_conv_helpers():
  """SAME padding for dilated 3x3 convs; init_scale=0 shrinks weights to 1e-10 (no bias needed)."""
  x = torch.randn(1, 2, 9, 9)
  for dilation in (1, 2, 4):
    assert ncsn_layers.ncsn_conv3x3(2, 3, dilation=dilation)(x).shape == (1, 3, 9, 9)
  torch.manual_seed(0)
  base = ncsn_layers.ncsn_conv3x3(2, 3, bias=False)
  torch.manual_seed(0)
  tiny = ncsn_layers.ncsn_conv3x3(2, 3, bias=False, init_scale=0.)
  assert tiny.bias is None
  assert_close_scaled(tiny.weight, base.weight * 1e-10, rel=1e-6)


@pytest.mark.parametrize('adjust_padding', [False, True])
def test_conv_mean_pool(adjust_padding):
  """ConvMeanPool = conv then the mean of the four 2x2-strided sub-grids."""
  torch.manual_seed(0)
  block = ncsn_layers.ConvMeanPool(2, 3, 3, adjust_padding=adjust_padding)
  size = 7 if adjust_padding else 8  # the extra top-left row/column is meant for odd sizes
  x = torch.randn(2, 2, size, size)
  h = block.conv(x)
  expected = (h[:, :, ::2, ::2] + h[:, :, 1::2, ::2] + h[:, :, ::2, 1::2] + h[:, :, 1::2, 1::2]) / 4
  assert_close_scaled(block(x), expected, rel=1e-6)
  assert ('conv.1.weight' if adjust_padding else 'conv.weight') in block.state_dict()


@pytest.mark.parametrize('resample, dilation, out_size, shortcut', [
  (None, 1, 8, 'shortcut.weight'),          # 1x1 shortcut for the channel change
  ('down', 1, 4, 'shortcut.conv.weight'),   # conv + mean pool
  ('down', 2, 8, 'shortcut.weight'),        # dilated: same resolution, 3x3 shortcut
])
def test_residual_block(resample, dilation, out_size, shortcut):
  torch.manual_seed(0)
  norm = normalization.ConditionalInstanceNorm2dPlus
  block = ncsn_layers.ConditionalResidualBlock(4, 6, num_classes=3, resample=resample,
                                               normalization=norm, dilation=dilation)
  state = block.state_dict()
  assert shortcut in state and state[shortcut].shape[:2] == (6, 4)
  x, y = torch.randn(2, 4, 8, 8), torch.tensor([0, 2])
  assert block(x, y).shape == (2, 6, out_size, out_size)
  with pytest.raises(ValueError, match='conditional'):
    block(x)


def test_residual_block_identity_shortcut():
  """Same channels, no resampling: output = x + residual branch (no shortcut conv)."""
  torch.manual_seed(0)
  block = ncsn_layers.ResidualBlock(4, 4, normalization=normalization.InstanceNorm2dPlus)
  assert not any(k.startswith('shortcut') for k in block.state_dict())
  x = torch.randn(2, 4, 8, 8)
  branch = block.conv2(block.non_linearity(block.normalize2(
    block.conv1(block.non_linearity(block.normalize1(x))))))
  assert_close_scaled(block(x), x + branch, rel=1e-6)


def test_msf_block_resizes_bilinear_aligned():
  """MSF sums each input's conv resized to the output shape (bilinear, align_corners=True)."""
  torch.manual_seed(0)
  msf = ncsn_layers.MSFBlock([3, 5], 4)
  xs = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)]
  expected = msf.convs[0](xs[0]) + F.interpolate(msf.convs[1](xs[1]), size=(8, 8),
                                                 mode='bilinear', align_corners=True)
  assert_close_scaled(msf(xs, (8, 8)), expected, rel=1e-6)


def test_refine_block_keys_and_shape():
  """Key layout of a conditional RefineBlock (reference names) and its output shape."""
  torch.manual_seed(0)
  block = ncsn_layers.CondRefineBlock([4, 6], 5, num_classes=3,
                                      normalizer=normalization.ConditionalInstanceNorm2dPlus,
                                      end=True)
  keys = list(block.state_dict())
  assert keys[:2] == ['adapt_convs.0.1_1_norm.embed.weight', 'adapt_convs.0.1_1_conv.weight']
  assert 'output_convs.3_2_conv.weight' in keys and 'crp.norms.1.embed.weight' in keys
  assert keys.index('msf.convs.1.bias') < keys.index('msf.norms.0.embed.weight')
  xs, y = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)], torch.tensor([0, 2])
  assert block(xs, y, (8, 8)).shape == (2, 5, 8, 8)
