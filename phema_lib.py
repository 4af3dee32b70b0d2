"""--mode phema: post-hoc EMA of a run trained with training.phema_sigma_rels (phema.py).

    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode phema \
        --config.phema.sigma_rels=0.05,0.1,0.15 --config.phema.ema_rates=0.999 --config.phema.sweep=True

From the snapshots WORKDIR/phema-snapshots/phema_S.pth up to the step config.phema.step
('latest' or S), builds the weights of a power-function EMA of each width of config.phema.sigma_rels
(and a least-squares fit of each classic exponential EMA of config.phema.ema_rates) at that step
and writes each as an ordinary checkpoint (checkpoints.save_checkpoint's format: model and EMA
weights both the reconstruction; step S + 1 as training checkpoints store it; 'posthoc_ema' records
what it is):
    WORKDIR/phema/phema_S_sigma0.100.pth, phema_S_ema0.999.pth   --config.sample.ckpt=<path> reads them
    WORKDIR/phema/reconstruction_S.json                          widths, snapshots and coefficients
With config.phema.sweep, each is scored (the digits quality number on DIGITS, FID elsewhere;
config.phema.sweep_num_samples images, config.phema.sweep_repeats seed sets, the same seeds for
every EMA) with the sampler of config.sampling, next to the checkpoint's own EMA (model.ema_rate)
of that step when there is one: WORKDIR/phema/sweep.json and sweep.png (quality against sigma_rel,
mean +- std over the repeats, the best marked). Scores are also TensorBoard scalars.
"""
import json
import logging
import os
import time

import numpy as np
import torch

import phema
from checkpoints import build_state, restore_checkpoint, save_checkpoint, stored_step
from workdir import Layout, write_json_atomic, write_png


def _parse_step(value, available):
  if str(value).strip() == 'latest':
    return available[-1]
  try:
    step = int(str(value).strip())
  except ValueError:
    raise ValueError(f"phema.step={value!r}: pass 'latest' or the step of a snapshot.") from None
  if step not in available:
    raise ValueError(f'phema.step={step}: there is no snapshot of that step; the snapshots are of '
                     f'steps {available[0]}..{available[-1]} ({len(available)} files): pass one '
                     "of them or 'latest'.")
  return step


def _parse_rates(text):
  try:
    rates = [float(r) for r in str(text).split(',') if r.strip()]
  except ValueError:
    raise ValueError(f"phema.ema_rates={text!r}: expected comma-separated decays, e.g. "
                     "'0.999,0.9999', or ''.") from None
  bad = [r for r in rates if not 0 < r < 1]
  if bad:
    raise ValueError(f'phema.ema_rates: decays must lie in (0, 1), got {bad}.')
  return rates


def plan(config, workdir):
  """What to reconstruct: a dict with the step, the inputs [(path, width index, t, sigma_rel)]
  and the outputs [(name, sigma_rel or None, decay or None, coefficients (n_in,))]. Raises
  FileNotFoundError without snapshots, ValueError for a bad config.phema entry."""
  snapshots = phema.list_snapshots(workdir)
  if not snapshots:
    raise FileNotFoundError(
      f'No post-hoc EMA snapshots in {os.path.join(workdir, phema.SNAPSHOT_DIR)}: train with '
      '--config.training.phema_sigma_rels=0.05,0.1 (and training.phema_snapshot_freq) first.')
  step = _parse_step(config.phema.step, [s for s, _ in snapshots])
  widths = phema.parse_widths(config.phema.sigma_rels, 'phema.sigma_rels')
  rates = _parse_rates(config.phema.ema_rates)
  if not widths and not rates:
    raise ValueError('phema.sigma_rels and phema.ema_rates are both empty: nothing to build.')
  inputs = []
  for s, path in snapshots:
    if s > step:
      continue
    meta = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    inputs += [(path, i, int(meta['t']), float(w)) for i, w in enumerate(meta['sigma_rels'])]
  in_t = np.array([t for _, _, t, _ in inputs], np.float64)
  in_sigma = np.array([w for _, _, _, w in inputs], np.float64)
  out_t = int(in_t.max())
  outputs = []
  if widths:
    X = phema.solve_coefficients(in_t, in_sigma, out_t, widths)
    outputs += [(f'phema_{step}_sigma{w:.3f}', w, None, X[:, j]) for j, w in enumerate(widths)]
  for rate in rates:
    x = phema.exponential_coefficients(in_t, in_sigma, rate, out_t)
    outputs.append((f'phema_{step}_ema{rate:g}', None, rate, x))
  return dict(step=step, t=out_t, inputs=inputs, outputs=outputs)


