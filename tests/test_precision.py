"""precision.py: bf16 / fp16 networks against float32, sampling in bf16 against closed forms,
channels_last and compiled networks' checkpoints, and the messages for what cannot be done.

Relative error of the network output, ||out - out_fp32|| / ||out_fp32||, measured on the parity
fixtures (NCSN++, DDPM++, DDPM, NCSNv2) and a small random NCSN on this CPU (torch 2.14):
  bf16  1.1e-2 (DDPM) .. 2.4e-2 (NCSNv2)        bound 5e-2
  fp16  1.4e-3 (DDPM++) .. 3.0e-3 (NCSNv2)      bound 6e-3
bf16 keeps 8 significant bits against fp16's 11, hence the factor ~8; the errors grow with depth.
"""
import pytest
import torch
import torch.nn.functional as F

import likelihood
import losses
import precision
import sampling
import sde_lib
import utils
from configs import load_config
from gaussian_score import ExactScoreModel
from model_checks import build_on_meta, load_parity, load_state_dict_spec, parity_config
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from test_sampling import BATCH, EVENT, GAUSSIAN, TOL, _normalised_moments, identity

BOUNDS = {'bf16': 5e-2, 'fp16': 6e-3}
FAMILIES = ['ve__cifar10_ncsnpp_continuous', 'vp__cifar10_ddpmpp_continuous', 'vp__ddpm__cifar10',
            've__ncsnv2__cifar10', 'ncsn']


def _relative_error(out, ref):
  out, ref = out.double(), ref.double()
  return ((out - ref).norm() / ref.norm()).item()


def _family(name):
  """(model in eval mode, x, labels): a parity fixture, or NCSN v1 small with random weights."""
  if name == 'ncsn':
    from test_models_ncsn import _build, _inputs, _small_config
    config = _small_config('ncsn')
    return (_build(config),) + _inputs(config, batch=4)
  fixture = load_parity(name)
  model = mutils.create_model(parity_config(fixture))
  model.load_state_dict(fixture['state_dict'], strict=True)
  return model.eval(), fixture['x'], fixture['labels']


@pytest.mark.parametrize('prec', ['bf16', 'fp16'])
@pytest.mark.parametrize('family', FAMILIES)
def test_every_network_family_in_reduced_precision(family, prec):
  model, x, labels = _family(family)
  with torch.no_grad():
    ref = model(x, labels)
    out = precision.autocast_model(model, prec)(x, labels)
  assert out.dtype == ref.dtype  # float32 (float64 for NCSNv2's division by its sigmas)
  error = _relative_error(out, ref)
  # Below the bound, and far above float32 rounding (~1e-7): the network did run in low precision.
  assert 1e-4 < error < BOUNDS[prec], error


def test_autocast_model_wraps_without_changing_fp32():
  model, x, labels = _family('ve__cifar10_ncsnpp_continuous')
  assert precision.autocast_model(model, 'fp32') is model
  wrapped = precision.autocast_model(model, 'bf16')
  assert wrapped.module is model and mutils.unwrap(wrapped) is model
  assert list(wrapped.parameters()) == list(model.parameters())  # EMA copies reach the network
  wrapped.train()
  assert model.training  # get_model_fn's train/eval switch reaches the network


class RoundedScore(ExactScoreModel):
  """The exact score, passed through an identity matrix product: under autocast the product runs
  in bf16 / fp16, so the output carries a network's rounding (float32: exact)."""

  def __init__(self, sde, mixture):
    super().__init__(sde, mixture, continuous=True)
    self.register_buffer('eye', torch.eye(mixture.means[0].numel()))

  def forward(self, x, labels):
    out = super().forward(x, labels)
    return F.linear(out.reshape(out.shape[0], -1), self.eye).reshape(out.shape)


def _sampling_config(method, prec):
  config = load_config('ve/cifar10_ncsnpp_continuous')
  config.device = torch.device('cpu')
  config.sampling.method = method
  config.sampling.precision = prec
  config.sampling.ode_method = 'dopri5'
  config.sampling.num_steps = 20
  config.sampling.progress = False
  return config


@pytest.mark.parametrize('method', ['pc', 'ode', 'dpm_solver'])
def test_bf16_sampling_keeps_the_gaussian_moments(method):
  """config.sampling.precision = 'bf16': the samples' normalised mean and variance stay in the
  float32 tests' bands (test_sampling.py: TOL 0.05 at batch 512), while the samples differ from
  float32 ones drawn with the same noise (the network did run in bf16)."""
  sde = sde_lib.VESDE(N=1000)
  model = RoundedScore(sde, GAUSSIAN)
  samples = {}
  for prec in ('fp32', 'bf16'):
    sampler = sampling.get_sampling_fn(_sampling_config(method, prec), sde, (BATCH,) + EVENT,
                                       identity, 1e-5)
    torch.manual_seed(21)
    samples[prec], _ = sampler(model)
  mean, var = _normalised_moments(samples['bf16'], GAUSSIAN)
  assert abs(mean) < TOL and abs(var - 1) < TOL, f'normalised mean {mean:.4f}, variance {var:.4f}'
  assert samples['bf16'].dtype == torch.float32
  assert not torch.equal(samples['bf16'], samples['fp32'])


