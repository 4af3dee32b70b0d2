"""Training of score-based models: `train(config, workdir)`, written as small named steps.

A workdir holds
  config.json                    the resolved config (a run refuses to resume under another one)
  stdout.txt, tensorboard/       logs; scalars training_loss, eval_loss, lr, grad_norm, steps_per_sec
  checkpoints/checkpoint_N.pth   snapshots every training.snapshot_freq steps (N = step // freq)
  checkpoints-meta/checkpoint.pth  the resume checkpoint, overwritten every
                                 training.snapshot_freq_for_preemption steps and at the end
  samples/iter_S/sample.{png,np} EMA samples at each snapshot (uint8 NHWC in sample.np)

Checkpoints hold model, optimizer, EMA, step, 'rng' (per-rank torch / CUDA / numpy / Python
RNG states and the loss-noise generator) and, for fp16 training, 'grad_scaler' (the loss scale),
and the data stream restarts at the batch it stopped at, so a resumed run continues exactly as if
it had not stopped, in every config.training.precision. Writes are atomic
(utils.save_checkpoint), so a run killed mid-write resumes from the previous checkpoint.

Multi-GPU: under `torchrun --nproc_per_node=N` (WORLD_SIZE set) training uses
DistributedDataParallel; config.training.batch_size stays the global batch, each rank loads its
DistributedSampler shard, and rank 0 logs and writes checkpoints and samples.
"""
import logging
import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist

import datasets
import losses
import precision as precision_lib
import sde_lib
from distributed import gather_objects, global_mean, process_group
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from run_config import check_and_save_config
from seeds import EVAL_LOSS_NOISE, TRAINING_NOISE, derive_seed
from utils import restore_checkpoint, save_checkpoint

def evaluate(config, workdir, eval_folder='eval'):
  """Evaluate the checkpoints of `workdir` (see eval_lib.evaluate); imported on first use."""
  from eval_lib import evaluate as _evaluate
  return _evaluate(config, workdir, eval_folder)


# --- Randomness ---------------------------------------------------------------------------------

def seed_everything(seed):
  """Seed Python, numpy and torch (all devices)."""
  random.seed(seed)
  np.random.seed(seed % 2 ** 32)
  torch.manual_seed(seed)


