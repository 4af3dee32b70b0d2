"""Variational dequantization (dequantizer.py) against closed forms.

The flow's log q(u | x) is checked against the change of variables computed by autograd; a new
flow is exactly uniform dequantization; trained on a density whose bins are far from uniform, q
closes the gap between the uniform bound and the exact discrete log-likelihood without crossing
it (a sign or scale error in log q crosses it or stops short). Joint training with a fixed exact
score moves the SDE bound the same way; `--mode eval` adds log q to the bits/dim, refuses a
checkpoint without a flow, and a run with the dequantizer stops and resumes bit-identically.
"""
import json
import math

import numpy as np
import pytest
import torch

import checkpoints
import datasets
import dequantizer
import eval_lib
import likelihood
import sde_lib
from workdir import Layout
from configs import load_config
from gaussian_score import ExactScoreModel, GaussianMixture
from test_eval_lib import few_digits, tiny_config, write_checkpoint  # noqa: F401 (a fixture)
from models.ema import ExponentialMovingAverage

LOG256 = math.log(256.)


def _randomised(flow, scale=0.3, seed=0):
  """The flow with its zero-initialised convolutions filled in: no longer the identity."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in flow.parameters():
      p.add_(scale * torch.randn(p.shape, generator=g))
  return flow


def _levels(n, shape, seed=0):
  return torch.randint(0, 256, (n,) + shape, generator=torch.Generator().manual_seed(seed)) / 255.


def test_a_new_dequantizer_is_uniform_dequantization():
  flow = dequantizer.Dequantizer(1, nf=8)
  eps = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
  u, log_q = flow(eps, _levels(64, (1, 8, 8)))
  assert torch.equal(u, torch.special.ndtr(eps))  # Phi(N(0, 1)) is U(0, 1)
  assert log_q.shape == (64,) and log_q.abs().max() < 1e-4


@pytest.mark.parametrize('channels', [1, 3])
def test_log_q_is_the_change_of_variables(channels):
  """log q(u | x) = log N(eps) - log |det du / deps|, the determinant by autograd (float64)."""
  torch.manual_seed(0)
  flow = _randomised(dequantizer.Dequantizer(channels, nf=8, num_couplings=3), scale=0.1).double()
  x = _levels(1, (channels, 3, 4)).double()
  eps = torch.randn(1, channels, 3, 4, dtype=torch.float64)
  u, log_q = flow(eps, x)
  jac = torch.autograd.functional.jacobian(lambda e: flow(e.reshape(eps.shape), x)[0].flatten(),
                                           eps.flatten())
  log_normal = (-0.5 * eps ** 2 - 0.5 * math.log(2 * math.pi)).sum()
  expected = log_normal - torch.linalg.slogdet(jac)[1]
  assert (u > 0).all() and (u < 1).all()
  # Not the identity: the couplings mix pixels, and q is not uniform.
  assert (jac - torch.diag(torch.diag(jac))).abs().max() > 1e-2 and abs(log_q.item()) > 0.05
  torch.testing.assert_close(log_q[0], expected, rtol=0, atol=1e-9)


def _bin_gaussian(offset=0.2, std=0.3):
  """A density over y in [0, 1] whose mass in the bin of level k is N(u; offset, std^2) of the
  position u = 256 y - k in the bin (per dimension): the discrete probability of x and the
  uniform bound are closed forms."""
  normal = torch.distributions.Normal(offset, std)
  log_p_y = lambda u: (normal.log_prob(u) + LOG256).flatten(1).sum(1)  # density of y = (k + u) / 256
  exact_per_dim = -math.log(float(normal.cdf(torch.tensor(1.)) - normal.cdf(torch.tensor(0.))))
  return log_p_y, exact_per_dim


def test_training_q_closes_the_gap_to_the_discrete_likelihood():
  """E_q[-log p(y) + log q] + D log 256 >= -log P(x): q trained on it ends near -log P(x), from the
  uniform bound 0.38 nats per dimension above, and never below it."""
  torch.manual_seed(0)
  log_p_y, exact_per_dim = _bin_gaussian()
  flow = dequantizer.Dequantizer(1, nf=16, num_couplings=4)
  opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
  shape, D = (1, 4, 4), 16

  def bound(n, seed):
    x = _levels(n, shape, seed)
    u, log_q = flow(torch.randn((n,) + shape), x)
    return (-log_p_y(u) + log_q) / D + LOG256  # nats per dimension

  with torch.no_grad():
    uniform = bound(4096, 1).mean().item()
  assert uniform - exact_per_dim > 0.3
  for step in range(300):
    opt.zero_grad()
    bound(128, 100 + step).mean().backward()
    opt.step()
  with torch.no_grad():
    trained = bound(4096, 2)
  se = trained.std().item() / math.sqrt(len(trained))
  assert trained.mean().item() > exact_per_dim - 4 * se  # a bound: never below -log P(x)
  # Measured: 0.674 (uniform) -> 0.305 against the exact 0.296.
  assert trained.mean().item() - exact_per_dim < 0.1 * (uniform - exact_per_dim)


def _joint_config(**overrides):
  config = load_config('vp/digits_ddpmpp_likelihood_deq')
  config.device = torch.device('cpu')
  config.training.dequantizer_nf = 16
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


class _FixedScore(ExactScoreModel):
  """The exact score of a Gaussian, with one unused parameter (the score optimizer needs one)."""

  def __init__(self, sde, mixture):
    super().__init__(sde, mixture)
    self.unused = torch.nn.Parameter(torch.zeros(()))


@pytest.mark.parametrize('reduce_mean', [True, False])
def test_joint_training_with_an_exact_score_lowers_the_model_bound(reduce_mean):
  """The model is N(m, s^2) in the scaled space with the bin offsets of `_bin_gaussian`, its score
  exact: the joint step's flow gradient (through the likelihood-weighted loss, the prior and
  log q, scaled by 1 / c) must lower E_q[-log p(y) + log q], whatever the loss's reduction."""
  torch.manual_seed(0)
  config = _joint_config(**{'training.reduce_mean': reduce_mean})
  sde, _ = sde_lib.get_sde(config)
  shape, D = (1, 4, 4), 16
  levels = _levels(1, shape, 3)[0]
  mean_y = (255. * levels + 0.2) / 256.  # in [0, 1]; scaled below
  std_y = 0.3 / 256.
  mixture = GaussianMixture.gaussian(2 * mean_y - 1, 2 * std_y)
  model = _FixedScore(sde, mixture)
  state = dict(model=model, optimizer=torch.optim.Adam(model.parameters()), step=0,
               ema=ExponentialMovingAverage(model.parameters(), 0.9),
               dequantizer=dequantizer.DequantizerState(config))
  config.optim.lr, config.optim.warmup = 3e-3, 0
  train_step, _ = dequantizer.joint_step_fns(config, sde, state['dequantizer'],
                                             torch.Generator().manual_seed(0))
  batch = (2 * levels - 1).expand((64,) + shape)
  flow = state['dequantizer'].flow

  def model_bound(n=2048):
    with torch.no_grad():
      y, log_q = dequantizer.dequantize(flow, levels.expand((n,) + shape), torch.randn((n,) + shape))
      log_p = torch.distributions.Normal(mean_y, std_y).log_prob(y).flatten(1).sum(1)
      return ((-log_p + log_q) / D + LOG256).mean().item()

  before = model_bound()
  for _ in range(150):
    train_step(state, batch)
  after = model_bound()
  exact = _bin_gaussian()[1]
  assert before - exact > 0.3
  # Measured: 0.679 -> 0.318 against 0.296 (both reductions); with c 10x too large or too small
  # the flow stops at 0.60 or drifts to 0.85.
  assert exact - 0.02 < after < exact + 0.15 * (before - exact), (before, after, exact)


