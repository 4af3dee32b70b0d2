"""losses.py against closed forms.

Data x0 ~ N(0, s2 I) has an exact score at every noise level: with x(t) = a(t) x0 + std(t) z,
p_t = N(0, (a^2 s2 + std^2) I) and the score is -x / (a^2 s2 + std^2). Plugging it into the
denoising objective, each data dimension contributes in expectation
    std^2 E (s + z/std)^2 = a^2 s2 / (a^2 s2 + std^2)          (paper's weighting),
    g^2 E (s + z/std)^2   = g^2 a^2 s2 / (std^2 (a^2 s2 + std^2))   (likelihood weighting),
averaged over t ~ U(eps, T) (continuous) or the N discrete levels (SMLD, DDPM); reduce_mean
averages the dimensions, otherwise the loss is half their sum.
"""
import math

import ml_collections
import numpy as np
import pytest
import torch

import losses
import sde_lib
import utils
from configs import with_defaults
from models import ema as ema_module
from models.ema import ExponentialMovingAverage

S2 = 0.25  # data variance
SHAPE = (1, 4, 4)
D = 16


class GaussianOracle(torch.nn.Module):
  """The exact score network of N(0, S2 I) data, in the output convention of each SDE/mode."""

  def __init__(self, sde, mode):
    super().__init__()
    self.sde, self.mode = sde, mode
    self.dummy = torch.nn.Parameter(torch.zeros(()))

  def forward(self, x, labels):
    sde, shape = self.sde, (-1,) + (1,) * (x.ndim - 1)
    if self.mode == 'smld':
      sigma = torch.flip(sde.discrete_sigmas, (0,))[labels].reshape(shape)
      return -x / (S2 + sigma ** 2)
    if self.mode == 'ddpm':
      a = sde.sqrt_alphas_cumprod[labels].reshape(shape)
      s = sde.sqrt_1m_alphas_cumprod[labels].reshape(shape)
      return s * x / (a ** 2 * S2 + s ** 2)  # E[z | x_i]
    if isinstance(sde, sde_lib.VESDE):  # continuous: label is sigma, output is the score
      return -x / (S2 + labels.reshape(shape) ** 2)
    t = labels / 999  # VP / sub-VP continuous: output is -std * score
    a = torch.exp(sde._log_mean_coeff(t)).reshape(shape)
    std = sde.marginal_prob(torch.zeros_like(t), t)[1].reshape(shape)
    return std * x / (a ** 2 * S2 + std ** 2)


class Scaled(torch.nn.Module):
  def __init__(self, model, factor):
    super().__init__()
    self.model, self.factor = model, factor

  def forward(self, x, labels):
    return self.factor * self.model(x, labels)


class Linear(torch.nn.Module):
  """A label-blind linear score model, enough to exercise the optimizer and EMA."""

  def __init__(self):
    super().__init__()
    self.lin = torch.nn.Linear(D, D)

  def forward(self, x, labels):
    return self.lin(x.flatten(1)).reshape(x.shape)


def per_dim_expectation(sde, t, likelihood_weighting):
  """The closed form above at times t (float64 tensor), per data dimension."""
  mean, std = sde.marginal_prob(torch.ones_like(t), t)
  a2s2 = mean ** 2 * S2
  value = a2s2 / (a2s2 + std ** 2)
  if likelihood_weighting:
    value = value * sde.sde(torch.zeros_like(t), t)[1] ** 2 / std ** 2
  return value


def monte_carlo(loss_fn, model, n_batches=8, batch=4096, seed=0):
  g = torch.Generator().manual_seed(seed)
  values = []
  for _ in range(n_batches):
    x0 = torch.randn((batch,) + SHAPE, generator=g) * math.sqrt(S2)
    values.append(loss_fn(model, x0, generator=g).item())
  values = np.array(values)
  return values.mean(), values.std(ddof=1) / math.sqrt(n_batches)


SDES = {'ve': lambda: sde_lib.VESDE(0.01, 10., N=100), 'vp': lambda: sde_lib.VPSDE(0.1, 20., N=100),
        'subvp': lambda: sde_lib.subVPSDE(0.1, 20., N=100)}


