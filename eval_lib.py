"""Evaluation of trained checkpoints (`--mode eval`) and dataset statistics (`--mode fid_stats`).

`evaluate(config, workdir, eval_folder)` goes over checkpoints/checkpoint_{begin..end}.pth of
`workdir` and, as `config.eval` enables, writes under workdir/eval_folder the reference's files:
  ckpt_N_loss.npz                   all_losses, mean_loss (EMA weights, whole test split)
  {train|test}_ckpt_N_bpd_K.npz     bits/dim of batch K (arr_0); the split is gone over
                                    config.eval.bpd_num_repeats times with fresh dequantization
                                    noise (the reference: 5 on the test split, 1 on train);
                                    eval.dequantization='variational' draws it from the
                                    checkpoint's dequantizer (dequantizer.py) and adds log q
  ckpt_N/samples_R.npz              samples (uint8, N H W C) of sampling round R
  ckpt_N/statistics_R.npz           their Inception pool_3 and logits
  report_N.npz                      IS, fid, kid (+ IS_std, IS_1split, kid_std); on DIGITS
                                    digits_fd, digits_cs and their real-data floors instead
and report.json, a summary per checkpoint (mean loss, mean bits/dim, IS/FID/KID).

On the embedded DIGITS dataset, sample quality needs no Inception network and no download: the
statistics_R.npz files hold the features and logits of the small digits classifier of
digits_quality.py, scored as a Frechet distance and a classifier score against the training
digits, next to the same numbers for as many held-out test digits (the floor).

Each long step logs a line before it starts (what, how many, which checkpoint) and shows a tqdm
bar with an ETA over bits/dim batches and sampling rounds; each bits/dim batch logs its NFE.

Every file is written atomically and skipped when it already exists, so a preempted evaluation
started again redoes only the loss file, bits/dim batches and sampling rounds it had not
finished. The noise of each bits/dim batch and sampling round is seeded by (config.seed,
checkpoint, batch or round), so a redone piece gives what the first run would have. Under
torchrun, bits/dim batches and sampling rounds are split over the ranks (round R on rank
R mod world_size); rank 0 writes the loss, metrics and reports. One process evaluates into a folder
at a time (its .lock); SIGTERM / SIGUSR1 stop it at once, or once the file it is writing is
complete, with exit status 75 (preemption.py).

Optional config.eval keys (reference defaults in brackets): ckpt_timeout_s [no limit, 3 days
here] and ckpt_poll_s [60] for checkpoints that have not arrived, bpd_rtol / bpd_atol [1e-5],
inception_path, inception_mode ['legacy_tensorflow'], inception_batch_size, stats_file,
is_splits [10].
"""
import json
import logging
import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import distributed
import evaluation
import likelihood
import losses
import preemption
import sampling
import sde_lib
import visuals
from bits_per_dim import eval_bpd
from checkpoints import build_state, restore_checkpoint
from datasets import to_uint8
from folder_lock import locked
from seeds import EVAL_MODE_LOSS, SAMPLING_ROUND, SCHEME, derive_seed
from workdir import Layout, as_json, read_json, refuse_other_run, savez_atomic, write_json_atomic


# ----------------------------------------------------------------------------- small helpers

# ----------------------------------------------------------------------------- building blocks

def eval_batches(config, train, uniform_dequantization, repeat=False):
  """Whole (not sharded) batches of config.eval.batch_size images of one split, in [0, 1]."""
  images = datasets.split_images(config, train)
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
  if state.get('dequantizer'):
    state['dequantizer'].restored = False  # set again only if this file holds one
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
  if config.eval.dequantization == 'variational':
    if not state.get('dequantizer') or not state['dequantizer'].restored:
      raise ValueError(f'{path} holds no variational dequantizer, which '
                       'config.eval.dequantization="variational" evaluates with: train with '
                       'config.training.dequantizer=True, or use --config.eval.dequantization=uniform.')
    state['dequantizer'].ema_flow()
  return state


