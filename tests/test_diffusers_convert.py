"""diffusers_convert.py and scripts/convert_diffusers.py: NCSN++ <-> diffusers UNet2DModel and
pipeline folders, both ways, exact; which configs convert; clear errors for the rest."""
import json
import os
import shutil
import sys

import pytest
import torch

import diffusers_convert as dc
import pipelines
from configs import load_config
from conftest import FIXTURES, ROOT
from models.ema import ExponentialMovingAverage
from models.utils import create_model
from test_pipelines import TINY_UNET  # the smallest exact NCSN++ of diffusers' kind

sys.path.insert(0, str(ROOT / 'scripts'))
import convert_diffusers  # noqa: E402

CONVERTIBLE = ['ve/bedroom_ncsnpp_continuous', 've/celebahq_256_ncsnpp_continuous',
               've/celebahq_ncsnpp_continuous', 've/church_ncsnpp_continuous',
               've/ffhq_256_ncsnpp_continuous', 've/ffhq_ncsnpp_continuous']
SHRUNK_CONFIG = '''from configs import load_config


def get_config():
  config = load_config('ve/celebahq_256_ncsnpp_continuous')
  config.data.image_size = 8
  config.model.nf = 32
  config.model.ch_mult = (1, 4)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  return config
'''


def _diffusers():
  return pytest.importorskip('diffusers', reason='diffusers is a test dependency '
                             '(requirements-dev.txt); these tests compare against it')


