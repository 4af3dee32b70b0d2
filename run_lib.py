"""Training of score-based models: `train(config, workdir)`, the score model's `train_loop.Trainer`.

A workdir holds
  config.json                    the resolved config (a run refuses to resume under another one)
  stdout.txt, tensorboard/       logs; scalars training_loss, eval_loss, lr, grad_norm, steps_per_sec
  checkpoints/checkpoint_N.pth   snapshots every training.snapshot_freq steps (N = step // freq)
  checkpoints-meta/checkpoint.pth  the resume checkpoint, overwritten every
                                 training.snapshot_freq_for_preemption steps and at the end
  samples/iter_S/sample.{png,np} EMA samples at each snapshot (uint8 NHWC in sample.np)
  .lock, checkpoints-meta.prev/, image_check.json  the lock held while training, the resume
                                 checkpoint's previous version, an image folder's unreadable files

Checkpoints hold model, optimizer, EMA, step, ('dequantizer': the flow, its EMA and optimizer, with
training.dequantizer), 'rng' (per-rank torch / CUDA / numpy / Python
RNG states and the loss-noise generator) and, for fp16 training, 'grad_scaler' (the loss scale),
and the data stream restarts at the batch it stopped at, so a resumed run continues exactly as if
it had not stopped, in every config.training.precision. Writes are atomic
(checkpoints.save_checkpoint, workdir.write_atomic), so a run killed mid-write resumes from the
previous checkpoint. SIGTERM / SIGUSR1 or training.max_runtime_s stop a run after a step, with its
resume checkpoint written (exit status 75, docs/cluster.md). The loop itself (seeding, resuming,
logging, checkpoints, locking, stopping) is `train_loop`'s.

Multi-GPU: under `torchrun --nproc_per_node=N` (WORLD_SIZE set) training uses
DistributedDataParallel; config.training.batch_size stays the global batch, each rank loads its
DistributedSampler shard, and rank 0 logs and writes checkpoints and samples.
"""
import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import datasets
import dequantizer
import losses
import precision as precision_lib
import sde_lib
import train_loop
from checkpoints import build_state
from distributed import global_mean
from seeds import EVAL_LOSS_NOISE, SNAPSHOT_SAMPLES, derive_seed
from workdir import Layout, check_and_save_config, write_atomic

