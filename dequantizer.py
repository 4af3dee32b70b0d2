"""Variational dequantization (Ho et al. 2019, Flow++; used for likelihoods by Song, Durkan, Murray
& Ermon 2021): a conditional flow q(u | x) over the noise u in [0, 1)^D that turns 8-bit images
x = k / 255 into continuous data y = (255 x + u) / 256, trained with the score model on the
variational bound

  -log P(x) <= E_{u ~ q(. | x)}[-log p(y) + log q(u | x)]  (+ the 8 bits/dim of the bins),

whose uniform special case (q = 1) is the paper's uniform dequantization. Bits/dim with it add
log q(u | x) / (D log 2) to the model's bits/dim of y, so they stay a bound on the discrete data.

The flow: eps ~ N(0, I) -> affine couplings with alternating checkerboard masks, each conditioned
on x through a small convolutional context network -> u = Phi(h), the standard normal CDF. The
last convolution of every coupling starts at zero, so a new dequantizer is the identity followed
by Phi: u is exactly uniform and log q = 0, i.e. training starts from uniform dequantization.
(Flow++ and yang-song/score_flow use logistic-mixture couplings with attention; this is the
small affine version, cheap enough for the CPU.)

Joint training (`training.dequantizer`): with the likelihood-weighted loss L(theta; y) (importance
sampled or not), the SDE bound is c L + E[-log p_T(x_T)] + const, with c = (T - eps) D / 2 for a
loss averaged over dimensions (c = T - eps for half the sum). The step minimises
  L(theta; y) + (E[-log p_T(x_T)] + log q(u | x)) / c
with one backward pass: the score network gets the loss's gradient as without the dequantizer,
and the flow gets the bound's gradient (through y) divided by c. The t < eps term of the bound is
left out of training (it is evaluated in bits/dim).
"""
import math

import torch
import torch.nn as nn

import datasets
import losses
from models.ema import ExponentialMovingAverage

_LOG_2PI = math.log(2 * math.pi)


def _checkerboard(shape, parity, device):
  h, w = shape[-2:]
  ii, jj = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing='ij')
  return ((ii + jj) % 2 == parity).float().reshape(1, 1, h, w)


class _Coupling(nn.Module):
  """h -> mask h + (1 - mask) (h exp(s) + t), (s, t) from the masked h and the context."""

  def __init__(self, channels, nf, parity, max_log_scale=3.):
    super().__init__()
    self.parity, self.max_log_scale = parity, max_log_scale
    self.net = nn.Sequential(nn.Conv2d(channels + nf, nf, 3, padding=1), nn.SiLU(),
                             nn.Conv2d(nf, nf, 1), nn.SiLU(),
                             nn.Conv2d(nf, 2 * channels, 3, padding=1))
    nn.init.zeros_(self.net[-1].weight)  # the identity at initialisation
    nn.init.zeros_(self.net[-1].bias)

  def forward(self, h, context):
    mask = _checkerboard(h.shape, self.parity, h.device)
    s, t = self.net(torch.cat([h * mask, context], dim=1)).chunk(2, dim=1)
    s = self.max_log_scale * torch.tanh(s / self.max_log_scale) * (1 - mask)  # bounded log-scale
    h = h * torch.exp(s) + t * (1 - mask)
    return h, s.flatten(1).sum(1)