def _randomise(module, seed):
  """Non-trivial weights (the NCSN++ init zeroes several layers)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.1))
  return module.eval()


def shrunk_config(tmp_path=None):
  """celebahq_256_ncsnpp_continuous at 8 px, nf 32, ch_mult (1, 4), attention at 4 px.
  With tmp_path, also the path of a config file that builds it (for the command line)."""
  path = None
  if tmp_path is not None:
    path = tmp_path / 'shrunk_celebahq.py'
    path.write_text(SHRUNK_CONFIG)
  config = load_config('ve/celebahq_256_ncsnpp_continuous')
  config.data.image_size, config.model.nf, config.model.ch_mult = 8, 32, (1, 4)
  config.model.num_res_blocks, config.model.attn_resolutions = 1, (4,)
  config.device = torch.device('cpu')
  return (config, path) if tmp_path is not None else config


def _inputs(size=8):
  x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
  return x, torch.tensor([0.01, 1.5, 300.])


def _assert_same_output(a, b, rel=1e-5):
  err = ((a - b).abs().max() / b.abs().max()).item()
  print(f'max |ours - diffusers| / max |diffusers| = {err:.2g}')
  assert err <= rel


# --- which configs convert ------------------------------------------------------------------------
def test_which_configs_diffusers_can_hold():
  import configs
  ok = [name for name in configs.list_configs() if not dc.conversion_problems(load_config(name))]
  assert ok == CONVERTIBLE
  with pytest.raises(ValueError, match="progressive_input is 'residual'"):
    dc.check_convertible(load_config('ve/cifar10_ncsnpp_continuous'))
  with pytest.raises(ValueError, match="embedding_type is 'positional'"):
    dc.unet_config(load_config('vp/cifar10_ddpmpp_continuous'))
  narrow = shrunk_config()
  narrow.model.ch_mult = (1, 2)  # attention at 64 channels: diffusers would use 32 groups, not 16
  with pytest.raises(ValueError, match='needs >= 128 channels'):
    dc.check_convertible(narrow)
  cfg = dc.unet_config(load_config('ve/celebahq_256_ncsnpp_continuous'))
  assert cfg['block_out_channels'] == [128, 128, 256, 256, 256, 256, 256]
  assert cfg['down_block_types'][4] == 'AttnSkipDownBlock2D' and cfg['attention_head_dim'] is None
  assert cfg['up_block_types'][2] == 'AttnSkipUpBlock2D' and cfg['center_input_sample']
  # a hub-style folder config comes back as our config file's network and schedule
  church = load_config('ve/church_ncsnpp_continuous')
  back = dc.ncsnpp_config(dc.unet_config(church), dc.scheduler_from_config(church))
  assert convert_diffusers.matching_configs(back) == ['ve/church_ncsnpp_continuous']
  assert back.sampling.snr == church.sampling.snr and back.model.num_scales == 2000


# --- weights both ways ----------------------------------------------------------------------------
def test_diffusers_unet_converted_to_ours_gives_same_output():
  diffusers = _diffusers()
  torch.manual_seed(0)
  unet = _randomise(diffusers.UNet2DModel(**TINY_UNET), seed=1)
  config = dc.ncsnpp_config(dict(unet.config))
  config.device = torch.device('cpu')
  ours = create_model(config).eval()
  state = dc.from_diffusers_state_dict(unet.state_dict(), config)
  state['sigmas'] = ours.sigmas
  ours.load_state_dict(state, strict=True)
  x, sigma = _inputs()
  with torch.no_grad():
    _assert_same_output(ours(x, sigma), unet(x, sigma).sample)
  # and back: the diffusers state dict is reproduced bit for bit
  back = dc.to_diffusers_state_dict(ours.state_dict(), config)
  assert back.keys() == unet.state_dict().keys()
  assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())


def test_ours_saved_and_loaded_by_diffusers_gives_same_output(tmp_path):
  diffusers = _diffusers()
  config = shrunk_config()
  torch.manual_seed(0)
  ours = _randomise(create_model(config), seed=2)
  scheduler = dc.scheduler_from_config(config)
  for safe in (True, False):
    folder = tmp_path / f'safe_{safe}'
    pipelines.ScoreSdeVePipeline(ours, scheduler).save_pretrained(folder, safe_serialization=safe)
    weights = 'diffusion_pytorch_model.' + ('safetensors' if safe else 'bin')
    assert sorted(os.listdir(folder)) == ['model_index.json', 'scheduler', 'unet']
    assert sorted(os.listdir(folder / 'unet')) == ['config.json', weights]
    theirs = diffusers.ScoreSdeVePipeline.from_pretrained(folder)
    assert type(theirs.unet).__name__ == 'UNet2DModel'
    assert theirs.scheduler.config.snr == config.sampling.snr == 0.075
    assert theirs.scheduler.config.sigma_max == 348. and len(theirs.scheduler) == 2000
    x, sigma = _inputs()
    with torch.no_grad():
      _assert_same_output(ours(x, sigma), theirs.unet(x, sigma).sample)
    # folder -> ours: the state dict is unchanged, sigmas buffer included
    back = pipelines.ScoreSdeVePipeline.from_pretrained(folder)
    assert back.unet.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in back.unet.state_dict().items())
    assert back.scheduler.config == scheduler.config
    assert back.unet.config.model.attn_resolutions == (4,)


def test_state_dict_round_trip_is_exact():
  """ours -> diffusers -> ours (no diffusers needed): every tensor bit for bit, NIN transposed."""
  config = shrunk_config()
  ours = _randomise(create_model(config), seed=3)
  sd = ours.state_dict()
  theirs = dc.to_diffusers_state_dict({'module.' + k: v for k, v in sd.items()}, config)
  assert len(theirs) == len(sd) - 1  # all but the sigmas buffer
  attn = [k for k in sd if k.endswith('NIN_0.W')][0]
  assert sd[attn].shape == (128, 128) and not torch.equal(sd[attn], sd[attn].t())
  back = dc.from_diffusers_state_dict(theirs, config)
  assert back.keys() == sd.keys() - {'sigmas'}
  assert all(torch.equal(back[k], sd[k]) for k in back)
  with pytest.raises(ValueError, match='no diffusers counterpart'):
    dc.to_diffusers_state_dict({**sd, 'all_modules.999.weight': sd['all_modules.3.weight']}, config)


def _bin_folder(folder, seed):
  """(our random NCSN++, its .bin weights file, the saved diffusers state dict) in `folder`."""
  config = shrunk_config()
  ours = _randomise(create_model(config), seed=seed)
  dc.save_pipeline_folder(folder, ours, dc.scheduler_from_config(config), safe_serialization=False)
  path = folder / 'unet' / 'diffusion_pytorch_model.bin'
  return ours, path, torch.load(path, weights_only=True)


def _loads_back(folder, ours):
  back, _ = dc.load_pipeline_folder(folder)
  return all(torch.equal(v, ours.state_dict()[k]) for k, v in back.state_dict().items())


def test_pre_0_14_attention_names_load(tmp_path):
  """Hub folders saved by old diffusers name attention query/key/value/proj_attn."""
  ours, path, state = _bin_folder(tmp_path, seed=4)
  renames = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  old = {}
  for key, value in state.items():
    for new, was in renames.items():
      key = key.replace(f'.{new}.', f'.{was}.')
    old[key] = value
  assert any('.proj_attn.' in k for k in old)
  torch.save(old, path)
  assert _loads_back(tmp_path, ours)


def test_old_fourier_key_W_loads(tmp_path):
  """Folders from diffusers before ~0.4 hold the Fourier projection as time_proj.W and
  time_proj.weight (today's UNet2DModel ignores the extra key); two different values are an
  error."""
  ours, path, state = _bin_folder(tmp_path, seed=5)
  torch.save({**state, 'time_proj.W': state['time_proj.weight'].clone()}, path)
  assert _loads_back(tmp_path, ours)
  torch.save({**state, 'time_proj.W': state['time_proj.weight'] + 1}, path)
  with pytest.raises(ValueError, match='time_proj.W and time_proj.weight'):
    dc.load_pipeline_folder(tmp_path)


def test_exporting_again_in_the_other_format_replaces_the_weights(tmp_path):
  """A .bin export over a safetensors one (or back) leaves one weights file, the new one:
  safetensors is read first, so a stale one would shadow the new model."""
  pytest.importorskip('safetensors')
  config = shrunk_config()
  first, second = (_randomise(create_model(config), seed=s) for s in (6, 7))
  for model, safe in ((first, True), (second, False), (first, True)):
    dc.save_pipeline_folder(tmp_path, model, dc.scheduler_from_config(config),
                            safe_serialization=safe)
    assert sorted(p.name for p in (tmp_path / 'unet').iterdir()) == sorted(
      ['config.json', dc.UNET_WEIGHTS[0 if safe else 1]])
    assert _loads_back(tmp_path, model)


# --- bad folders ----------------------------------------------------------------------------------
def _edit_json(path, **changes):
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data))


@pytest.fixture
def good_folder(tmp_path):
  config = shrunk_config()
  folder = tmp_path / 'good'
  dc.save_pipeline_folder(folder, create_model(config), dc.scheduler_from_config(config))
  return folder


@pytest.mark.parametrize('damage, error, match', [
  (lambda f: os.remove(f / 'model_index.json'), FileNotFoundError, 'model_index.json'),
  (lambda f: os.remove(f / 'unet' / 'config.json'), FileNotFoundError, 'unet/config.json'),
  (lambda f: os.remove(f / 'scheduler' / 'scheduler_config.json'), FileNotFoundError,
   'scheduler_config.json'),
  (lambda f: os.remove(f / 'unet' / 'diffusion_pytorch_model.safetensors'), FileNotFoundError,
   'No weights'),
  (lambda f: (f / 'unet' / 'config.json').write_text('{"sample_size": 8,'), ValueError,
   'not valid JSON'),
  (lambda f: _edit_json(f / 'model_index.json', unet=['diffusers', 'UNet2DConditionModel']),
   ValueError, 'UNet2DModel'),
  (lambda f: _edit_json(f / 'unet' / 'config.json',
                        down_block_types=['DownBlock2D', 'AttnDownBlock2D']),
   ValueError, r"block types \['AttnDownBlock2D', 'DownBlock2D'\] are not NCSN\+\+ blocks"),
  (lambda f: _edit_json(f / 'unet' / 'config.json', time_embedding_type='positional',
                        norm_eps=1e-5),
   ValueError, "time_embedding_type is 'positional'.*\n.*norm_eps"),
  (lambda f: _edit_json(f / 'unet' / 'config.json', block_out_channels=[32, 64]), ValueError,
   'needs >= 128'),
  (lambda f: _edit_json(f / 'unet' / 'config.json', layers_per_block=2), ValueError,
   'does not match the model'),
  (lambda f: _edit_json(f / 'scheduler' / 'scheduler_config.json',
                        _class_name='DDPMScheduler'), ValueError, 'not a ScoreSdeVeScheduler'),
  (lambda f: shutil.rmtree(f), FileNotFoundError, 'is not a folder'),
])
def test_bad_folders_give_clear_errors(good_folder, damage, error, match):
  damage(good_folder)
  with pytest.raises(error, match=match):
    pipelines.ScoreSdeVePipeline.from_pretrained(good_folder)


def test_pipeline_from_pretrained_takes_the_precision(good_folder):
  """precision= (or diffusers' torch_dtype=) reaches the pipeline, not the scheduler."""
  load = pipelines.ScoreSdeVePipeline.from_pretrained
  assert load(good_folder).precision == 'fp32'
  assert load(good_folder, precision='bf16').precision == 'bf16'
  assert load(good_folder, torch_dtype=torch.float16).precision == 'fp16'
  assert 'precision' not in load(good_folder, precision='bf16').scheduler.config
  with pytest.raises(ValueError, match='torch_dtype'):
    load(good_folder, torch_dtype=torch.int8)
  with pytest.raises(ValueError, match='fp32, bf16, fp16'):
    load(good_folder, precision='fp8')


def test_multi_head_attention_folder_warns(good_folder):
  _edit_json(good_folder / 'unet' / 'config.json', attention_head_dim=8)
  with pytest.warns(UserWarning, match='into 16 heads'):
    pipelines.ScoreSdeVePipeline.from_pretrained(good_folder)


# --- command line ---------------------------------------------------------------------------------
def test_command_line_round_trip(tmp_path, capsys):
  from utils import restore_checkpoint, save_checkpoint
  config, config_path = shrunk_config(tmp_path)
  model = _randomise(create_model(config), seed=6)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
  _randomise(model, seed=7)  # the raw weights now differ from the EMA ones
  optimizer = torch.optim.Adam(model.parameters())
  save_checkpoint(tmp_path / 'ckpt.pth', dict(model=model, ema=ema, optimizer=optimizer, step=12))

  folder = tmp_path / 'exported'
  assert convert_diffusers.main([str(tmp_path / 'ckpt.pth'), str(folder),
                                 '--config', str(config_path)]) == 0
  assert 'step 12, EMA weights' in capsys.readouterr().out
  loaded = pipelines.ScoreSdeVePipeline.from_pretrained(folder).unet
  trainable = [p for p in model.parameters() if p.requires_grad]
  assert len(ema.shadow_params) == len(trainable)
  for shadow, p in zip(ema.shadow_params, [p for p in loaded.parameters() if p.requires_grad]):
    assert torch.equal(shadow, p)

  assert convert_diffusers.main([str(folder), str(tmp_path / 'back.pth')]) == 0
  assert 'Wrote' in capsys.readouterr().out
  fresh = create_model(config)
  fresh_ema = ExponentialMovingAverage(fresh.parameters(), 0.9)
  state = restore_checkpoint(tmp_path / 'back.pth', dict(model=fresh, ema=fresh_ema, step=None),
                             'cpu')
  assert state['step'] == 0
  assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in fresh.state_dict().items())
  assert json.loads((tmp_path / 'back.pth.config.json').read_text())['model']['nf'] == 32


def test_command_line_refuses_unconvertible_checkpoint(capsys):
  ckpt = FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint.pth'
  if not ckpt.is_file():
    pytest.skip(f'fixture {ckpt} missing')
  code = convert_diffusers.main([str(ckpt), '/nonexistent/out', '--config',
                                 've/cifar10_ncsnpp_continuous'])
  err = capsys.readouterr().err
  assert code == 1
  assert "progressive_input is 'residual'" in err and 'no exact diffusers' in err


def test_command_line_reports_a_corrupt_checkpoint_without_a_traceback(tmp_path, capsys):
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'PK\x03\x04 not a checkpoint')
  code = convert_diffusers.main([str(bad), str(tmp_path / 'out'), '--config',
                                 've/celebahq_256_ncsnpp_continuous'])
  err = capsys.readouterr().err
  assert code == 1 and err.startswith('error: ') and 'corrupt' in err and 'Traceback' not in err