def eval_loss(config, state, sde, eval_ds, scaler, out_path):
  """Mean training loss of the EMA weights over the test split -> ckpt_N_loss.npz. Returns it."""
  if os.path.exists(out_path):
    return float(np.load(out_path)['mean_loss'])
  logging.info('Loss of the EMA weights on %d test batches of %d images', len(eval_ds),
               config.eval.batch_size)
  generator = torch.Generator(device=config.device).manual_seed(
    derive_seed(config.seed, EVAL_MODE_LOSS))
  step = losses.get_step_fn(sde, train=False, reduce_mean=config.training.reduce_mean,
                            continuous=config.training.continuous,
                            likelihood_weighting=config.training.likelihood_weighting,
                            generator=generator)
  all_losses = np.asarray([step(state, scaler(batch.to(config.device))).item() for batch in eval_ds])
  savez_atomic(out_path, all_losses=all_losses, mean_loss=all_losses.mean())
  return float(all_losses.mean())


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
    start = time.perf_counter()
    generator = torch.Generator(device=config.device).manual_seed(
      derive_seed(config.seed, SAMPLING_ROUND, ckpt, r))
    with torch.no_grad():
      x, nfe = sampling_fn(model, generator=generator)
    samples = to_uint8(x)
    savez_atomic(samples_path, samples=samples)
    logging.info('ckpt %d, sampling round %d: %d samples, %d evaluations, %.1f s', ckpt, r,
                 len(samples), nfe, time.perf_counter() - start)
  latents = inception(samples)
  savez_atomic(stats_path, pool_3=latents['pool_3'], logits=latents['logits'])
  return nfe


def compute_metrics(config, sample_dir, score):
  """score(pool_3, logits) of the first num_samples samples (rounds in order): IS/FID/KID, or
  the digits metrics (see `_sampling_tools`)."""
  stats = [np.load(os.path.join(sample_dir, f'statistics_{r}.npz'))
           for r in range(num_sampling_rounds(config))]
  n = config.eval.num_samples
  pool_3 = np.concatenate([s['pool_3'] for s in stats])[:n]
  logits = np.concatenate([s['logits'] for s in stats])[:n]
  if len(pool_3) < n:
    raise ValueError(f'{sample_dir} holds {len(pool_3)} samples, fewer than config.eval.num_samples'
                     f' = {n}: its rounds were drawn with another batch size.')
  return score(pool_3, logits)


def write_report(eval_dir, ckpt, results):
  """report_N.npz with the sample metrics (the reference's keys IS, fid, kid), and the merged
  per-checkpoint summary report.json."""
  metrics = {k: v for k, v in results.items()
             if k in ('IS', 'IS_std', 'IS_1split', 'fid', 'kid', 'kid_std') or k.startswith('digits_')}
  if metrics:
    savez_atomic(os.path.join(eval_dir, f'report_{ckpt}.npz'), **metrics)
  summary_path = os.path.join(eval_dir, 'report.json')
  summary = {}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  summary.setdefault(str(ckpt), {}).update({k: float(v) for k, v in results.items()})
  write_json_atomic(summary_path, summary, indent=1, sort_keys=True)
  logging.info('ckpt %d: %s', ckpt, ', '.join(f'{k} {v:.6g}' for k, v in sorted(results.items())))


# ----------------------------------------------------------------------------- the two modes

