"""Ship a training run's EMA weights: assets/pretrained/<name>.pth and its test fingerprint.

  python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train
  python scripts/export_pretrained.py --config configs/ve/digits_ncsnpp_continuous.py \
      --workdir runs/digits --out assets/pretrained/ve_digits.pth \
      --fingerprint tests/fixtures/pretrained/ve_digits.json

It reads the run's last snapshot (checkpoints/checkpoint_N.pth with the largest N, or --ckpt),
refuses a run whose config.json differs from --config in what shapes the weights (model, data,
training, optim, seed: the shipped file must fit the config the repository has now), and writes
the official checkpoint layout with the EMA weights only, in float16: {'model': `module.`-prefixed
state dict, 'ema': {'decay', 'num_updates', 'shadow_params'}, 'step', 'meta'}. The model entry's
trainable tensors and the EMA shadows are the same tensor objects, so torch.save stores them once;
the fixed tensors (NCSN++'s Fourier W, the sigmas buffer) stay in their own dtype, since float16
would move the Fourier phases (W log sigma reaches ~300 rad) by ~0.1 rad. 'meta' holds plain
values only (weights_only=True loads it): config, step, date, the run's final eval loss (from
its stdout.txt), the training command.

--fingerprint writes what tests/test_pretrained.py compares: samples of a fixed seed from the
file as loaded (`pretrained.fingerprint`), its size and SHA-256. The script also prints how far
float16 storage moves those samples from the float32 EMA weights.
"""
import argparse
import datetime
import hashlib
import json
import os
import pathlib
import re
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import configs  # noqa: E402
import pretrained  # noqa: E402
import workdir as workdir_lib  # noqa: E402
from checkpoints import build_state, latest_checkpoint, load_score_model, restore_checkpoint  # noqa: E402

# The config sections that shape a run's weights; within them run_lib's resumable changes
# (n_iters, log and snapshot frequencies, ...) may differ.
_WEIGHT_SECTIONS = ('model.', 'data.', 'training.', 'optim.', 'seed')


def check_run_config(config, workdir):
  """Raise a ValueError naming the weight-relevant entries where the run's config.json differs."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'No {path}: not a training run of this repository.')
  saved, now = (workdir_lib.flatten_config(tree) for tree in
                (json.loads(path.read_text()), workdir_lib.jsonable(config.to_dict())))
  weights = [{k: v for k, v in tree.items() if k.startswith(_WEIGHT_SECTIONS)} for tree in (saved, now)]
  workdir_lib.refuse_other_run(*weights, f'{workdir} was trained with another config than the one '
                               'given', 'Retrain with the current config (the shipped file must fit it).',
                               allowed=workdir_lib.RESUMABLE_CHANGES,
                               labels=('in the run', 'in the config'))


def final_eval_loss(workdir, step):
  """(step, eval loss) of the last 'step: N, eval_loss: X' line of stdout.txt with N < `step`
  (the checkpoint's step counts optimizer steps, one more than the logged loop step)."""
  path = pathlib.Path(workdir) / 'stdout.txt'
  found = (None, None)
  if path.is_file():
    for m in re.finditer(r'step: (\d+), eval_loss: ([-+.\deE]+)', path.read_text()):
      if int(m[1]) < step:
        found = (int(m[1]), float(m[2]))
  return found


def release_state(model, ema, step, meta):
  """The shipped dict: EMA weights in float16, shared by 'model' and 'ema' (stored once)."""
  trainable = [name for name, p in model.named_parameters() if p.requires_grad]
  shadow = [s.detach().to('cpu', torch.float16) for s in ema.shadow_params]
  half = dict(zip(trainable, shadow))
  model_sd = {'module.' + k: half.get(k, v.detach().cpu()) for k, v in model.state_dict().items()}
  return {'model': model_sd, 'step': int(step), 'meta': meta,
          'ema': {'decay': ema.decay, 'num_updates': ema.num_updates, 'shadow_params': shadow}}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='config file or name under configs/')
  parser.add_argument('--workdir', required=True, help='the training run')
  parser.add_argument('--out', required=True, help='e.g. assets/pretrained/ve_digits.pth')
  parser.add_argument('--ckpt', help='a checkpoint file (default: the run\'s last snapshot)')
  parser.add_argument('--fingerprint', help='write the test fingerprint JSON here')
  args = parser.parse_args(argv)

  name = configs.config_name(args.config)  # 've/digits_ncsnpp_continuous'
  config = configs.load_config(name)
  config.device = torch.device('cpu')
  check_run_config(config, args.workdir)
  ckpt = pathlib.Path(args.ckpt) if args.ckpt else latest_checkpoint(
    pathlib.Path(args.workdir) / 'checkpoints')
  if ckpt is None:
    raise FileNotFoundError(f'No checkpoints/checkpoint_N.pth in {args.workdir}: train first.')

  state = restore_checkpoint(ckpt, build_state(config, optimizer=False), 'cpu')
  model, ema = state['model'], state['ema']
  step = int(state['step'])
  loss_step, loss = final_eval_loss(args.workdir, step)
  written = datetime.datetime.fromtimestamp(ckpt.stat().st_mtime, datetime.timezone.utc)
  meta = {'config': name, 'step': step, 'date': written.strftime('%Y-%m-%d'),
          'eval_loss': loss, 'eval_loss_step': loss_step, 'dtype': 'float16',
          # The run's folder name only: the file must not name a path of the machine it was made on.
          'command': f'python main.py --config configs/{name}.py --workdir runs/'
                     f'{pathlib.Path(args.workdir).resolve().name} '
                     '--mode train',
          'source': os.path.relpath(ckpt, pathlib.Path(args.workdir).resolve().parent)}
  # 0644: a shipped file is for every user (the temporary file is created 0600).
  workdir_lib.torch_save_atomic(release_state(model, ema, step, meta), args.out, mode=0o644)
  size = os.path.getsize(args.out)
  print(f'Wrote {args.out}: {size / 2 ** 20:.2f} MiB, step {step}, eval loss {loss} '
        f'(logged at step {loss_step}), from {ckpt}.')

  # The file as users load it, against the float32 EMA weights of the run.
  ema.copy_to(model.parameters())
  shipped, _ = load_score_model(config, args.out)
  diff = pretrained.fingerprint(model.eval(), config, pool=1) - pretrained.fingerprint(
    shipped, config, pool=1)
  pooled = torch.nn.functional.avg_pool2d(diff, pretrained.FINGERPRINT['pool'])
  print(f'float16 storage moves the fingerprint samples by max |d| = {diff.abs().max():.2e} per '
        f'pixel, {pooled.abs().max():.2e} pooled.')
  values = pretrained.fingerprint(shipped, config)
  if args.fingerprint:
    record = {'file': os.path.relpath(os.path.abspath(args.out), ROOT), 'bytes': size,
              'sha256': hashlib.sha256(pathlib.Path(args.out).read_bytes()).hexdigest(),
              'meta': meta, 'sampler': pretrained.FINGERPRINT,
              'values': [[[[round(v, 8) for v in row] for row in channel] for channel in image]
                         for image in values.tolist()]}
    pathlib.Path(args.fingerprint).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.fingerprint).write_text(json.dumps(record, indent=1) + '\n')
    print(f'Wrote {args.fingerprint}.')


if __name__ == '__main__':
  main()
