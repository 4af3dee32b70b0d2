"""`main.py --mode sample`: draw images from one checkpoint with the sampler the config selects.

    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/d --mode sample
    python main.py ... --mode sample --config.sample.seeds=0-999 --config.sample.ckpt=2
    python main.py ... --mode sample --config.sample.task=inpaint --config.sample.mask=right
    torchrun --nproc_per_node=4 main.py ... --mode sample      # the seeds split over 4 processes

It writes WORKDIR/generated/<config.sample.out>/
  images/000000.png ...  one PNG per image, named by its seed, each written atomically
  samples.npz            'samples': uint8 (N, H, W, C) in seed order (what evaluation reads)
  grid.png               the first up-to-256 images in a square grid, images under 48 px enlarged
                         (nearest) to be seen (inpaint / colorize also
                         inputs.png and masked.png: the inputs, and what the sampler was given)
  meta.json              checkpoint and step, sampler and settings, task, seeds, NFE and seconds
                         per batch, wall time, software versions

Image k's noise, its prior draw and every later draw, comes from its own torch.Generator seeded
by (config.seed, k) (EDM's --seeds; the samplers take a list of generators, see
`sde_lib.randn`), so it does not depend on the batch size, on the number of processes or on a
restart: a run started again skips the seeds whose PNG exists. A folder holding images of
another checkpoint, config or sampler is refused, and so is one another process is filling (its
.lock). SIGTERM / SIGUSR1 stop a run at once, or once the batch it is writing is complete, with
exit status 75 (preemption.py). Every config.sample key is documented in
configs/default_cifar10_configs.py.
"""
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import platform
import re
import subprocess
import time

import ml_collections
import numpy as np
import torch
import torch.distributed as dist

import distributed
import preemption
import sde_lib
import visuals
from checkpoints import load_score_model, resolve_checkpoint
from datasets import to_uint8
from seeds import IMAGE, SCHEME, derive_seed
from sample_tasks import TASKS
from folder_lock import locked
from workdir import Layout, as_json, read_json, refuse_other_run, savez_atomic, write_json_atomic, write_png

ROOT = pathlib.Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- inputs

def parse_seeds(seeds, num):
  """The seeds to draw, as EDM's --seeds: 0 .. num - 1 for '', else a comma-separated list of
  seeds and inclusive ranges 'a-b' (e.g. '0,5,10-19'), in the order given.

  Raises:
    ValueError naming the part that does not parse (or the seed listed twice: two processes
    would write its PNG at once) and the accepted forms.
  """
  text = str(seeds).strip()
  if not text:
    if num <= 0:
      raise ValueError(f'config.sample.num is {num}: ask for at least one image.')
    return list(range(num))
  out = []
  for part in text.split(','):
    match = re.fullmatch(r'(\d+)(?:\s*-\s*(\d+))?', part.strip())
    if not match or (match[2] is not None and int(match[1]) > int(match[2])):
      bad = '' if part.strip() == text else f' at {part.strip()!r}'
      raise ValueError(f'config.sample.seeds={text!r} does not parse{bad}: give an inclusive '
                       "range 'a-b' with 0 <= a <= b (e.g. '0-63'), seeds and such ranges "
                       "separated by commas (e.g. '0,5,10-19'), or '' for 0 .. num - 1.")
    out.extend(range(int(match[1]), int(match[2] or match[1]) + 1))
  twice = sorted(k for k, n in collections.Counter(out).items() if n > 1)
  if twice:
    raise ValueError(f'config.sample.seeds={text!r} lists seed(s) {twice[:5]} more than once: '
                     'give each seed once.')
  return out


def seed_ranges(seeds):
  """The seeds as inclusive ranges [[a, b], ...] in their order ([[0, 9]] for 0 .. 9)."""
  ranges = []
  for k in seeds:
    if ranges and k == ranges[-1][1] + 1:
      ranges[-1][1] = k
    else:
      ranges.append([k, k])
  return ranges


def image_generators(seed, seeds, device):
  """One torch.Generator per image, image k's seeded by (seed, k) (seeds.IMAGE's stream)."""
  return [torch.Generator(device=device).manual_seed(derive_seed(seed, IMAGE, k)) for k in seeds]


def build_sde(config):
  """The SDE and its eps; config.sample.pc_steps > 0 sets the number of PC steps instead of
  config.model.num_scales, which also sizes the network's buffers and so stays as trained."""
  steps = config.sample.pc_steps
  if not steps:
    return sde_lib.get_sde(config)
  if not config.training.continuous:
    raise ValueError('config.sample.pc_steps needs a continuous-time model: a discrete one is '
                     'tied to its model.num_scales noise levels.')
  sde_config = ml_collections.ConfigDict(config.to_dict())
  sde_config.model.num_scales = steps
  return sde_lib.get_sde(sde_config)