def build(config, workdir):
  """Write the reconstructed checkpoints; returns ({name: path}, plan)."""
  p = plan(config, workdir)
  out_dir = os.path.join(workdir, 'phema')
  logging.info('Post-hoc EMA at step %d from %d snapshot averages: %s', p['step'],
               len(p['inputs']), ', '.join(name for name, *_ in p['outputs']))
  coefficients = np.stack([c for *_, c in p['outputs']], axis=1)
  weights = phema.reconstruct([(path, i) for path, i, _, _ in p['inputs']], coefficients)
  # Buffers and untrained parameters (NCSN++'s Fourier W) come from a checkpoint of the run.
  from checkpoints import resolve_checkpoint
  import losses
  base = build_state(config, optimizer=False)
  restore_checkpoint(resolve_checkpoint(workdir, 'latest'), base, config.device)
  base['optimizer'] = losses.get_optimizer(config, base['model'].parameters())  # fresh: small
  trainable = [q for q in base['model'].parameters() if q.requires_grad]
  paths = {}
  for (name, width, rate, coef), params in zip(p['outputs'], weights):
    with torch.no_grad():
      for q, w in zip(trainable, params):
        q.copy_(w)
    base['ema'].shadow_params = [w.to(config.device).clone() for w in params]
    base['ema'].num_updates = p['t']
    state = dict(model=base['model'], ema=base['ema'], optimizer=base['optimizer'],
                 step=p['step'] + 1, posthoc_ema=dict(
                   sigma_rel=width, ema_rate=rate, snapshot_step=p['step'],
                   snapshots=len(p['inputs']), max_abs_coefficient=float(np.abs(coef).max())))
    paths[name] = os.path.join(out_dir, f'{name}.pth')
    save_checkpoint(paths[name], state)
    print(f'{name}: {paths[name]}   (--config.sample.ckpt={paths[name]})')
  write_json_atomic(os.path.join(out_dir, f'reconstruction_{p["step"]}.json'), dict(
    step=p['step'], t=p['t'], inputs=[dict(file=os.path.basename(f), sigma_rel=w, t=t)
                                      for f, _, t, w in p['inputs']],
    outputs={name: dict(sigma_rel=w, ema_rate=r, path=paths[name], coefficients=c.tolist())
             for name, w, r, c in p['outputs']}), indent=1)
  return paths, p


# --- The sweep ----------------------------------------------------------------------------------

def _scorer(config):
  """(metric name, lower is better, score(uint8 NHWC samples) -> {metrics})."""
  network = config.eval.feature_network
  if network == 'digits' or (network == 'auto' and config.data.dataset.upper() == 'DIGITS'):
    import digits_quality
    features = digits_quality.DigitsFeatures.load(config.device)
    reference = digits_quality.reference_statistics(features)
    return 'digits_fd', lambda x: digits_quality.score_outputs(features(x), reference)
  import evaluation
  inception = evaluation.get_inception_model(config)
  stats = evaluation.load_stats(evaluation.stats_file(config), mode=inception.mode)
  def score(x):
    out = inception(x)
    return evaluation.compute_metrics(out['pool_3'], out['logits'], stats,
                                      num_splits=config.eval.is_splits)
  return 'fid', score


def _draw(config, model, num, seed):
  """num uint8 NHWC samples of `model` with config.sampling, from torch.Generator(seed)."""
  import datasets
  import sampling
  import sde_lib
  sde, eps = sde_lib.get_sde(config)
  batch = min(num, int(config.sample.batch_size))
  generator = torch.Generator(device=config.device).manual_seed(seed)
  out = []
  for i in range(0, num, batch):
    shape = (min(batch, num - i), config.data.num_channels, config.data.image_size,
             config.data.image_size)
    fn = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), eps)
    x, _ = fn(model, generator=generator)
    out.append(datasets.to_uint8(x.clamp(0, 1).cpu()))
  return np.concatenate(out)