def _sampling_tools(config):
  """(features, score): the feature network (images -> {'pool_3', 'logits'}) and
  score(pool_3, logits) -> metrics. Inception and IS/FID/KID against the dataset statistics, or on
  DIGITS the digits classifier and its metrics with their floor. Raises FileNotFoundError /
  ValueError saying what file is missing."""
  network = config.eval.feature_network
  if network == 'digits' or (network == 'auto' and config.data.dataset.upper() == 'DIGITS'):
    import digits_quality
    features = digits_quality.DigitsFeatures.load(config.device)
    reference = digits_quality.reference_statistics(features)
    return features, lambda pool_3, logits: digits_quality.score_outputs(
      {'pool_3': pool_3, 'logits': logits}, reference)
  inception = evaluation.get_inception_model(config)
  data_stats = evaluation.load_stats(evaluation.stats_file(config), mode=inception.mode)
  num_splits = config.eval.is_splits
  return inception, lambda pool_3, logits: evaluation.compute_metrics(
    pool_3, logits, data_stats, num_splits=num_splits)


def evaluate(config, workdir, eval_folder='eval'):
  """Evaluate checkpoints config.eval.begin_ckpt..end_ckpt of `workdir` (see the module doc).

  Without the Inception weights or the dataset statistics, loss and bits/dim still run and the
  sampling evaluation stops with an error naming the missing file (raised at the end).
  """
  eval_dir = os.path.join(workdir, eval_folder)
  with distributed.process_group(config, distributed.UNEVEN_WORK_TIMEOUT) as (rank, _), \
      preemption.watch('evaluation', interrupt=True), locked(eval_dir, 'eval'):
    _evaluate(config, workdir, eval_folder, rank)


def build_tools(config, sde, sampling_eps, flow=None):
  """What the enabled evaluations need, built once: data streams, likelihood and sampling
  functions, the Inception network and the dataset statistics.

  `flow`: the checkpoints' variational dequantizer (restored in place for each one), for
  config.eval.dequantization='variational'.

  Returns (tools dict, sampling_error): when FID/IS/KID cannot run (no Inception weights or no
  statistics) but loss or bits/dim can, sampling_error is the exception to raise at the end.
  """
  ev = config.eval
  if ev.feature_network not in ('auto', 'inception', 'digits'):
    raise ValueError(f'config.eval.feature_network is {ev.feature_network!r}; use "auto" (the '
                     'digits classifier on DIGITS, Inception elsewhere), "inception" or "digits".')
  inverse_scaler = datasets.get_data_inverse_scaler(config)
  tools = {'scaler': datasets.get_data_scaler(config)}
  sampling_error = None
  if ev.enable_sampling:
    rank, _ = distributed.rank_world()
    if rank != 0:
      distributed.barrier()  # rank 0 fetches the Inception weights alone, first
    try:
      tools['inception'], tools['score'] = _sampling_tools(config)
    except (FileNotFoundError, ValueError) as e:
      sampling_error = e
    if rank == 0:
      distributed.barrier()
    # Every rank samples, or none: their barriers must pair up.
    if not distributed.all_ranks(sampling_error is None) and sampling_error is None:
      sampling_error = FileNotFoundError('FID/IS/KID: another process could not load the feature '
                                         'network or the dataset statistics; see its log.')
    if sampling_error is not None:
      tools.pop('inception', None), tools.pop('score', None)
      if not (ev.enable_loss or ev.enable_bpd):
        raise sampling_error
      logging.error('FID/IS/KID evaluation is skipped; loss and bits/dim go on. %s', sampling_error)
    else:
      shape = (ev.batch_size, config.data.num_channels, config.data.image_size, config.data.image_size)
      # The network samples in config.eval.precision; bits/dim below always run in float32.
      tools['sampling_fn'] = sampling.get_sampling_fn(
        config, sde, shape, inverse_scaler, sampling_eps, precision=ev.precision)
  if ev.enable_loss:
    tools['eval_ds'] = eval_batches(config, train=False,
                                    uniform_dequantization=config.data.uniform_dequantization)
  if ev.enable_bpd or ev.enable_bound:
    split = ev.bpd_dataset.lower()
    if split not in ('train', 'test'):
      raise ValueError(f'config.eval.bpd_dataset is {ev.bpd_dataset!r}; use "train" or "test".')
    # Repeats draw fresh dequantization noise; the reference goes over test 5 times, train once.
    repeats = ev.bpd_num_repeats
    tools['num_repeats'] = int(repeats) if repeats is not None else (5 if split == 'test' else 1)
    if tools['num_repeats'] < 1:
      raise ValueError(f'config.eval.bpd_num_repeats is {repeats}; use 1 or more (or None for '
                       'the reference\'s 5 on the test split, 1 on train).')
    # (variational: 8-bit batches, dequantized by the flow inside the bits/dim functions)
    tools['ds_bpd'] = eval_batches(config, train=split == 'train', repeat=True,
                                   uniform_dequantization=ev.dequantization == 'uniform')
    tools.update(likelihood.eval_functions(config, sde, inverse_scaler, flow))  # ODE, bound
  return tools, sampling_error