# ----------------------------------------------------------------------------- the folder

def identity(config, checkpoint, step, task):
  """What the images of a folder depend on (beyond their seeds), as JSON values."""
  data = {k: v for k, v in config.data.to_dict().items()
          if k not in ('root', 'download', 'num_workers')}
  s = config.sample  # not num, batch_size, seeds, out: they choose images, not what image k is
  sample = dict(task=s.task, ema=s.ema, pc_steps=s.pc_steps, **task.settings())
  found = dict(seed_scheme=SCHEME, checkpoint=dict(path=str(checkpoint), step=step),
               sampler={k: v for k, v in config.sampling.to_dict().items() if k != 'progress'},
               sample=sample, model=config.model.to_dict(), data=data, seed=config.seed,
               sde=dict(name=config.training.sde, continuous=config.training.continuous))
  return as_json(found)


def default_out(config, step, ident):
  """step{N}_{task or sampler}_{hash of the identity}: another setting, another folder."""
  kind = config.sample.task if config.sample.task != 'generate' else config.sampling.method
  digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
  return f'step{step}_{kind.lower()}_{digest}'


def open_folder(folder, ident):
  """Create `folder`/images (checking that it can be written) and return its meta.json so far.

  Raises:
    PermissionError: the folder cannot be written.
    ValueError: it holds images of another identity (names the entries that differ).
  """
  try:
    os.makedirs(folder / 'images', exist_ok=True)
    probe = folder / f'.write_test_{os.getpid()}'
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'Cannot write the samples to {folder} ({e.strerror or e}). Pass a '
                          '--workdir you can write to.') from e
  meta_path = folder / 'meta.json'
  if not meta_path.exists():
    return {}
  meta = read_json(meta_path)
  refuse_other_run({k: meta.get(k) for k in ident}, ident,
                   f'{folder} holds images of another checkpoint, config or sampler',
                   'Images are not mixed: pass another --config.sample.out, or delete the folder '
                   'to start it again.', limit=6)
  return meta


def _png_path(folder, seed):
  return folder / 'images' / f'{seed:06d}.png'


def read_png(path, channels):
  """uint8 (H, W, channels) of a PNG written by `write_png`."""
  from PIL import Image
  with Image.open(path) as im:
    image = np.asarray(im)
  return image[..., None] if image.ndim == 2 else image[..., :channels]


def save_grid(images, path, nrow=None, padding=2, min_side=visuals.MIN_SIDE):
  """uint8 (N, H, W, C) images in a grid (square unless `nrow` per row; torchvision's
  make_grid layout, black padding), written as a PNG; images smaller than `min_side` pixels
  enlarged k = ceil(min_side / side) times by pixel repetition (visuals.upscale), so 16x16
  digits are seen without zooming (images/*.png and samples.npz keep the drawn size)."""
  k = max(1, math.ceil(min_side / min(images.shape[1:3])))
  images = images.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else images
  n, h, w, c = images.shape
  nrow = nrow or int(math.ceil(math.sqrt(n)))
  rows = -(-n // nrow)
  grid = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
    grid[top:top + h, left:left + w] = image
  write_png(pathlib.Path(path), grid)


def versions(device):
  """Software (and device) the images were drawn with."""
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                            text=True, timeout=10).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    commit = None
  found = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
               scoresde_commit=commit, device=str(device))
  if torch.device(device).type == 'cuda':
    found['device_name'] = torch.cuda.get_device_name(device)
  return found


# ----------------------------------------------------------------------------- the mode

def sample(config, workdir):
  """Draw config.sample's images into workdir/generated/<out>/ (see the module doc).

  Returns:
    The folder (a pathlib.Path), on every process.
  """
  s = config.sample
  if s.task not in TASKS:
    raise ValueError(f'Unknown config.sample.task {s.task!r}; choose one of {", ".join(TASKS)}.')
  seeds = parse_seeds(s.seeds, s.num)
  if s.batch_size <= 0:
    raise ValueError(f'config.sample.batch_size is {s.batch_size}; it must be at least 1.')
  checkpoint = resolve_checkpoint(workdir, s.ckpt)
  with distributed.process_group(config, distributed.UNEVEN_WORK_TIMEOUT) as (rank, world), \
      preemption.watch('sampling', interrupt=True), contextlib.ExitStack() as hold:
    return _sample(config, workdir, seeds, checkpoint, rank, world, hold)