def test_precision_argument_overrides_the_sampling_config():
  """eval_lib passes config.eval.precision to get_sampling_fn, which overrides
  config.sampling.precision: the same samples as with config.sampling.precision = 'bf16'."""
  sde = sde_lib.VESDE(N=20)
  model = RoundedScore(sde, GAUSSIAN)
  samples = []
  for config_precision, argument in (('bf16', None), ('fp32', 'bf16')):
    sampler = sampling.get_sampling_fn(_sampling_config('pc', config_precision), sde,
                                       (8,) + EVENT, identity, 1e-5, precision=argument)
    torch.manual_seed(22)
    samples.append(sampler(model)[0])
  assert torch.equal(samples[0], samples[1])


def test_controllable_generation_takes_an_autocast_model():
  """Inpainting (and colorization, class-conditional sampling, the diffusers pipeline) take the
  network as an argument: precision.autocast_model(model, 'bf16') runs it in bf16, and the known
  pixels come back exactly."""
  import controllable_generation
  sde = sde_lib.VESDE(N=20)
  data = torch.randn((4,) + EVENT, generator=torch.Generator().manual_seed(3))
  mask = torch.zeros_like(data)
  mask[..., :2] = 1
  inpainter = controllable_generation.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin',
                                                       identity, snr=0.16, continuous=True)
  out = inpainter(precision.autocast_model(RoundedScore(sde, GAUSSIAN), 'bf16'), data, mask)
  assert out.dtype == torch.float32 and torch.isfinite(out).all()
  assert torch.equal(out[..., :2], data[..., :2])


def test_adaptive_ode_sampling_in_bf16_warns_about_tight_tolerances(caplog):
  """Its 1e-5 default is below bf16's rounding (likelihood refuses it; sampling warns)."""
  config = load_config('ve/digits_ncsnpp_continuous')
  config.sampling.method = 'ode'
  sde = sde_lib.VESDE()
  for ode_method, rtol, precision, warned in (('RK45', 1e-5, 'bf16', True),
                                              ('dopri5', 1e-5, 'fp16', True),
                                              ('RK45', 1e-3, 'bf16', False),
                                              ('heun', 1e-5, 'bf16', False),
                                              ('RK45', 1e-5, 'fp32', False)):
    caplog.clear()
    config.sampling.ode_method, config.sampling.ode_rtol = ode_method, rtol
    config.sampling.ode_atol = rtol
    sampling.get_sampling_fn(config, sde, (2, 1, 16, 16), lambda x: x, 1e-5, precision=precision)
    assert ('spends evaluations on its rounding' in caplog.text) == warned, (ode_method, precision)


def test_unknown_precision_and_likelihood_in_bf16_are_refused():
  with pytest.raises(ValueError, match=r"Unknown precision 'fp8' in config.training.precision. "
                                       r'Known: fp32, bf16, fp16'):
    precision.check('fp8', 'training.precision')
  with pytest.raises(ValueError, match='Unknown precision'):
    losses.get_step_fn(sde_lib.VESDE(), train=False, precision='half')
  with pytest.raises(ValueError, match='config.sampling.precision'):
    sampling.get_sampling_fn(_sampling_config('pc', 'float16'), sde_lib.VESDE(), (1,) + EVENT,
                             identity, 1e-5)
  with pytest.raises(ValueError, match=r'float32 only.*rtol 1e-05.*bf16 resolution.*3\.9e-03'):
    likelihood.get_likelihood_fn(sde_lib.VESDE(), identity, precision='bf16')


# --- Checkpoints of channels_last and compiled networks ----------------------------------------

def _state(config):
  torch.manual_seed(0)
  model = mutils.create_model(config)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
  return dict(model=model, optimizer=optimizer, ema=ema, step=0)


def _train_once(state, config):
  step_fn = losses.get_step_fn(sde_lib.get_sde(config)[0], train=True,
                               optimize_fn=lambda opt, params, step: opt.step())
  x = torch.rand(2, config.data.num_channels, config.data.image_size, config.data.image_size,
                 generator=torch.Generator().manual_seed(1))
  step_fn(state, x)


def _tensors(tree):
  if torch.is_tensor(tree):
    return [tree]
  if isinstance(tree, dict):
    tree = list(tree.values())
  return [t for item in tree for t in _tensors(item)] if isinstance(tree, (list, tuple)) else []


