"""Training objectives and the optimizer: denoising score matching over an SDE (paper, Eq. 7),
the legacy SMLD / DDPM losses, and the one-step train / eval function.

Every loss draws its own noise. It takes an optional `torch.Generator` and a `shard=(rank,
world_size)`: with a shard, the noise for the whole global batch is drawn and this rank keeps the
rows `rank::world_size`, which are exactly the rows a DistributedSampler gives it. Two processes
with half a batch each then draw the same noise as one process with the whole batch.
"""
import math

import torch

import importance
import precision as precision_lib
from models import utils as mutils
from sde_lib import VESDE, VPSDE

_OPTIMIZERS = {'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
# config.optim.adam_impl -> the constructor's (foreach, fused). 'default' leaves the choice to
# torch, as score_sde_pytorch does (a loop over parameters on the CPU, multi-tensor on CUDA);
# 'foreach' gave the same numbers on the CPU; 'fused' (one kernel) differs by ~1 ulp.
ADAM_IMPLS = {'default': (None, None), 'foreach': (True, None), 'fused': (None, True)}


def get_optimizer(config, params):
  """The optimizer named by `config.optim.optimizer` ('Adam' as in the paper, or 'AdamW'), with
  the implementation `config.optim.adam_impl` ('default' | 'foreach' | 'fused')."""
  name = config.optim.optimizer
  if name not in _OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {name!r} in config.optim.optimizer. '
                     f'Known: {", ".join(sorted(_OPTIMIZERS))}.')
  impl = _adam_impl(config)
  foreach, fused = ADAM_IMPLS[impl]
  try:
    return _OPTIMIZERS[name](params, lr=config.optim.lr, betas=(config.optim.beta1, 0.999),
                             eps=config.optim.eps, weight_decay=config.optim.weight_decay,
                             foreach=foreach, fused=fused)
  except RuntimeError as e:
    if impl != 'fused':
      raise
    raise ValueError(f'config.optim.adam_impl = "fused" is not supported here ({e}). Use '
                     '"foreach" (same numbers as "default") or "default".') from e


def _adam_impl(config):
  impl = config.optim.adam_impl
  if impl not in ADAM_IMPLS:
    raise ValueError(f'Unknown config.optim.adam_impl {impl!r}. Known: {", ".join(ADAM_IMPLS)}.')
  return impl


def optimization_manager(config):
  """optimize_fn(optimizer, params, step, scaler=None) with linear warm-up and gradient-norm
  clipping.

  The learning rate of step `step` is lr * min(step / warmup, 1) (no warm-up when warmup <= 0),
  stored as a Python float so optimizer state dicts load with `weights_only=True`. Gradients are
  clipped to total norm `grad_clip` (no clipping when negative). optimize_fn returns the total
  gradient norm before clipping, as a 0-d tensor (no host synchronisation).

  With a `torch.amp.GradScaler` (fp16), the gradients are unscaled before clipping, and the
  scaler skips the update when they hold inf / NaN (then lowers its scale); that is the
  scaler's normal work, not a failure of training.
  """

  def optimize_fn(optimizer, params, step, scaler=None, lr=config.optim.lr,
                  warmup=config.optim.warmup, grad_clip=config.optim.grad_clip):
    if warmup > 0:
      new_lr = float(lr) * min(float(step) / warmup, 1.0)
      for group in optimizer.param_groups:
        group['lr'] = new_lr
    params = [p for p in params if p.grad is not None]
    max_norm = grad_clip if grad_clip >= 0 else math.inf
    if scaler is not None:
      scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
    if scaler is None:
      optimizer.step()
    else:
      scaler.step(optimizer)
      scaler.update()
    return grad_norm

  return optimize_fn


def _reduce_op(reduce_mean):
  """Per-example reduction over data dimensions: mean, or half the sum (the paper's 1/2 ||.||^2)."""
  if reduce_mean:
    return lambda x: torch.mean(x.reshape(x.shape[0], -1), dim=-1)
  return lambda x: 0.5 * torch.sum(x.reshape(x.shape[0], -1), dim=-1)