def _sample(config, workdir, seeds, checkpoint, rank, world, hold):
  """sample()'s work in its process group; `hold` (an ExitStack) keeps the folder's lock."""
  s = config.sample
  sde, eps = build_sde(config)
  task = TASKS[s.task](config, workdir, sde, eps)  # checks the sampler and inputs before loading
  model, step = load_score_model(config, checkpoint, s.ema)
  loaded = distributed.gather_objects((str(checkpoint), step))
  if len(set(loaded)) > 1:  # e.g. 'latest' while training replaced checkpoints-meta
    raise RuntimeError(f'The processes loaded different checkpoints ({sorted(set(loaded))}): one '
                       'was replaced while they read it. Pass config.sample.ckpt = a step number.')
  ident = identity(config, checkpoint, step, task)
  folder = pathlib.Path(Layout(str(workdir)).generated(s.out or default_out(config, step, ident)))
  meta = open_folder(folder, ident)
  hold.enter_context(locked(folder, 'sample'))
  ranges = seed_ranges(seeds)  # meta.json: [a, b] for one range, else the list of ranges
  meta = dict(meta, **ident, seeds=ranges[0] if len(ranges) == 1 else ranges, batch_size=s.batch_size,
              world_size=world, batches=meta.get('batches', []),
              wall_time_s=meta.get('wall_time_s', 0.), versions=versions(config.device))
  pending = [k for k in seeds if not _png_path(folder, k).exists()]
  if world > 1:
    dist.barrier()  # every rank lists the pending seeds before any rank writes one
  if rank == 0:
    write_json_atomic(folder / 'meta.json', meta, indent=1)
    logging.info('%s: %d images (seeds %s, %d of them drawn before) from %s (step %d, %s '
                 'weights), %s, batches of %d, %d process(es), into %s', s.task, len(seeds),
                 ','.join(f'{a}-{b}' if b > a else str(a) for a, b in ranges),
                 len(seeds) - len(pending), checkpoint, step,
                 'EMA' if s.ema else 'raw', task.describe(), s.batch_size, world, folder)
    if s.task == 'generate' and config.sampling.method.lower() == 'ode' and \
        config.sampling.ode_method in ('RK45', 'dopri5'):
      logging.warning('Adaptive ODE solvers choose one step sequence per batch: an image moves '
                      'with its batch-mates within the tolerances. A fixed-step ode_method '
                      'makes it independent of the batch.')
  start = time.time()
  records = draw(task, model, config, folder, pending[rank::world], rank,
                 meta if rank == 0 else None)
  # Also waits for every rank's images.
  records = [r for part in distributed.gather_objects(records) for r in part]
  if rank == 0:
    assemble(task, config, folder, seeds)
    meta.update(batches=meta['batches'] + records,
                wall_time_s=round(meta['wall_time_s'] + time.time() - start, 3))
    write_json_atomic(folder / 'meta.json', meta, indent=1)
    logging.info('Wrote %d images to %s', len(seeds), folder)
  return folder


def draw(task, model, config, folder, seeds, rank, meta=None):
  """Draw `seeds` in batches of config.sample.batch_size and write each image's PNG.

  Returns the batch records {rank, seeds, nfe, seconds}; with `meta` (rank 0), meta.json is
  rewritten after every batch, so that a killed run keeps them.
  """
  from tqdm import tqdm
  size, records = config.sample.batch_size, []
  bar = tqdm(total=len(seeds), desc='sample', unit='img', disable=None if rank == 0 else True)
  for i in range(0, len(seeds), size):
    batch = seeds[i:i + size]
    begin = time.time()
    x, nfe = task.draw(model, batch, image_generators(config.seed, batch, config.device))
    with preemption.deferred():  # a stop request waits for the batch's images and record
      for k, image in zip(batch, to_uint8(x)):
        write_png(_png_path(folder, k), image)
      seconds = round(time.time() - begin, 3)
      records.append(dict(rank=rank, seeds=batch, nfe=int(nfe), seconds=seconds))
      logging.info('rank %d: seeds %d-%d, %d images, %d NFE, %.2f s', rank, batch[0], batch[-1],
                   len(batch), nfe, seconds)
      bar.update(len(batch))
      if meta is not None:
        write_json_atomic(folder / 'meta.json', dict(meta, batches=meta['batches'] + records),
                          indent=1)
  bar.close()
  return records


def assemble(task, config, folder, seeds):
  """samples.npz (uint8 (N, H, W, C) in seed order), grid.png and the task's previews of the
  first 256 seeds, from the PNGs of `seeds`."""
  missing = [k for k in seeds if not _png_path(folder, k).exists()]
  if missing:
    raise RuntimeError(f'{len(missing)} images of {folder} are missing (seeds {missing[:5]}...): '
                       'run the same command again to draw them.')
  samples = np.stack([read_png(_png_path(folder, k), config.data.num_channels) for k in seeds])
  savez_atomic(folder / 'samples.npz', samples=samples)
  save_grid(samples[:256], folder / 'grid.png')
  for name, images in task.previews(seeds[:256]).items():
    save_grid(images, folder / name)
