"""pretrained.py and the shipped files in assets/pretrained/: size, the official layout loaded with
weights_only=True, float32 after loading, and samples of a fixed seed against the fingerprint
that scripts/export_pretrained.py wrote next to them (tests/fixtures/pretrained/<name>.json)."""
import hashlib
import json
import sys

import pytest
import torch

import pretrained
import workdir as workdir_lib
import utils
from conftest import FIXTURES, ROOT
from configs import load_config
from models.ema import ExponentialMovingAverage
from models.utils import create_model

sys.path.insert(0, str(ROOT / 'scripts'))
import export_pretrained  # noqa: E402

MAX_BYTES = 6_000_000  # the budget for everything shipped in assets/pretrained/
# |fingerprint - stored| allowed. Measured on the shipped VE file: 3e-7 between 1 and 2 threads,
# 3e-7 when the network runs in float64 (the size of what other CPUs' float32 rounding does);
# storing the same EMA weights in float32 instead of float16 moves it by 6e-4, so a changed
# network or a re-quantized file lands well above this.
TOLERANCE = 1e-4


def _shipped(name):
  path = pretrained.path_of(name)
  if not path.is_file():
    pytest.skip(f'{path} is not shipped (scripts/export_pretrained.py writes it)')
  return path


def test_unknown_name_lists_the_shipped_models():
  with pytest.raises(FileNotFoundError, match="'ve_digit' is neither a shipped model "
                                              r"\(ve_digits, vp_digits\)"):
    pretrained.load('ve_digit', device='cpu')


def test_budget():
  files = sorted(pretrained.PRETRAINED_DIR.glob('*.pth'))
  assert files, 'assets/pretrained/ holds no model'
  total = sum(f.stat().st_size for f in files)
  print(f'\n{", ".join(f"{f.name}: {f.stat().st_size / 1e6:.2f} MB" for f in files)}; '
        f'total {total / 1e6:.2f} MB')
  assert total <= MAX_BYTES


@pytest.mark.parametrize('name', sorted(pretrained.MODELS))
def test_official_layout_loads_float32(name):
  path = _shipped(name)
  raw = torch.load(path, map_location='cpu', weights_only=True)  # no allow-list needed
  assert set(raw) == {'model', 'ema', 'step', 'meta'}
  assert all(k.startswith('module.') for k in raw['model'])
  meta = raw['meta']
  assert meta['config'] == pretrained.MODELS[name] and meta['dtype'] == 'float16'
  assert isinstance(meta['step'], int) and isinstance(meta['eval_loss'], float)
  assert meta['command'].startswith(f'python main.py --config configs/{meta["config"]}.py')
  # the model entry's trainable tensors are the EMA shadows themselves: stored once
  shadows = {s.data_ptr() for s in raw['ema']['shadow_params']}
  halves = [v for v in raw['model'].values() if v.dtype == torch.float16]
  assert len(halves) == len(shadows) and all(v.data_ptr() in shadows for v in halves)

  config = load_config(meta['config'])
  config.device = torch.device('cpu')
  model = create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  state = utils.restore_checkpoint(path, dict(model=model, ema=ema, step=0), 'cpu')
  assert state['step'] == meta['step']
  assert all(p.dtype == torch.float32 for p in model.parameters())
  assert all(s.dtype == torch.float32 for s in ema.shadow_params)
  before = [p.detach().clone() for p in model.parameters()]
  ema.copy_to(model.parameters())
  assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize('name', sorted(pretrained.MODELS))
def test_samples_match_fingerprint(name):
  path = _shipped(name)
  record = json.loads((FIXTURES / 'pretrained' / f'{name}.json').read_text())
  assert hashlib.sha256(path.read_bytes()).hexdigest() == record['sha256'], (
    f'{path} is not the file the fingerprint was made from: rerun scripts/export_pretrained.py '
    'with --fingerprint')
  assert record['sampler'] == pretrained.FINGERPRINT
  model, config = pretrained.load(name, device='cpu')
  values = pretrained.fingerprint(model, config)
  expected = torch.tensor(record['values'], dtype=torch.float64)
  diff = (values - expected).abs().max().item()
  print(f'\n{name}: max |fingerprint - stored| = {diff:.2e}')
  assert values.shape == expected.shape and diff <= TOLERANCE


def test_sample_draws_digits_with_the_configs_sampler(tmp_path):
  """pretrained.sample on the shipped VE model with a cheap sampler: the shape, the NFE the sampler
  reports, the same images for the same seed."""
  _shipped('ve_digits')
  model, config = pretrained.load('ve_digits', device='cpu')
  assert config.device == torch.device('cpu') and not model.training
  config.sampling.method, config.sampling.num_steps = 'dpm_solver', 6
  images, nfe = pretrained.sample(model, config, num=3, seed=1)
  again, _ = pretrained.sample(model, config, num=3, seed=1)
  assert images.shape == (3, 1, 16, 16) and nfe == 6
  assert torch.equal(images, again)
  torch.save({'step': 0}, tmp_path / 'no_meta.pth')
  with pytest.raises(ValueError, match='config='):
    pretrained.load(tmp_path / 'no_meta.pth')


def test_export_script(tmp_path, capsys):
  """scripts/export_pretrained.py on a made-up run: EMA weights only, float16, stored once, meta
  from the run's log, the fingerprint of the file as loaded; a run of another config is refused."""
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  workdir_lib.check_and_save_config(config, str(workdir))
  torch.manual_seed(0)
  model = create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.01 * torch.randn_like(p))
  ema.update(model.parameters())
  optimizer = torch.optim.Adam(model.parameters())
  utils.save_checkpoint(workdir / 'checkpoints' / 'checkpoint_1.pth',
                        dict(model=model, ema=ema, optimizer=optimizer, step=8))
  (workdir / 'stdout.txt').write_text('INFO - step: 0, eval_loss: 9.0e+01\n'
                                      'INFO - step: 7, eval_loss: 1.25e+01\n')
  out, record = tmp_path / 'x.pth', tmp_path / 'x.json'
  export_pretrained.main(['--config', 'configs/ve/digits_ncsnpp_continuous.py', '--workdir',
                          str(workdir), '--out', str(out), '--fingerprint', str(record)])
  print(capsys.readouterr().out)

  raw = torch.load(out, weights_only=True)
  assert raw['step'] == 8 and raw['meta']['eval_loss'] == 12.5 and raw['meta']['eval_loss_step'] == 7
  numel = sum(p.numel() for p in model.parameters())
  assert out.stat().st_size < 2.1 * numel  # float16, each tensor once
  for shadow, half in zip(ema.shadow_params, raw['ema']['shadow_params']):
    assert torch.equal(shadow.half(), half)
  loaded, _ = pretrained.load(out, device='cpu')
  for (name, p), shadow in zip([(n, p) for n, p in loaded.named_parameters() if p.requires_grad],
                               ema.shadow_params):
    assert p.dtype == torch.float32 and torch.equal(p, shadow.half().float()), name
  stored = json.loads(record.read_text())
  assert stored['sha256'] == hashlib.sha256(out.read_bytes()).hexdigest()
  torch.testing.assert_close(pretrained.fingerprint(loaded, config),
                             torch.tensor(stored['values'], dtype=torch.float64), rtol=0, atol=1e-7)

  saved = json.loads((workdir / 'config.json').read_text())
  saved['model']['nf'] = 16
  (workdir / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r'model.nf: 16 in the run, 32 in the config'):
    export_pretrained.main(['--config', 've/digits_ncsnpp_continuous', '--workdir', str(workdir),
                            '--out', str(out)])