def _draw(batch, shard, generator, draw_labels):
  """Draw (labels (B,), z (B, ...) standard normal) for the global batch and keep this rank's rows.

  `draw_labels(n)` draws the per-example time or noise-level index first, then z is drawn, the
  order score_sde_pytorch uses (so with shard=None and no generator the draws are the same).
  """
  rank, world = shard if shard is not None else (0, 1)
  labels = draw_labels(batch.shape[0] * world)
  return labels[rank::world], draw_normal(batch, shard, generator)


def draw_normal(batch, shard, generator):
  """Standard normal noise of `batch`'s shape: drawn for the global batch (shard = (rank, world),
  or None) from `generator`, this rank's rows kept."""
  rank, world = shard if shard is not None else (0, 1)
  z = torch.randn((batch.shape[0] * world,) + tuple(batch.shape[1:]), generator=generator,
                  device=batch.device, dtype=batch.dtype)
  return z[rank::world]


def get_sde_loss_fn(sde, train, reduce_mean=True, continuous=True, likelihood_weighting=True, eps=1e-5,
                    importance_weighting=False):
  """Denoising score matching mixed over t ~ U(eps, T) (paper, Eq. 7).

  For x(t) = mean(x0, t) + std(t) z, the per-example loss is
    lambda(t) ||s(x(t), t) + z / std(t)||^2,
  with lambda(t) = std(t)^2 (the paper's default weighting), or lambda(t) = g(t)^2 when
  `likelihood_weighting` (Song et al. 2021, "Maximum likelihood training", Eq. 9), which makes
  the loss an upper bound on the negative log-likelihood. ||.||^2 is the mean over data
  dimensions when `reduce_mean`, else half their sum.

  Args:
    sde: an `sde_lib.SDE`.
    train: evaluate the network in train mode (dropout on).
    reduce_mean: average over data dimensions instead of taking half the sum.
    continuous: the network is conditioned on continuous time.
    likelihood_weighting: use lambda(t) = g(t)^2.
    eps: smallest time sampled, avoiding the singular std(0) = 0.
    importance_weighting: with likelihood weighting, draw t from p(t) ~ g(t)^2 / std(t)^2 and
      weight by Z / (T - eps) (`importance.py`): the same expected loss, far lower variance.
  Returns:
    loss_fn(model, batch (B, C, H, W), generator=None, shard=None) -> scalar, the batch mean.
  """
  if importance_weighting and not likelihood_weighting:
    raise ValueError('config.training.importance_weighting reweights the likelihood-weighted '
                     'loss; set config.training.likelihood_weighting=True as well, or '
                     'importance_weighting=False.')
  reduce_op = _reduce_op(reduce_mean)
  if importance_weighting:
    draw_t = lambda n, generator, device: importance.sample_time(sde, n, eps, generator, device)
    scale = importance.normalizer(sde, eps) / (sde.T - eps)  # Z / (T - eps): keeps the mean
  else:
    draw_t = lambda n, generator, device: torch.rand(
      n, generator=generator, device=device) * (sde.T - eps) + eps

  def loss_fn(model, batch, generator=None, shard=None):
    score_fn = mutils.get_score_fn(sde, model, train=train, continuous=continuous)
    t, z = _draw(batch, shard, generator, lambda n: draw_t(n, generator, batch.device))
    mean, std = sde.marginal_prob(batch, t)
    std = std.reshape(-1, *([1] * (batch.ndim - 1)))
    score = score_fn(mean + std * z, t)
    if importance_weighting:  # g^2 / std^2 is in the density of t; Z / (T - eps) is left
      losses = reduce_op(torch.square(score * std + z)) * scale
    elif likelihood_weighting:
      g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
      losses = reduce_op(torch.square(score + z / std)) * g2
    else:
      losses = reduce_op(torch.square(score * std + z))
    return torch.mean(losses)

  return loss_fn


