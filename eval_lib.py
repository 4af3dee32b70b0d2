"""Evaluation of trained checkpoints (`--mode eval`) and dataset statistics (`--mode fid_stats`).

`evaluate(config, workdir, eval_folder)` goes over checkpoints/checkpoint_{begin..end}.pth of
`workdir` and, as `config.eval` enables, writes under workdir/eval_folder the reference's files:
  ckpt_N_loss.npz                   all_losses, mean_loss (EMA weights, whole test split)
  {train|test}_ckpt_N_bpd_K.npz     bits/dim of batch K (arr_0); the test split is gone over
                                    5 times with fresh dequantization noise, as in the reference
  ckpt_N/samples_R.npz              samples (uint8, N H W C) of sampling round R
  ckpt_N/statistics_R.npz           their Inception pool_3 and logits
  report_N.npz                      IS, fid, kid (+ IS_std, IS_1split, kid_std)
and report.json, a summary per checkpoint (mean loss, mean bits/dim, IS/FID/KID).

Every file is written atomically and skipped when it already exists, so a preempted evaluation
started again redoes only the loss file, bits/dim batches and sampling rounds it had not
finished. The noise of each bits/dim batch and sampling round is seeded by (config.seed,
checkpoint, batch or round), so a redone piece gives what the first run would have. Under
torchrun, bits/dim batches and sampling rounds are split over the ranks (round R on rank
R mod world_size); rank 0 writes the loss, metrics and reports.

Optional config.eval keys (reference defaults in brackets): ckpt_timeout_s [no limit, 3 days
here] and ckpt_poll_s [60] for checkpoints that have not arrived, bpd_rtol / bpd_atol [1e-5],
inception_path, inception_mode ['legacy_tensorflow'], inception_batch_size, stats_file,
is_splits [10].
"""
import itertools
import json
import logging
import math
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import datasets
import evaluation
import likelihood
import losses
import run_lib
import sampling
import sde_lib


# ----------------------------------------------------------------------------- small helpers

def _savez(path, *args, **arrays):
  """np.savez_compressed, atomically: a file that exists is complete."""
  tmp = f'{path}.tmp.npz'
  np.savez_compressed(tmp, *args, **arrays)
  os.replace(tmp, path)


