"""Maximum-likelihood training on the digits (docs/likelihood_training.md): the per-batch variance
of the likelihood-weighted loss with uniform and importance-sampled t, and the table of the
recipes' bits/dim (ODE and bound), sample quality and wall times from their `--mode eval` folders.

    python bench/bench_likelihood_training.py variance [--model vp_digits] [--batches 200]
    python bench/bench_likelihood_training.py table --run default=runs/lik_default/eval,runs/lik_default/eval_bound \\
        --run likelihood=runs/lik_is/eval,runs/lik_is/eval_bound [--ckpt 1]

`variance`: a fixed network (default the shipped `vp_digits` model: the VP digits recipe after
2,000 steps, EMA weights, eval mode), the same `--batches` batches of 64 training digits for both
estimators (each batch draws its own t and z from one seeded generator), eps = 1e-5 as in training.
Both have the same expectation (importance.py; uniform t is heavy tailed, so at this n its sample
mean and standard error run low), and the ratio of their variances is what importance sampling buys.
`table`: mean bits/dim and bound over the images done so far (+- standard error over images) and
per complete repeat of the 300 test digits, digits FD / CS, and each recipe's differences from the
first one, image by image (mean +- standard error, ratio, on how many images it is lower). Both write
bench/results/likelihood_training.json (sections merged).
"""
import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import losses  # noqa: E402
import pretrained  # noqa: E402
import sde_lib  # noqa: E402

OUT = RESULTS / 'likelihood_training.json'


def _merge(section, value):
  result = json.loads(OUT.read_text()) if OUT.exists() else {}
  result[section] = value
  write_json(OUT, result)


def variance(args):
  torch.set_num_threads(args.threads)
  model, config = pretrained.load(args.model, config=args.config, device='cpu')
  sde, _ = sde_lib.get_sde(config)
  images = datasets.split_images(config, train=True)
  data_gen = torch.Generator().manual_seed(0)
  scaler = datasets.get_data_scaler(config)
  fns = {name: losses.get_sde_loss_fn(sde, train=False, reduce_mean=config.training.reduce_mean,
                                      likelihood_weighting=True, importance_weighting=iw)
         for name, iw in (('uniform', False), ('importance', True))}
  values = {name: [] for name in fns}
  start = time.perf_counter()
  with torch.no_grad():
    for b in range(args.batches):
      index = torch.randint(0, len(images), (64,), generator=data_gen)
      batch = scaler(torch.stack([images[int(i)][0] for i in index]).float() / 255.)
      for k, (name, fn) in enumerate(fns.items()):
        g = torch.Generator().manual_seed(1000 * b + k)
        values[name].append(fn(model, batch, generator=g).item())
  stats = {}
  for name, v in values.items():
    v = np.array(v)
    stats[name] = dict(mean=float(v.mean()), se=float(v.std(ddof=1) / math.sqrt(len(v))),
                       var=float(v.var(ddof=1)), min=float(v.min()), max=float(v.max()))
  result = dict(model=args.model, batches=args.batches, batch_size=64, eps=1e-5, **stats,
                variance_ratio=stats['uniform']['var'] / stats['importance']['var'],
                seconds=time.perf_counter() - start, threads=args.threads)
  print(f"{'t':<12}{'mean loss':>12}{'s.e.':>10}{'variance per batch':>20}")
  for name in fns:
    s = stats[name]
    print(f"{name:<12}{s['mean']:>12.4f}{s['se']:>10.4f}{s['var']:>20.4f}")
  print(f"variance ratio uniform / importance: {result['variance_ratio']:.1f} ({args.batches} batches "
        f"of 64, {result['seconds']:.0f} s)")
  _merge(f'variance_{args.label or pathlib.Path(args.model).stem}', result)


