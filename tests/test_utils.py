"""Checkpoint I/O: the official checkpoint format, atomic writes, strictness and clear errors."""
import json

import ml_collections
import pytest
import torch
from torch import nn

import checkpoints
import utils
import workdir
from configs import with_defaults
from conftest import FIXTURES, assert_close_scaled
from models.ema import ExponentialMovingAverage


class TinyNet(nn.Module):
  def __init__(self, width=4):
    super().__init__()
    self.conv = nn.Conv2d(1, width, 3, padding=1)
    self.fixed = nn.Parameter(torch.randn(3), requires_grad=False)  # like NCSN++'s Fourier W
    self.register_buffer('sigmas', torch.linspace(1, 2, 5, dtype=torch.float64))


def _state(model, lr=1e-3):
  opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
  return dict(model=model, ema=ExponentialMovingAverage(model.parameters(), 0.9), optimizer=opt,
              step=0)


def _train_a_bit(state, steps=3):
  for _ in range(steps):
    loss = state['model'].conv(torch.randn(2, 1, 4, 4)).pow(2).mean()
    state['optimizer'].zero_grad()
    loss.backward()
    state['optimizer'].step()
    state['ema'].update(state['model'].parameters())
    state['step'] += 1


def test_round_trip_restores_everything(tmp_path):
  torch.manual_seed(0)
  state = _state(TinyNet())
  _train_a_bit(state)
  state['rng'] = torch.get_rng_state()
  path = tmp_path / 'ckpt.pth'
  utils.save_checkpoint(path, state)

  raw = torch.load(path, weights_only=True)
  assert all(k.startswith('module.') for k in raw['model']), 'official layout uses module. keys'
  torch.manual_seed(1)
  fresh = _state(TinyNet())
  utils.restore_checkpoint(path, fresh, 'cpu')
  for (k, a), b in zip(state['model'].state_dict().items(), fresh['model'].state_dict().values()):
    assert torch.equal(a, b), k
  for a, b in zip(state['ema'].shadow_params, fresh['ema'].shadow_params):
    assert torch.equal(a, b)
  assert fresh['step'] == 3 and fresh['ema'].num_updates == 3
  assert torch.equal(fresh['rng'], state['rng'])
  assert fresh['optimizer'].state_dict()['state'][0]['step'] == 3


def test_restore_reads_the_file_on_the_cpu_whatever_the_device(tmp_path):
  """RNG states must come back as CPU tensors (torch.set_rng_state refuses CUDA ones, so a
  map_location of the training device broke every resume on a GPU); the weights are copied into
  the state's own tensors. A device no file tensor can be copied from ('meta') stands in for
  CUDA here."""
  torch.manual_seed(0)
  state = _state(TinyNet())
  _train_a_bit(state)
  state['rng'] = [dict(torch=torch.get_rng_state(), noise=torch.Generator().get_state())]
  utils.save_checkpoint(tmp_path / 'ckpt.pth', state)
  fresh = _state(TinyNet())
  utils.restore_checkpoint(tmp_path / 'ckpt.pth', fresh, torch.device('meta'))
  assert fresh['rng'][0]['torch'].device.type == 'cpu'
  torch.set_rng_state(fresh['rng'][0]['torch'])  # accepted as it is
  assert torch.equal(fresh['model'].conv.weight, state['model'].conv.weight)
  assert fresh['model'].conv.weight.device.type == 'cpu'


def test_restore_into_data_parallel_and_unprefixed(tmp_path):
  torch.manual_seed(0)
  state = _state(TinyNet())
  path = tmp_path / 'plain.pth'
  # A checkpoint without the prefix (e.g. hand-made) loads too, into a wrapped model.
  torch.save({'model': state['model'].state_dict(), 'ema': state['ema'].state_dict(),
              'optimizer': state['optimizer'].state_dict(), 'step': 7}, path)
  fresh = _state(TinyNet())
  fresh['model'] = nn.DataParallel(fresh['model'])
  utils.restore_checkpoint(path, fresh, 'cpu')
  assert fresh['step'] == 7
  assert torch.equal(fresh['model'].module.conv.weight, state['model'].conv.weight)


