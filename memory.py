"""Training memory without a GPU: the peak of a training step measured on fake tensors, and the
advice a CUDA out-of-memory error of the first step comes with.

    est = memory.estimate(config)                      # fixed + per-image bytes (batches 8, 16)
    with memory.explained_oom(config, world_size):     # around the first training step
      loss = train_step(state, batch)

`measure_step`: the training step (losses.step_fns_from_config: loss, backward, clipping, Adam,
EMA) runs under torch's FakeTensorMode (shapes, dtypes and strides but no numbers, no memory: a
1024 px step at batch 8 takes seconds). A TorchDispatchMode (`LiveBytes`) adds the bytes of each
new storage an operator returns (rounded up to CUDA's 512-byte blocks) and subtracts them when
it is freed (weakref finalizer); its peak plus what the state holds between steps (weights, EMA,
Adam's moments, the batch) is the step's peak, what torch.cuda.max_memory_allocated reports. The
CPU runs CUDA's code paths meanwhile (`like_cuda`: autocast policy, fused dropout, multi-tensor
Adam and EMA). Not counted: the CUDA context, cuBLAS / cuDNN workspaces and the allocator's
fragmentation, the margin `usable_bytes` leaves (docs/memory.md).
"""
import collections
import contextlib
import re
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GiB = 2 ** 30
# A card of G GiB leaves 0.9 G - 1 GiB to a training step: 1 GiB for the CUDA context and the
# cuBLAS / cuDNN workspaces, 10 % for the caching allocator's fragmentation and rounding.
CONTEXT_BYTES = 1 * GiB
ALLOCATOR_FRACTION = 0.9


def usable_bytes(total_bytes):
  """What a training step may allocate on a card of `total_bytes` (see CONTEXT_BYTES)."""
  return ALLOCATOR_FRACTION * total_bytes - CONTEXT_BYTES


