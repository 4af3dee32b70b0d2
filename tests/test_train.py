"""run_lib.train on the embedded digits with a tiny score network: the loss falls, the workdir
holds what it should, a SIGKILLed run resumes to the same weights (in fp32, bf16 and fp16), two
DDP processes match one, a NaN loss stops training (an fp16 step the scaler skips does not), and a
workdir of another config is refused."""
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import losses
import checkpoints
import workdir
import run_lib
import sde_lib
import train_loop
from configs import load_config
from conftest import assert_same_run
from models import utils as mutils

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / 'tests'


class TinyScore(nn.Module):
  """Three convolutions conditioned on the (log) noise label; enough to learn digits a little."""

  def __init__(self, config):
    super().__init__()
    c, nf = config.data.num_channels, config.model.nf
    self.inp = nn.Conv2d(c, nf, 3, padding=1)
    self.embed = nn.Linear(1, nf)
    self.mid = nn.Conv2d(nf, nf, 3, padding=1)
    self.out = nn.Conv2d(nf, c, 3, padding=1)
    self.dropout = nn.Dropout(config.model.dropout)

  def forward(self, x, sigma):
    h = torch.nn.functional.silu(self.inp(x) + self.embed(torch.log(sigma)[:, None])[:, :, None, None])
    h = torch.nn.functional.silu(self.mid(self.dropout(h)))
    return self.out(h) / sigma[:, None, None, None]  # VE: output the score, scaled by 1 / sigma


class NaNAfter(TinyScore):
  """TinyScore whose training forward passes return NaN from the 6th on."""
  calls = 0

  def forward(self, x, sigma):
    if self.training:
      NaNAfter.calls += 1
    out = super().forward(x, sigma)
    return out * float('nan') if NaNAfter.calls > 5 else out


for _name, _cls in (('tiny_score', TinyScore), ('tiny_score_nan', NaNAfter)):
  if _name not in mutils.MODELS:
    mutils.register_model(_cls, name=_name)


def tiny_config(n_iters=20, **overrides):
  """Digits at 8x8, batch 8, TinyScore, no sampling; `overrides` as {'section.key': value}."""
  config = load_config('ve/digits_ncsnpp_continuous')
  config.model.name = 'tiny_score'
  config.model.nf = 16
  config.model.dropout = 0.1
  config.model.num_scales = 5
  config.data.image_size = 8
  config.data.random_flip = True
  config.data.uniform_dequantization = True
  config.training.batch_size = 8
  config.training.n_iters = n_iters
  config.training.log_freq = 5
  config.training.eval_freq = 5
  config.training.snapshot_freq = 1000
  config.training.snapshot_freq_for_preemption = 5
  config.training.snapshot_sampling = False
  config.eval.batch_size = 20
  config.optim.warmup = 5
  config.device = torch.device('cpu')
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _load(path):
  return torch.load(path, map_location='cpu', weights_only=True)


def _eval_loss(config, state):
  """Loss of the live weights on all 300 test digits with fixed noise."""
  import datasets
  sde, _ = sde_lib.get_sde(config)
  loss_fn = losses.get_sde_loss_fn(sde, False, reduce_mean=False, likelihood_weighting=False)
  _, eval_ds, _ = datasets.get_dataset(config, evaluation=True)
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    return sum(loss_fn(state['model'], x, generator=g).item() for x in eval_ds) / len(eval_ds)


def test_loss_falls_and_workdir_layout(tmp_path):
  config = tiny_config(n_iters=300, **{'training.log_freq': 50, 'training.eval_freq': 50,
                                       'training.snapshot_freq': 150, 'training.snapshot_sampling': True,
                                       'training.batch_size': 16, 'model.dropout': 0.,
                                       'training.snapshot_freq_for_preemption': 100})
  torch.manual_seed(config.seed)
  before = _eval_loss(config, checkpoints.build_state(config))
  state = run_lib.train(config, str(tmp_path))
  after = _eval_loss(config, state)
  print(f'eval loss before {before:.3f}, after 300 steps {after:.3f}')
  assert after < 0.75 * before
  assert state['step'] == 301

  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['checkpoint_1.pth', 'checkpoint_2.pth']
  assert _load(tmp_path / 'checkpoints-meta' / 'checkpoint.pth')['step'] == 301
  for step in (150, 300):
    grid = tmp_path / 'samples' / f'iter_{step}'
    assert (grid / 'sample.png').stat().st_size > 0
    samples = np.load(grid / 'sample.np')
    assert samples.shape == (16, 8, 8, 1) and samples.dtype == np.uint8
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['name'] == 'tiny_score' and saved['training']['n_iters'] == 300
  log = (tmp_path / 'stdout.txt').read_text()  # snapshot sampling says what it does and its cost
  for step in (150, 300):
    assert f"step {step}: drawing 16 samples with the EMA weights ('pc' sampler)" in log
    assert f'step {step}: samples drawn (10 evaluations' in log  # 5 PC steps x 2

  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(str(tmp_path / 'tensorboard')).Reload()
  tags = set(events.Tags()['scalars'])
  assert {'training_loss', 'eval_loss', 'lr', 'grad_norm', 'steps_per_sec'} <= tags
  lrs = {e.step: e.value for e in events.Scalars('lr')}
  assert lrs[0] == 0. and lrs[300] == pytest.approx(config.optim.lr)