def test_channels_last_checkpoint_has_standard_strides_and_loads_into_a_plain_model(tmp_path):
  config = parity_config(load_parity('ve__cifar10_ncsnpp_continuous'))
  config.model.channels_last = True
  state = _state(config)
  conv = next(p for p in state['model'].parameters() if p.dim() == 4 and p.shape[-1] == 3)
  assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
  _train_once(state, config)
  utils.save_checkpoint(tmp_path / 'ckpt.pth', state)

  saved = torch.load(tmp_path / 'ckpt.pth', weights_only=True)
  saved_tensors = _tensors([saved['model'], saved['ema'], saved['optimizer']])
  assert all(t.is_contiguous() for t in saved_tensors)
  config.model.channels_last = False
  plain = _state(config)
  utils.restore_checkpoint(tmp_path / 'ckpt.pth', plain, 'cpu')
  trained = state['model'].state_dict()
  for name, value in plain['model'].state_dict().items():
    assert torch.equal(value, trained[name]), name
  # Restored into a channels_last model, the averages take its layout again.
  config.model.channels_last = True
  again = _state(config)
  utils.restore_checkpoint(tmp_path / 'ckpt.pth', again, 'cpu')
  shadow = next(s for s in again['ema'].shadow_params if s.dim() == 4 and s.shape[-1] == 3)
  assert shadow.is_contiguous(memory_format=torch.channels_last)


def test_compiled_model_checkpoint_keeps_the_official_layout(tmp_path):
  """torch.compile (lazy: nothing is compiled here) wraps the network as `_orig_mod`; the
  checkpoint holds the plain network's keys with DataParallel's `module.` prefix, loads into an
  uncompiled model, and a full-size compiled network has the official key list."""
  config = parity_config(load_parity('ve__cifar10_ncsnpp_continuous'))
  state = _state(config)
  plain_keys = ['module.' + k for k in state['model'].state_dict()]
  state['model'] = precision.CompiledModel(state['model'], 'default')
  assert any('_orig_mod.' in k for k in state['model'].state_dict())
  utils.save_checkpoint(tmp_path / 'ckpt.pth', state)
  saved = torch.load(tmp_path / 'ckpt.pth', weights_only=True)
  assert list(saved['model']) == plain_keys
  plain = _state(config)
  utils.restore_checkpoint(tmp_path / 'ckpt.pth', plain, 'cpu')

  full = load_config('ve/cifar10_ncsnpp_continuous')
  spec = load_state_dict_spec('ve/cifar10_ncsnpp_continuous')
  wrapped = precision.AutocastModel(precision.CompiledModel(build_on_meta(full)), 'bf16')
  keys = [[k, list(v.shape)] for k, v in mutils.unwrap(wrapped).state_dict().items()]
  assert keys == spec['keys']


def test_compile_errors_say_how_to_turn_compilation_off():
  with pytest.raises(ValueError, match="Unknown torch.compile mode 'fast'"):
    precision.CompiledModel(torch.nn.Identity(), 'fast')
  compiled = precision.CompiledModel(torch.nn.Identity(), key='sampling.compile')

  class Failing(torch.nn.Module):  # what a compiled module raises when its compiler is missing
    def forward(self, x):
      raise torch._dynamo.exc.TorchDynamoException('no C++ compiler')

  compiled.module = Failing()
  with pytest.raises(RuntimeError, match=r'no C\+\+ compiler.*--config.sampling.compile=False'):
    compiled(torch.ones(1))


class TinyNet(torch.nn.Module):
  """Two convolutions with GroupNorm and SiLU: a few seconds of compilation (a 16x16 NCSN++ at
  nf 8 took 94 s on 2 cores)."""

  def __init__(self):
    super().__init__()
    self.conv_in = torch.nn.Conv2d(3, 8, 3, padding=1)
    self.norm = torch.nn.GroupNorm(2, 8)
    self.conv_out = torch.nn.Conv2d(8, 3, 3, padding=1)

  def forward(self, x, labels):
    h = F.silu(self.norm(self.conv_in(x)))
    return self.conv_out(h) / labels[:, None, None, None]


@pytest.mark.slow
def test_compiled_network_matches_eager_and_trains():
  """torch.compile (inductor: on the CPU it builds C++) gives the eager output and gradients up
  to float32 reassociation."""
  torch.manual_seed(0)
  model = TinyNet()
  compiled = precision.CompiledModel(model)
  x, labels = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 5.])
  eager_out = model(x, labels)
  eager_grad = torch.autograd.grad(eager_out.square().sum(), model.conv_in.weight)[0]
  out = compiled(x, labels)
  grad = torch.autograd.grad(out.square().sum(), model.conv_in.weight)[0]
  torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)
  torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-5)