def get_smld_loss_fn(vesde, train, reduce_mean=False):
  """NCSN's loss (Song & Ermon 2019, Eq. 5) on the SDE's N discrete noise levels.

  With sigma_i drawn uniformly from the descending ladder, x~ = x0 + sigma_i z, the per-example
  loss is sigma_i^2 ||s(x~, i) + z / sigma_i||^2; the network is labelled with the index i
  (index 0 is the largest sigma).
  """
  if not isinstance(vesde, VESDE):
    raise ValueError(f'SMLD training needs a VESDE, got {type(vesde).__name__}.')
  sigmas_descending = torch.flip(vesde.discrete_sigmas, dims=(0,))
  reduce_op = _reduce_op(reduce_mean)

  def loss_fn(model, batch, generator=None, shard=None):
    model_fn = mutils.get_model_fn(model, train=train)
    labels, z = _draw(batch, shard, generator, lambda n: torch.randint(
      0, vesde.N, (n,), generator=generator, device=batch.device))
    sigmas = sigmas_descending.to(batch.device)[labels].reshape(-1, *([1] * (batch.ndim - 1)))
    noise = z * sigmas
    score = model_fn(batch + noise, labels)
    target = -noise / sigmas ** 2
    losses = reduce_op(torch.square(score - target)) * sigmas.flatten() ** 2
    return torch.mean(losses)

  return loss_fn


def get_ddpm_loss_fn(vpsde, train, reduce_mean=True):
  """DDPM's simple loss (Ho et al. 2020, Eq. 14): ||eps_theta(x_i, i) - z||^2 with i ~ U{0..N-1},
  x_i = sqrt(alpha_bar_i) x0 + sqrt(1 - alpha_bar_i) z."""
  if not isinstance(vpsde, VPSDE):
    raise ValueError(f'DDPM training needs a VPSDE, got {type(vpsde).__name__}.')
  reduce_op = _reduce_op(reduce_mean)

  def loss_fn(model, batch, generator=None, shard=None):
    model_fn = mutils.get_model_fn(model, train=train)
    labels, z = _draw(batch, shard, generator, lambda n: torch.randint(
      0, vpsde.N, (n,), generator=generator, device=batch.device))
    shape = (-1,) + (1,) * (batch.ndim - 1)
    a = vpsde.sqrt_alphas_cumprod.to(batch.device)[labels].reshape(shape)
    s = vpsde.sqrt_1m_alphas_cumprod.to(batch.device)[labels].reshape(shape)
    eps_pred = model_fn(a * batch + s * z, labels)
    return torch.mean(reduce_op(torch.square(eps_pred - z)))

  return loss_fn


class StepFn:
  """One training or evaluation step over `state` = dict(model, optimizer, ema, step).

  Training: zero the gradients, backpropagate the loss, `optimize_fn` (warm-up, clipping, update),
  step += 1, EMA update; `grad_norm` then holds the gradient norm before clipping. Evaluation:
  the loss under the EMA weights, without gradients. Calling it returns the loss (0-d tensor,
  not synchronised with the host: read it with .item() only when it is needed).

  The forward pass and the loss run under autocast in `precision` ('fp32' | 'bf16' | 'fp16');
  with fp16, `scaler` (a torch.amp.GradScaler) scales the loss before backpropagation. A step the
  scaler skips (inf / NaN gradients) still counts: step += 1 and the EMA moves towards the
  unchanged weights, as in any mixed-precision loop.
  """

  def __init__(self, loss_fn, train, optimize_fn=None, generator=None, shard=None,
               precision='fp32', scaler=None):
    if train and optimize_fn is None:
      raise ValueError('A training step needs optimize_fn (see losses.optimization_manager).')
    if scaler is not None and precision != 'fp16':
      raise ValueError(f'A gradient scaler is for fp16 training, not {precision!r}.')
    self.loss_fn = loss_fn
    self.train = train
    self.optimize_fn = optimize_fn
    self.generator = generator  # draws t / noise levels and z; None uses torch's global RNG
    self.shard = shard  # (rank, world_size) under DistributedDataParallel
    self.precision = precision_lib.check(precision)
    self.scaler = scaler
    self.grad_norm = None

  def _loss(self, model, batch):
    with precision_lib.autocast(self.precision, batch.device.type):
      return self.loss_fn(model, batch, generator=self.generator, shard=self.shard)

  def __call__(self, state, batch):
    model = state['model']
    if self.train:
      optimizer = state['optimizer']
      optimizer.zero_grad(set_to_none=True)
      loss = self._loss(model, batch)
      if self.scaler is None:  # (an optimize_fn of one's own need not know about scalers)
        loss.backward()
        self.grad_norm = self.optimize_fn(optimizer, model.parameters(), step=state['step'])
      else:
        self.scaler.scale(loss).backward()
        self.grad_norm = self.optimize_fn(optimizer, model.parameters(), step=state['step'],
                                          scaler=self.scaler)
      state['step'] += 1
      state['ema'].update(model.parameters())
      return loss.detach()
    ema = state['ema']
    with torch.no_grad(), ema.averaged(model.parameters()):
      return self._loss(model, batch)