class LiveBytes(TorchDispatchMode):
  """Bytes of the tensor storages that operators create while active: `live` now and `peak`.

  A storage counts from the operator that returns it until it is freed (views and in-place
  results add nothing). Works on real and fake tensors; `round_to` rounds each storage up as
  the CUDA caching allocator does (512 bytes); `round_to=1` counts exact bytes. `phase(name)`
  starts a phase whose own peak goes to `phases[name]`. With `snapshot_at=n` (an operator count,
  e.g. a previous run's `peak_index`), `snapshot` holds the bytes live after operator n by the
  operator and image size that made them ('aten.silu.default @256').
  """

  def __init__(self, round_to=512, snapshot_at=None):
    super().__init__()
    self.round_to = round_to
    self.live = self.peak = self.ops = self.peak_index = 0
    self.peak_op = None  # the operator that reached the peak
    self.phases, self._phase = {}, None
    self.snapshot_at, self.snapshot = snapshot_at, None
    self._live = {}  # storage key -> (bytes, label)

  def phase(self, name):
    self._phase = name
    self.phases[name] = self.live

  def _free(self, key):
    self.live -= self._live.pop(key)[0]

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    kwargs = kwargs or {}
    out = func(*args, **kwargs)
    self.ops += 1
    inputs = None
    for t in tree_leaves(out):
      if not isinstance(t, torch.Tensor) or t.device.type == 'meta':
        continue
      storage = t.untyped_storage()
      key = storage._cdata  # the StorageImpl: views and in-place results share it
      if key in self._live:
        continue
      if inputs is None:  # views / in-place results of tensors made before: not new
        inputs = {a.untyped_storage()._cdata for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor) and a.device.type != 'meta'}
      if key in inputs:
        continue
      nbytes = -(-storage.nbytes() // self.round_to) * self.round_to
      self._live[key] = (nbytes, f'{func} @{t.shape[-1]}' if t.dim() == 4 else str(func))
      self.live += nbytes
      weakref.finalize(storage, self._free, key)
      if self.live > self.peak:
        self.peak, self.peak_op, self.peak_index = self.live, str(func), self.ops
      if self._phase is not None:
        self.phases[self._phase] = max(self.phases[self._phase], self.live)
    if self.ops == self.snapshot_at:
      self.snapshot = collections.Counter()
      for nbytes, label in self._live.values():
        self.snapshot[label] += nbytes
    return out


def _to_float32(value):
  """value with its bf16 / fp16 tensors (also in lists) cast to float32."""
  if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
    return value.float()
  if isinstance(value, (list, tuple)):
    return type(value)(_to_float32(v) for v in value)
  return value


# CUDA autocast's float32 operators that CPU autocast leaves in the input's dtype (those these
# networks and losses can reach; aten/src/ATen/autocast_mode.cpp), and its operators that
# reduce in float32 unless given a dtype.
CUDA_FP32_OPS = ('group_norm', 'layer_norm', 'exp', 'expm1', 'log', 'log1p', 'log2', 'log10',
                 'rsqrt', 'reciprocal', 'pow.Tensor_Scalar', 'pow.Tensor_Tensor', 'pow.Scalar',
                 'softplus', 'upsample_nearest2d.vec', 'upsample_nearest2d',
                 'upsample_bilinear2d.vec', 'logsumexp')
CUDA_FP32_DTYPE_OPS = ('sum', 'sum.dim_IntList', 'softmax.int', 'log_softmax.int', 'cumsum',
                       'prod')
# CPU autocast casts the inputs of these to the widest dtype first (a copy); CUDA's kernels
# promote as they go.
CUDA_NATIVE_OPS = ('cat', 'stack')


def _op(name):
  base, _, overload = name.partition('.')
  return getattr(getattr(torch.ops.aten, base), overload or 'default')


def _autocast_kernel(op, policy):
  below = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

  def kernel(*args, **kwargs):
    with torch._C._ExcludeDispatchKeyGuard(below):  # as autocast's own kernels redispatch
      if policy == 'native':
        return op(*args, **kwargs)
      if policy == 'fp32':
        return op(*_to_float32(args), **{k: _to_float32(v) for k, v in kwargs.items()})
      if args[0].dtype in (torch.bfloat16, torch.float16) and kwargs.get('dtype') is None:
        kwargs = dict(kwargs, dtype=torch.float32)
      return op(*args, **kwargs)

  return kernel


def _fused_dropout(input, p, train):
  """aten::dropout as on CUDA: the fused kernel, which keeps a bool mask (1 byte per element)
  where the CPU's composite keeps one in the input's dtype (at::dropout)."""
  if train and 0 < p < 1 and input.numel() > 0:
    return torch.ops.aten.native_dropout(input, p, train)[0]
  return input if not train or p == 0 or input.numel() == 0 else input * torch.zeros_like(input)


@contextlib.contextmanager
def cuda_kernels():
  """Within: CPU autocast casts as CUDA autocast does, and dropout runs CUDA's fused kernel.

  The operators CUDA autocast runs in float32 and CPU autocast in bf16 / fp16 (GroupNorm, log,
  exp, pow, nearest upsampling, ...) get AutocastCPU kernels that cast to float32, so their
  outputs, and what the backward pass saves of them, have CUDA's sizes. Checked operator by
  operator against CUDA autocast on fake CUDA tensors (bench_memory.forward_ops, the tests).
  """
  import warnings
  lib = torch.library.Library('aten', 'IMPL')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "overriding a previously registered kernel"
      for names, policy in ((CUDA_FP32_OPS, 'fp32'), (CUDA_FP32_DTYPE_OPS, 'fp32 dtype'),
                            (CUDA_NATIVE_OPS, 'native')):
        for name in names:
          lib.impl(name, _autocast_kernel(_op(name), policy), 'AutocastCPU')
      lib.impl('dropout', _fused_dropout, 'CompositeImplicitAutograd')
    yield
  finally:
    lib._destroy()


def _storages_bytes(tensors, round_to=512):
  """Bytes of the distinct storages of `tensors` (each rounded up to `round_to`)."""
  sizes = {}
  for t in tensors:
    if isinstance(t, torch.Tensor):
      storage = t.untyped_storage()
      sizes[storage._cdata] = -(-storage.nbytes() // round_to) * round_to
  return sum(sizes.values())


def state_tensors(state):
  """The tensors a training state holds between steps: weights, buffers, EMA, Adam's moments."""
  model, tensors = state['model'], []
  tensors += list(model.parameters()) + list(model.buffers())
  tensors += list(state['ema'].shadow_params)
  for per_param in state['optimizer'].state.values():
    tensors += [v for v in per_param.values() if isinstance(v, torch.Tensor)]
  return tensors


def _step_config(config, batch, precision, checkpointing, cuda):
  config = config.copy_and_resolve_references()
  config.training.batch_size = batch
  if precision is not None:
    config.training.precision = precision
  if checkpointing is not None:
    config.model.checkpointing = checkpointing
  config.device = torch.device('cpu')
  config.model.channels_last = False  # same bytes; fake tensors cannot change layout in place
  config.training.compile = False
  if cuda and config.optim.adam_impl == 'default':
    config.optim.adam_impl = 'foreach'  # CUDA's default Adam (its step temporaries)
  return config


def _upfirdn2d_as_on_cuda(x, kernel, up=1, down=1, pad=(0, 0)):
  """models.up_or_down_sampling.upfirdn2d without its CPU float32 detour: the depthwise
  convolution under autocast, as CUDA runs it (same code path otherwise; tests compare them)."""
  from models import up_or_down_sampling
  return up_or_down_sampling.depthwise_fir(x, kernel, up, down, pad)


@contextlib.contextmanager
def like_cuda():
  """Within: the CPU runs a training step's operators with CUDA's dtypes and sizes: its autocast
  policy, fused dropout, FIR filters under autocast and its EMA update (one multi-tensor group:
  a temporary as large as the weights; models.ema keeps CPU groups cache-sized)."""
  from models import ema, up_or_down_sampling
  saved = ema.CPU_GROUP_ELEMENTS, up_or_down_sampling.upfirdn2d
  ema.CPU_GROUP_ELEMENTS = 1 << 62
  up_or_down_sampling.upfirdn2d = _upfirdn2d_as_on_cuda
  try:
    with cuda_kernels():
      yield
  finally:
    ema.CPU_GROUP_ELEMENTS, up_or_down_sampling.upfirdn2d = saved


@contextlib.contextmanager
def _fresh_kernel_cache():
  """Fake tensors must not stay in (or come from) the FIR kernels' cache."""
  from models import up_or_down_sampling
  up_or_down_sampling._kernel_tensor.cache_clear()
  try:
    yield
  finally:
    up_or_down_sampling._kernel_tensor.cache_clear()


def _build_state(config):
  """checkpoints.build_state on the current device without `.to(device)` (which cannot swap
  fake parameters): the model, its EMA and the optimizer."""
  import losses
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage
  import models  # noqa: F401  (registers the architectures)
  model = mutils.get_model(config.model.name)(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  return dict(optimizer=losses.get_optimizer(config, model.parameters()), model=model, ema=ema,
              step=0)


def measure_step(config, batch, precision=None, checkpointing=None, fake=True, cuda=True,
                 round_to=512, seed=0, snapshot_at=None, tracker=None):
  """Peak memory of a training step of `config` at `batch` images per GPU (bytes).

  Args:
    precision, checkpointing: override config.training.precision / model.checkpointing.
    fake: on fake tensors (no memory, no arithmetic); False runs the real step on the CPU.
    cuda: with CUDA's dtypes and code paths (`like_cuda`, multi-tensor Adam); False: the CPU's.
    round_to: storage rounding (512: CUDA's; 1: exact bytes).
    snapshot_at: see LiveBytes (what is live after that many operators).
    tracker: the LiveBytes (or subclass) to count with; default LiveBytes(round_to, snapshot_at).
  Returns:
    dict(peak_bytes: the most the step held, state included; state_bytes: held between steps
    (weights, buffers, EMA, Adam's moments, the batch); forward_backward_bytes / update_bytes:
    the peaks of the loss + backward and of the optimizer + EMA phases; peak_op, peak_index:
    the operator that reached the peak and its count; snapshot).
  """
  import losses  # local: memory.py is imported by what the training loop imports
  import sde_lib
  from torch._subclasses.fake_tensor import FakeTensorMode
  config = _step_config(config, batch, precision, checkpointing, cuda)
  shape = (batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  with contextlib.ExitStack() as stack:
    stack.enter_context(torch.random.fork_rng(devices=[]))  # the caller's RNG is left as it was
    if fake:
      stack.enter_context(_fresh_kernel_cache())
      stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
    if cuda:
      stack.enter_context(like_cuda())
    torch.manual_seed(seed)
    state = _build_state(config)
    sde, _ = sde_lib.get_sde(config)
    train_step, _ = losses.step_fns_from_config(config, sde, torch.Generator().manual_seed(seed))
    images = torch.rand(shape)
    params = [p for p in state['model'].parameters() if p.requires_grad]
    for p in params:
      p.grad = torch.zeros_like(p)
    state['optimizer'].step()  # Adam's moments exist, as after a first step (weights unchanged)
    for p in params:
      p.grad = None  # what the step's zero_grad(set_to_none=True) frees first
    held = _storages_bytes(state_tensors(state) + [images], round_to)
    tracker = tracker or LiveBytes(round_to, snapshot_at)
    optimize_fn = train_step.optimize_fn

    def tracked_optimize_fn(*args, **kwargs):
      tracker.phase('update')
      return optimize_fn(*args, **kwargs)

    train_step.optimize_fn = tracked_optimize_fn
    with tracker:
      tracker.phase('forward_backward')
      train_step(state, images)
  return dict(peak_bytes=held + tracker.peak, state_bytes=held,
              forward_backward_bytes=held + tracker.phases['forward_backward'],
              update_bytes=held + tracker.phases['update'], peak_op=tracker.peak_op,
              peak_index=tracker.peak_index, snapshot=tracker.snapshot)


def estimate(config, batches=(8, 16), **kwargs):
  """Training-step memory of `config` by batch size, from `measure_step` (kwargs) at `batches`.

  Where activations dominate, the loss + backward peak is affine in the batch (fixed_bytes:
  weights, EMA, Adam, gradients, autocast's weight copies; per_image_bytes: activations), exact
  to 1e-4 at 4-10x the fitted batches (docs/memory.md); at small batches of small networks the
  gradients' peak is flat and the fit would underestimate, so fit at batches like those run.
  The optimizer + EMA phase (update_bytes) does not depend on the batch; a step needs the larger
  (`step_bytes`). Returns dict(fixed_bytes, per_image_bytes, update_bytes, state_bytes,
  peaks={batch: peak_bytes}).
  """
  rows = {b: measure_step(config, b, **kwargs) for b in batches}
  fixed, per_image = fit_affine({b: r['forward_backward_bytes'] for b, r in rows.items()})
  return dict(fixed_bytes=fixed, per_image_bytes=per_image,
              update_bytes=max(r['update_bytes'] for r in rows.values()),
              state_bytes=rows[batches[0]]['state_bytes'],
              peaks={b: r['peak_bytes'] for b, r in rows.items()})


def step_bytes(est, batch):
  """What a step at `batch` images needs by the estimate `est` (bytes)."""
  return max(est['update_bytes'], est['fixed_bytes'] + est['per_image_bytes'] * batch)


def fit_affine(peaks):
  """Least-squares (fixed, per_image) of {batch: bytes} = fixed + per_image * batch."""
  xs, ys = list(peaks), list(peaks.values())
  if len(xs) == 1:
    return 0., ys[0] / xs[0]
  mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
  slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
  return my - slope * mx, slope


def max_batch(est, total_bytes):
  """The largest batch whose step fits `usable_bytes(total_bytes)` by the estimate `est`."""
  room = usable_bytes(total_bytes)
  if est['update_bytes'] > room or est['fixed_bytes'] + est['per_image_bytes'] > room:
    return 0
  return int((room - est['fixed_bytes']) // est['per_image_bytes'])


_TOTAL = re.compile(r'total capacity of ([\d.]+) ([GM])iB')


def _total_bytes(error):
  found = _TOTAL.search(str(error))
  return float(found.group(1)) * (GiB if found.group(2) == 'G' else 2 ** 20) if found else None


def explain_oom(config, error, total_bytes=None, world_size=1, estimates=None):
  """What to change when the first training step of `config` ran out of GPU memory.

  Args:
    config: the run's config (training.batch_size is the global batch).
    error: the torch.cuda.OutOfMemoryError (its 'total capacity of X GiB' gives the card size
      when `total_bytes` is None).
    total_bytes: the card's memory (torch.cuda.get_device_properties(d).total_memory).
    world_size: processes sharing the global batch.
    estimates: {(precision, checkpointing): `estimate(...)`} to use instead of measuring.
  Returns:
    A message: the step's estimated need, and what batch size, bf16 and the next checkpointing
    level allow (each setting measured on fake tensors: ~20 s for the 1024 px network).
  """
  precision = config.training.precision
  ckpt = config.model.checkpointing
  batch = max(config.training.batch_size // world_size, 1)
  total = total_bytes or _total_bytes(error)
  deeper = [{'none': 'blocks', 'blocks': 'all'}[ckpt]] if ckpt != 'all' else []
  settings = [(precision, ckpt)] + [(p, c) for p in dict.fromkeys((precision, 'bf16'))
                                    for c in [ckpt] + deeper if (p, c) != (precision, ckpt)]
  estimates = dict(estimates or {})
  around = (max(batch // 2, 1), max(batch, 2))  # fitted near the batch that failed
  for p, c in settings:
    if (p, c) not in estimates:  # fp16 holds the bytes bf16 holds
      estimates[p, c] = estimate(config, around, precision='bf16' if p == 'fp16' else p,
                                 checkpointing=c)
  now = estimates[precision, ckpt]
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  lines = [f'CUDA ran out of memory in the first training step: {first}',
           f'memory.estimate of this step (docs/memory.md): {step_bytes(now, batch) / GiB:.1f} '
           f'GiB at {batch} images per GPU (training.precision={precision}, '
           f'model.checkpointing={ckpt}): {now["fixed_bytes"] / GiB:.2f} GiB of weights, EMA, '
           f'Adam and gradients + {now["per_image_bytes"] / GiB:.3f} GiB per image.']
  if total is None:
    lines.append('The card size is unknown: docs/memory.md lists the batch each card fits.')
    return '\n'.join(lines)
  lines.append(f'This card has {total / GiB:.0f} GiB, ~{usable_bytes(total) / GiB:.1f} GiB '
               'for the step (the rest: CUDA context, allocator). Change one of:')
  fits = max_batch(now, total)
  if fits >= batch:
    lines.append('  (by the estimate this batch fits: is another process using the GPU?)')
  per_gpu = f' ({world_size} GPUs: {fits} per GPU)' if world_size > 1 else ''
  lines.append(f'  --config.training.batch_size={fits * world_size}{per_gpu}' if fits else
               '  the batch size: not even 1 image per GPU fits in this setting')
  for (p, c) in settings[1:]:
    est = estimates[p, c]
    flags = ' '.join(f'--config.{key}={value}' for key, value, old in
                     (('training.precision', p, precision), ('model.checkpointing', c, ckpt))
                     if value != old)
    most = max_batch(est, total)
    verdict = (f'fits batch_size={config.training.batch_size}' if most >= batch else
               f'then batch_size <= {most * world_size}' if most else 'still does not fit')
    lines.append(f'  {flags}: {est["per_image_bytes"] / GiB:.3f} GiB per image, '
                 f'{step_bytes(est, batch) / GiB:.1f} GiB at this batch; {verdict}')
  return '\n'.join(lines)


@contextlib.contextmanager
def explained_oom(config, world_size=1, enabled=True):
  """Around the first training step: a CUDA out-of-memory error is raised again with
  `explain_oom`'s advice (same type; the original is its __cause__)."""
  try:
    yield
  except torch.cuda.OutOfMemoryError as e:
    if not enabled:
      raise
    try:
      advice = explain_oom(config, e, world_size=world_size)
    except Exception as failure:  # the advice must never hide the error itself
      advice = f'{e} (memory.explain_oom failed: {failure!r})'
    raise torch.cuda.OutOfMemoryError(advice) from e