@pytest.mark.parametrize('name', sorted(SDES))
@pytest.mark.parametrize('likelihood_weighting', [False, True])
@pytest.mark.parametrize('reduce_mean', [True, False])
def test_continuous_loss_matches_closed_form(name, likelihood_weighting, reduce_mean):
  sde = SDES[name]()
  # VP's g^2 / std^2 ~ 1 / t: a larger eps keeps the Monte Carlo variance finite and small.
  eps = 1e-5 if name == 've' else 1e-2
  loss_fn = losses.get_sde_loss_fn(sde, train=False, reduce_mean=reduce_mean, continuous=True,
                                   likelihood_weighting=likelihood_weighting, eps=eps)
  mc, se = monte_carlo(loss_fn, GaussianOracle(sde, 'continuous'))
  t = torch.linspace(eps, 1., 200001, dtype=torch.float64)
  expected = torch.trapezoid(per_dim_expectation(sde, t, likelihood_weighting), t).item() / (1 - eps)
  expected *= 1. if reduce_mean else 0.5 * D
  assert abs(mc - expected) < 4 * se + 1e-3 * abs(expected), (mc, se, expected)


def test_smld_loss_matches_closed_form():
  sde = SDES['ve']()
  for reduce_mean in (True, False):
    mc, se = monte_carlo(losses.get_smld_loss_fn(sde, train=False, reduce_mean=reduce_mean),
                         GaussianOracle(sde, 'smld'))
    # sigma^2 ||s + z / sigma||^2 is the paper's weighting at the discrete levels.
    levels = sde.discrete_sigmas.double()
    expected = (S2 / (S2 + levels ** 2)).mean().item() * (1. if reduce_mean else 0.5 * D)
    assert abs(mc - expected) < 4 * se + 1e-3 * expected, (reduce_mean, mc, se, expected)


def test_ddpm_loss_matches_closed_form():
  sde = SDES['vp']()
  for reduce_mean in (True, False):
    mc, se = monte_carlo(losses.get_ddpm_loss_fn(sde, train=False, reduce_mean=reduce_mean),
                         GaussianOracle(sde, 'ddpm'))
    a2s2 = sde.alphas_cumprod.double() * S2
    expected = (a2s2 / (a2s2 + 1 - sde.alphas_cumprod.double())).mean().item()
    expected *= 1. if reduce_mean else 0.5 * D
    assert abs(mc - expected) < 4 * se + 1e-3 * expected, (reduce_mean, mc, se, expected)


def test_wrong_score_gives_higher_loss():
  """The closed form is the minimum: a score off by 10 % costs measurably more."""
  sde = SDES['ve']()
  loss_fn = losses.get_sde_loss_fn(sde, train=False, likelihood_weighting=False)
  oracle = GaussianOracle(sde, 'continuous')
  best, _ = monte_carlo(loss_fn, oracle, n_batches=2)
  worse, _ = monte_carlo(loss_fn, Scaled(oracle, 1.1), n_batches=2)
  assert worse > best * 1.005


def test_reduce_mean_is_twice_the_sum_over_dimensions():
  sde = SDES['vp']()
  x0 = torch.randn((64,) + SHAPE, generator=torch.Generator().manual_seed(0))
  model = GaussianOracle(sde, 'continuous')
  mean = losses.get_sde_loss_fn(sde, False, reduce_mean=True)(
    model, x0, generator=torch.Generator().manual_seed(1))
  half_sum = losses.get_sde_loss_fn(sde, False, reduce_mean=False)(
    model, x0, generator=torch.Generator().manual_seed(1))
  torch.testing.assert_close(half_sum, 0.5 * D * mean)


