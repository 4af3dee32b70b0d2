"""Numerical precision and the speed options around it: the one place where a precision name
('fp32' | 'bf16' | 'fp16') becomes an autocast context and a gradient scaler, where a network is
compiled (config.training.compile / sampling.compile), and where process-wide backend settings
are made (cuDNN autotuning, TF32, the CPU allocator). The channels_last layout is applied where
the network is built (models.utils.create_model, config.model.channels_last).

Lower precision applies to the network only: weights, optimizer state, EMA, the SDE arithmetic
and sampler states stay float32. Training runs the forward pass and the loss under autocast
(`StepFn`); samplers get `autocast_model(model, ...)`, a module that runs the network under
autocast and returns float32, so no sampler changes.

    with precision.autocast('bf16', 'cuda'):
      loss = loss_fn(model, batch)
    scaler = precision.grad_scaler('fp16', 'cuda')             # None unless fp16
    fast = precision.autocast_model(model, 'bf16')              # model(x, labels) -> float32

Likelihoods (bits/dim) stay float32: the ODE's tolerance (1e-5) is below bf16's resolution.
"""
import contextlib
import ctypes
import ctypes.util

import torch
import torch.nn as nn

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
# Unit roundoff (the largest relative rounding error, torch.finfo(dtype).eps / 2) of each
# precision: 6.0e-8, 3.9e-3, 4.9e-4.
RESOLUTION = {'fp32': 2. ** -24, 'bf16': 2. ** -8, 'fp16': 2. ** -11}


def check(precision, key='precision'):
  """`precision` if it is a known name; otherwise a ValueError naming `key` and the choices."""
  if precision not in PRECISIONS:
    raise ValueError(f'Unknown precision {precision!r} in config.{key}. Known: '
                     f'{", ".join(PRECISIONS)} (fp16 trains with a gradient scaler).')
  return precision


def autocast(precision, device_type):
  """The context that runs a network in `precision` on `device_type` ('cuda', 'cpu', ...).

  'fp32' is a no-op context (no autocast state is touched, so the numbers are those of plain
  float32 code); 'bf16' / 'fp16' enable torch.autocast with that dtype.
  """
  dtype = PRECISIONS[check(precision)]
  if dtype is None:
    return contextlib.nullcontext()
  return torch.autocast(device_type, dtype=dtype)


def grad_scaler(precision, device_type):
  """torch.amp.GradScaler for 'fp16' (on CUDA and CPU); None otherwise (bf16 has fp32's range)."""
  if check(precision) != 'fp16':
    return None
  return torch.amp.GradScaler(device_type)


class AutocastModel(nn.Module):
  """`module(x, *args)` run under autocast in `precision` on x's device, its output returned as
  float32.

  Called like the network (model(x, labels)), so samplers, `get_score_fn` and the EMA need no
  change. The network's output is cast back to float32 (and to the contiguous layout) before
  any SDE arithmetic. The network is `self.module`, so `models.utils.unwrap` and checkpoints see
  the plain network.
  """

  def __init__(self, module, precision):
    super().__init__()
    self.module = module
    self.precision = check(precision)

  def forward(self, x, *args, **kwargs):
    with autocast(self.precision, x.device.type):
      out = self.module(x, *args, **kwargs)
    if out.dtype in (torch.float16, torch.bfloat16):
      out = out.float()
    return out.contiguous()  # channels_last networks: samplers may reshape / view the output


def autocast_model(model, precision):
  """`model` itself for 'fp32' (same numbers, no overhead), else an `AutocastModel`."""
  if check(precision) == 'fp32':
    return model
  return AutocastModel(model, precision)


def sampling_model_fn(config, precision=None):
  """model -> the network as samplers call it under `config`: in `precision` (default
  config.sampling.precision), compiled when config.sampling.compile (mode
  config.sampling.compile_mode), with a float32 contiguous output. None when there is nothing to
  do (fp32, not compiled, not channels_last): the sampler then gets the model itself.

  The prepared network is kept for the last model seen, so a compiled one is compiled once.
  """
  sampling = config.sampling
  precision = check(sampling.precision if precision is None else precision, 'sampling.precision')
  compile_mode = sampling.compile_mode if sampling.compile else None
  channels_last = config.model.channels_last
  if precision == 'fp32' and compile_mode is None and not channels_last:
    return None
  last = {}

  def prepare(model):
    if last.get('model') is not model:
      network = model if compile_mode is None else CompiledModel(model, compile_mode,
                                                                 key='sampling.compile')
      last.update(model=model, prepared=AutocastModel(network, precision))
    return last['prepared']

  return prepare