def sweep(config, workdir, paths, p):
  """Score each checkpoint of `paths` (and the run's own EMA at that step); writes sweep.json,
  sweep.png; returns the rows."""
  from checkpoints import load_score_model
  candidates = dict(paths)
  own = None  # the training checkpoint of the same step
  if config.phema.sweep_baseline:  # a snapshot checkpoint of that step, or the resume checkpoint
    layout = Layout(workdir)
    folder = layout.snapshots
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith('.pth')
             ] if os.path.isdir(folder) else []
    for path in files + [layout.resume]:
      if own is None and os.path.isfile(path) and stored_step(path) == p['step'] + 1:
        own = path
        candidates[f'checkpoint_ema{config.model.ema_rate:g}'] = path
  metric, score = _scorer(config)
  num, repeats = int(config.phema.sweep_num_samples), int(config.phema.sweep_repeats)
  logging.info('Sweep: scoring %d EMAs, %d samples x %d seed sets each (%r sampler), by %s.',
               len(candidates), num, repeats, config.sampling.method, metric)
  rows = []
  for name, path in candidates.items():
    model, _ = load_score_model(config, path)
    start, values = time.perf_counter(), []
    for r in range(repeats):
      values.append(score(_draw(config, model, num, seed=config.seed * 1000 + r)))
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    std = {k: float(np.std([v[k] for v in values], ddof=1)) if repeats > 1 else 0.
           for k in values[0]}
    meta = torch.load(path, map_location='cpu', mmap=True, weights_only=True).get('posthoc_ema')
    rows.append(dict(name=name, path=path, sigma_rel=meta and meta['sigma_rel'],
                     ema_rate=meta['ema_rate'] if meta else float(config.model.ema_rate),
                     tracked=path == own, mean=mean, std=std,
                     values=[{k: float(v) for k, v in d.items()} for d in values],
                     seconds=time.perf_counter() - start))
    logging.info('%s: %s %.3f +- %.3f (%.0f s)', name, metric, mean[metric], std[metric],
                 rows[-1]['seconds'])
  best = min((r for r in rows if r['sigma_rel'] is not None), key=lambda r: r['mean'][metric],
             default=None)
  out_dir = os.path.join(workdir, 'phema')
  write_json_atomic(os.path.join(out_dir, 'sweep.json'), dict(
    step=p['step'], metric=metric, num_samples=num, repeats=repeats,
    sampler=config.sampling.method, best=best and best['name'], rows=rows), indent=1)
  write_png(os.path.join(out_dir, 'sweep.png'), plot(rows, metric, best))
  import visuals
  visuals.add_eval_scalars(workdir, p['step'], {f'{r["name"]}_{metric}': r['mean'][metric]
                                                for r in rows}, prefix='phema')
  print(f'sweep: {os.path.join(out_dir, "sweep.json")}, {os.path.join(out_dir, "sweep.png")}; '
        f'best {best and best["name"]}')
  return rows


def plot(rows, metric, best, size=(640, 400)):
  """A uint8 (H, W, 3) chart: metric (mean +- std) against sigma_rel; the best width in red,
  other EMAs (exponential fits, the run's own) as dashed horizontal lines with their label."""
  from PIL import Image, ImageDraw
  w, h = size
  left, right, top, bottom = 70, 20, 20, 50
  image = Image.new('RGB', size, 'white')
  d = ImageDraw.Draw(image)
  pts = sorted((r['sigma_rel'], r['mean'][metric], r['std'][metric]) for r in rows
               if r['sigma_rel'] is not None)
  lines = [(r['name'], r['mean'][metric]) for r in rows if r['sigma_rel'] is None]
  ys = [m + s for _, m, s in pts] + [m - s for _, m, s in pts] + [v for _, v in lines]
  xs = [x for x, _, _ in pts] or [0., phema.MAX_SIGMA_REL]
  x0, x1 = 0., max(xs) * 1.1
  y0, y1 = min(ys), max(ys)
  y0, y1 = y0 - 0.05 * (y1 - y0 + 1e-9), y1 + 0.05 * (y1 - y0 + 1e-9)
  px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
  py = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)
  d.rectangle([left, top, w - right, h - bottom], outline='black')
  for k in range(5):
    yv, xv = y0 + (y1 - y0) * k / 4, x0 + (x1 - x0) * k / 4
    d.text((5, py(yv) - 6), f'{yv:.1f}', fill='black')
    d.text((px(xv) - 12, h - bottom + 5), f'{xv:.3f}', fill='black')
  d.text((w // 2 - 30, h - 20), 'sigma_rel', fill='black')
  d.text((left + 5, top + 3), f'{metric} (lower is better), mean +- std', fill='black')
  for i, (name, v) in enumerate(lines):
    for xa in range(left, w - right, 12):
      d.line([xa, py(v), xa + 6, py(v)], fill='gray')
    d.text((w - right - 200, py(v) - 12 - 12 * (i % 2)), name, fill='gray')
  for a, b in zip(pts, pts[1:]):
    d.line([px(a[0]), py(a[1]), px(b[0]), py(b[1])], fill='blue', width=2)
  for x, m, s in pts:
    d.line([px(x), py(m - s), px(x), py(m + s)], fill='blue')
    color = 'red' if best is not None and x == best['sigma_rel'] else 'blue'
    d.ellipse([px(x) - 4, py(m) - 4, px(x) + 4, py(m) + 4], fill=color)
  if best is not None:
    d.text((px(best['sigma_rel']) + 6, py(best['mean'][metric]) + 4),
           f'best {best["sigma_rel"]:g}', fill='red')
  return np.asarray(image)


def run(config, workdir):
  """--mode phema: build the checkpoints, then the sweep if config.phema.sweep."""
  paths, p = build(config, workdir)
  if config.phema.sweep:
    sweep(config, workdir, paths, p)
  return paths