@pytest.mark.parametrize('kind', ['continuous', 'smld', 'ddpm'])
def test_shards_draw_the_global_batch_noise(kind):
  """Two ranks with rows 0::2 and 1::2 of a batch see the noise one process draws for all of it."""
  sde = SDES['ve']() if kind != 'ddpm' else SDES['vp']()
  loss_fn = {'continuous': losses.get_sde_loss_fn, 'smld': losses.get_smld_loss_fn,
             'ddpm': losses.get_ddpm_loss_fn}[kind](sde, False)
  model = GaussianOracle(sde, kind)
  x0 = torch.randn((8,) + SHAPE, generator=torch.Generator().manual_seed(0))
  full = loss_fn(model, x0, generator=torch.Generator().manual_seed(3))
  halves = [loss_fn(model, x0[r::2], generator=torch.Generator().manual_seed(3), shard=(r, 2))
            for r in range(2)]
  torch.testing.assert_close(full, sum(halves) / 2)


def _optim_config(warmup=10, grad_clip=1.):
  config = ml_collections.ConfigDict()
  config.optim = dict(optimizer='Adam', lr=1e-2, beta1=0.9, eps=1e-8, weight_decay=0.,
                      warmup=warmup, grad_clip=grad_clip)
  return with_defaults(config)  # the entry that completes every config (main, load_config)


def test_warmup_lr_is_linear_and_a_python_float():
  config = _optim_config(warmup=10, grad_clip=-1.)
  param = torch.nn.Parameter(torch.ones(3))
  optimizer = losses.get_optimizer(config, [param])
  optimize_fn = losses.optimization_manager(config)
  for step, expected in [(0, 0.), (5, 5e-3), (10, 1e-2), (50, 1e-2)]:
    param.grad = torch.ones(3)
    optimize_fn(optimizer, [param], step=step)
    lr = optimizer.param_groups[0]['lr']
    assert type(lr) is float and lr == pytest.approx(expected)


def test_gradient_clipping_and_reported_norm():
  config = _optim_config(warmup=0, grad_clip=1.)
  param = torch.nn.Parameter(torch.zeros(4))
  optimizer = torch.optim.SGD([param], lr=1.)
  param.grad = torch.full((4,), 3.)  # norm 6
  norm = losses.optimization_manager(config)(optimizer, [param], step=0)
  assert norm.item() == pytest.approx(6.)
  torch.testing.assert_close(param.detach(), torch.full((4,), -0.5))  # clipped to norm 1


def test_unknown_optimizer_is_named():
  config = _optim_config()
  config.optim.optimizer = 'Lion'
  with pytest.raises(ValueError, match="Lion.*Known: Adam, AdamW"):
    losses.get_optimizer(config, [torch.nn.Parameter(torch.ones(1))])


def test_step_fn_updates_optimizer_step_and_ema_and_eval_uses_ema():
  sde = SDES['ve']()
  torch.manual_seed(0)
  model = Linear()
  config = _optim_config(warmup=0)
  optimizer = losses.get_optimizer(config, model.parameters())
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
  state = dict(model=model, optimizer=optimizer, ema=ema, step=0)
  train_step = losses.get_step_fn(sde, True, losses.optimization_manager(config),
                                  generator=torch.Generator().manual_seed(0))
  before = [p.detach().clone() for p in model.parameters()]
  x0 = torch.randn((16,) + SHAPE)
  for _ in range(3):
    train_step(state, x0)
  assert state['step'] == 3 and ema.num_updates == 3 and train_step.grad_norm.item() > 0
  assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
  assert all(not torch.equal(s, p) for s, p in zip(ema.shadow_params, model.parameters()))

  # The evaluation loss is the loss of the EMA weights, and the live weights come back.
  live = [p.detach().clone() for p in model.parameters()]
  eval_step = losses.get_step_fn(sde, False, generator=torch.Generator().manual_seed(5))
  got = eval_step(state, x0)
  ema_model = Linear()
  ema.copy_to(ema_model.parameters())
  want = losses.get_sde_loss_fn(sde, False, reduce_mean=False, likelihood_weighting=False)(
    ema_model, x0, generator=torch.Generator().manual_seed(5))
  torch.testing.assert_close(got, want)
  assert all(torch.equal(a, b) for a, b in zip(live, model.parameters()))