def build_data(config, initial_step, image_check=None):
  """Train and eval batch iterators positioned where a run resumed at `initial_step` stands (an
  image folder's files checked first, once, with `image_check` the index file)."""
  train_ds, eval_ds, _ = datasets.get_dataset(
    config, uniform_dequantization=config.data.uniform_dequantization, image_check=image_check)
  evaluations_done = -(-initial_step // config.training.eval_freq)  # ceil: evals at 0, f, 2f, ...
  return train_ds.iterate(initial_step), eval_ds.iterate(evaluations_done)


def _to_device(batch, config):
  return batch.to(config.device, non_blocking=True)


def eval_loss(eval_step, state, eval_iter, scaler, config, world, step):
  """Loss of the EMA weights on one evaluation batch (mean over ranks), with noise seeded by
  (config.seed, seeds.EVAL_LOSS_NOISE, step)."""
  eval_step.generator.manual_seed(derive_seed(config.seed, EVAL_LOSS_NOISE, step))
  batch = scaler(_to_device(next(eval_iter), config))
  return global_mean(eval_step(state, batch), world).item()


def save_samples(sampler, model, ema, sample_dir, step, config, rank, world):
  """Draw a batch with the EMA weights and write samples/iter_{step}/sample.{png,np} (rank 0),
  each file atomically.

  Each rank draws batch_size / world_size samples from its own stream, seeded by (config.seed,
  seeds.SNAPSHOT_SAMPLES, step, rank); the training RNG streams are left untouched.
  """
  from torchvision.utils import save_image
  import visuals
  if rank == 0:
    logging.info('step %d: drawing %d samples with the EMA weights (%r sampler) for %s', step,
                 config.training.batch_size, config.sampling.method,
                 os.path.join(sample_dir, f'iter_{step}'))
  start = time.perf_counter()
  devices = [config.device] if config.device.type == 'cuda' else []
  with torch.random.fork_rng(devices=devices):
    torch.manual_seed(derive_seed(config.seed, SNAPSHOT_SAMPLES, step, rank))
    with ema.averaged(model.parameters()):
      samples, nfe = sampler(model)
  if rank == 0:
    logging.info('step %d: samples drawn (%d evaluations, %.1f s)', step, nfe,
                 time.perf_counter() - start)
  samples = samples.detach()
  if world > 1:
    parts = [torch.empty_like(samples) for _ in range(world)]
    dist.all_gather(parts, samples.contiguous())
    samples = torch.cat(parts)
  if rank != 0:
    return None
  out_dir = os.path.join(sample_dir, f'iter_{step}')
  os.makedirs(out_dir, exist_ok=True)
  samples = samples.clamp(0, 1).cpu()
  grid = visuals.grid(samples)  # small images upscaled (nearest), to be seen without zooming
  write_atomic(os.path.join(out_dir, 'sample.png'), lambda tmp: save_image(grid, tmp, format='png'))

  def write_array(tmp):
    with open(tmp, 'wb') as f:  # a file object: np.save would append '.npy' to a name
      np.save(f, datasets.to_uint8(samples))  # truncated, as the reference writes it
  write_atomic(os.path.join(out_dir, 'sample.np'), write_array)
  return grid


class ScoreTrainer(train_loop.Trainer):
  """The score model's part of `train_loop.run`: config.training's schedule, precision and
  compilation, the SDE loss's step functions, the EMA weights' evaluation loss every eval_freq
  steps, and EMA samples at each snapshot (training.snapshot_sampling; also in TensorBoard), and
  the power-function EMAs of training.phema_sigma_rels (phema.py)."""
  tracks_phema = True

  def __init__(self, config, workdir):
    super().__init__(config, Layout(workdir), train_loop.Schedule.of(config.training))

  def claim_workdir(self):
    check_and_save_config(self.config, self.layout.root)

  def build_state(self):
    dequantizer.check_training_config(self.config)
    return build_state(self.config)

  def prepare(self):
    tc = self.config.training
    self.grad_scaler = precision_lib.grad_scaler(tc.precision,
                                                 self.config.device.type)
    precision_lib.configure_backends(self.config.device, tc.cudnn_benchmark, tc.tf32)

  def training_model(self, model):
    return precision_lib.training_model(self.config, model)  # compiled if training.compile

  def start(self, state, run):
    config, tc = self.config, self.config.training
    self.run = run
    self.train_iter, self.eval_iter = build_data(config, run.initial_step, self.layout.image_check)
    self.scaler = datasets.get_data_scaler(config)
    sde, sampling_eps = sde_lib.get_sde(config)
    shard = (run.rank, run.world) if run.world > 1 else None
    if tc.dequantizer:  # the score model and the variational dequantizer, on the bound
      self.train_step, self.eval_step = dequantizer.joint_step_fns(
        config, sde, state['dequantizer'], run.noise_generator, shard=shard)
    else:
      self.train_step, self.eval_step = losses.step_fns_from_config(
        config, sde, run.noise_generator, grad_scaler=self.grad_scaler, shard=shard)
    self.eval_state = dict(state, model=run.model)  # evaluation bypasses DDP's gradient hooks
    self.sampler = None
    if tc.snapshot_sampling:
      import sampling
      shape = (tc.batch_size // run.world, config.data.num_channels, config.data.image_size,
               config.data.image_size)
      self.sampler = sampling.get_sampling_fn(config, sde, shape,
                                              datasets.get_data_inverse_scaler(config), sampling_eps)

  def step(self, state, step):
    return self.train_step(state, self.scaler(_to_device(next(self.train_iter), self.config)))

  def scalars(self, state):
    fp16 = {} if self.grad_scaler is None else {'grad_scale': self.grad_scaler.get_scale()}
    deq = {} if not self.config.training.dequantizer else {
      'dequantizer_grad_norm': float(self.train_step.deq_grad_norm)}
    return dict(grad_norm=float(self.train_step.grad_norm), **fp16, **deq)

  def evaluate(self, state, step):
    value = eval_loss(self.eval_step, self.eval_state, self.eval_iter, self.scaler, self.config,
                      self.run.world, step)
    if self.run.rank == 0:
      logging.info('step: %d, eval_loss: %.5e', step, value)
    return {'eval_loss': value}

  def snapshot(self, state, step):
    if self.sampler is not None:
      grid = save_samples(self.sampler, self.run.model, state['ema'], self.layout.samples, step,
                          self.config, self.run.rank, self.run.world)
      return None if grid is None else {'samples': grid}
    return None


def train(config, workdir):
  """Train the model of `config`, resuming from workdir/checkpoints-meta if a run stopped there;
  returns the final state (model, ema, optimizer, step).

  Step s trains on global batch s, logs every log_freq steps, evaluates the loss of the EMA
  weights every eval_freq steps, snapshots (checkpoint + samples) every snapshot_freq steps and
  at the last step n_iters, then writes the resume checkpoint every snapshot_freq_for_preemption
  steps (after the rest of the step, so a resumed run replays nothing).
  """
  return train_loop.run(config, ScoreTrainer(config, workdir))
