"""Every sampler on a trained digits model: NFE, wall time and the offline quality number.

For each sampler, draws --num images (one batch) from the EMA weights of a digits checkpoint,
times it, and scores it with digits_quality (Frechet distance and classifier score of a small
digits classifier, next to the floor of --num held-out real digits). Also reports the share of
'broken' images (any pixel outside [-0.25, 1.25] before clipping: the salt-and-pepper failures
of an under-trained score under the ODE) and writes each grid to OUT/<sampler>.png.

  python bench/bench_digits_samplers.py --workdir runs/digits                 # all samplers
  python bench/bench_digits_samplers.py --workdir runs/digits --samplers pc,dpm_solver --num 64
Writes bench/results/digits_samplers.json (or --json).
"""
import argparse
import ast
import pathlib
import sys
import time

import ml_collections
import torch

from report import RESULTS, ROOT, write_json

sys.path.insert(0, str(ROOT))

import datasets  # noqa: E402
import digits_quality  # noqa: E402
from checkpoints import load_score_model  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from configs import load_config  # noqa: E402

# Name -> config.sampling overrides. 'ode' is the paper's RK45 at 1e-5 (slow: ~1,000+ NFE).
SAMPLERS = {
  'pc': {'method': 'pc'},
  'ode': {'method': 'ode'},
  'dpm_solver': {'method': 'dpm_solver', 'num_steps': 20, 'order': 3},
  'heun': {'method': 'heun', 'num_steps': 18},
}


def run_sampler(config, model, name, num, seed):
  """(raw samples (num, C, H, W) in [0, 1] units, unclipped; nfe; seconds)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in SAMPLERS[name].items():
    config.sampling[key] = value
  sde, eps = sde_lib.get_sde(config)
  shape = (num, config.data.num_channels, config.data.image_size, config.data.image_size)
  sampler = sampling.get_sampling_fn(config, sde, shape, datasets.get_data_inverse_scaler(config), eps)
  generator = torch.Generator().manual_seed(seed)
  start = time.perf_counter()
  x, nfe = sampler(model, generator=generator)
  return x, int(nfe), time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--config', default='ve/digits_ncsnpp_continuous',
                      help='the config the workdir was trained with (name or path)')
  parser.add_argument('--checkpoint', default=None, help='default: the resume checkpoint')
  parser.add_argument('--samplers', default=','.join(SAMPLERS))
  parser.add_argument('--num', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--set', action='append', default=[],
                      help='config override key=value (Python literal), e.g. model.nf=16')
  parser.add_argument('--json', default=str(RESULTS / 'digits_samplers.json'))
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  config = load_config(args.config)
  for item in args.set:
    key, value = item.split('=', 1)
    section, name = key.split('.', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    config[section][name] = value
  config.device = torch.device('cpu')
  workdir = pathlib.Path(args.workdir)
  checkpoint = args.checkpoint or workdir / 'checkpoints-meta' / 'checkpoint.pth'
  model, step = load_score_model(config, checkpoint)  # EMA weights, eval mode
  features = digits_quality.DigitsFeatures.load()
  reference = digits_quality.reference_statistics(features)
  out_dir = workdir / 'bench_samplers'
  out_dir.mkdir(exist_ok=True)

  from torchvision.utils import make_grid, save_image
  rows = []
  for name in args.samplers.split(','):
    x, nfe, seconds = run_sampler(config, model, name, args.num, args.seed)
    broken = ((x < -0.25) | (x > 1.25)).flatten(1).any(1).float().mean().item()
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    quality = digits_quality.score_outputs(features(images), reference)
    save_image(make_grid(x[:64].clamp(0, 1), nrow=8, padding=2), out_dir / f'{name}.png')
    rows.append(dict(sampler=name, nfe=nfe, seconds=round(seconds, 1), broken=broken,
                     **{k: round(v, 2) for k, v in quality.items()}))
    r = rows[-1]
    print(f'{name:>10}  NFE {nfe:5d}  {seconds:7.1f} s  broken {broken:5.1%}  '
          f'FD {r["digits_fd"]:7.2f} (floor {r["digits_fd_floor"]:.2f})  '
          f'CS {r["digits_cs"]:.2f} (floor {r["digits_cs_floor"]:.2f})', flush=True)
  write_json(args.json, dict(workdir=str(workdir), checkpoint=str(checkpoint), step=step,
                             num=args.num, threads=args.threads, overrides=args.set, rows=rows))


if __name__ == '__main__':
  main()
