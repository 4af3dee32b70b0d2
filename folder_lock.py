"""One writer per folder: training, evaluation, sampling and classifier training each hold an
exclusive lock on the folder they write (`locked`) for as long as they run, so that a second
process is refused with a message naming the first (host, PID, mode, since when) instead of
mixing its files with the first one's.

The lock is an OS lock (`fcntl.flock`) on FOLDER/.lock, not the file itself: the OS drops it with
its holder however that ends (SIGKILL, power loss). The file holds the holder's record, for the
message. On network filesystems, flock needs server-side locks (NFSv4, or NFSv3 with lockd,
without local_lock=flock; Lustre mounted with -o flock): see docs/cluster.md.
"""
import contextlib
import fcntl
import json
import logging
import os
import socket
import time

import distributed

LOCK_NAME = '.lock'
# What to do instead of waiting, per mode of `locked`.
_ELSEWHERE = {'train': 'use another --workdir', 'eval': 'pass another --eval_folder',
              'sample': 'pass another --config.sample.out',
              'train_classifier': 'use another --workdir'}


class FolderBusyError(RuntimeError):
  """Another process holds the lock of a folder this one would write; the message names it."""


def _holder(fd):
  """The holder's record in a lock file, as a phrase ('--mode train, PID 12 on host node3, ...')."""
  try:
    info = json.loads(os.pread(fd, 4096, 0) or b'{}')
  except (OSError, ValueError):
    info = {}
  if not info:
    return 'a process that is starting (it has not written its details yet)'
  job = f", SLURM job {info['slurm_job']}" if info.get('slurm_job') else ''
  return (f"--mode {info.get('mode')}, PID {info.get('pid')} on host {info.get('host')}, "
          f"running since {info.get('since')}{job}")


class FolderLock:
  """An exclusive OS lock (flock) on FOLDER/.lock, whose content names the holder. The OS drops
  the lock with its holder however it ends (SIGKILL, power loss: on a network filesystem, when
  the server notices); the file itself stays and means nothing unless locked. Its times stay
  those of its creation, so that the folder's modification times tell what a run wrote."""

  def __init__(self, folder, mode):
    self.path = os.path.join(folder, LOCK_NAME)
    os.makedirs(folder, exist_ok=True)
    self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    stat = os.fstat(self.fd)
    self.times = (stat.st_atime_ns, stat.st_mtime_ns)
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(self.fd)
      os.close(self.fd)
      raise FolderBusyError(
        f'{folder} is in use by another process: {holder}. One process writes a folder at a '
        f'time: wait for that one to end, stop it (SIGTERM: it saves and exits), or '
        f'{_ELSEWHERE.get(mode, "use another folder")}. The lock ({self.path}) goes with its '
        'holder; see docs/cluster.md if it stays after the holder is gone.') from None
    except OSError as e:  # ENOLCK, EOPNOTSUPP: e.g. Lustre mounted without -o flock
      logging.warning('Cannot lock %s (%s): this filesystem has no flock() locks, so nothing '
                      'stops a second process from writing %s at the same time (docs/cluster.md).',
                      self.path, e.strerror or e, folder)
    info = dict(mode=mode, pid=os.getpid(), host=socket.gethostname(),
                since=time.strftime('%Y-%m-%d %H:%M:%S %z'),
                slurm_job=os.environ.get('SLURM_JOB_ID'))
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, json.dumps(info).encode(), 0)
    os.utime(self.fd, ns=self.times)

  def release(self):
    """Forget the holder's record and unlock. The file stays: removing it would let a process
    that opened it before lock a file that no longer has this name."""
    if self.fd is None:
      return
    try:
      os.ftruncate(self.fd, 0)
      os.utime(self.fd, ns=self.times)
      fcntl.flock(self.fd, fcntl.LOCK_UN)  # also for forked children sharing the descriptor
    except OSError:
      pass
    finally:
      os.close(self.fd)
      self.fd = None


@contextlib.contextmanager
def locked(folder, mode):
  """Hold `folder`'s lock for the block, as `mode` ('train', 'eval', 'sample',
  'train_classifier'). Under torchrun rank 0 holds it, and every rank learns whether it could.

  Raises:
    FolderBusyError naming the holder (host, PID, mode, since when) and what to do.
  """
  rank, world = distributed.rank_world()
  lock = error = None
  if rank == 0:
    try:
      lock = FolderLock(folder, mode)
    except FolderBusyError as e:
      error = e
  try:
    if not distributed.all_ranks(error is None):
      raise error or FolderBusyError(f'{folder} is in use by another process (see the message '
                                     'of process 0).')
    yield lock
  finally:
    if lock is not None:
      lock.release()
