"""Stopping when the cluster asks: SIGTERM and SIGUSR1 (what SLURM and Kubernetes send before
they kill a job) and a wall-time limit end a run cleanly, with the exit status `PREEMPTED`.

    PREEMPTED = 75  (EX_TEMPFAIL of sysexits.h: "try again later")

A run stopped this way raises `Preempted`, a SystemExit with that status: uncaught, the process
exits 75 (main.py lets it through), and running the same command again continues the run.

- Training (`train_loop`) watches in 'flag' mode: a signal only sets a flag; the loop finishes the
  step it is in, writes the resume checkpoint and raises `Preempted`. training.max_runtime_s does
  the same once the run has lasted that long. Under torchrun the ranks vote every step (`Vote`),
  so they all stop after the same step.
- Evaluation and sampling watch in 'interrupt' mode: their files are each written atomically and
  redone when missing, so a signal raises `Preempted` at once, except inside `deferred()` (every
  atomic write of `workdir` is one), where it waits for the file to be complete.
"""
import contextlib
import logging
import signal
import threading
import time

import torch
import torch.distributed as dist

PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
  """A run stopped on request (a signal, or its time limit) after saving what it had: exit status
  `PREEMPTED`; the message says how far it got. Run the same command again to continue.

  A SystemExit, not an Exception: no `except Exception` on the way swallows it, and an uncaught
  one ends the process with its status (main.py needs no case for it)."""

  def __init__(self, message):
    super().__init__(PREEMPTED)
    self.message = message

  def __str__(self):
    return self.message


class _Watch:
  """The stop requests of the innermost `watch` block."""

  def __init__(self, what, max_runtime_s, interrupt):
    self.what, self.max_runtime_s, self.interrupt = what, max_runtime_s, interrupt
    self.start, self.signal, self.depth = time.monotonic(), None, 0

  def reason(self):
    """Why the run should stop ('SIGTERM', 'training.max_runtime_s = 60 s'), or None."""
    if self.signal is not None:
      return self.signal
    if self.max_runtime_s is not None and time.monotonic() - self.start >= self.max_runtime_s:
      return f'training.max_runtime_s = {self.max_runtime_s:g} s'
    return None

  def preempted(self, reason, done='every file it wrote is complete'):
    """The `Preempted` to raise (its message logged): `done` says what was saved."""
    message = (f'{self.what} stopped by {reason}: {done}. Run the same command again to '
               f'continue (exit status {PREEMPTED}: preempted).')
    logging.warning(message)
    return Preempted(message)

  def handle(self, signum, frame):
    name = signal.Signals(signum).name
    if self.signal is not None:
      logging.warning('%s: %s is already stopping.', name, self.what)
      return
    self.signal = name
    if self.interrupt and self.depth == 0:
      raise self.preempted(name)
    logging.warning('%s: %s stops after %s.', name, self.what,
                    'the file it is writing' if self.interrupt else 'this step (checkpointed)')


_current = None


@contextlib.contextmanager
def watch(what, max_runtime_s=None, interrupt=False):
  """Catch SIGTERM and SIGUSR1 for the block (in the main thread; elsewhere only the time limit
  applies) and yield the `_Watch`, whose reason() says whether to stop.

  Args:
    what: the run, as the messages name it ('training', 'evaluation', 'sampling').
    max_runtime_s: a time limit in seconds from now (None: none).
    interrupt: raise `Preempted` from the signal handler (outside `deferred` blocks), rather than
      only noting the signal for the caller to act on.
  """
  global _current
  if max_runtime_s is not None and not max_runtime_s > 0:
    raise ValueError(f'training.max_runtime_s is {max_runtime_s}; give a positive number of '
                     'seconds, or None for no limit.')
  current, outer = _Watch(what, max_runtime_s, interrupt), _current
  main = threading.current_thread() is threading.main_thread()
  previous = {s: signal.signal(s, current.handle) for s in SIGNALS} if main else {}
  _current = current
  try:
    yield current
  finally:
    _current = outer
    for s, handler in previous.items():
      if handler is not None:  # None: a handler installed outside Python, which cannot be restored
        signal.signal(s, handler)


@contextlib.contextmanager
def deferred():
  """Hold an interrupting signal back for the block (a file being written): `Preempted` is raised
  when the block ends, unless it raised an exception of its own."""
  current = _current
  if current is None:
    yield
    return
  current.depth += 1
  try:
    yield
  finally:
    current.depth -= 1
  if current.interrupt and current.depth == 0 and current.signal is not None:
    raise current.preempted(current.signal)


def ignore_signals(*_):
  """Ignore SIGTERM and SIGUSR1 (a DataLoader worker's init function): the cluster signals every
  process of a job, and a worker dying of it would fail the step the main process finishes."""
  for s in SIGNALS:
    signal.signal(s, signal.SIG_IGN)


class Vote:
  """Whether any rank wants to stop, agreed by all (a collective: every rank calls it at the same
  step). The flag is reduced over gloo, on the CPU: a CUDA tensor read every step would wait for
  the device and undo the loop's lazy loss reads."""

  def __init__(self, world):
    self.world, self.group = world, None
    if world > 1 and dist.get_backend() != 'gloo':
      self.group = dist.new_group(backend='gloo')

  def __call__(self, reason):
    """The stop reason: this rank's, another rank's ('a stop request of another process') or
    None."""
    if self.world == 1:
      return reason
    flag = torch.tensor([0 if reason is None else 1])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
    return reason or ('a stop request of another process' if flag.item() else None)