def get_step_fn(sde, train, optimize_fn=None, reduce_mean=False, continuous=True,
                likelihood_weighting=False, generator=None, shard=None, precision='fp32',
                scaler=None, importance_weighting=False, eps=1e-5):
  """A `StepFn` for `sde`: the continuous SDE loss, or SMLD (VE) / DDPM (VP) when not continuous.

  Args:
    sde: an `sde_lib.SDE`.
    train: a training step (updates optimizer, step counter and EMA) or an evaluation step.
    optimize_fn: from `optimization_manager`; needed when training.
    reduce_mean, continuous, likelihood_weighting, importance_weighting, eps: as in
      `get_sde_loss_fn` (eps: config.training.smallest_time).
    generator: `torch.Generator` for the loss noise (on the batch's device); None: global RNG.
    shard: (rank, world_size) when the batch is one rank's part of a global batch.
    precision: 'fp32' | 'bf16' | 'fp16': autocast of the forward pass and the loss.
    scaler: `precision.grad_scaler('fp16', device_type)` for fp16 training; None otherwise.
  """
  if continuous:
    loss_fn = get_sde_loss_fn(sde, train, reduce_mean=reduce_mean, continuous=True,
                              likelihood_weighting=likelihood_weighting,
                              importance_weighting=importance_weighting, eps=eps)
  else:
    if likelihood_weighting or importance_weighting:
      raise ValueError('likelihood_weighting needs continuous training (importance_weighting too); '
                       'the discrete SMLD / DDPM losses have fixed weights. Set config.training.'
                       'likelihood_weighting=False and importance_weighting=False.')
    if isinstance(sde, VESDE):
      loss_fn = get_smld_loss_fn(sde, train, reduce_mean=reduce_mean)
    elif isinstance(sde, VPSDE):
      loss_fn = get_ddpm_loss_fn(sde, train, reduce_mean=reduce_mean)
    else:
      raise ValueError(f'Discrete training is defined for VESDE (SMLD) and VPSDE (DDPM), not '
                       f'{type(sde).__name__}; set config.training.continuous=True.')
  return StepFn(loss_fn, train, optimize_fn=optimize_fn, generator=generator, shard=shard,
                precision=precision, scaler=scaler)


def step_fns_from_config(config, sde, noise_generator, shard=None, grad_scaler=None):
  """The training and evaluation `StepFn`s of `config.training` and `config.optim`, in
  config.training.precision (fp16 training takes `grad_scaler`): what training runs, and what the
  memory and speed benches time. `shard` = (rank, world) under torchrun."""
  tc = config.training
  kwargs = dict(reduce_mean=tc.reduce_mean, continuous=tc.continuous,
                likelihood_weighting=tc.likelihood_weighting, generator=noise_generator, shard=shard,
                precision=tc.precision, importance_weighting=tc.importance_weighting,
                eps=tc.smallest_time)
  train_step = get_step_fn(sde, train=True, optimize_fn=optimization_manager(config),
                                  scaler=grad_scaler, **kwargs)
  # The evaluation loss draws from a generator of its own, reseeded per evaluation (eval_loss):
  # how often and on what batch size one evaluates (resumable changes) does not move the
  # training noise.
  kwargs['generator'] = torch.Generator(device=noise_generator.device)
  return train_step, get_step_fn(sde, train=False, **kwargs)