def _seed(*parts):
  """A 63-bit seed from integers (config.seed, checkpoint, batch or round, ...)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _rank_world():
  if dist.is_available() and dist.is_initialized():
    return dist.get_rank(), dist.get_world_size()
  return 0, 1


def _barrier():
  if _rank_world()[1] > 1:
    dist.barrier()


def _to_uint8(samples):
  """Samples in [0, 1], (B, C, H, W) -> uint8 (B, H, W, C), truncated as the reference does."""
  x = samples.detach().permute(0, 2, 3, 1).cpu().numpy()
  return np.clip(x * 255., 0, 255).astype(np.uint8)


def checkpoint_path(workdir, ckpt):
  return os.path.join(workdir, 'checkpoints', f'checkpoint_{ckpt}.pth')


# ----------------------------------------------------------------------------- building blocks

def build_state(config):
  """Model, EMA and optimizer as training builds them (so its checkpoints restore strictly)."""
  return run_lib.build_state(config)


def eval_batches(config, train, uniform_dequantization, repeat=False):
  """Whole (not sharded) batches of config.eval.batch_size images of one split, in [0, 1]."""
  build = datasets.DATASETS.get(config.data.dataset)
  images = build(config, train, datasets.data_root(config), bool(config.data.get('download', False)))
  return datasets.ImageBatches(images, config.eval.batch_size, repeat=repeat,
                               uniform_dequantization=uniform_dequantization,
                               seed=config.seed + (0 if train else 1))


def wait_for_checkpoint(path, timeout_s, poll_s=60.):
  """Block until `path` exists; TimeoutError after `timeout_s` seconds."""
  start = time.monotonic()
  if not os.path.exists(path):
    logging.warning('Waiting for the arrival of %s (at most %.0f s)', path, timeout_s)
  while not os.path.exists(path):
    left = timeout_s - (time.monotonic() - start)
    if left <= 0:
      raise TimeoutError(f'{path} did not appear within {timeout_s:.0f} s. Is training still '
                         'running? Lower config.eval.end_ckpt, or raise config.eval.ckpt_timeout_s.')
    time.sleep(min(poll_s, left))


def restore_ckpt(config, state, path, retries=2, retry_wait_s=60.):
  """Restore `path` into `state` and copy the EMA weights into the model (what is evaluated).

  A file written by the official code (not atomically) can be read while still incomplete, so a
  corrupt read is retried after `retry_wait_s`.
  """
  from utils import restore_checkpoint
  for attempt in range(retries + 1):
    try:
      restore_checkpoint(path, state, device=config.device)
      break
    except RuntimeError:
      if attempt == retries:
        raise
      logging.warning('%s could not be read yet; retrying in %.0f s', path, retry_wait_s)
      time.sleep(retry_wait_s)
  state['ema'].copy_to(state['model'].parameters())
  return state


def eval_loss(config, state, sde, eval_ds, scaler, out_path):
  """Mean training loss of the EMA weights over the test split -> ckpt_N_loss.npz. Returns it."""
  if os.path.exists(out_path):
    return float(np.load(out_path)['mean_loss'])
  generator = torch.Generator(device=config.device).manual_seed(_seed(config.seed, 0))
  step = losses.get_step_fn(sde, train=False, reduce_mean=config.training.reduce_mean,
                            continuous=config.training.continuous,
                            likelihood_weighting=config.training.likelihood_weighting,
                            generator=generator)
  all_losses = np.asarray([step(state, scaler(batch.to(config.device))).item() for batch in eval_ds])
  _savez(out_path, all_losses=all_losses, mean_loss=all_losses.mean())
  return float(all_losses.mean())


def bpd_file(eval_dir, config, ckpt, batch_id):
  return os.path.join(eval_dir, f'{config.eval.bpd_dataset.lower()}_ckpt_{ckpt}_bpd_{batch_id}.npz')


def eval_bpd(config, model, likelihood_fn, ds_bpd, num_repeats, scaler, eval_dir, ckpt):
  """Bits/dim of every batch of `ds_bpd`, `num_repeats` times -> one file per batch.

  Batch K = batch_id + len(ds_bpd) * repeat is skipped when its file exists, and handled by rank
  K mod world_size. Returns the mean bits/dim over all batches (on rank 0, once all are done).
  """
  rank, world = _rank_world()
  total = len(ds_bpd) * num_repeats
  pending = [k for k in range(rank, total, world) if not os.path.exists(bpd_file(eval_dir, config, ckpt, k))]
  if pending:
    # Repeat r reads epoch r of the stream: a new order and new dequantization noise.
    stream = itertools.islice(ds_bpd.iterate(0), total)
    todo = set(pending)
    for k, batch in enumerate(stream):
      if k not in todo:
        continue
      generator = torch.Generator(device=config.device).manual_seed(_seed(config.seed, ckpt, k))
      bpd = likelihood_fn(model, scaler(batch.to(config.device)), generator=generator)[0]
      bpd = bpd.detach().cpu().numpy().reshape(-1)
      _savez(bpd_file(eval_dir, config, ckpt, k), bpd)
      logging.info('ckpt %d, repeat %d, batch %d: mean bpd %.6f', ckpt, k // len(ds_bpd),
                   k % len(ds_bpd), bpd.mean())
  _barrier()
  return float(np.concatenate([np.load(bpd_file(eval_dir, config, ckpt, k))['arr_0']
                               for k in range(total)]).mean())


def num_sampling_rounds(config):
  """ceil(num_samples / batch_size) (the reference draws one round more when it divides)."""
  return math.ceil(config.eval.num_samples / config.eval.batch_size)


def sample_round(config, model, sampling_fn, inception, sample_dir, ckpt, r):
  """Round `r`: draw a batch, write samples_r.npz, then its Inception outputs statistics_r.npz.

  A round whose statistics exist is skipped; one with samples but no statistics only runs the
  Inception network. Returns the number of network evaluations spent sampling (0 if none).
  """
  samples_path = os.path.join(sample_dir, f'samples_{r}.npz')
  stats_path = os.path.join(sample_dir, f'statistics_{r}.npz')
  if os.path.exists(stats_path):
    return 0
  nfe = 0
  if os.path.exists(samples_path):
    samples = np.load(samples_path)['samples']
  else:
    generator = torch.Generator(device=config.device).manual_seed(_seed(config.seed, ckpt, r, 1))
    with torch.no_grad():
      x, nfe = sampling_fn(model, generator=generator)
    samples = _to_uint8(x)
    _savez(samples_path, samples=samples)
    logging.info('ckpt %d, sampling round %d: %d samples, %d evaluations', ckpt, r, len(samples), nfe)
  latents = inception(samples)
  _savez(stats_path, pool_3=latents['pool_3'], logits=latents['logits'])
  return nfe


def compute_metrics(config, sample_dir, data_stats):
  """IS/FID/KID of the first num_samples samples (rounds in order) against `data_stats`."""
  stats = [np.load(os.path.join(sample_dir, f'statistics_{r}.npz'))
           for r in range(num_sampling_rounds(config))]
  n = config.eval.num_samples
  pool_3 = np.concatenate([s['pool_3'] for s in stats])[:n]
  logits = np.concatenate([s['logits'] for s in stats])[:n]
  return evaluation.compute_metrics(pool_3, logits, data_stats,
                                    num_splits=config.eval.get('is_splits', 10))


def write_report(eval_dir, ckpt, results):
  """report_N.npz with the sample metrics (the reference's keys IS, fid, kid), and the merged
  per-checkpoint summary report.json."""
  metrics = {k: v for k, v in results.items() if k in ('IS', 'IS_std', 'IS_1split', 'fid', 'kid', 'kid_std')}
  if metrics:
    _savez(os.path.join(eval_dir, f'report_{ckpt}.npz'), **metrics)
  summary_path = os.path.join(eval_dir, 'report.json')
  summary = {}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  summary.setdefault(str(ckpt), {}).update({k: float(v) for k, v in results.items()})
  tmp = summary_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  os.replace(tmp, summary_path)
  logging.info('ckpt %d: %s', ckpt, ', '.join(f'{k} {v:.6g}' for k, v in sorted(results.items())))


# ----------------------------------------------------------------------------- the two modes

def _sampling_tools(config):
  """(inception, data_stats) for FID/IS/KID; raises FileNotFoundError/ValueError saying what
  file is missing."""
  inception = evaluation.get_inception_model(config)
  data_stats = evaluation.load_stats(evaluation.stats_file(config), mode=inception.mode)
  return inception, data_stats


def evaluate(config, workdir, eval_folder='eval'):
  """Evaluate checkpoints config.eval.begin_ckpt..end_ckpt of `workdir` (see the module doc).

  Without the Inception weights or the dataset statistics, loss and bits/dim still run and the
  sampling evaluation stops with an error naming the missing file (raised at the end).
  """
  with run_lib.process_group(config) as (rank, _):
    _evaluate(config, workdir, eval_folder, rank)


def build_tools(config, sde, sampling_eps):
  """What the enabled evaluations need, built once: data streams, likelihood and sampling
  functions, the Inception network and the dataset statistics.

  Returns (tools dict, sampling_error): when FID/IS/KID cannot run (no Inception weights or no
  statistics) but loss or bits/dim can, sampling_error is the exception to raise at the end.
  """
  ev = config.eval
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  tools = {'scaler': datasets.get_data_scaler(config)}
  sampling_error = None
  if ev.enable_sampling:
    try:
      tools['inception'], tools['data_stats'] = _sampling_tools(config)
    except (FileNotFoundError, ValueError) as e:
      if not (ev.enable_loss or ev.enable_bpd):
        raise
      logging.error('FID/IS/KID evaluation is skipped; loss and bits/dim go on. %s', e)
      sampling_error = e
    else:
      shape = (ev.batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
      tools['sampling_fn'] = sampling.get_sampling_fn(config, sde, shape, inverse_scaler, sampling_eps)
  if ev.enable_loss:
    tools['eval_ds'] = eval_batches(config, train=False,
                                    uniform_dequantization=config.data.uniform_dequantization)
  if ev.enable_bpd:
    split = ev.bpd_dataset.lower()
    if split not in ('train', 'test'):
      raise ValueError(f'config.eval.bpd_dataset is {ev.bpd_dataset!r}; use "train" or "test".')
    # The test split is gone over 5 times (different dequantization noise), as in the reference.
    tools['num_repeats'] = 5 if split == 'test' else 1
    tools['ds_bpd'] = eval_batches(config, train=split == 'train', uniform_dequantization=True,
                                   repeat=True)
    tools['likelihood_fn'] = likelihood.get_likelihood_fn(
      sde, inverse_scaler, rtol=ev.get('bpd_rtol', 1e-5), atol=ev.get('bpd_atol', 1e-5))
  return tools, sampling_error


def sample_and_score(config, model, tools, sample_dir, ckpt, rank):
  """This rank's sampling rounds (R = rank, rank + world, ...), then (rank 0) IS/FID/KID."""
  os.makedirs(sample_dir, exist_ok=True)
  _, world = _rank_world()
  for r in range(rank, num_sampling_rounds(config), world):
    sample_round(config, model, tools['sampling_fn'], tools['inception'], sample_dir, ckpt, r)
  _barrier()
  return compute_metrics(config, sample_dir, tools['data_stats']) if rank == 0 else {}


def evaluate_checkpoint(config, state, sde, tools, eval_dir, ckpt, rank):
  """Loss, bits/dim and sample quality of the restored checkpoint, as enabled; a results dict."""
  results = {}
  if 'eval_ds' in tools and rank == 0:
    results['loss'] = eval_loss(config, state, sde, tools['eval_ds'], tools['scaler'],
                                os.path.join(eval_dir, f'ckpt_{ckpt}_loss.npz'))
  if 'likelihood_fn' in tools:
    results['bpd'] = eval_bpd(config, state['model'], tools['likelihood_fn'], tools['ds_bpd'],
                              tools['num_repeats'], tools['scaler'], eval_dir, ckpt)
  if 'sampling_fn' in tools:
    results.update(sample_and_score(config, state['model'], tools,
                                    os.path.join(eval_dir, f'ckpt_{ckpt}'), ckpt, rank))
  return results


def _evaluate(config, workdir, eval_folder, rank):
  ev = config.eval
  eval_dir = os.path.join(workdir, eval_folder)
  os.makedirs(eval_dir, exist_ok=True)
  state = build_state(config)
  sde, sampling_eps = sde_lib.get_sde(config)
  tools, sampling_error = build_tools(config, sde, sampling_eps)
  for ckpt in range(ev.begin_ckpt, ev.end_ckpt + 1):
    path = checkpoint_path(workdir, ckpt)
    wait_for_checkpoint(path, ev.get('ckpt_timeout_s', 3 * 24 * 3600.), ev.get('ckpt_poll_s', 60.))
    restore_ckpt(config, state, path)
    results = evaluate_checkpoint(config, state, sde, tools, eval_dir, ckpt, rank)
    if rank == 0 and results:
      write_report(eval_dir, ckpt, results)
  if sampling_error is not None:
    raise sampling_error


def fid_stats(config, workdir=None):
  """Inception statistics of every image of the train split -> evaluation.stats_file(config).

  Written once by rank 0 (the file holds raw pool_3 features plus their mean and covariance,
  and the Inception mode). `workdir` is unused; it keeps the signature of the other modes.
  """
  with run_lib.process_group(config) as (rank, _):
    pass  # only rank 0 works: the group is joined to learn the rank
  if rank != 0:
    return None
  inception = evaluation.get_inception_model(config)
  build = datasets.DATASETS.get(config.data.dataset)
  images = build(config, True, datasets.data_root(config), bool(config.data.get('download', False)))
  loader = torch.utils.data.DataLoader(images, batch_size=config.eval.get('inception_batch_size', 100),
                                       num_workers=config.data.get('num_workers', 0))
  pools = []
  for i, (batch, _) in enumerate(loader):
    pools.append(inception(batch.permute(0, 2, 3, 1).numpy())['pool_3'])
    if i % 50 == 0:
      logging.info('fid_stats: %d / %d images', sum(len(p) for p in pools), len(images))
  path = evaluation.stats_file(config)
  evaluation.save_stats(path, np.concatenate(pools), mode=inception.mode)
  logging.info('Wrote the statistics of %d images to %s', len(images), path)
  return path