class Dequantizer(nn.Module):
  """q(u | x): forward(eps, x) -> (u in (0, 1), log q(u | x)).

  Args (forward):
    eps: (B, C, H, W) standard normal noise.
    x: (B, C, H, W) the 8-bit images in [0, 1] (k / 255).
  Returns:
    u (B, C, H, W) in (0, 1); log q(u | x) (B,) in nats, the log-density over [0, 1)^D.
  """

  def __init__(self, channels, nf=32, num_couplings=4):
    super().__init__()
    self.context = nn.Sequential(nn.Conv2d(channels, nf, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(nf, nf, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(nf, nf, 3, padding=1))
    self.couplings = nn.ModuleList(_Coupling(channels, nf, parity=i % 2)
                                   for i in range(num_couplings))

  def forward(self, eps, x):
    context = self.context(x - 0.5)
    h, log_det = eps, torch.zeros(eps.shape[0], device=eps.device, dtype=eps.dtype)
    for coupling in self.couplings:
      h, ld = coupling(h, context)
      log_det = log_det + ld
    u = torch.special.ndtr(h)
    # log q(u) = log N(eps) - log |du / deps|, with log Phi'(h) = log N(h).
    log_normal = lambda v: (-0.5 * v ** 2 - 0.5 * _LOG_2PI).flatten(1).sum(1)
    return u, log_normal(eps) - log_det - log_normal(h)


def quantized(x01):
  """The 8-bit levels k / 255 of images in [0, 1] (undoing the scaler's rounding)."""
  return torch.round(x01 * 255.) / 255.


def dequantize(flow, x01, eps):
  """(y, log q): y = (255 x + u) / 256 in [0, 1] with u ~ q(. | x) from the noise `eps`."""
  u, log_q = flow(eps, x01)
  return (255. * x01 + u) / 256., log_q


class DequantizerState:
  """The flow, its EMA and its optimizer (config.optim's, over the flow's parameters): the
  checkpoint entry 'dequantizer' (`state_dict` / `load_state_dict`, tensors and numbers only).
  `restored` says whether a checkpoint held it."""

  def __init__(self, config, optimizer=True):
    tc = config.training
    self.flow = Dequantizer(config.data.num_channels, tc.dequantizer_nf,
                            tc.dequantizer_couplings).to(config.device)
    self.ema = ExponentialMovingAverage(self.flow.parameters(), decay=config.model.ema_rate)
    self.optimizer = losses.get_optimizer(config, self.flow.parameters()) if optimizer else None
    self.restored = False

  def state_dict(self):
    return dict(model=self.flow.state_dict(), ema=self.ema.state_dict(),
                optimizer=None if self.optimizer is None else self.optimizer.state_dict())

  def load_state_dict(self, state):
    self.flow.load_state_dict(state['model'], strict=True)
    self.ema.load_state_dict(state['ema'])
    if self.optimizer is not None and state.get('optimizer') is not None:
      self.optimizer.load_state_dict(state['optimizer'])
    self.restored = True

  def ema_flow(self):
    """The flow with the EMA weights copied in, in eval mode (for bits/dim)."""
    self.ema.copy_to(self.flow.parameters())
    return self.flow.eval()


def check_training_config(config):
  """ValueError unless config.training can train a dequantizer jointly."""
  tc = config.training
  if not tc.dequantizer:
    return
  fixes = []
  if not (tc.continuous and tc.likelihood_weighting):
    fixes.append('set training.continuous=True and training.likelihood_weighting=True (the flow '
                 'is trained on the likelihood bound, which only that loss is part of)')
  if config.data.uniform_dequantization:
    fixes.append('set data.uniform_dequantization=False (the flow replaces the uniform noise)')
  if tc.precision == 'fp16':
    fixes.append("use training.precision='fp32' or 'bf16' (fp16's gradient scaler is the score "
                 "optimizer's alone)")
  if fixes:
    raise ValueError('config.training.dequantizer=True: ' + '; '.join(fixes) + '.')


def bound_scale(sde, reduce_mean, dim, eps):
  """c: the SDE bound's integral term, in nats per image, is c times the likelihood-weighted loss."""
  return (sde.T - eps) * (dim / 2. if reduce_mean else 1.)


def joint_loss_fn(sde, config, deq, train):
  """loss_fn(model, batch, generator=None, shard=None) of `losses.StepFn` for joint training:
  the likelihood-weighted score loss on y = (255 x + u) / 256, u ~ q(. | x) from deq.flow, plus
  (E[-log p_T(x_T)] + log q(u | x)) / c (module doc). `batch` is the scaled 8-bit batch."""
  tc = config.training
  base = losses.get_sde_loss_fn(sde, train, reduce_mean=tc.reduce_mean, continuous=True,
                                likelihood_weighting=True,
                                importance_weighting=tc.importance_weighting, eps=tc.smallest_time)
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  def loss_fn(model, batch, generator=None, shard=None):
    draw = lambda: losses.draw_normal(batch, shard, generator)
    x01 = quantized(inverse_scaler(batch))
    y01, log_q = dequantize(deq.flow, x01, draw())
    y = scaler(y01)
    score_loss = base(model, y, generator=generator, shard=shard)
    mean_T, std_T = sde.marginal_prob(y, torch.full((y.shape[0],), sde.T, device=y.device))
    neg_prior = -sde.prior_logp(mean_T + std_T.reshape(-1, 1, 1, 1) * draw())
    c = bound_scale(sde, tc.reduce_mean, batch[0].numel(), tc.smallest_time)
    return score_loss + torch.mean(neg_prior + log_q) / c

  return loss_fn


class JointStep:
  """A `losses.StepFn` over the joint loss that also steps the dequantizer: its gradients are
  zeroed before and (averaged over ranks, clipped as config.optim says) applied after the score
  model's step, and its EMA moves; evaluation steps use its EMA weights. `grad_norm` is the score
  model's, `deq_grad_norm` the flow's."""

  def __init__(self, step_fn, deq, optimize_fn, world=1):
    self.step_fn, self.deq, self.optimize_fn, self.world = step_fn, deq, optimize_fn, world
    self.generator = step_fn.generator
    self.deq_grad_norm = None

  @property
  def grad_norm(self):
    return self.step_fn.grad_norm

  def __call__(self, state, batch):
    deq, params = self.deq, list(self.deq.flow.parameters())
    if not self.step_fn.train:
      with torch.no_grad(), deq.ema.averaged(params):
        return self.step_fn(state, batch)
    deq.flow.train()
    deq.optimizer.zero_grad(set_to_none=True)
    loss = self.step_fn(state, batch)
    if self.world > 1:
      import torch.distributed as dist
      for p in params:
        if p.grad is not None:
          dist.all_reduce(p.grad)
          p.grad /= self.world
    self.deq_grad_norm = self.optimize_fn(deq.optimizer, params, step=state['step'] - 1)
    deq.ema.update(params)
    return loss


def joint_step_fns(config, sde, deq, noise_generator, shard=None):
  """The training and evaluation `JointStep`s of config (training.dequantizer=True; ValueError,
  naming the fix, for settings it cannot train with)."""
  check_training_config(config)
  tc = config.training
  world = shard[1] if shard is not None else 1
  optimize_fn = losses.optimization_manager(config)
  train = losses.StepFn(joint_loss_fn(sde, config, deq, train=True), train=True,
                        optimize_fn=optimize_fn, generator=noise_generator, shard=shard,
                        precision=tc.precision)
  evaluate = losses.StepFn(joint_loss_fn(sde, config, deq, train=False), train=False,
                           generator=torch.Generator(device=noise_generator.device), shard=shard,
                           precision=tc.precision)
  return JointStep(train, deq, optimize_fn, world), JointStep(evaluate, deq, optimize_fn, world)


def variational_bpd_fn(bpd_fn, flow, config):
  """bpd_fn (model, data, generator=None) -> (bpd, z, nfe) of uniformly dequantized data, turned
  into the same of variationally dequantized data: `data` holds the scaled 8-bit images; u is
  drawn from q(. | x) with noise of `generator` (first), and log q(u | x) / (D log 2) is added."""
  scaler, inverse_scaler = datasets.get_data_scaler(config), datasets.get_data_inverse_scaler(config)

  def fn(model, data, generator=None):
    x01 = quantized(inverse_scaler(data))
    device = data.device if generator is None else generator.device
    eps = torch.randn(data.shape, generator=generator, device=device).to(data)
    with torch.no_grad():
      y01, log_q = dequantize(flow, x01, eps)
    bpd, z, nfe = bpd_fn(model, scaler(y01), generator=generator)
    return bpd + (log_q / (data[0].numel() * math.log(2))).to(bpd), z, nfe

  return fn