def test_core_works_without_diffusers(tmp_path):
  """diffusers is optional: with it made unimportable, save, load and sample still work."""
  import subprocess
  _, config_path = shrunk_config(tmp_path)
  folder = tmp_path / 'folder'
  code = f'''
import sys
sys.modules['diffusers'] = None  # any import of diffusers now fails
sys.path.insert(0, {str(ROOT)!r})
import torch
torch.set_num_threads(1)
import diffusers_convert, pipelines
from configs import load_config
from models.utils import create_model
config = load_config({str(config_path)!r})
config.device = torch.device('cpu')
scheduler = diffusers_convert.scheduler_from_config(config)
pipelines.ScoreSdeVePipeline(create_model(config), scheduler).save_pretrained({str(folder)!r})
pipe = pipelines.ScoreSdeVePipeline.from_pretrained({str(folder)!r})
pipe.set_progress_bar_config(disable=True)
print(pipe(num_inference_steps=1, output_type='np').images.shape)
'''
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '(1, 8, 8, 3)'


def test_conversion_and_scheduler_modules_do_not_import_pipelines():
  """The scheduler has its own module: diffusers_convert uses it without importing pipelines (no
  import circle), and pipelines re-exports it."""
  import subprocess
  code = (f'import sys; sys.path.insert(0, {str(ROOT)!r})\n'
          'import diffusers_convert, diffusers_configs, score_sde_ve_scheduler\n'
          'print("pipelines" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'False'
  import score_sde_ve_scheduler as ssv
  for name in ('ScoreSdeVeScheduler', 'FrozenConfig', 'SchedulerOutput', 'SdeVeOutput', '_Output'):
    assert getattr(pipelines, name) is getattr(ssv, name)
  assert pipelines._diffusers_format_version is ssv.diffusers_format_version
  import diffusers_configs
  for name in ('check_convertible', 'conversion_problems', 'ncsnpp_config', 'scheduler_from_config',
               'unet_config'):
    assert getattr(dc, name) is getattr(diffusers_configs, name)