# Child-side patch for the kill test: the k-th preemption checkpoint starts its write, then the
# process SIGKILLs itself mid-write (deterministic, unlike a timed kill from outside).
_KILL_DURING_SAVE = """
import os, signal, torch, train_loop
_real_save, _meta_saves = train_loop.save_checkpoint, []
def _save_then_die(path, state):
  if 'checkpoints-meta' in str(path):
    _meta_saves.append(path)
    if len(_meta_saves) == {k}:
      def _cut_short(obj, f, *args, **kwargs):
        f.write(b'PK\\x03\\x04 partial')
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
      torch.save = _cut_short
  _real_save(path, state)
train_loop.save_checkpoint = _save_then_die
"""


def python_command(imports, call, kill_at_meta_save=None):
  """(argv, env) of a child process that imports `imports` (modules of the repo or of tests/)
  and runs `call`; with `kill_at_meta_save` = k it SIGKILLs itself during its k-th write of a
  resume checkpoint (checkpoints-meta/), which train_loop makes for every trainer."""
  code = f'import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]\nimport {imports}\n'
  if kill_at_meta_save:
    code += _KILL_DURING_SAVE.format(k=kill_at_meta_save)
  code += call + '\n'
  env = dict(os.environ, OMP_NUM_THREADS='1', WORLD_SIZE='1')
  return [sys.executable, '-c', code], env


def _train_command(workdir, n_iters, kill_at_meta_save=None, **overrides):
  return python_command('test_train, run_lib', f'run_lib.train(test_train.tiny_config('
                        f'{n_iters}, **{overrides!r}), {str(workdir)!r})', kill_at_meta_save)


@pytest.mark.slow
@pytest.mark.parametrize('precision,num_workers', [('fp32', 0), ('bf16', 0), ('fp16', 0),
                                                   ('fp32', 1)])
def test_sigkill_and_resume_gives_the_uninterrupted_weights(tmp_path, precision, num_workers):
  """Killed mid-write of a resume checkpoint and resumed, a run ends with the weights, EMA,
  optimizer state, RNG and (fp16) loss scale of the run that never stopped. Only the killed run
  needs its own process; the other two run here (1 thread either way: the same numbers). With a
  loader worker the resumed run starts a DataLoader mid-epoch, which must not draw from the
  global RNG that dropout uses."""
  n_iters = 40
  overrides = {'training.precision': precision, 'data.num_workers': num_workers}
  run_lib.train(tiny_config(n_iters, **overrides), str(tmp_path / 'whole'))

  cmd, env = _train_command(tmp_path / 'killed', n_iters, kill_at_meta_save=3, **overrides)
  proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  meta = tmp_path / 'killed' / 'checkpoints-meta' / 'checkpoint.pth'
  stopped_at = _load(meta)['step']  # the 2nd preemption checkpoint; the 3rd was cut short
  assert 0 < stopped_at < n_iters
  leftovers = [p.name for p in meta.parent.iterdir() if p.name != 'checkpoint.pth']
  assert len(leftovers) == 1 and leftovers[0].endswith('.tmp'), leftovers
  assert (meta.parent / leftovers[0]).read_bytes().startswith(b'PK\x03\x04 partial')

  run_lib.train(tiny_config(n_iters, **overrides), str(tmp_path / 'killed'))
  log = (tmp_path / 'killed' / 'stdout.txt').read_text()
  assert f'Starting training loop at step {stopped_at}' in log

  whole, resumed = (_load(tmp_path / run / 'checkpoints-meta' / 'checkpoint.pth')
                    for run in ('whole', 'killed'))
  assert whole['step'] == n_iters + 1
  assert_same_run(whole, resumed)
  if precision == 'fp16':  # the scaler skipped the first overflowing steps: 65536 -> 1024
    assert whole['grad_scaler']['scale'] < 65536 and whole['grad_scaler']['_growth_tracker'] > 0