def sample_and_score(config, model, tools, sample_dir, ckpt, rank):
  """This rank's sampling rounds (R = rank, rank + world, ...), then (rank 0) the metrics."""
  os.makedirs(sample_dir, exist_ok=True)
  _, world = distributed.rank_world()
  rounds = [r for r in range(rank, num_sampling_rounds(config), world)
            if not os.path.exists(os.path.join(sample_dir, f'statistics_{r}.npz'))]
  if rounds:
    logging.info('ckpt %d: drawing %d round(s) of %d samples with the %r sampler (%d samples in '
                 'all), then their %s features', ckpt, len(rounds), config.eval.batch_size,
                 config.sampling.method, config.eval.num_samples, tools['inception'].mode)
  for r in tqdm(rounds, desc=f'sampling ckpt {ckpt}', unit='round', disable=rank != 0):
    sample_round(config, model, tools['sampling_fn'], tools['inception'], sample_dir, ckpt, r)
  distributed.barrier()
  return compute_metrics(config, sample_dir, tools['score']) if rank == 0 else {}


def evaluate_checkpoint(config, state, sde, tools, eval_dir, ckpt, rank):
  """Loss, bits/dim and sample quality of the restored checkpoint, as enabled; a results dict."""
  results = {}
  if 'eval_ds' in tools and rank == 0:
    results['loss'] = eval_loss(config, state, sde, tools['eval_ds'], tools['scaler'],
                                os.path.join(eval_dir, f'ckpt_{ckpt}_loss.npz'))
  for name, key in (('bpd', 'likelihood_fn'), ('bound', 'bound_fn')):
    if key in tools:
      results[name] = eval_bpd(config, state['model'], tools[key], tools['ds_bpd'],
                               tools['num_repeats'], tools['scaler'], eval_dir, ckpt, name)
  if 'sampling_fn' in tools:
    results.update(sample_and_score(config, state['model'], tools,
                                    os.path.join(eval_dir, f'ckpt_{ckpt}'), ckpt, rank))
  return results


def eval_identity(config):
  """What the files of an evaluation folder depend on besides the checkpoint, as JSON values:
  an interrupted evaluation resumes on its files only with these unchanged. (num_samples may
  grow: more rounds of the same seeds.)"""
  ev = config.eval
  found = dict(seed_scheme=SCHEME, seed=config.seed, batch_size=ev.batch_size,
               precision=ev.precision,
               sampler={k: v for k, v in config.sampling.to_dict().items()
                        if k not in ('progress', 'compile', 'compile_mode', 'precision')},
               features=dict(network=ev.feature_network,
                             inception_mode=ev.inception_mode),
               bpd=dict(dataset=ev.bpd_dataset, repeats=ev.bpd_num_repeats, rtol=ev.bpd_rtol,
                        atol=ev.bpd_atol, dequantization=ev.dequantization, bound=ev.bound_num_samples),
               data=dict(dataset=config.data.dataset, image_size=config.data.image_size,
                         uniform_dequantization=config.data.uniform_dequantization))
  return as_json(found)