def get_rng_state(noise_generator, device):
  """This process's RNG states, as tensors and numbers (loadable with weights_only=True)."""
  name, keys, pos, has_gauss, cached = np.random.get_state()
  return dict(torch=torch.get_rng_state(),
              cuda=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
              numpy=[name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
              python=random.getstate(), noise=noise_generator.get_state())


def set_rng_state(rng, noise_generator, device):
  torch.set_rng_state(rng['torch'])
  if rng['cuda'] is not None and device.type == 'cuda':
    torch.cuda.set_rng_state(rng['cuda'], device)
  name, keys, pos, has_gauss, cached = rng['numpy']
  np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
  version, internal, gauss = rng['python']
  random.setstate((version, tuple(internal), gauss))
  noise_generator.set_state(rng['noise'])


# --- Building, checkpoints ----------------------------------------------------------------------

def build_state(config):
  """Model, EMA and optimizer for `config`, as the state dict the step functions update."""
  model = mutils.create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  return dict(optimizer=optimizer, model=model, ema=ema, step=0)


def save(path, state, noise_generator, config, rank, grad_scaler=None):
  """Checkpoint `state` with every rank's RNG states and the fp16 gradient scaler's state
  ('grad_scaler': scale and growth tracker) (collective; rank 0 writes)."""
  rng = gather_objects(get_rng_state(noise_generator, config.device))
  extra = {} if grad_scaler is None else {'grad_scaler': grad_scaler.state_dict()}
  if rank == 0:
    save_checkpoint(path, dict(state, rng=rng, **extra))


def resume(path, state, noise_generator, config, rank, world, grad_scaler=None):
  """Restore the resume checkpoint at `path` into `state` (and `grad_scaler`), if there is one.
  Returns its step.

  Resumed with as many processes as it was saved with, every RNG continues exactly. With another
  number, the weights, optimizer, data position and loss noise (drawn alike on every rank) still
  continue; only the per-rank streams (dropout) start afresh.
  """
  if not os.path.exists(path):
    return 0
  restore_checkpoint(path, state, config.device)
  scaler_state = state.pop('grad_scaler', None)
  if grad_scaler is not None and scaler_state:
    grad_scaler.load_state_dict(scaler_state)
  rng = state.pop('rng', None)
  state['step'] = int(state['step'])
  try:
    if rng is not None and len(rng) == world:
      set_rng_state(rng[rank], noise_generator, config.device)
      return state['step']
    if rng is not None:
      noise_generator.set_state(rng[0]['noise'])
  except RuntimeError as e:  # e.g. saved on a GPU, resumed on the CPU: other generator type
    logging.warning('Could not restore the RNG states of %s (%s).', path, e)
  if rng is None:
    logging.warning('%s holds no RNG states (a score_sde_pytorch checkpoint?): every random '
                    'stream, the loss noise included, restarts from config.seed.', path)
  else:
    logging.warning('%s was written by %d process(es), this run has %d: per-process random '
                    'streams (dropout) start afresh.', path, len(rng), world)
  return state['step']


def build_data(config, initial_step):
  """Train and eval batch iterators positioned where a run resumed at `initial_step` stands."""
  train_ds, eval_ds, _ = datasets.get_dataset(config, uniform_dequantization=config.data.uniform_dequantization)
  evaluations_done = -(-initial_step // config.training.eval_freq)  # ceil: evals at 0, f, 2f, ...
  return train_ds.iterate(initial_step), eval_ds.iterate(evaluations_done)


def training_noise_generator(config):
  """The generator of the training loss's t / noise levels and z, on config.device; the same on
  every rank (each keeps its shard of the global batch's draws).

  Seeded from (config.seed, seeds.TRAINING_NOISE), not config.seed itself, which seeds torch's
  global RNG (dropout) on rank 0: on CUDA two Philox generators with one seed hand out the same
  random bits.
  """
  return torch.Generator(device=config.device).manual_seed(derive_seed(config.seed, TRAINING_NOISE))


def build_step_fns(config, sde, noise_generator, shard=None, grad_scaler=None):
  """Training and evaluation `losses.StepFn`s for `config.training` and `config.optim`, in
  config.training.precision (fp16 training takes `grad_scaler`)."""
  tc = config.training
  kwargs = dict(reduce_mean=tc.reduce_mean, continuous=tc.continuous,
                likelihood_weighting=tc.likelihood_weighting, generator=noise_generator, shard=shard,
                precision=tc.get('precision', 'fp32'))
  train_step = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                  scaler=grad_scaler, **kwargs)
  # The evaluation loss draws from a generator of its own, reseeded per evaluation (eval_loss):
  # how often and on what batch size one evaluates (resumable changes) does not move the
  # training noise.
  kwargs['generator'] = torch.Generator(device=noise_generator.device)
  return train_step, losses.get_step_fn(sde, train=False, **kwargs)


# --- Steps of the loop --------------------------------------------------------------------------

def _to_device(batch, config):
  return batch.to(config.device, non_blocking=True)


def log_scalars(writer, step, **scalars):
  for name, value in scalars.items():
    writer.add_scalar(name, value, step)


def eval_loss(eval_step, state, eval_iter, scaler, config, world, step):
  """Loss of the EMA weights on one evaluation batch (mean over ranks), with noise seeded by
  (config.seed, seeds.EVAL_LOSS_NOISE, step)."""
  eval_step.generator.manual_seed(derive_seed(config.seed, EVAL_LOSS_NOISE, step))
  batch = scaler(_to_device(next(eval_iter), config))
  return global_mean(eval_step(state, batch), world).item()


def save_samples(sampler, model, ema, sample_dir, step, config, rank, world):
  """Draw a batch with the EMA weights and write samples/iter_{step}/sample.{png,np} (rank 0).

  Each rank draws batch_size / world_size samples from its own seeded stream; the training
  RNG streams are left untouched.
  """
  from torchvision.utils import make_grid, save_image
  if rank == 0:
    logging.info('step %d: drawing %d samples with the EMA weights (%r sampler) for %s', step,
                 config.training.batch_size, config.sampling.method,
                 os.path.join(sample_dir, f'iter_{step}'))
  start = time.perf_counter()
  devices = [config.device] if config.device.type == 'cuda' else []
  with torch.random.fork_rng(devices=devices):
    torch.manual_seed(config.seed * 7919 + step * 101 + rank)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
      samples, nfe = sampler(model)
    finally:
      ema.restore(model.parameters())
  if rank == 0:
    logging.info('step %d: samples drawn (%d evaluations, %.1f s)', step, nfe,
                 time.perf_counter() - start)
  samples = samples.detach()
  if world > 1:
    parts = [torch.empty_like(samples) for _ in range(world)]
    dist.all_gather(parts, samples.contiguous())
    samples = torch.cat(parts)
  if rank != 0:
    return
  out_dir = os.path.join(sample_dir, f'iter_{step}')
  os.makedirs(out_dir, exist_ok=True)
  samples = samples.clamp(0, 1).cpu()
  save_image(make_grid(samples, nrow=int(math.sqrt(samples.shape[0])), padding=2),
             os.path.join(out_dir, 'sample.png'))
  with open(os.path.join(out_dir, 'sample.np'), 'wb') as f:
    np.save(f, datasets.to_uint8(samples))  # truncated, as the reference writes it


def _check_finite(losses, first_step, what, meta_path, read_every=1):
  """Raise FloatingPointError at the first non-finite value of `losses` (of steps first_step,
  first_step + 1, ...; floats, or 0-d tensors read with one host synchronisation). Returns the
  last value, as a float."""
  values = torch.stack(losses).tolist() if torch.is_tensor(losses[0]) else list(losses)
  for i, value in enumerate(values):
    if not math.isfinite(value):
      found = (f' (training losses are read every training.log_freq = {read_every} steps and '
               f'before each checkpoint: it was found at step {first_step + len(values) - 1})'
               if read_every > 1 else '')
      raise FloatingPointError(
        f'The {what} is {value} at step {first_step + i}{found}: training stopped. Nothing was '
        f'saved after that step; the last good resume checkpoint is {meta_path} (and '
        'checkpoints/). Lower optim.lr or optim.grad_clip, check the data scaling '
        '(data.centered), then resume.')
  return values[-1]


def _log_to_file(workdir):
  """Copy log records to workdir/stdout.txt; returns the handler (remove it when done)."""
  logger = logging.getLogger()
  handler = logging.FileHandler(os.path.join(workdir, 'stdout.txt'))
  handler.setFormatter(logging.Formatter('%(levelname)s - %(filename)s - %(asctime)s - %(message)s'))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  return handler


def train(config, workdir):
  """Train the model of `config`, resuming from workdir/checkpoints-meta if a run stopped there.

  Step s trains on global batch s, logs every log_freq steps, evaluates the loss of the EMA
  weights every eval_freq steps, snapshots (checkpoint + samples) every snapshot_freq steps and
  at the last step n_iters, then writes the resume checkpoint every snapshot_freq_for_preemption
  steps (after the rest of the step, so a resumed run replays nothing).
  """
  with process_group(config) as (rank, world):
    log_handler = None
    if rank == 0:
      for d in _paths(workdir)[1:]:
        os.makedirs(os.path.dirname(d) if d.endswith('.pth') else d, exist_ok=True)
      check_and_save_config(config, workdir)
      log_handler = _log_to_file(workdir)
    try:
      return _train(config, workdir, rank, world)
    finally:
      if log_handler is not None:
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()


def _paths(workdir):
  """(workdir, resume checkpoint, snapshot folder, sample folder)."""
  return (workdir, os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'),
          os.path.join(workdir, 'checkpoints'), os.path.join(workdir, 'samples'))


def _train(config, workdir, rank, world):
  main_process = rank == 0
  _, meta_path, ckpt_dir, sample_dir = _paths(workdir)

  # Same seed on every rank for identical initial weights; then per-rank streams (dropout).
  seed_everything(config.seed)
  state = build_state(config)
  seed_everything(config.seed + rank)
  noise_generator = training_noise_generator(config)
  tc = config.training
  grad_scaler = precision_lib.grad_scaler(tc.get('precision', 'fp32'), config.device.type)
  precision_lib.configure_backends(config.device, tc.get('cudnn_benchmark'), tc.get('tf32'))
  initial_step = resume(meta_path, state, noise_generator, config, rank, world, grad_scaler)
  model = state['model']
  state['model'] = precision_lib.training_model(config, model)  # compiled if training.compile
  if world > 1:
    state['model'] = torch.nn.parallel.DistributedDataParallel(
      state['model'], device_ids=[config.device.index] if config.device.type == 'cuda' else None)

  train_iter, eval_iter = build_data(config, initial_step)
  scaler = datasets.get_data_scaler(config)
  sde, sampling_eps = sde_lib.get_sde(config)
  train_step, eval_step = build_step_fns(config, sde, noise_generator, grad_scaler=grad_scaler,
                                         shard=(rank, world) if world > 1 else None)
  eval_state = dict(state, model=model)  # evaluation bypasses DDP's gradient hooks
  sampler = None
  if tc.snapshot_sampling:
    import sampling
    shape = (tc.batch_size // world, config.data.num_channels, config.data.image_size,
             config.data.image_size)
    sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config),
                                       sampling_eps)

  writer, progress = None, None
  if main_process:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    progress = tqdm(total=tc.n_iters + 1, initial=initial_step, desc='train', dynamic_ncols=True,
                    disable=None)
    logging.info('Starting training loop at step %d (%d process%s).', initial_step, world,
                 'es' if world > 1 else '')

  last_time, last_step = time.time(), initial_step
  pending = []  # training losses (0-d tensors) not read yet: steps do not wait for the device
  for step in range(initial_step, tc.n_iters + 1):
    batch = scaler(_to_device(next(train_iter), config))
    pending.append(global_mean(train_step(state, batch), world))
    snapshot = (step != 0 and step % tc.snapshot_freq == 0) or step == tc.n_iters
    preemption = (step != 0 and step % tc.snapshot_freq_for_preemption == 0) or step == tc.n_iters
    if main_process:
      progress.update(1)

    # The losses are read at log steps and before every checkpoint (so none holds weights trained
    # past a non-finite loss), with one host synchronisation for all of them.
    if step % tc.log_freq == 0 or snapshot or preemption:
      loss = _check_finite(pending, step - len(pending) + 1, 'training loss', meta_path,
                           tc.log_freq)
      pending = []
      if main_process and step % tc.log_freq == 0:
        now = time.time()
        rate = (step - last_step) / max(now - last_time, 1e-9) if step > last_step else 0.
        last_time, last_step = now, step
        lr = state['optimizer'].param_groups[0]['lr']
        logging.info('step: %d, training_loss: %.5e', step, loss)
        fp16 = {} if grad_scaler is None else {'grad_scale': grad_scaler.get_scale()}
        log_scalars(writer, step, training_loss=loss, lr=lr,
                    grad_norm=float(train_step.grad_norm), steps_per_sec=rate, **fp16)
        progress.set_postfix(loss=f'{loss:.4g}')

    if step % tc.eval_freq == 0:
      value = eval_loss(eval_step, eval_state, eval_iter, scaler, config, world, step)
      _check_finite([value], step, 'evaluation loss', meta_path)
      if main_process:
        logging.info('step: %d, eval_loss: %.5e', step, value)
        log_scalars(writer, step, eval_loss=value)

    if snapshot:
      save(os.path.join(ckpt_dir, f'checkpoint_{step // tc.snapshot_freq}.pth'), state,
           noise_generator, config, rank, grad_scaler)
      if sampler is not None:
        save_samples(sampler, model, state['ema'], sample_dir, step, config, rank, world)

    if preemption:
      save(meta_path, state, noise_generator, config, rank, grad_scaler)

  if main_process:
    progress.close()
    writer.close()
    logging.info('Finished training at step %d.', tc.n_iters)
  state['model'] = model
  return state
