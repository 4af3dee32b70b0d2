"""Bits/dim of `--mode eval`: the probability-flow ODE's or the SDE bound's, over the bits/dim split
(`config.eval.bpd_dataset`), `num_repeats` times, one file per batch ({train|test}_ckpt_N_bpd_K.npz
or ..._bound_K.npz, arr_0: the batch's bits/dim), each written atomically and skipped when it
exists, with noise seeded by (config.seed, checkpoint, batch), so that an interrupted evaluation
redoes only what it had not finished and gets what the first run would have. Under torchrun,
batch K is rank K mod world_size's.
"""
import itertools
import logging
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import distributed
from seeds import BITS_PER_DIM, derive_seed
from workdir import savez_atomic


def bpd_file(eval_dir, config, ckpt, batch_id, name='bpd'):  # name 'bound': the SDE bound's
  return os.path.join(eval_dir, f'{config.eval.bpd_dataset.lower()}_ckpt_{ckpt}_{name}_{batch_id}.npz')


def eval_bpd(config, model, likelihood_fn, ds_bpd, num_repeats, scaler, eval_dir, ckpt, name='bpd'):
  """Bits/dim of every batch of `ds_bpd`, `num_repeats` times -> one file per batch.

  Batch K = batch_id + len(ds_bpd) * repeat is skipped when its file exists, and handled by rank
  K mod world_size. Returns the mean bits/dim over all batches (on rank 0, once all are done).
  """
  rank, world = distributed.rank_world()
  total = len(ds_bpd) * num_repeats
  pending = [k for k in range(rank, total, world)
             if not os.path.exists(bpd_file(eval_dir, config, ckpt, k, name))]
  if pending:
    logging.info('ckpt %d: bits/dim of %d batch(es) of %d %s images with the %s (%d repeat(s) of '
                 '%d batches; %d of them on this process still to do)', ckpt, len(pending),
                 ds_bpd.batch_size, config.eval.bpd_dataset, {'bpd': 'probability-flow ODE',
                 'bound': 'SDE likelihood bound'}[name], num_repeats, len(ds_bpd), len(pending))
    # Repeat r reads epoch r of the stream: a new order and new dequantization noise.
    stream = itertools.islice(ds_bpd.iterate(0), total)
    todo = set(pending)
    bar = tqdm(total=len(pending), desc=f'bits/dim ckpt {ckpt}', unit='batch', disable=rank != 0)
    for k, batch in enumerate(stream):
      if k not in todo:
        continue
      generator = torch.Generator(device=config.device).manual_seed(
        derive_seed(config.seed, BITS_PER_DIM, ckpt, k, *(() if name == 'bpd' else (1,))))
      start = time.perf_counter()
      bpd, _, nfe = likelihood_fn(model, scaler(batch.to(config.device)), generator=generator)
      bpd = bpd.detach().cpu().numpy().reshape(-1)
      savez_atomic(bpd_file(eval_dir, config, ckpt, k, name), bpd)
      bar.update(1)
      logging.info('ckpt %d, repeat %d, batch %d: mean bpd %.6f (%d evaluations, %.1f s)', ckpt,
                   k // len(ds_bpd), k % len(ds_bpd), bpd.mean(), nfe, time.perf_counter() - start)
    bar.close()
  distributed.barrier()
  return float(np.concatenate([np.load(bpd_file(eval_dir, config, ckpt, k, name))['arr_0']
                               for k in range(total)]).mean())
