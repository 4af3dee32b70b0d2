"""Exponential moving average of parameters, with score_sde_pytorch's decay warm-up and
state-dict format (`decay`, `num_updates`, `shadow_params`)."""
import contextlib

import torch


class ExponentialMovingAverage:
  """Shadow copies of the trainable parameters, updated as s <- s - (1 - decay) (s - p).

  With `use_num_updates`, the decay of update n is min(decay, (1 + n) / (10 + n)), so early
  averages are not dominated by the initial weights. Only parameters with `requires_grad`
  are tracked (NCSN++'s fixed Fourier `W` is not), in `parameters()` order.
  """

  def __init__(self, parameters, decay, use_num_updates=True):
    if not 0.0 <= decay <= 1.0:
      raise ValueError(f'EMA decay must be in [0, 1], got {decay}.')
    self.decay = decay
    self.num_updates = 0 if use_num_updates else None
    self.shadow_params = [p.clone().detach() for p in parameters if p.requires_grad]
    self.collected_params = []

  def update(self, parameters):
    """Move the shadow parameters towards `parameters`; call after every optimizer step."""
    decay = self.decay
    if self.num_updates is not None:
      self.num_updates += 1
      decay = min(decay, (1 + self.num_updates) / (10 + self.num_updates))
    one_minus_decay = 1.0 - decay
    with torch.no_grad():
      trainable = [p for p in parameters if p.requires_grad]
      # s - (1 - decay) (s - p) as three multi-tensor ops (3 launches, not 3 per parameter):
      # the same three roundings per element as the reference's loop, so the same numbers.
      for shadow, params in _cache_sized_groups(self.shadow_params, trainable):
        step = torch._foreach_sub(shadow, params)
        torch._foreach_mul_(step, one_minus_decay)
        torch._foreach_sub_(shadow, step)

  def copy_to(self, parameters):
    """Overwrite the trainable `parameters` with the averages."""
    trainable = [p for p in parameters if p.requires_grad]
    for s_param, param in zip(self.shadow_params, trainable):
      param.data.copy_(s_param.data)

  def store(self, parameters):
    """Keep a copy of `parameters`, to `restore` after evaluating with the averages."""
    self.collected_params = [param.clone() for param in parameters]

  def restore(self, parameters):
    """Put back the parameters saved by `store`."""
    for c_param, param in zip(self.collected_params, parameters):
      param.data.copy_(c_param.data)

  @contextlib.contextmanager
  def averaged(self, parameters):
    """Within the block, `parameters` hold the averages; their own values come back after it,
    also when it raises (`store`, `copy_to`, `restore`)."""
    parameters = list(parameters)
    self.store(parameters)
    self.copy_to(parameters)
    try:
      yield
    finally:
      self.restore(parameters)

  def state_dict(self):
    return dict(decay=self.decay, num_updates=self.num_updates, shadow_params=self.shadow_params)

  def load_state_dict(self, state_dict):
    """Take decay, num_updates and shadow_params from `state_dict` (checked against the model's
    trainable parameters: count and shapes)."""
    shadow = state_dict['shadow_params']
    if len(shadow) != len(self.shadow_params):
      raise ValueError(f'EMA state has {len(shadow)} shadow parameters but the model has '
                       f'{len(self.shadow_params)} trainable parameters: the checkpoint was '
                       'written for another architecture.')
    for i, (new, old) in enumerate(zip(shadow, self.shadow_params)):
      if new.shape != old.shape:
        raise ValueError(f'EMA shadow parameter {i} has shape {tuple(new.shape)} in the checkpoint '
                         f'but {tuple(old.shape)} in the model.')
    self.decay = state_dict['decay']
    self.num_updates = state_dict['num_updates']
    # Each shadow takes the dtype, device and memory layout of the one it replaces: a file
    # stored in float16 (assets/pretrained/) restores float32 averages, as model.load_state_dict
    # does for weights, and a channels_last model keeps channels_last averages (checkpoints are
    # saved contiguous).
    self.shadow_params = [torch.empty_like(old).copy_(s)
                          for s, old in zip(shadow, self.shadow_params)]


# On the CPU, three passes over whole tensors stream NCSN++'s 63M averages through memory three
# times; in groups of 2^18 elements (1 MB of float32) the temporary stays in cache: 85 -> 29 ms
# per update on 2 cores, with the same elementwise operations. CUDA keeps one group (3 launches).
CPU_GROUP_ELEMENTS = 1 << 18


def _flat(t):
  """A 1-D view of a dense tensor in memory order, or None."""
  if t.is_contiguous():
    return t.view(-1)
  if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
    return t.permute(0, 2, 3, 1).reshape(-1)  # a view: the permuted tensor is contiguous
  return None


def _cache_sized_groups(shadow, params):
  """[(shadow pieces, parameter pieces)]: the pairs cut into 1-D slices and grouped so that a
  group holds about CPU_GROUP_ELEMENTS elements; one group of the whole tensors off the CPU."""
  if not shadow or shadow[0].device.type != 'cpu':
    return [(shadow, params)]
  groups, current, size = [], ([], []), 0
  for s, p in zip(shadow, params):
    flat_s, flat_p = _flat(s), _flat(p.detach())
    if flat_s is None or flat_p is None or s.stride() != p.stride():
      pieces = [(s, p.detach())]  # an unusual layout: the tensor whole
    else:
      pieces = [(flat_s[i:i + CPU_GROUP_ELEMENTS], flat_p[i:i + CPU_GROUP_ELEMENTS])
                for i in range(0, flat_s.numel(), CPU_GROUP_ELEMENTS)]
    for piece_s, piece_p in pieces:
      current[0].append(piece_s)
      current[1].append(piece_p)
      size += piece_s.numel()
      if size >= CPU_GROUP_ELEMENTS:
        groups.append(current)
        current, size = ([], []), 0
  if current[0]:
    groups.append(current)
  return groups