def _repeat_means(eval_dir, ckpt, name, batches_per_repeat=3):
  """(mean of each complete repeat, every per-image value written so far)."""
  files = sorted(eval_dir.glob(f'test_ckpt_{ckpt}_{name}_*.npz'),
                 key=lambda p: int(p.stem.rsplit('_', 1)[1]))
  values = [np.load(p)['arr_0'] for p in files]
  repeats = len(values) // batches_per_repeat
  means = [float(np.concatenate(values[r * batches_per_repeat:(r + 1) * batches_per_repeat]).mean())
           for r in range(repeats)]
  return means, (np.concatenate(values) if values else [])


def table(args):
  rows, values = {}, {}  # values: (label, 'bpd' | 'bound') -> the per-image numbers
  for spec in args.run:
    label, folders = spec.split('=', 1)
    row = dict(folders=folders, ckpt=args.ckpt)
    for folder in folders.split(','):  # e.g. the ODE / samples folder and a bound folder
      eval_dir = pathlib.Path(folder)
      report_path = eval_dir / 'report.json'
      report = json.loads(report_path.read_text()).get(str(args.ckpt), {}) if report_path.exists() else {}
      for name in ('bpd', 'bound'):
        means, found = _repeat_means(eval_dir, args.ckpt, name)
        if len(found):
          values[label, name] = found
          row[name] = dict(mean=float(np.mean(found)), images=len(found),
                           se=float(np.std(found, ddof=1) / math.sqrt(len(found))),
                           complete_repeats=means)
      for key in ('loss', 'digits_fd', 'digits_cs', 'digits_fd_floor', 'digits_cs_floor'):
        if key in report:
          row[key] = report[key]
    rows[label] = row
  # Paired with the first recipe, image by image: the test digits come in the same order for
  # every recipe (and, with uniform dequantization, with the same noise and Hutchinson probes).
  first = next(iter(rows))
  for label, row in list(rows.items())[1:]:
    for name in ('bpd', 'bound'):
      a, b = values.get((first, name)), values.get((label, name))
      if a is None or b is None or len(a) != len(b):
        continue
      d = b - a
      row[f'{name}_paired'] = dict(mean=float(d.mean()), se=float(d.std(ddof=1) / math.sqrt(len(d))),
                                   ratio=float(b.mean() / a.mean()), lower=int((d < 0).sum()),
                                   images=len(d), against=first)
  print(f"{'recipe':<14}{'ODE bits/dim (images)':>26}{'bound (images)':>22}{'FD':>8}{'CS':>7}")
  for label, row in rows.items():
    cells = []
    for name in ('bpd', 'bound'):
      r = row.get(name)
      cells.append(f"{r['mean']:.4f} +- {r['se']:.4f} ({r['images']})" if r else 'n/a')
    print(f"{label:<14}{cells[0]:>26} {cells[1]:>22}{row.get('digits_fd', float('nan')):>8.1f}"
          f"{row.get('digits_cs', float('nan')):>7.2f}")
  for label, row in rows.items():
    for name in ('bpd', 'bound'):
      p = row.get(f'{name}_paired')
      if p:
        print(f"  {label} - {p['against']}, {name}: {p['mean']:+.4f} +- {p['se']:.4f} "
              f"({p['ratio']:.3f}x; lower on {p['lower']} of {p['images']})")
  _merge(f'table_ckpt{args.ckpt}', rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='what', required=True)
  v = sub.add_parser('variance')
  v.add_argument('--model', default='vp_digits', help="'vp_digits' or a checkpoint path")
  v.add_argument('--config', default=None, help='its config name (for a checkpoint path)')
  v.add_argument('--label', default=None, help='its name in the JSON (default: the file stem)')
  v.add_argument('--batches', type=int, default=200)
  v.add_argument('--threads', type=int, default=1)
  t = sub.add_parser('table')
  t.add_argument('--run', action='append', required=True, help='label=eval folder')
  t.add_argument('--ckpt', type=int, default=1)
  args = parser.parse_args()
  (variance if args.what == 'variance' else table)(args)


if __name__ == '__main__':
  main()
