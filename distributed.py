"""torch.distributed for every mode: join torchrun's process group and leave it cleanly, this
process's rank and world size, and the collectives the modes share.

Under `torchrun --nproc_per_node=N` (WORLD_SIZE set) every mode runs inside `process_group`:
NCCL on CUDA (one GPU per local rank), gloo on CPU. A plain `python` run is rank 0 of 1.
"""
import contextlib
import datetime
import gc
import os

import torch
import torch.distributed as dist


# Evaluation and sampling split rounds unevenly (a resumed run may leave a rank nothing to do),
# so a rank can wait at a barrier for a whole sampling round or bits/dim batch: far longer than
# NCCL's default 10 minutes.
UNEVEN_WORK_TIMEOUT = datetime.timedelta(hours=24)


def init_distributed(config, timeout=None):
  """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK), if any.

  Uses NCCL on CUDA (one GPU per local rank; config.device is set to it) and gloo on CPU.
  `timeout` (a timedelta) bounds every collective; None keeps torch's default (NCCL 10 min).
  Returns (rank, world_size, joined): (0, 1, False) for a plain `python` run; `joined` says
  that this call created the group (and the caller should destroy it).
  """
  if dist.is_available() and dist.is_initialized():
    return dist.get_rank(), dist.get_world_size(), False
  if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
    return 0, 1, False
  if config.device.type == 'cuda':
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    torch.cuda.set_device(local_rank)
    config.device = torch.device('cuda', local_rank)
  dist.init_process_group('nccl' if config.device.type == 'cuda' else 'gloo',
                          **({} if timeout is None else {'timeout': timeout}))
  return dist.get_rank(), dist.get_world_size(), True


@contextlib.contextmanager
def process_group(config, timeout=None):
  """Run a block inside torchrun's process group: join it (`init_distributed`, with `timeout`),
  yield (rank, world_size), and leave it at the end if this call joined it.

  Leaving destroys the group while this process is fully alive and its peers are done. Without
  that, two-process gloo runs aborted at exit after finishing their work ('terminate called
  without an active exception', SIGABRT; 4 of 14 runs of the DDP test on 2 CPU cores): DDP's
  reducer, which holds the group, sits in reference cycles and outlived the group's destruction,
  and a rank could tear the group down while the other was still using it. A collection and a
  barrier each removed the abort on their own (12 runs each); both are kept. After an error the
  barrier is skipped: another rank may never arrive.
  """
  rank, world, joined = init_distributed(config, timeout)
  if not joined:
    yield rank, world
    return
  try:
    yield rank, world
  except BaseException:
    gc.collect()
    dist.destroy_process_group()
    raise
  gc.collect()
  dist.barrier()
  dist.destroy_process_group()


def global_mean(value, world):
  """Average a 0-d tensor over ranks (all ranks get the global batch's loss)."""
  if world > 1:
    value = value.detach().clone()
    dist.all_reduce(value)
    value /= world
  return value


def rank_world():
  """(rank, world_size) of this process: (0, 1) outside a process group."""
  if dist.is_available() and dist.is_initialized():
    return dist.get_rank(), dist.get_world_size()
  return 0, 1


def barrier():
  """Wait for every rank (nothing to do in a single process)."""
  if rank_world()[1] > 1:
    dist.barrier()


def gather_objects(value):
  """[value of rank 0, rank 1, ...] (a collective; [value] in one process)."""
  world = rank_world()[1]
  if world == 1:
    return [value]
  gathered = [None] * world
  dist.all_gather_object(gathered, value)
  return gathered


def all_ranks(flag):
  """True when `flag` is true on every rank (a collective; `flag` itself in one process)."""
  if rank_world()[1] == 1:
    return bool(flag)
  value = torch.tensor([1 if flag else 0], dtype=torch.int64)
  if dist.get_backend() == 'nccl':
    value = value.cuda()
  dist.all_reduce(value, op=dist.ReduceOp.MIN)
  return bool(value.item())