def test_float16_file_restores_float32(tmp_path):
  """A release file (assets/pretrained/) stores the EMA weights once, in float16, shared by the
  model entry and the EMA shadows; loading gives float32 model weights and float32 averages."""
  torch.manual_seed(0)
  state = _state(TinyNet())
  _train_a_bit(state)
  half = [s.half() for s in state['ema'].shadow_params]
  model_sd = {'module.conv.weight': half[0], 'module.conv.bias': half[1],
              'module.fixed': state['model'].fixed.detach(), 'module.sigmas': state['model'].sigmas}
  path = tmp_path / 'release.pth'
  torch.save({'model': model_sd, 'step': 3,
              'ema': dict(decay=0.9, num_updates=3, shadow_params=half)}, path)
  fresh = _state(TinyNet())
  utils.restore_checkpoint(path, fresh, 'cpu')
  assert [s.dtype for s in fresh['ema'].shadow_params] == [torch.float32, torch.float32]
  assert fresh['model'].conv.weight.dtype == torch.float32
  assert fresh['model'].sigmas.dtype == torch.float64
  fresh['ema'].copy_to(fresh['model'].parameters())
  torch.testing.assert_close(fresh['model'].conv.weight, half[0].float(), rtol=0, atol=0)
  torch.testing.assert_close(fresh['model'].conv.weight, state['ema'].shadow_params[0],
                             rtol=1e-3, atol=1e-4)  # float16 keeps 11 significant bits


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
  state = _state(TinyNet())
  path = tmp_path / 'ckpt.pth'
  utils.save_checkpoint(path, state)
  before = path.read_bytes()

  def crash(obj, f, *a, **k):
    f.write(b'partial bytes')
    raise KeyboardInterrupt('killed mid-write')

  monkeypatch.setattr(torch, 'save', crash)
  state['step'] = 99
  with pytest.raises(KeyboardInterrupt):
    utils.save_checkpoint(path, state)
  assert path.read_bytes() == before
  assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth'], 'temporary file left behind'


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
  state = _state(TinyNet())
  with pytest.raises(FileNotFoundError, match='No checkpoint at'):
    utils.restore_checkpoint(tmp_path / 'nope.pth', state, 'cpu')
  path = tmp_path / 'ckpt.pth'
  utils.save_checkpoint(path, state)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(RuntimeError, match='corrupt or truncated'):
    utils.restore_checkpoint(path, state, 'cpu')


class _NotData:
  pass


def test_untrusted_objects_are_refused_unless_trusted(tmp_path):
  state = _state(TinyNet())
  utils.save_checkpoint(tmp_path / 'a.pth', state)
  raw = torch.load(tmp_path / 'a.pth', weights_only=True)
  raw['extra'] = _NotData()
  torch.save(raw, tmp_path / 'b.pth')
  with pytest.raises(RuntimeError, match='trusted=True'):
    utils.restore_checkpoint(tmp_path / 'b.pth', _state(TinyNet()), 'cpu')
  restored = utils.restore_checkpoint(tmp_path / 'b.pth', _state(TinyNet()), 'cpu', trusted=True)
  assert isinstance(restored['extra'], _NotData)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path):
  state = _state(TinyNet(width=4))
  path = tmp_path / 'ckpt.pth'
  utils.save_checkpoint(path, state)
  with pytest.raises(ValueError) as err:
    utils.restore_checkpoint(path, _state(TinyNet(width=8)), 'cpu')
  msg = str(err.value)
  assert 'conv.weight: (4, 1, 3, 3) vs (8, 1, 3, 3)' in msg


def test_mismatch_error_guesses_the_reference_config():
  spec = json.loads((FIXTURES / 'state_dicts' / 've__cifar10_ncsnpp_continuous.json').read_text())
  fake = {k: torch.empty(shape, device='meta') for k, shape in spec['keys']}
  with pytest.raises(ValueError, match='ve/cifar10_ncsnpp_continuous'):
    checkpoints.check_state_dict_matches(TinyNet(), fake)


def _reference_state(config):
  """The state score_sde_pytorch's run_lib builds: model, EMA, Adam from config.optim, step."""
  from models import utils as mutils
  model = mutils.create_model(config)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  opt = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=(config.optim.beta1, 0.999),
                         eps=config.optim.eps, weight_decay=config.optim.weight_decay)
  return dict(optimizer=opt, model=model, ema=ema, step=0)


def test_official_checkpoint_restores_and_scores_match():
  import sde_lib
  from models import utils as mutils
  expected = torch.load(FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint_expected.pt',
                        weights_only=True)
  config = with_defaults(ml_collections.ConfigDict(expected['config']))
  config.device = torch.device('cpu')
  state = _reference_state(config)
  utils.restore_checkpoint(FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint.pth', state,
                           'cpu')
  assert state['step'] == expected['step'] == 3
  sde, _ = sde_lib.get_sde(config)
  score_fn = mutils.get_score_fn(sde, state['model'], train=False, continuous=True)
  with torch.no_grad():
    assert_close_scaled(score_fn(expected['x'], expected['t']), expected['score_raw'], name='raw')
    state['ema'].copy_to(state['model'].parameters())
    assert_close_scaled(score_fn(expected['x'], expected['t']), expected['score_ema'], name='ema')


def test_write_atomic_keeps_the_previous_file_when_the_writer_fails(tmp_path):
  """The one rename-into-place writer behind the JSON, npz, PNG and safetensors files."""
  path = tmp_path / 'report.json'
  workdir.write_json_atomic(path, {'fid': 3.0})

  def half_written(tmp):
    with open(tmp, 'w') as f:
      f.write('{"fid": ')
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    workdir.write_atomic(path, half_written)
  assert json.loads(path.read_text()) == {'fid': 3.0}
  assert sorted(p.name for p in tmp_path.iterdir()) == ['report.json']  # no temporary left
