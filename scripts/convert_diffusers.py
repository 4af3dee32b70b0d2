"""Convert between diffusers ScoreSdeVe pipeline folders and scoresde NCSN++ checkpoints.

  # a diffusers folder (e.g. a snapshot of google/ncsnpp-celebahq-256) -> our checkpoint
  python scripts/convert_diffusers.py path/to/ncsnpp-celebahq-256 ckpt/checkpoint_0.pth

  # a checkpoint trained here (or an official score_sde_pytorch one) -> a diffusers folder
  python scripts/convert_diffusers.py ckpt/checkpoint_24.pth out_folder \
      --config ve/celebahq_256_ncsnpp_continuous

A folder becomes a checkpoint in `utils.save_checkpoint`'s format (model and EMA both hold the
diffusers weights, step 0) plus DST.config.json; the config files with the same network are
named. A checkpoint becomes a folder with its EMA weights (unless --no-ema) and a scheduler set
from the config (sigma_min/max, num_scales, sampling.snr, sampling.n_steps_each). Only NCSN++
configs that diffusers' UNet2DModel can hold convert; others fail with the list of reasons.
"""
import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
import diffusers_convert  # noqa: E402

_MATCH_KEYS = ('name', 'nf', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'sigma_min',
               'sigma_max', 'num_scales', 'embedding_type', 'progressive', 'progressive_input')


def matching_configs(config):
  """Names of the config files under configs/ with the same network, data size and VE schedule."""
  def signature(c):
    m = c.model
    values = [m.get(k) for k in _MATCH_KEYS]
    return [c.data.image_size, c.data.centered] + [
      tuple(v) if isinstance(v, (list, tuple)) else v for v in values]

  target = signature(config)
  return [name for name in configs.list_configs()
          if signature(configs.load_config(name)) == target]


def folder_to_checkpoint(src, dst, device='cpu'):
  from losses import get_optimizer
  from models.ema import ExponentialMovingAverage
  from checkpoints import save_checkpoint
  model, scheduler = diffusers_convert.load_pipeline_folder(src, device=device)
  config = model.config
  state = dict(model=model, ema=ExponentialMovingAverage(model.parameters(), config.model.ema_rate),
               optimizer=get_optimizer(config, model.parameters()), step=0)
  save_checkpoint(dst, state)
  config_path = str(dst) + '.config.json'
  with open(config_path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  n_params = sum(p.numel() for p in model.parameters())
  print(f'Wrote {dst} and {config_path} ({n_params:,} parameters, '
        f'scheduler {scheduler}).')
  matches = matching_configs(config)
  if matches:
    print('Same network and schedule as config(s): ' + ', '.join(matches))


def checkpoint_to_folder(src, dst, config_name, use_ema=True, safe=True, device='cpu'):
  import torch
  from checkpoints import load_score_model
  from configs import load_config
  config = load_config(config_name)
  diffusers_convert.check_convertible(config)  # fail before reading a large file
  config.device = torch.device(device)
  model, step = load_score_model(config, src, ema=use_ema)
  scheduler = diffusers_convert.scheduler_from_config(config)
  diffusers_convert.save_pipeline_folder(dst, model, scheduler, safe_serialization=safe)
  weights = 'EMA' if use_ema else 'raw'
  print(f'Wrote {dst} from {src} (step {step}, {weights} weights), {scheduler}.')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('src', help='a diffusers pipeline folder, or a checkpoint file')
  parser.add_argument('dst', help='the checkpoint file, or the folder, to write')
  parser.add_argument('--config', help='config of the checkpoint (name under configs/ or path); '
                      'needed when SRC is a checkpoint')
  parser.add_argument('--no-ema', action='store_true', help='export the raw, not the EMA, weights')
  parser.add_argument('--bin', action='store_true', help='write torch .bin, not safetensors')
  parser.add_argument('--device', default='cpu')
  args = parser.parse_args(argv)
  try:
    if os.path.isdir(args.src):
      folder_to_checkpoint(args.src, args.dst, args.device)
    elif os.path.isfile(args.src):
      if not args.config:
        parser.error('SRC is a checkpoint: pass --config with the config it was trained with.')
      checkpoint_to_folder(args.src, args.dst, args.config, not args.no_ema, not args.bin,
                           args.device)
    else:
      parser.error(f'{args.src} is neither a folder nor a file.')
  # A config diffusers cannot hold, a missing or unwritable path, a corrupt checkpoint.
  except (ValueError, OSError, RuntimeError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