def check_eval_folder(eval_dir, config):
  """Record eval_identity(config) in eval_dir/eval_config.json, or refuse a folder whose files
  were made with other settings (ValueError naming them)."""
  path = os.path.join(eval_dir, 'eval_config.json')
  ident = eval_identity(config)
  if os.path.exists(path):
    saved = read_json(path)
    # Folders from before these entries: bits/dim used uniform dequantization, and no bound.
    saved['bpd'] = dict(dict(dequantization='uniform', bound=ident['bpd']['bound']), **saved['bpd'])
    refuse_other_run(saved, ident, f'{eval_dir} holds an evaluation made with other '
                     'settings', 'Its files would be reused as they are: pass another '
                     '--eval_folder, or delete the folder to evaluate again.')
  else:
    if any(name.startswith(('ckpt_', 'report')) for name in os.listdir(eval_dir)):
      logging.warning('%s holds results written before evaluation folders recorded their settings '
                      '(eval_config.json): they are reused as they are. Pass another '
                      '--eval_folder to evaluate afresh.', eval_dir)
    write_json_atomic(path, ident, indent=1, sort_keys=True)


def _evaluate(config, workdir, eval_folder, rank):
  ev = config.eval
  eval_dir = os.path.join(workdir, eval_folder)
  os.makedirs(eval_dir, exist_ok=True)
  if rank == 0:
    check_eval_folder(eval_dir, config)
  distributed.barrier()
  state = build_state(config, optimizer=False)
  sde, sampling_eps = sde_lib.get_sde(config)
  deq = state.get('dequantizer')
  tools, sampling_error = build_tools(config, sde, sampling_eps, deq and deq.flow)
  for ckpt in range(ev.begin_ckpt, ev.end_ckpt + 1):
    path = Layout(workdir).snapshot(ckpt)
    wait_for_checkpoint(path, ev.ckpt_timeout_s, ev.ckpt_poll_s)
    if rank == 0:
      logging.info('Evaluating checkpoint %d (%s): %s', ckpt, path, ', '.join(
        name for name, key in (('loss', 'eval_ds'), ('bits/dim', 'likelihood_fn'), ('bound', 'bound_fn'),
                               ('sample quality', 'sampling_fn')) if key in tools) or 'nothing enabled')
    restore_ckpt(config, state, path)
    results = evaluate_checkpoint(config, state, sde, tools, eval_dir, ckpt, rank)
    if rank == 0 and results:
      write_report(eval_dir, ckpt, results)
      # TensorBoard, against the loop step that wrote the checkpoint (its stored step - 1: the
      # x axis of the training curves).
      visuals.add_eval_scalars(workdir, int(state['step']) - 1, results,
                               prefix=os.path.basename(os.path.normpath(eval_folder)))
  if sampling_error is not None:
    raise sampling_error


def fid_stats(config, workdir=None):
  """Inception statistics of every image of the train split -> evaluation.stats_file(config).

  Written once by rank 0 (the file holds raw pool_3 features plus their mean and covariance,
  and the Inception mode). `workdir` is unused; it keeps the signature of the other modes.
  """
  with distributed.process_group(config) as (rank, _):
    pass  # only rank 0 works: the group is joined to learn the rank
  if rank != 0:
    return None
  inception = evaluation.get_inception_model(config)
  images = datasets.split_images(config, True)
  loader = torch.utils.data.DataLoader(images, batch_size=config.eval.inception_batch_size,
                                       num_workers=datasets.loader_workers(config, images))
  logging.info('fid_stats: Inception features (%s mode) of the %d training images of %s',
               inception.mode, len(images), config.data.dataset)
  pools = []
  for batch, _ in tqdm(loader, desc='fid_stats', unit='batch'):
    pools.append(inception(batch.permute(0, 2, 3, 1).numpy())['pool_3'])
  path = evaluation.stats_file(config)
  evaluation.save_stats(path, np.concatenate(pools), mode=inception.mode)
  logging.info('Wrote the statistics of %d images to %s', len(images), path)
  return path