def test_discrete_losses_refuse_wrong_sde_and_likelihood_weighting():
  with pytest.raises(ValueError, match='SMLD training needs a VESDE'):
    losses.get_smld_loss_fn(SDES['vp'](), True)
  with pytest.raises(ValueError, match='DDPM training needs a VPSDE'):
    losses.get_ddpm_loss_fn(SDES['ve'](), True)
  with pytest.raises(ValueError, match='likelihood_weighting needs continuous'):
    losses.get_step_fn(SDES['ve'](), True, lambda *a, **k: None, continuous=False,
                       likelihood_weighting=True)
  with pytest.raises(ValueError, match='subVPSDE'):
    losses.get_step_fn(SDES['subvp'](), True, lambda *a, **k: None, continuous=False)


@pytest.mark.parametrize('group_elements', [None, 50])
def test_ema_update_is_bit_identical_to_the_reference_loop(group_elements, monkeypatch):
  """The multi-tensor EMA update gives the per-parameter loop's numbers exactly, through the
  decay warm-up min(decay, (1 + n) / (10 + n)) and after it; also when the CPU path cuts the
  tensors into cache-sized pieces (50 elements here: contiguous, channels_last and transposed
  parameters, pieces spanning tensors)."""
  if group_elements:
    monkeypatch.setattr(ema_module, 'CPU_GROUP_ELEMENTS', group_elements)
  g = torch.Generator().manual_seed(0)
  params = [torch.nn.Parameter(torch.randn(shape, generator=g))
            for shape in [(8, 4, 3, 3), (8,), (5, 7), ()]]
  params.append(torch.nn.Parameter(torch.randn(6, 5, 3, 3, generator=g).contiguous(
      memory_format=torch.channels_last)))
  params.append(torch.nn.Parameter(torch.randn(9, 13, generator=g).t()))  # not dense in order
  frozen = torch.nn.Parameter(torch.randn(3, generator=g), requires_grad=False)  # not tracked
  ema = ExponentialMovingAverage(params + [frozen], decay=0.999)
  shadows = [p.detach().clone() for p in params]
  for n in range(1, 2001):
    with torch.no_grad():
      for p in params:
        p.add_(torch.randn(p.shape, generator=g) * 10 ** float(torch.randint(-4, 2, (), generator=g)))
    ema.update(params + [frozen])
    decay = min(0.999, (1 + n) / (10 + n))
    for s, p in zip(shadows, params):  # score_sde_pytorch's loop
      s.sub_((1.0 - decay) * (s - p.detach()))
    if n in (1, 10, 2000):
      assert all(torch.equal(a, b) for a, b in zip(ema.shadow_params, shadows)), n


@pytest.mark.parametrize('impl', ['default', 'fused'])
def test_adam_resumes_a_channels_last_model_exactly(impl, tmp_path):
  """Checkpoints hold Adam's moments contiguous; restored onto channels_last weights they take
  the weights' layout, which fused Adam needs (it walks them in memory order: a resumed run
  drifted by 7e-3 before)."""
  g = torch.Generator().manual_seed(2)
  grads = [[torch.randn(p, generator=g) for p in ((8, 3, 3, 3), (8,))] for _ in range(5)]

  def run(steps, restore_from=None):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    config = _optim_config(warmup=0, grad_clip=-1.)
    config.optim.adam_impl = impl
    state = dict(model=model, optimizer=losses.get_optimizer(config, model.parameters()),
                 ema=ExponentialMovingAverage(model.parameters(), decay=0.9), step=0)
    if restore_from:
      utils.restore_checkpoint(restore_from, state, 'cpu')
    for step in steps:
      for p, grad in zip(model.parameters(), grads[step]):
        p.grad = grad.contiguous(memory_format=torch.channels_last) if grad.ndim == 4 else grad
      state['optimizer'].step()
    return state

  whole = run(range(5))
  utils.save_checkpoint(tmp_path / 'ckpt.pth', run(range(3)))
  resumed = run(range(3, 5), restore_from=tmp_path / 'ckpt.pth')
  weight = resumed['model'].weight
  assert resumed['optimizer'].state[weight]['exp_avg'].stride() == weight.stride()
  for a, b in zip(whole['model'].parameters(), resumed['model'].parameters()):
    assert torch.equal(a, b)