def test_snapshot_samples_are_written_atomically(tmp_path, monkeypatch):
  """A snapshot sample whose write fails (a full disk, a kill) is absent, not truncated, and
  leaves no temporary file beside the complete ones."""
  def fail_midway(f, array, *args, **kwargs):
    f.write(b'\x93NUMPY partial')
    raise OSError('No space left on device')

  monkeypatch.setattr(np, 'save', fail_midway)
  config = tiny_config(2, **{'training.snapshot_freq': 2, 'training.snapshot_sampling': True})
  with pytest.raises(OSError, match='No space left'):
    run_lib.train(config, str(tmp_path))
  folder = tmp_path / 'samples' / 'iter_2'
  assert os.listdir(folder) == ['sample.png']
  from PIL import Image
  with Image.open(folder / 'sample.png') as image:
    image.verify()  # complete


def _ddp_worker(rank, world, workdir, overrides):
  run_lib.train(tiny_config(6, **overrides), workdir)  # joins and leaves the group


# With the variational dequantizer (dequantizer.py): its gradients are averaged over the ranks.
_DEQUANTIZER = {'training.sde': 'vpsde', 'training.likelihood_weighting': True,
                'training.importance_weighting': True, 'training.dequantizer': True,
                'training.dequantizer_nf': 8, 'data.uniform_dequantization': False}


@pytest.mark.slow
@pytest.mark.parametrize('extra', [{}, _DEQUANTIZER], ids=['plain', 'dequantizer'])
def test_two_process_ddp_matches_one_process(tmp_path, extra):
  from conftest import spawn_ranks
  overrides = {'model.dropout': 0., **extra}
  spawn_ranks(_ddp_worker, str(tmp_path / 'ddp'), overrides)
  run_lib.train(tiny_config(6, **overrides), str(tmp_path / 'one'))
  ddp, one = (_load(tmp_path / run / 'checkpoints-meta' / 'checkpoint.pth') for run in ('ddp', 'one'))
  assert ddp['step'] == one['step'] == 7 and len(ddp['rng']) == 2
  for key, value in one['model'].items():
    torch.testing.assert_close(ddp['model'][key], value, rtol=1e-5, atol=1e-6, msg=key)
  if extra:  # the flow's zero-initialised last layers have moved, alike in both runs
    assert min(v.abs().max().item() for k, v in one['dequantizer']['model'].items()
               if k.endswith('net.4.weight')) > 1e-5
    for key, value in one['dequantizer']['model'].items():
      torch.testing.assert_close(ddp['dequantizer']['model'][key], value, rtol=1e-5, atol=1e-6,
                                 msg=key)
  init = checkpoints.build_state(tiny_config())['model'].state_dict()
  moved = max((one['model']['module.' + k] - v).abs().max().item() for k, v in init.items())
  assert moved > 1e-3  # the comparison is between trained weights, not two copies of the init


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  NaNAfter.calls = 0
  config = tiny_config(20, **{'model.name': 'tiny_score_nan', 'training.snapshot_freq_for_preemption': 2})
  with pytest.raises(FloatingPointError, match='training loss is nan at step 5.*checkpoints-meta'):
    run_lib.train(config, str(tmp_path))
  saved = _load(tmp_path / 'checkpoints-meta' / 'checkpoint.pth')
  assert saved['step'] == 5  # written after step 4
  assert all(torch.isfinite(v).all() for v in saved['model'].values())


def test_nan_between_log_steps_is_caught_before_the_next_checkpoint(tmp_path):
  """Losses are read at log steps and before checkpoints, not every step: a NaN at step 5 with
  log_freq 4 is found before the checkpoint of step 6, which is then not written."""
  NaNAfter.calls = 0
  config = tiny_config(20, **{'model.name': 'tiny_score_nan', 'training.log_freq': 4,
                              'training.eval_freq': 100, 'training.snapshot_freq_for_preemption': 2})
  with pytest.raises(FloatingPointError, match=r'training loss is nan at step 5 \(.*log_freq = 4.*'
                                               r'found at step 6\)'):
    run_lib.train(config, str(tmp_path))
  assert _load(tmp_path / 'checkpoints-meta' / 'checkpoint.pth')['step'] == 5  # after step 4