def test_config_checks_name_the_fix():
  with pytest.raises(ValueError, match='likelihood_weighting=True'):
    dequantizer.check_training_config(_joint_config(**{'training.likelihood_weighting': False}))
  with pytest.raises(ValueError, match='uniform_dequantization=False'):
    dequantizer.check_training_config(_joint_config(**{'data.uniform_dequantization': True}))
  with pytest.raises(ValueError, match='fp16'):
    dequantizer.check_training_config(_joint_config(**{'training.precision': 'fp16'}))
  config = _joint_config(**{'training.dequantizer': False})
  with pytest.raises(ValueError, match='training.dequantizer=True'):
    likelihood.eval_functions(config, sde_lib.get_sde(config)[0], lambda x: x)


def test_variational_bpd_adds_log_q():
  """The bits/dim of x with the flow are the inner function's on y plus log q / (D log 2), and the
  inner function sees y in the bin of x."""
  config = _joint_config()
  flow = _randomised(dequantizer.Dequantizer(1, nf=8), scale=0.1)
  seen = {}

  def inner(model, data, generator=None):
    seen['y'] = data
    return torch.zeros(data.shape[0]), None, 7

  fn = dequantizer.variational_bpd_fn(inner, flow, config)
  x = _levels(5, (1, 4, 4))
  bpd, _, nfe = fn(None, 2 * x - 1, generator=torch.Generator().manual_seed(4))
  eps = torch.randn((5, 1, 4, 4), generator=torch.Generator().manual_seed(4))
  y, log_q = dequantizer.dequantize(flow, x, eps)
  torch.testing.assert_close(bpd, log_q / (16 * math.log(2)))
  torch.testing.assert_close(seen['y'], 2 * y - 1)
  k = torch.floor((seen['y'] + 1) / 2 * 256)
  assert nfe == 7 and torch.equal(k, torch.round(x * 255))