@pytest.mark.parametrize('impl', ['foreach', 'fused'])
def test_adam_implementations(impl, tmp_path):
  """'foreach' gives the reference's numbers on the CPU; 'fused' is within float32 rounding.
  A checkpoint stores torch's neutral choice; restored, the optimizer keeps its own."""
  results = {}
  for name in ('default', impl):
    config = _optim_config(warmup=0, grad_clip=-1.)
    config.optim.adam_impl = name
    torch.manual_seed(0)
    model = Linear()
    optimizer = losses.get_optimizer(config, model.parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
      for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
      optimizer.step()
    results[name] = [p.detach() for p in model.parameters()]
  for a, b in zip(results['default'], results[impl]):
    if impl == 'foreach':
      assert torch.equal(a, b)
    else:
      torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
  state = dict(model=model, optimizer=optimizer,
               ema=ExponentialMovingAverage(model.parameters(), decay=0.9), step=10)
  utils.save_checkpoint(tmp_path / 'ckpt.pth', state)
  saved = torch.load(tmp_path / 'ckpt.pth', weights_only=True)['optimizer']['param_groups'][0]
  assert saved['foreach'] is None and saved['fused'] is None
  utils.restore_checkpoint(tmp_path / 'ckpt.pth', state, 'cpu')
  assert optimizer.param_groups[0][impl] is True
  assert all(s['step'].item() == 10 for s in optimizer.state.values())


def test_unknown_adam_impl_is_named():
  config = _optim_config()
  config.optim.adam_impl = 'turbo'
  with pytest.raises(ValueError, match="adam_impl 'turbo'. Known: default, foreach, fused"):
    losses.get_optimizer(config, [torch.nn.Parameter(torch.ones(1))])


def _fp16_state(init_scale):
  torch.manual_seed(0)
  model = Linear()
  config = _optim_config(warmup=0, grad_clip=1.)
  state = dict(model=model, optimizer=losses.get_optimizer(config, model.parameters()),
               ema=ExponentialMovingAverage(model.parameters(), decay=0.9), step=0)
  scaler = torch.amp.GradScaler('cpu', init_scale=init_scale)
  step_fn = losses.get_step_fn(SDES['ve'](), True, losses.optimization_manager(config),
                               generator=torch.Generator().manual_seed(0), precision='fp16',
                               scaler=scaler)
  return state, scaler, step_fn


def test_fp16_step_with_overflowing_gradients_is_skipped_not_stopped():
  """A loss scale of 2^40 overflows the fp16 gradients: the scaler skips the update (weights
  unchanged), halves its scale, and the step returns a finite loss without raising."""
  state, scaler, step_fn = _fp16_state(2. ** 40)
  before = [p.detach().clone() for p in state['model'].parameters()]
  loss = step_fn(state, torch.randn((16,) + SHAPE, generator=torch.Generator().manual_seed(2)))
  assert torch.isfinite(loss) and state['step'] == 1 and scaler.get_scale() == 2. ** 39
  assert all(torch.equal(b, p) for b, p in zip(before, state['model'].parameters()))


def test_fp16_gradients_are_unscaled_before_clipping():
  """The reported norm is that of the true gradients (as in fp32, up to fp16 rounding), not of
  the scaled ones, so grad_clip means the same in every precision."""
  x0 = torch.randn((16,) + SHAPE, generator=torch.Generator().manual_seed(2))
  state, scaler, step_fn = _fp16_state(2. ** 10)
  step_fn(state, x0)
  state32, _, _ = _fp16_state(1.)
  step32 = losses.get_step_fn(SDES['ve'](), True, losses.optimization_manager(_optim_config(0)),
                              generator=torch.Generator().manual_seed(0))
  step32(state32, x0)
  assert scaler.get_scale() == 2. ** 10  # not skipped
  assert step_fn.grad_norm.item() == pytest.approx(step32.grad_norm.item(), rel=1e-2)