def test_fp16_steps_the_scaler_skips_are_not_a_nan_stop(tmp_path):
  """fp16 from GradScaler's initial scale 2^16: the first steps overflow and are skipped (the
  scale halves each time); training goes on, and the scale is checkpointed."""
  state = run_lib.train(tiny_config(10, **{'training.precision': 'fp16'}), str(tmp_path))
  assert state['step'] == 11
  saved = _load(tmp_path / 'checkpoints-meta' / 'checkpoint.pth')
  assert saved['grad_scaler']['scale'] < 2. ** 16
  assert all(torch.isfinite(v).all() for v in saved['model'].values())


def test_resuming_may_change_compilation_but_not_precision(tmp_path):
  run_lib.train(tiny_config(2), str(tmp_path))
  with pytest.raises(ValueError, match=r"training.precision: 'fp32' there, 'bf16' now"):
    run_lib.train(tiny_config(2, **{'training.precision': 'bf16'}), str(tmp_path))
  with pytest.raises(ValueError, match=r'model.channels_last: False there, True now'):
    run_lib.train(tiny_config(2, **{'model.channels_last': True}), str(tmp_path))
  # A run written before these keys existed resumes: absent keys read as their old value.
  saved = json.loads((tmp_path / 'config.json').read_text())
  for section, key in [k.split('.') for k in workdir.ADDED_KEYS]:
    del saved[section][key]
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  run_lib.check_and_save_config(tiny_config(2, **{'training.compile': True}), str(tmp_path))
  assert run_lib.train(tiny_config(2), str(tmp_path))['step'] == 3


def test_workdir_of_another_config_is_refused(tmp_path):
  run_lib.train(tiny_config(2), str(tmp_path))
  with pytest.raises(ValueError, match=r'another config \(model.nf: 16 there, 8 now'):
    run_lib.train(tiny_config(2, **{'model.nf': 8}), str(tmp_path))
  # Training longer is the same run: it resumes where it stopped.
  state = run_lib.train(tiny_config(4), str(tmp_path))
  assert state['step'] == 5
  assert 'Starting training loop at step 3' in (tmp_path / 'stdout.txt').read_text()


class _Wrapper(nn.Module):
  """A DDP / compiled-model stand-in: the network as `.module`, its own training flag."""

  def __init__(self, module):
    super().__init__()
    self.module = module

  def forward(self, *args):
    return self.module(*args)


def test_evaluating_the_bare_network_leaves_dropout_on_behind_a_wrapper():
  """Training runs the wrapped network (DDP, training.compile) and evaluation the bare one:
  after an evaluation put the bare network in eval mode, the next training call must switch it
  back although the wrapper's own flag still reads True (dropout stayed off for the rest of
  training before)."""
  torch.manual_seed(0)
  net = TinyScore(tiny_config(**{'model.dropout': 0.5}))
  wrapper = _Wrapper(net)
  x, sigma = torch.randn(4, 1, 8, 8), torch.full((4,), 2.)
  mutils.get_model_fn(net, train=False)(x, sigma)
  assert not net.training and wrapper.training
  train_fn = mutils.get_model_fn(wrapper, train=True)
  first, second = train_fn(x, sigma), train_fn(x, sigma)
  assert net.training and not torch.equal(first, second)  # dropout draws a new mask per call
  eval_fn = mutils.get_model_fn(wrapper, train=False)
  assert torch.equal(eval_fn(x, sigma), eval_fn(x, sigma)) and not net.training


def test_evaluation_frequency_does_not_change_the_weights(tmp_path):
  """The evaluation loss has its own noise stream, reseeded per evaluation: evaluating every 5
  steps or never, on any batch size (changes a resumed run may make), gives the same weights."""
  weights = []
  for name, overrides in (('often', {'training.eval_freq': 5}),
                          ('rarely', {'training.eval_freq': 100, 'eval.batch_size': 12})):
    state = run_lib.train(tiny_config(12, **overrides), str(tmp_path / name))
    weights.append({k: v.clone() for k, v in state['model'].state_dict().items()})
  assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
  logs = [(tmp_path / name / 'stdout.txt').read_text() for name in ('often', 'rarely')]
  assert logs[0].count('eval_loss') == 3 and logs[1].count('eval_loss') == 1  # 0, 5, 10 / 0


def test_training_noise_is_not_any_ranks_dropout_stream():
  """The loss noise generator is seeded apart from torch's global RNG, which dropout draws
  from (config.seed + rank): with one seed, two CUDA Philox generators give the same bits."""
  config = tiny_config()
  noise = torch.rand(64, generator=train_loop.training_noise_generator(config))
  for rank in range(4):
    torch.manual_seed(config.seed + rank)
    assert not torch.equal(noise, torch.rand(64))