def test_eval_uses_the_trained_flow_and_refuses_checkpoints_without_one(tmp_path, few_digits):
  """`--mode eval` with eval.dequantization='variational' on a checkpoint with a flow: the bound
  files equal uniform bits/dim of the flow's y plus log q; a checkpoint without one is refused."""
  config = tiny_config(tmp_path)
  config.training.sde, config.training.likelihood_weighting = 'vpsde', True
  config.training.dequantizer, config.training.dequantizer_nf = True, 8
  config.model.embedding_type, config.model.scale_by_sigma = 'positional', False
  ev = config.eval
  ev.enable_loss = ev.enable_sampling = ev.enable_bpd = False
  ev.enable_bound, ev.bound_num_samples, ev.bpd_num_repeats = True, 3, 1
  ev.dequantization = 'variational'
  workdir = tmp_path / 'run'
  torch.manual_seed(0)
  state = checkpoints.build_state(config)
  _randomised(state['dequantizer'].flow, scale=0.05)
  state['dequantizer'].ema.shadow_params = [p.detach().clone()
                                            for p in state['dequantizer'].flow.parameters()]
  checkpoints.save_checkpoint(Layout(str(workdir)).snapshot(1), state)
  eval_lib.evaluate(config, str(workdir))
  got = np.load(workdir / 'eval' / 'test_ckpt_1_bound_0.npz')['arr_0']
  report = json.loads((workdir / 'eval' / 'report.json').read_text())['1']
  assert report['bound'] == pytest.approx(got.mean(), rel=1e-6)
  # The same numbers by hand: the flow's y, the bound of y, plus log q.
  restored = checkpoints.restore_checkpoint(Layout(str(workdir)).snapshot(1),
                                            checkpoints.build_state(config, optimizer=False), 'cpu')
  restored['ema'].copy_to(restored['model'].parameters())
  flow = restored['dequantizer'].ema_flow()
  sde, _ = sde_lib.get_sde(config)
  fns = likelihood.eval_functions(config, sde, datasets.get_data_inverse_scaler(config), flow)
  x = next(iter(eval_lib.eval_batches(config, False, uniform_dequantization=False)))
  from seeds import BITS_PER_DIM, derive_seed
  g = torch.Generator().manual_seed(derive_seed(config.seed, BITS_PER_DIM, 1, 0, 1))
  by_hand = fns['bound_fn'](restored['model'], 2 * x - 1, generator=g)[0]
  np.testing.assert_allclose(got, by_hand.numpy(), rtol=1e-5, atol=1e-5)
  # A checkpoint without the flow (trained without it) is refused, naming both ways out.
  plain = tiny_config(tmp_path)
  plain.training.sde, plain.model.embedding_type = 'vpsde', 'positional'
  write_checkpoint(plain, tmp_path / 'plain')
  with pytest.raises(ValueError, match='holds no variational dequantizer'):
    eval_lib.evaluate(config, str(tmp_path / 'plain'))
  # Also when it follows one that has a flow (the restored flow is not taken for its own).
  write_checkpoint(plain, workdir, ckpt=2)
  ev.end_ckpt = 2
  with pytest.raises(ValueError, match=r'checkpoint_2\.pth holds no variational'):
    eval_lib.evaluate(config, str(workdir))


def test_training_with_the_dequantizer_stops_and_resumes_bit_identically(tmp_path):
  """Stopped at step 10 and resumed to 20, a run with the dequantizer ends with the flow's
  weights, EMA and Adam state, and every RNG, of the run that never stopped."""
  from conftest import assert_same_run, whole_and_resumed_runs
  from test_train import _DEQUANTIZER, tiny_config as tiny_train_config
  whole, resumed = whole_and_resumed_runs(tmp_path, _DEQUANTIZER)
  assert whole['step'] == 21
  assert_same_run(whole, resumed)  # the dequantizer's weights, EMA and Adam state included
  fresh = dequantizer.DequantizerState(tiny_train_config(20, **_DEQUANTIZER)).flow.state_dict()
  assert any(not torch.equal(v, fresh[k]) for k, v in whole['dequantizer']['model'].items())


@pytest.mark.parametrize('name', ['vp/digits_ddpmpp_likelihood', 'vp/cifar10_ddpmpp_deep_likelihood',
                                  'subvp/cifar10_ddpmpp_deep_likelihood'])
def test_dequantizer_twins_change_nothing_else(name):
  """Each `_deq` config is its likelihood config with the dequantizer trained and evaluated with,
  and nothing else changed; each passes the training checks."""
  from workdir import flatten_config
  base, twin = (flatten_config(load_config(n).to_dict()) for n in (name, name + '_deq'))
  changed = {k for k in base if base[k] != twin[k]}
  assert changed == {'training.dequantizer', 'eval.dequantization'} and twin['training.dequantizer']
  assert twin['eval.dequantization'] == 'variational'
  dequantizer.check_training_config(load_config(name + '_deq'))
