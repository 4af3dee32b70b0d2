"""The training loop of every model the project trains: the score model (`run_lib.train`) and the
noise-conditional classifier (`classifier_lib.train_classifier`) each plug a `Trainer` into `run`.

The loop owns the run's scaffolding: the workdir (`workdir.Layout`) and its log file stdout.txt,
seeding, resuming with every RNG state (per rank: torch, CUDA, numpy, Python and the loss-noise
generator), the steps with lazily read losses and a stop at the first non-finite one, logging every
log_freq steps (log file, TensorBoard, tqdm), evaluations every eval_freq steps, snapshots every
snapshot_freq steps and at the last one, and the resume checkpoint every
snapshot_freq_for_preemption steps and at the last one, keeping its previous version (resumed from
when the newest cannot be read). A trainer supplies what differs: its state, data and step, its
evaluation, what a snapshot writes besides the checkpoint, its `Schedule`.

The loop holds the lock of the trainer's folder while it runs (`folder_lock.locked`), and stops on
SIGTERM / SIGUSR1 or at training.max_runtime_s: it finishes the step, writes the resume checkpoint
and raises `preemption.Preempted` (exit status 75; all ranks stop after the same step).

Step s trains on global batch s. The checkpoints of step s are written after the rest of the step
(with state['step'] = s + 1, the steps done), so a resumed run replays nothing and continues
exactly as if it had not stopped. Under `torchrun` the loop wraps the model in
DistributedDataParallel; rank 0 logs and writes.
"""
import dataclasses
import logging
import math
import os
import random
import time

import numpy as np
import torch

import memory
import phema
import preemption
from checkpoints import link_or_copy, restore_resume_checkpoint, save_checkpoint
from distributed import gather_objects, global_mean, process_group
from folder_lock import locked
from seeds import TRAINING_NOISE, derive_seed

# --- Randomness ---------------------------------------------------------------------------------

def seed_everything(seed):
  """Seed Python, numpy and torch (all devices)."""
  random.seed(seed)
  np.random.seed(seed % 2 ** 32)
  torch.manual_seed(seed)


def training_noise_generator(config):
  """The generator of the training loss's noise (t / noise levels and z) on config.device; the
  same on every rank (each keeps its shard of the global batch's draws).

  Seeded from (config.seed, seeds.TRAINING_NOISE), not config.seed itself, which seeds torch's
  global RNG (dropout) on rank 0: on CUDA two Philox generators with one seed hand out the same
  random bits.
  """
  return torch.Generator(device=config.device).manual_seed(derive_seed(config.seed, TRAINING_NOISE))


