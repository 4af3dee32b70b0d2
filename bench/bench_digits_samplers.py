"""Every sampler on a trained digits model: NFE, wall time and the offline quality number.

For each sampler, draws --num images (one batch) from the EMA weights of a digits checkpoint,
times it, and scores it with digits_quality (Frechet distance and classifier score of a small
digits classifier, next to the floor of --num held-out real digits). Also reports the share of
'broken' images (any pixel outside [-0.25, 1.25] before clipping: the salt-and-pepper failures
of an under-trained score under the ODE) and writes each grid to OUT/<sampler>.png.

  python bench/bench_digits_samplers.py --workdir runs/digits                 # all samplers
  python bench/bench_digits_samplers.py --workdir runs/digits --samplers pc,dpm_solver --num 64
  python bench/bench_digits_samplers.py --pretrained ve_digits --num 300 --seeds 0,1,2 \
      --samplers ode,unipc_10,dpm_solver_10,unipc_6,dpm_solver_6 --reference ode
Writes bench/results/digits_samplers.json (or --json).

--pretrained NAME samples the shipped model (assets/pretrained/NAME.pth) instead of a run.
--seeds repeats every sampler with each seed's noise; --reference SAMPLER adds each sampler's RMS
distance (in [0, 1] pixel units) to that sampler's images from the same noise (all samplers here
start from the same prior draw of a seed, and 'ode' is deterministic): with 'ode', scipy's RK45
at 1e-5, how far a few-step solver lands from the accurate ODE solution.
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
import pretrained  # noqa: E402
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
  # What method and num_steps alone give (the settings the budget picks; docs/few_step_sampling.md).
  'unipc_10': {'method': 'unipc', 'num_steps': 10},
  'dpm_solver_10': {'method': 'dpm_solver', 'num_steps': 10},
  'unipc_6': {'method': 'unipc', 'num_steps': 6},
  'dpm_solver_6': {'method': 'dpm_solver', 'num_steps': 6},
  'dpm_solver_10_3s': {'method': 'dpm_solver', 'num_steps': 10, 'order': 3},  # the former default
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
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--pretrained', default=None, help='a shipped model instead of --workdir')
  parser.add_argument('--config', default='ve/digits_ncsnpp_continuous',
                      help='the config the workdir was trained with (name or path)')
  parser.add_argument('--checkpoint', default=None, help='default: the resume checkpoint')
  parser.add_argument('--samplers', default=','.join(SAMPLERS))
  parser.add_argument('--num', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--seeds', default=None, help='comma list; default: --seed')
  parser.add_argument('--ladder', default=None, help='a JSON of scripts/optimize_ladder.py: adds '
                      "the sampler 'ladder' (its sampler and NFE on its noise levels)")
  parser.add_argument('--reference', default=None, help='a sampler of --samplers to measure the '
                      'others against, image by image')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--set', action='append', default=[],
                      help='config override key=value (Python literal), e.g. model.nf=16')
  parser.add_argument('--json', default=str(RESULTS / 'digits_samplers.json'))
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  if (args.workdir is None) == (args.pretrained is None):
    parser.error('pass one of --workdir and --pretrained')
  if args.ladder:
    import json
    fitted = json.loads(pathlib.Path(args.ladder).read_text())
    SAMPLERS['ladder'] = {'method': fitted['sampler'], 'num_steps': fitted['nfe'],
                          'step_ladder': args.ladder}

  if args.pretrained:
    model, config = pretrained.load(args.pretrained, device='cpu')
    step, checkpoint = pretrained.read_meta(args.pretrained).get('step'), args.pretrained
    out_dir = RESULTS / f'digits_samplers_{args.pretrained}'
  else:
    config = load_config(args.config)
    config.device = torch.device('cpu')
    workdir = pathlib.Path(args.workdir)
    checkpoint = args.checkpoint or workdir / 'checkpoints-meta' / 'checkpoint.pth'
    model, step = load_score_model(config, checkpoint)  # EMA weights, eval mode
    out_dir = workdir / 'bench_samplers'
  for item in args.set:
    key, value = item.split('=', 1)
    section, name = key.split('.', 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    config[section][name] = value
  features = digits_quality.DigitsFeatures.load()
  reference = digits_quality.reference_statistics(features)
  out_dir.mkdir(parents=True, exist_ok=True)

  from torchvision.utils import make_grid, save_image
  seeds = [int(v) for v in args.seeds.split(',')] if args.seeds else [args.seed]
  names = args.samplers.split(',')
  if args.reference and args.reference in names:  # first, so the others can be compared with it
    names.remove(args.reference)
    names.insert(0, args.reference)
  rows, ref_images = [], {}
  for name in names:
    for seed in seeds:
      x, nfe, seconds = run_sampler(config, model, name, args.num, seed)
      broken = ((x < -0.25) | (x > 1.25)).flatten(1).any(1).float().mean().item()
      images = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
      quality = digits_quality.score_outputs(features(images), reference)
      save_image(make_grid(x[:64].clamp(0, 1), nrow=8, padding=2), out_dir / f'{name}_{seed}.png')
      row = dict(sampler=name, seed=seed, nfe=nfe, seconds=round(seconds, 1), broken=broken,
                 **{k: round(v, 2) for k, v in quality.items()})
      if name == args.reference:
        ref_images[seed] = x
      elif seed in ref_images:
        row['rms_to_reference'] = round((x - ref_images[seed]).pow(2).mean().sqrt().item(), 4)
      rows.append(row)
      extra = f'  RMS to {args.reference} {row["rms_to_reference"]:.4f}' if 'rms_to_reference' in row else ''
      print(f'{name:>16} seed {seed}  NFE {nfe:5d}  {seconds:7.1f} s  broken {broken:5.1%}  '
            f'FD {row["digits_fd"]:7.2f} (floor {row["digits_fd_floor"]:.2f})  '
            f'CS {row["digits_cs"]:.2f} (floor {row["digits_cs_floor"]:.2f}){extra}', flush=True)
  if len(seeds) > 1:
    for name in names:
      mine = [r for r in rows if r['sampler'] == name]
      for key in ('digits_fd', 'digits_cs', 'rms_to_reference'):
        if key in mine[-1]:
          v = torch.tensor([r[key] for r in mine], dtype=torch.float64)
          print(f'{name:>16} {key}: mean {v.mean():.4g}, std over {len(seeds)} seeds {v.std():.3g}')
  write_json(args.json, dict(checkpoint=str(checkpoint), step=step, num=args.num, seeds=seeds,
                             threads=args.threads, overrides=args.set, reference=args.reference,
                             rows=rows))


if __name__ == '__main__':
  main()