# --- Compilation --------------------------------------------------------------------------------

def _compile_errors():
  errors = [torch._dynamo.exc.TorchDynamoException]
  inductor_exc = getattr(getattr(torch, '_inductor', None), 'exc', None)
  if inductor_exc is not None and hasattr(inductor_exc, 'InductorError'):
    errors.append(inductor_exc.InductorError)
  return tuple(errors)


class CompiledModel(nn.Module):
  """`torch.compile(module, mode=mode)`, whose compilation errors (raised at the first call)
  say which config key turns compilation off. The network is `self.module._orig_mod`."""

  def __init__(self, module, mode='default', key='training.compile'):
    super().__init__()
    if mode not in COMPILE_MODES:
      raise ValueError(f'Unknown torch.compile mode {mode!r}. Known: {", ".join(COMPILE_MODES)}.')
    self.key = key
    try:
      import torch._dynamo
      if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError('torch.compile is not supported on this platform / Python version')
      self.module = torch.compile(module, mode=mode)
    except (ImportError, RuntimeError) as e:
      raise RuntimeError(f'{e}. Set --config.{key}=False to run without compilation.') from e

  def forward(self, *args, **kwargs):
    try:
      return self.module(*args, **kwargs)
    except _compile_errors() as e:
      raise RuntimeError(f'torch.compile could not compile the network ({type(e).__name__}: '
                         f'{str(e)[:2000]}). On the CPU it needs a C++ compiler (g++, or $CXX); '
                         f'on CUDA, Triton. Set --config.{self.key}=False to run without '
                         'compilation.') from e


def training_model(config, model):
  """`model` as the training loop calls it: compiled when config.training.compile (mode
  training.compile_mode). Checkpoints still hold the plain network (models.utils.unwrap)."""
  training = config.training
  if not training.compile:
    return model
  return CompiledModel(model, training.compile_mode, key='training.compile')


# --- Process-wide backend settings --------------------------------------------------------------

def configure_backends(device, cudnn_benchmark=None, tf32=None):
  """cuDNN autotuning and TF32 on CUDA; on the CPU, glibc keeps freed memory (see below).

  Args:
    device: the torch.device that trains.
    cudnn_benchmark: autotune convolution algorithms per shape (None: on for CUDA). The chosen
      algorithm can differ between runs, so CUDA results are then not bit-reproducible.
    tf32: None keeps torch's defaults (TF32 convolutions, float32 matmuls: what score_sde_pytorch
      runs with); True uses TF32 for both; False for neither (full float32, slowest).
  """
  if device.type == 'cuda':
    torch.backends.cudnn.benchmark = True if cudnn_benchmark is None else bool(cudnn_benchmark)
    if tf32 is not None:
      torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
      torch.backends.cudnn.allow_tf32 = bool(tf32)
  elif device.type == 'cpu':
    keep_freed_cpu_memory()


_KEEPS_FREED_MEMORY = []


def keep_freed_cpu_memory(limit=1 << 30):
  """Let glibc's malloc reuse freed blocks of up to `limit` bytes instead of unmapping them.

  By default glibc returns big blocks (> 128 kB, adapting up to 32 MB) to the kernel on free, so
  every large activation is page-faulted in anew: the digits network's eval forward pass took
  ~13,000 page faults (53 MB) per call and ~20 % of its time (57-61 ms of CPU time with this
  setting, 73-79 ms without). This is the CPU counterpart of CUDA's caching allocator: memory
  stays with the process after its peak. Numbers do not change. Returns whether it applied
  (False off glibc). Idempotent.
  """
  if _KEEPS_FREED_MEMORY:
    return _KEEPS_FREED_MEMORY[0]
  applied = False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    for size in (limit, 32 << 20):  # older glibc caps the mmap threshold at 32 MB
      if libc.mallopt(m_mmap_threshold, size):
        applied = bool(libc.mallopt(m_trim_threshold, 2 * size))
        break
  except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
    pass
  _KEEPS_FREED_MEMORY.append(applied)
  return applied