def get_rng_state(noise_generator, device):
  """This process's RNG states, as tensors and numbers (loadable with weights_only=True)."""
  name, keys, pos, has_gauss, cached = np.random.get_state()
  return dict(torch=torch.get_rng_state(),
              cuda=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
              numpy=[name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
              python=random.getstate(), noise=noise_generator.get_state())


def set_rng_state(rng, noise_generator, device):
  """Restore the states `get_rng_state` returned."""
  torch.set_rng_state(rng['torch'])
  if rng['cuda'] is not None and device.type == 'cuda':
    torch.cuda.set_rng_state(rng['cuda'], device)
  name, keys, pos, has_gauss, cached = rng['numpy']
  np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
  version, internal, gauss = rng['python']
  random.setstate((version, tuple(internal), gauss))
  noise_generator.set_state(rng['noise'])


# --- Checkpoints --------------------------------------------------------------------------------

def save(path, state, noise_generator, config, rank, grad_scaler=None, previous=None):
  """Checkpoint `state` with every rank's RNG states ('rng') and the fp16 gradient scaler's state
  ('grad_scaler': scale and growth tracker) (collective; rank 0 writes). With `previous`, the file
  at `path` is kept there first."""
  rng = gather_objects(get_rng_state(noise_generator, config.device))
  extra = {} if grad_scaler is None else {'grad_scaler': grad_scaler.state_dict()}
  if rank == 0:
    if previous is not None:
      link_or_copy(path, previous)
    save_checkpoint(path, dict(state, rng=rng, **extra))


def resume(layout, state, noise_generator, config, rank, world, grad_scaler=None):
  """Restore the resume checkpoint of `layout` (or its previous version, when it cannot be read:
  `checkpoints.restore_resume_checkpoint`) into `state` (and `grad_scaler`), if there is one.
  Returns its step.

  Resumed with as many processes as it was saved with, every RNG continues exactly. With another
  number, the weights, optimizer, data position and loss noise (drawn alike on every rank) still
  continue; only the per-rank streams (dropout) start afresh.
  """
  path = restore_resume_checkpoint(layout, state, config.device, repair=rank == 0)
  if path is None:
    return 0
  scaler_state = state.pop('grad_scaler', None)
  if grad_scaler is not None and scaler_state:
    grad_scaler.load_state_dict(scaler_state)
  rng = state.pop('rng', None)
  noise_only = state.pop('noise_rng', None)  # classifier checkpoints before this loop
  state['step'] = int(state['step'])
  try:
    if rng is not None and len(rng) == world:
      set_rng_state(rng[rank], noise_generator, config.device)
      return state['step']
    if rng is not None or noise_only is not None:
      noise_generator.set_state(noise_only if rng is None else rng[0]['noise'])
  except RuntimeError as e:  # e.g. saved on a GPU, resumed on the CPU: other generator type
    logging.warning('Could not restore the RNG states of %s (%s).', path, e)
  if noise_only is not None:
    logging.info('%s holds the loss-noise state only: the other random streams restart from '
                 'config.seed.', path)
  elif rng is None:
    logging.warning('%s holds no RNG states (a score_sde_pytorch checkpoint?): every random '
                    'stream, the loss noise included, restarts from config.seed.', path)
  else:
    logging.warning('%s was written by %d process(es), this run has %d: per-process random '
                    'streams (dropout) start afresh.', path, len(rng), world)
  return state['step']


# --- What a model plugs in ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop logs, evaluates and checkpoints: steps 0..n_iters, a log line every log_freq
  steps, an evaluation every eval_freq steps (and at n_iters if `eval_at_end`), a snapshot every
  snapshot_freq steps and the resume checkpoint every snapshot_freq_for_preemption steps (both
  also at n_iters)."""
  n_iters: int
  log_freq: int
  eval_freq: int
  snapshot_freq: int
  snapshot_freq_for_preemption: int
  eval_at_end: bool = False

  @classmethod
  def of(cls, section, eval_at_end=False):
    """The schedule of a config section holding the five frequencies (config.training,
    models.wideresnet.classifier_config(config))."""
    names = ('n_iters', 'log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption')
    return cls(*(int(section[n]) for n in names), eval_at_end=eval_at_end)

  def _every(self, freq, step):
    return (step != 0 and step % freq == 0) or step == self.n_iters

  def snapshots(self, step):
    return self._every(self.snapshot_freq, step)

  def preempts(self, step):
    return self._every(self.snapshot_freq_for_preemption, step)

  def evaluates(self, step):
    return step % self.eval_freq == 0 or (self.eval_at_end and step == self.n_iters)


@dataclasses.dataclass
class Run:
  """What the loop hands a trainer's hooks: the process's rank and world size, the step the run
  starts at, the loss-noise generator, and the bare network (`state['model']` is the one training
  calls: compiled or DDP-wrapped; evaluation bypasses DDP's gradient hooks with this one)."""
  rank: int
  world: int
  initial_step: int
  noise_generator: torch.Generator
  model: torch.nn.Module
  phema: object = None  # phema.Tracker on rank 0 when training.phema_sigma_rels is set


class Trainer:
  """A model's part of the loop; subclass it and override the hooks `run` calls.

  Attributes: `layout` (workdir.Layout: where the run's files go), `schedule` (`Schedule`),
  `name` (tqdm's label and the log lines'), `mode` (main.py's --mode, recorded with the folder's
  lock), `loss_name` (the training loss's log and TensorBoard tag), `distributed` (whether it may
  run under torchrun), `grad_scaler` (fp16's torch.amp.GradScaler, checkpointed; set it in
  `prepare`).
  """
  name = 'training'
  mode = 'train'
  loss_name = 'training_loss'
  distributed = True
  grad_scaler = None
  tracks_phema = False  # config.training.phema_* apply (the score model's training)

  def __init__(self, config, layout, schedule):
    self.config, self.layout, self.schedule = config, layout, schedule

  def claim_workdir(self):
    """Rank 0, before anything is logged there: refuse a workdir of another run."""

  def build_state(self):
    """The state dict (model, ema, optimizer, step: 0), built under torch.manual_seed(config.seed)
    (so every rank starts from the same weights)."""
    raise NotImplementedError

  def prepare(self):
    """Before the resume checkpoint is read: set `grad_scaler`, process-wide settings."""

  def training_model(self, model):
    """The network as training steps call it (compiled, ...): `model` itself by default."""
    return model

  def start(self, state, run):
    """Build data, step functions, samplers for a run `run` (a `Run`) of `state`."""
    raise NotImplementedError

  def step(self, state, step):
    """Train on global batch `step`; return this rank's loss as a 0-d tensor, not read (the loop
    reads losses only when it needs them, with one host synchronisation)."""
    raise NotImplementedError

  def scalars(self, state):
    """TensorBoard scalars of a log step besides the loss, lr and steps_per_sec."""
    return {}

  def evaluate(self, state, step):
    """Evaluate at `step` (every rank; the trainer logs what it found) and return the TensorBoard
    scalars, which the loop checks are finite."""
    return {}

  def snapshot(self, state, step):
    """After the snapshot checkpoint of `step` (every rank): what else a snapshot writes.
    Returns {tag: image grid (C, H, W) in [0, 1]} for TensorBoard (rank 0), or None."""

  def result(self, state):
    """What `run` returns at the end."""
    return state


# --- The loop -----------------------------------------------------------------------------------

def check_finite(losses, first_step, what, resume_path, read_every=1):
  """Raise FloatingPointError at the first non-finite value of `losses` (of steps first_step,
  first_step + 1, ...; floats, or 0-d tensors read with one host synchronisation). Returns the
  last value, as a float."""
  values = torch.stack(losses).tolist() if torch.is_tensor(losses[0]) else list(losses)
  for i, value in enumerate(values):
    if not math.isfinite(value):
      found = (f' (losses are read every log_freq = {read_every} steps and before each '
               f'evaluation and checkpoint: it was found at step {first_step + len(values) - 1})'
               if read_every > 1 else '')
      raise FloatingPointError(
        f'The {what} is {value} at step {first_step + i}{found}: training stopped. Nothing was '
        f'saved after that step; the last good resume checkpoint is {resume_path} (and '
        'checkpoints/). Lower optim.lr or optim.grad_clip, check the data scaling '
        '(data.centered), then resume.')
  return values[-1]


def _log_to_file(folder):
  """Copy log records to folder/stdout.txt; returns the handler (remove it when done)."""
  logger = logging.getLogger()
  handler = logging.FileHandler(os.path.join(folder, 'stdout.txt'))
  handler.setFormatter(logging.Formatter('%(levelname)s - %(filename)s - %(asctime)s - %(message)s'))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  return handler


def run(config, trainer):
  """Train `trainer`'s model under config (resuming from its layout's resume checkpoint if a run
  stopped there) and return `trainer.result(state)`.

  Raises:
    FloatingPointError at a non-finite training loss or evaluation scalar (nothing trained past it
    is saved); ValueError for a workdir of another run, or a trainer that cannot run distributed
    under torchrun; folder_lock.FolderBusyError while another process trains there;
    preemption.Preempted (a SystemExit, status 75) after a stop request, once checkpointed.
  """
  with process_group(config) as (rank, world):
    if world > 1 and not trainer.distributed:
      raise ValueError(f'{trainer.name} runs in one process: start it with python, not torchrun.')
    with preemption.watch(trainer.name, config.training.max_runtime_s) as watch, \
        locked(trainer.layout.root, trainer.mode):
      log_handler = None
      if rank == 0:
        trainer.layout.make()
        trainer.claim_workdir()
        log_handler = _log_to_file(trainer.layout.root)
      try:
        return _run(config, trainer, rank, world, watch)
      finally:
        if log_handler is not None:
          logging.getLogger().removeHandler(log_handler)
          log_handler.close()


def _first_step(trainer, state, step, run):
  """The run's first step, where the forward and backward passes first allocate: a CUDA
  out-of-memory error there is raised again with what to change (batch size, precision,
  model.checkpointing) and by how much (`memory.explain_oom`, which measures the score network:
  rank 0 of the score model's training only, a minute or two of CPU)."""
  config = trainer.config
  advise = (torch.device(config.device).type == 'cuda' and trainer.name == 'training'
            and run.rank == 0)
  with memory.explained_oom(config, run.world, enabled=advise):
    return trainer.step(state, step)


def _run(config, trainer, rank, world, watch):
  # Same seed on every rank for identical initial weights; then per-rank streams (dropout).
  seed_everything(config.seed)
  state = trainer.build_state()
  seed_everything(config.seed + rank)
  noise_generator = training_noise_generator(config)
  trainer.prepare()
  sched = trainer.schedule
  initial_step = resume(trainer.layout, state, noise_generator, config, rank, world,
                        trainer.grad_scaler)
  model = state['model']
  # The power-function EMAs ride in the resume checkpoint only (rank 0 tracks them).
  resumed_phema = state.pop('phema', None)
  if trainer.tracks_phema:
    phema.check_resume(config, initial_step, resumed_phema)  # every rank: all stop on an error
  tracker = (phema.tracker_for_run(config, model, trainer.layout.root, initial_step, resumed_phema)
             if trainer.tracks_phema and rank == 0 else None)
  state['model'] = trainer.training_model(model)
  if world > 1:
    state['model'] = torch.nn.parallel.DistributedDataParallel(
      state['model'], device_ids=[config.device.index] if config.device.type == 'cuda' else None)
  run = Run(rank, world, initial_step, noise_generator, model, tracker)
  trainer.start(state, run)

  writer, progress = None, None
  if rank == 0:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    writer = SummaryWriter(os.path.join(trainer.layout.root, 'tensorboard'))
    progress = tqdm(total=sched.n_iters + 1, initial=initial_step, desc=trainer.name,
                    dynamic_ncols=True, disable=None)
    logging.info('Starting %s loop at step %d (%d process%s).', trainer.name, initial_step,
                 world, 'es' if world > 1 else '')
  try:
    _steps(config, trainer, state, run, writer, progress, watch)
  finally:
    if rank == 0:
      progress.close()
      writer.close()
    state['model'] = model
  if rank == 0:
    logging.info('Finished %s at step %d.', trainer.name, sched.n_iters)
  return trainer.result(state)


def _steps(config, trainer, state, run, writer, progress, watch):
  """Steps run.initial_step..n_iters of `trainer` (rank 0 logs to `writer` and `progress`), until
  `watch` (a preemption.watch) asks to stop."""
  sched, resume_path, rank = trainer.schedule, trainer.layout.resume, run.rank
  vote = preemption.Vote(run.world)
  last_time, last_step = time.time(), run.initial_step
  pending = []  # training losses (0-d tensors) not read yet: steps do not wait for the device
  for step in range(run.initial_step, sched.n_iters + 1):
    if step == run.initial_step:
      loss = _first_step(trainer, state, step, run)
    else:
      loss = trainer.step(state, step)
    pending.append(global_mean(loss, run.world))
    if run.phema is not None:
      run.phema.update()
    snapshot, preempts, evaluation = (sched.snapshots(step), sched.preempts(step),
                                      sched.evaluates(step))
    # A stop request (every rank votes, so all stop after this step) is a preemption checkpoint.
    stop = vote(watch.reason()) if step < sched.n_iters else None
    preempts = preempts or stop is not None
    if rank == 0:
      progress.update(1)

    # The losses are read at log steps and before every evaluation and checkpoint (so none holds
    # or measures weights trained past a non-finite loss), with one host synchronisation.
    logs = step % sched.log_freq == 0
    if logs or snapshot or preempts or evaluation:
      loss = check_finite(pending, step - len(pending) + 1, trainer.loss_name.replace('_', ' '),
                          resume_path, sched.log_freq)
      pending = []
      if rank == 0 and logs:
        now = time.time()
        rate = (step - last_step) / max(now - last_time, 1e-9) if step > last_step else 0.
        last_time, last_step = now, step
        logging.info('step: %d, %s: %.5e', step, trainer.loss_name, loss)
        lr = state['optimizer'].param_groups[0]['lr']
        _add_scalars(writer, step, **{trainer.loss_name: loss}, lr=lr,
                     **trainer.scalars(state), steps_per_sec=rate)
        progress.set_postfix(loss=f'{loss:.4g}')

    if evaluation:
      scalars = trainer.evaluate(state, step)
      for tag, value in scalars.items():
        check_finite([value], step, tag.replace('_', ' '), resume_path)
      if rank == 0:
        _add_scalars(writer, step, **scalars)

    if snapshot:
      save(trainer.layout.snapshot(step // sched.snapshot_freq), state, run.noise_generator,
           config, rank, trainer.grad_scaler)
      images = trainer.snapshot(state, step)
      for tag, image in (images or {}).items() if rank == 0 else ():
        writer.add_image(tag, image, step)
    if run.phema is not None and (phema.snapshot_due(step, config.training) or stop is not None):
      # (also at a stop: the run can be reconstructed at the step it stopped at)
      run.phema.save_snapshot(os.path.join(trainer.layout.root, phema.SNAPSHOT_DIR), step,
                              config.training.phema_snapshot_dtype)
    if preempts:
      tracked = {} if run.phema is None else {'phema': run.phema.state_dict()}
      save(resume_path, dict(state, **tracked), run.noise_generator, config, rank,
           trainer.grad_scaler, previous=trainer.layout.resume_previous)
    if stop is not None:
      raise watch.preempted(stop, f'step {step} was its last, and the resume checkpoint '
                            f'{resume_path} holds it')


def _add_scalars(writer, step, **scalars):
  for name, value in scalars.items():
    writer.add_scalar(name, value, step)
