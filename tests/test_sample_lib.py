"""sample_lib / sample_tasks (`main.py --mode sample`) on a tiny NCSN++ trained for 100 steps on
8x8 digits: the files and their shapes, per-image seeds (batch size, two gloo processes, a
SIGKILL and a restart, a seed range), official checkpoints, the inverse problems, conditional
sampling, and every bad input's message."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoints
import run_lib
import sample_lib
import sample_tasks
from configs import load_config
from conftest import FIXTURES, ROOT

TESTS = ROOT / 'tests'


def tiny_config(**overrides):
  """The digits NCSN++ at 8x8, nf 8, 10 noise levels up to sigma 1; 10 images in batches of 4.
  `overrides` as {'section.key': value}."""
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  model = config.model
  model.nf, model.ch_mult, model.num_scales, model.sigma_max = 8, (1, 2), 10, 1.
  model.dropout, model.ema_rate = 0., 0.9
  config.data.image_size = 8
  # Data in [0, 1] as they are, so known pixels survive the uint8 truncation exactly (centered
  # data come back through (2x - 1 + 1) / 2, which can land one ulp below x).
  config.data.centered = False
  config.sampling.progress = False
  training = config.training
  training.batch_size, training.n_iters, training.snapshot_sampling = 16, 100, False
  training.snapshot_freq = training.snapshot_freq_for_preemption = 50
  training.eval_freq = training.log_freq = 1000
  config.optim.warmup, config.optim.lr = 20, 2e-3
  config.sample.num, config.sample.batch_size = 10, 4
  for key, value in overrides.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A training workdir: checkpoints/checkpoint_{1,2}.pth (steps 51, 101), checkpoints-meta."""
  workdir = tmp_path_factory.mktemp('trained')
  run_lib.train(tiny_config(), str(workdir))
  return workdir


def _ckpt(trained, n=2):
  return str(trained / 'checkpoints' / f'checkpoint_{n}.pth')


def _run(workdir, **overrides):
  """sample_lib.sample with tiny_config(**overrides); returns the folder."""
  overrides = {k.replace('__', '.'): v for k, v in overrides.items()}
  return sample_lib.sample(tiny_config(**overrides), str(workdir))


def _samples(folder):
  return np.load(folder / 'samples.npz')['samples']


def _names(folder):
  """The image files of a folder (complete ones only: temporary files start with '.')."""
  return sorted(p.name for p in (folder / 'images').iterdir())


def _assert_same_images(a, b):
  """uint8 images equal but for the last bits of the network: at most 1 LSB on <= 1 % of the
  pixels (measured: identical; the float samples differ by <= 4.8e-7, see below)."""
  assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
  diff = np.abs(a.astype(int) - b.astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


# --- seeds, generators, checkpoints ---------------------------------------------------------

def test_seeds_parse():
  assert sample_lib.parse_seeds('', 3) == [0, 1, 2]
  assert sample_lib.parse_seeds('5-9', 64) == [5, 6, 7, 8, 9]
  assert sample_lib.parse_seeds(' 7 - 7 ', 0) == [7]
  for bad in ('9-5', 'a-b', '5:9', '-3', '1-2-3'):
    with pytest.raises(ValueError, match=f"seeds='{re.escape(bad.strip())}' does not parse"):
      sample_lib.parse_seeds(bad, 64)
  with pytest.raises(ValueError, match='config.sample.num is 0'):
    sample_lib.parse_seeds('', 0)


def test_seeds_parse_edm_lists():
  """EDM's --seeds: comma-separated seeds and inclusive ranges, in the order given."""
  assert sample_lib.parse_seeds('0,5,10-12', 64) == [0, 5, 10, 11, 12]
  assert sample_lib.parse_seeds(' 3 , 1-2 ', 0) == [3, 1, 2]
  assert sample_lib.parse_seeds('7', 64) == [7]
  assert sample_lib.parse_seeds('0,2-2', 64) == [0, 2]


@pytest.mark.parametrize('text, part', [
  ('0,x', 'x'), ('1,,2', ''), ('1,', ''), ('0,9-5', '9-5'), ('2,-3', '-3'), ('0,1-2-3', '1-2-3'),
])
def test_seeds_parse_names_the_bad_part_and_the_forms(text, part):
  with pytest.raises(ValueError) as info:
    sample_lib.parse_seeds(text, 64)
  message = str(info.value)
  assert f"seeds={text!r} does not parse at {part!r}:" in message
  assert "'a-b'" in message and "'0,5,10-19'" in message and "''" in message


def test_seeds_parse_refuses_a_seed_listed_twice():
  """Two processes would draw and write the same PNG."""
  with pytest.raises(ValueError, match=re.escape("lists seed(s) [3, 4] more than once")):
    sample_lib.parse_seeds('0-4,3-5', 64)


def test_image_generators_hash_the_config_seed_and_the_image():
  from seeds import IMAGE, derive_seed
  gens = sample_lib.image_generators(42, [0, 5], 'cpu')
  assert gens[1].initial_seed() == derive_seed(42, IMAGE, 5)
  assert gens[0].initial_seed() == derive_seed(42, IMAGE, 0) != gens[1].initial_seed()
  assert sample_lib.image_generators(43, [5], 'cpu')[0].initial_seed() != derive_seed(42, IMAGE, 5)


def test_checkpoint_resolution(trained, tmp_path):
  resolve = checkpoints.resolve_checkpoint
  assert resolve(trained, '1') == pathlib.Path(_ckpt(trained, 1))
  # the snapshot and the resume checkpoint both hold step 101: the named snapshot wins
  assert resolve(trained, 'latest') == pathlib.Path(_ckpt(trained, 2))
  assert resolve(tmp_path, _ckpt(trained, 1)) == pathlib.Path(_ckpt(trained, 1))
  # a resume checkpoint later than the last snapshot is the latest
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints-meta').mkdir()
  os.symlink(_ckpt(trained, 1), tmp_path / 'checkpoints' / 'checkpoint_1.pth')
  meta = tmp_path / 'checkpoints-meta' / 'checkpoint.pth'
  os.symlink(trained / 'checkpoints-meta' / 'checkpoint.pth', meta)
  assert resolve(tmp_path, 'latest') == meta.resolve()
  (tmp_path / 'checkpoints' / 'checkpoint_1.pth').unlink()
  assert resolve(tmp_path, 'latest') == meta.resolve()  # the only one


# --- what a run writes ------------------------------------------------------------------------

def test_files_and_their_contents(trained, caplog):
  caplog.set_level('INFO')
  folder = _run(trained)
  assert re.fullmatch(r'step101_pc_[0-9a-f]{8}', folder.name)
  assert folder.parent == trained / 'generated'
  assert _names(folder) == [f'{k:06d}.png' for k in range(10)]
  samples = _samples(folder)
  assert samples.shape == (10, 8, 8, 1) and samples.dtype == np.uint8
  for k in (0, 9):
    png = np.asarray(Image.open(folder / 'images' / f'{k:06d}.png'))
    assert np.array_equal(png, samples[k, ..., 0])
  inside = ((samples > 0) & (samples < 255)).mean()
  assert inside > 0.4, inside  # a trained network: images (0.13 for random weights)
  grid = Image.open(folder / 'grid.png')
  # 4 columns of 8 px images shown 6x (48 px, nearest) + 2 px padding, 3 rows
  assert grid.size == (4 * 50 + 2, 3 * 50 + 2)
  top_left = np.asarray(grid)[2:50, 2:50]
  assert np.array_equal(top_left, samples[0, ..., 0].repeat(6, 0).repeat(6, 1))
  meta = json.loads((folder / 'meta.json').read_text())
  assert meta['checkpoint'] == {'path': _ckpt(trained, 2), 'step': 101}
  assert meta['sampler']['method'] == 'pc' and meta['sampler']['snr'] == 0.16
  assert meta['sample'] == {'task': 'generate', 'ema': True, 'pc_steps': 0}
  assert meta['seeds'] == [0, 9] and meta['seed'] == 42 and meta['world_size'] == 1
  assert [b['seeds'] for b in meta['batches']] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert [b['nfe'] for b in meta['batches']] == [20, 20, 20]  # 10 x (corrector + predictor)
  assert meta['versions']['torch'] == torch.__version__ and meta['wall_time_s'] > 0
  log = caplog.text
  assert 'generate: 10 images (seeds 0-9, 0 of them drawn before)' in log
  assert 'pc (reverse_diffusion + langevin, 10 steps)' in log
  assert 'rank 0: seeds 8-9, 2 images, 20 NFE' in log
  # the same command again draws nothing and gives the same files
  again = _run(trained)
  assert again == folder and np.array_equal(_samples(folder), samples)
  assert 'seeds 0-9, 10 of them drawn before' in caplog.text


def test_grid_is_torchvision_make_grid(tmp_path):
  from torchvision.utils import make_grid
  images = np.random.default_rng(0).integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
  for nrow in (None, 2):
    sample_lib.save_grid(images, tmp_path / 'grid.png', nrow, min_side=1)
    expected = make_grid(torch.from_numpy(images).permute(0, 3, 1, 2), nrow=nrow or 3, padding=2)
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'grid.png')),
                          expected.permute(1, 2, 0).numpy())


# --- per-image seeds --------------------------------------------------------------------------

def _float_samples(trained, batch_size, seeds, **overrides):
  config = tiny_config(**overrides)
  sde, eps = sample_lib.build_sde(config)
  model, _ = checkpoints.load_score_model(config, _ckpt(trained))
  task = sample_tasks.Generate(config, str(trained), sde, eps)
  parts = []
  for i in range(0, len(seeds), batch_size):
    batch = seeds[i:i + batch_size]
    parts.append(task.draw(model, batch, sample_lib.image_generators(config.seed, batch, 'cpu'))[0])
  return torch.cat(parts)


@pytest.mark.parametrize('sampler', [
  {},  # PC, reverse diffusion + Langevin (per-image step sizes)
  {'sampling.corrector': 'ald', 'sampling.predictor': 'euler_maruyama'},
  {'sampling.method': 'heun', 'sampling.num_steps': 4, 'sampling.churn': 5.},
  {'sampling.method': 'ode', 'sampling.ode_method': 'euler', 'sampling.ode_num_steps': 5},
])
def test_float_samples_do_not_depend_on_the_batch(trained, sampler):
  seeds = list(range(7))
  one, four, seven = (_float_samples(trained, b, seeds, **sampler) for b in (1, 4, 7))
  # Measured: <= 4.8e-7 on samples of range ~1.4 (float32 convolutions block batches of other
  # sizes differently). The reference's batch-mean Langevin step with the same per-image noise
  # moves them by 1.8e-2 (batch 4 vs 7) and 4.1e-2 (1 vs 7).
  assert (four - seven).abs().max() <= 1e-5 and (one - seven).abs().max() <= 1e-5
  assert seven.std() > 0.1


def test_batch_size_and_seed_range_give_the_same_images(trained):
  base = _samples(_run(trained, sample__out='b4'))
  _assert_same_images(_samples(_run(trained, sample__out='b7', sample__batch_size=7)), base)
  folder = _run(trained, sample__out='range', sample__seeds='5-9', sample__num=0)
  _assert_same_images(_samples(folder), base[5:10])
  assert _names(folder) == [f'{k:06d}.png' for k in range(5, 10)]


def _gloo_worker(rank, world, workdir):
  sample_lib.sample(tiny_config(**{'sample.out': 'ddp'}), workdir)


@pytest.mark.slow
def test_two_gloo_processes_give_the_same_images(trained):
  from conftest import spawn_ranks
  spawn_ranks(_gloo_worker, str(trained))
  folder = trained / 'generated' / 'ddp'
  _assert_same_images(_samples(folder), _samples(_run(trained, sample__out='one')))
  meta = json.loads((folder / 'meta.json').read_text())
  assert meta['world_size'] == 2
  assert sorted((b['rank'], tuple(b['seeds'])) for b in meta['batches']) == [
    (0, (0, 2, 4, 6)), (0, (8,)), (1, (1, 3, 5, 7)), (1, (9,))]


_KILL_AFTER_PNGS = """
import os, signal, sample_lib
_written = []
_real = sample_lib.write_png
def _write_then_die(path, image):
  _real(path, image)
  _written.append(path)
  if len(_written) == {k}:
    os.kill(os.getpid(), signal.SIGKILL)
sample_lib.write_png = _write_then_die
"""


def _sample_command(workdir, kill_after=None, **overrides):
  code = f'import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]\nimport test_sample_lib\n'
  if kill_after:
    code += _KILL_AFTER_PNGS.format(k=kill_after)
  code += (f'import sample_lib\n'
           f'sample_lib.sample(test_sample_lib.tiny_config(**{overrides!r}), {str(workdir)!r})\n')
  return subprocess.run([sys.executable, '-c', code], capture_output=True, timeout=600,
                        env=dict(os.environ, OMP_NUM_THREADS='1', WORLD_SIZE='1'))


@pytest.mark.slow
def test_a_killed_run_resumes_without_redrawing(trained):
  out = {'sample.out': 'killed', 'sample.ckpt': '2'}
  proc = _sample_command(trained, kill_after=6, **out)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  folder = trained / 'generated' / 'killed'
  assert _names(folder) == [f'{k:06d}.png' for k in range(6)]
  assert not (folder / 'samples.npz').exists()
  first = {k: (folder / 'images' / f'{k:06d}.png').stat().st_mtime_ns for k in range(6)}

  proc = _sample_command(trained, **out)
  assert proc.returncode == 0, proc.stderr.decode()[-2000:]
  assert {k: (folder / 'images' / f'{k:06d}.png').stat().st_mtime_ns for k in range(6)} == first
  meta = json.loads((folder / 'meta.json').read_text())
  # the killed run's first batch, then the restart's one batch of the 4 missing images
  assert [b['seeds'] for b in meta['batches']] == [[0, 1, 2, 3], [6, 7, 8, 9]]
  _assert_same_images(_samples(folder), _samples(_run(trained, sample__out='whole')))


# --- official checkpoints ---------------------------------------------------------------------

def _official_config(**sample):
  """ve/cifar10_ncsnpp_continuous shrunk as the official checkpoint fixture was."""
  recorded = torch.load(FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint_expected.pt',
                        weights_only=True)['config']
  config = load_config('ve/cifar10_ncsnpp_continuous')
  config.device = torch.device('cpu')
  for section in ('model', 'data'):
    for key, value in recorded[section].items():
      config[section][key] = tuple(value) if isinstance(value, list) else value
  config.sampling.progress = False
  config.sample.ckpt = str(FIXTURES / 'checkpoints' / 've_ncsnpp_small_checkpoint.pth')
  config.sample.num = config.sample.batch_size = 2
  for key, value in sample.items():
    config.sample[key] = value
  return config


def test_an_official_checkpoint_samples_into_a_new_workdir(tmp_path):
  config = _official_config(pc_steps=3)  # its model.num_scales (1000) sizes the network
  folder = sample_lib.sample(config, str(tmp_path / 'new'))
  assert folder.parent == tmp_path / 'new' / 'generated' and folder.name.startswith('step3_pc_')
  assert _samples(folder).shape == (2, 16, 16, 3)
  meta = json.loads((folder / 'meta.json').read_text())
  assert meta['checkpoint']['step'] == 3 and meta['batches'][0]['nfe'] == 6
  assert sorted(os.listdir(tmp_path / 'new')) == ['generated']
  config = _official_config(ema=False)
  config.sampling.method, config.sampling.num_steps = 'heun', 2
  raw = sample_lib.sample(config, str(tmp_path / 'new'))
  assert raw.name.startswith('step3_heun_')
  assert json.loads((raw / 'meta.json').read_text())['batches'][0]['nfe'] == 3


# --- inverse problems and conditional sampling ------------------------------------------------

def test_inpainting_keeps_the_known_half_of_each_input(trained, tmp_path):
  folder = _run(tmp_path, sample__ckpt=_ckpt(trained), sample__task='inpaint', sample__mask='right',
                sample__num=5)
  out = _samples(folder)
  inputs = sample_tasks.InputImages(tiny_config()).batch(range(5))
  known = sample_lib.to_uint8(inputs)[:, :, :4]
  assert np.array_equal(out[:, :, :4], known)  # left half: the digits themselves
  assert not np.array_equal(out[:, :, 4:], sample_lib.to_uint8(inputs)[:, :, 4:])
  for name in ('inputs.png', 'masked.png'):  # 5 images: 3 columns, 2 rows, 8 px shown at 48
    assert Image.open(folder / name).size == (3 * 50 + 2, 2 * 50 + 2)
  masked = np.asarray(Image.open(folder / 'masked.png'))[2:50, 2:50]
  assert (masked[:, 24:] == 127).all()
  assert np.array_equal(masked[:, :24], known[0, :, :, 0].repeat(6, 0).repeat(6, 1))
  meta = json.loads((folder / 'meta.json').read_text())
  assert meta['sample'] == {'task': 'inpaint', 'ema': True, 'pc_steps': 0,
                            'input': 'DIGITS eval split', 'mask': 'right'}
  assert meta['batches'][0]['nfe'] == 20


def test_inverse_problems_run_the_network_in_the_sampling_precision(trained, tmp_path):
  """config.sampling.precision reaches inpainting as it reaches get_sampling_fn: bf16 moves the
  generated half a little (the network's rounding) and keeps the known half exact."""
  common = dict(sample__ckpt=_ckpt(trained), sample__task='inpaint', sample__mask='right',
                sample__num=4)
  fp32 = _samples(_run(tmp_path, sample__out='fp32', **common)).astype(int)
  bf16 = _samples(_run(tmp_path, sample__out='bf16', sampling__precision='bf16', **common)).astype(int)
  assert np.array_equal(bf16[:, :, :4], fp32[:, :, :4])
  diff = np.abs(bf16[:, :, 4:] - fp32[:, :, 4:])
  assert 0 < diff.max() <= 40 and diff.mean() < 4, (diff.max(), diff.mean())


def _image_folder(folder, count, size, seed):
  """`count` random RGB PNGs of size x size in `folder` (made)."""
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f'{i}.png')
  return folder


def test_inpainting_a_folder_with_random_masks_per_image(trained, tmp_path):
  inputs = _image_folder(tmp_path / 'inputs', 3, 8, seed=0)
  common = dict(sample__ckpt=_ckpt(trained), sample__task='inpaint', sample__mask='random',
                sample__input=str(inputs), sample__num=4)
  a = _samples(_run(tmp_path, sample__out='a', **common))
  b = _samples(_run(tmp_path, sample__out='b', sample__batch_size=3, **common))
  _assert_same_images(a, b)
  gray = sample_tasks.InputImages(tiny_config(**{'sample.input': str(inputs)})).batch([0, 3])
  assert gray.shape == (2, 1, 8, 8)  # RGB files read as the config's one channel
  assert torch.equal(gray[0], gray[1])  # image 3 uses input 0 (3 mod 3)
  known = sample_tasks.make_mask('random', (1, 1, 8, 8), torch.Generator().manual_seed(
    sample_tasks.derive_seed(42, sample_tasks.INPUT_MASK, 3)))[0, 0].bool().numpy()
  assert 0.2 < known.mean() < 0.8
  assert np.array_equal(a[3, ..., 0][known], sample_lib.to_uint8(gray)[1, ..., 0][known])


def test_colorization_keeps_the_gray_level(tmp_path):
  inputs = _image_folder(tmp_path / 'inputs', 2, 16, seed=1)
  config = _official_config(task='colorize', input=str(inputs), pc_steps=3)
  folder = sample_lib.sample(config, str(tmp_path))
  assert _samples(folder).shape == (2, 16, 16, 3)
  gray = np.asarray(Image.open(folder / 'masked.png'))[2:18, 2:18]
  assert (gray[..., 0] == gray[..., 1]).all() and gray.std() > 10
  # In floats the channel mean of each output is its input's gray level; the colours differ.
  sde, eps = sample_lib.build_sde(config)
  model, _ = checkpoints.load_score_model(config, config.sample.ckpt)
  task = sample_tasks.Colorize(config, str(tmp_path), sde, eps)
  x, nfe = task.draw(model, [0, 1], sample_lib.image_generators(42, [0, 1], 'cpu'))
  given = task.inputs.batch([0, 1]).mean(1)
  assert nfe == 6 and (x.mean(1) - given).abs().max() < 1e-5
  assert x.std(1).mean() > 0.05


def test_conditional_sampling_cycles_the_classes(trained, tmp_path):
  from utils import save_checkpoint
  config = tiny_config()
  config.classifier = dict(blocks_per_group=1, channel_multiplier=1, embedding_size=8)
  torch.manual_seed(0)
  save_checkpoint(tmp_path / 'classifier' / 'checkpoints' / 'checkpoint_3.pth',
                  checkpoints.build_classifier_state(config))
  common = dict(sample__ckpt=_ckpt(trained), sample__task='conditional', sample__num=5)
  cycled = _samples(_run(tmp_path, **common))
  three = _run(tmp_path, sample__class_label=3, **common)
  meta = json.loads((three / 'meta.json').read_text())
  assert meta['sample']['class_label'] == 3 and meta['sample']['classifier_ckpt'].endswith(
    'classifier/checkpoints/checkpoint_3.pth')
  assert meta['batches'][0]['nfe'] == 20
  # image 3 has class 3 in both runs; image 4 has class 4 only in the first
  _assert_same_images(_samples(three)[3:4], cycled[3:4])
  assert np.abs(_samples(three)[4].astype(int) - cycled[4]).max() > 1


# --- bad input --------------------------------------------------------------------------------

def test_bad_checkpoints_are_named(trained, tmp_path):
  with pytest.raises(FileNotFoundError,
                     match=r'checkpoint_7.pth; .* holds checkpoint_1.pth, checkpoint_2.pth'):
    _run(trained, sample__ckpt='7')
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*train first'):
    _run(tmp_path, sample__ckpt='latest')
  with pytest.raises(FileNotFoundError, match="ckpt='nope.pth' is neither a snapshot number"):
    _run(tmp_path, sample__ckpt='nope.pth')
  with pytest.raises(ValueError, match=r'(?s)does not match the model .*Shape mismatches '
                                       r'.*: all_modules.0.W: \(8,\) vs \(16,\)'):
    _run(tmp_path, sample__ckpt=_ckpt(trained), model__nf=16)
  # A checkpoint of another config's network: the message names the configs it resembles.
  signatures = json.loads((ROOT / 'assets' / 'model_signatures.json').read_text())
  signature = signatures['ve/ncsnv2/cifar10']
  n = signature['num_tensors']
  tensors = {f'module.w{i}': torch.zeros(1) for i in range(n - 1)}
  tensors['module.big'] = torch.zeros(1).expand(signature['numel'] - (n - 1))  # tiny on disk
  path = tmp_path / 'ncsnv2.pth'
  torch.save(dict(model=tensors, ema={}, step=1), path)
  with pytest.raises(ValueError, match=r'looks like a model of config\(s\): ve/ncsnv2/cifar10'):
    _run(tmp_path, sample__ckpt=str(path))


def test_bad_options_are_named(trained, tmp_path):
  common = dict(sample__ckpt=_ckpt(trained))
  cases = [
    (dict(sampling__method='nope'), ValueError, "Unknown sampler 'nope'. Known samplers: .*pc"),
    (dict(sample__num=0), ValueError, 'config.sample.num is 0'),
    (dict(sample__seeds='3..9'), ValueError, r"seeds='3..9' does not parse"),
    (dict(sample__batch_size=0), ValueError, 'batch_size is 0'),
    (dict(sample__task='denoise'), ValueError, "Unknown config.sample.task 'denoise'"),
    (dict(sample__task='inpaint', sample__mask='square'), ValueError,
     "Unknown config.sample.mask 'square'"),
    (dict(sample__task='colorize'), ValueError, 'Colorization needs RGB data; DIGITS has 1'),
    (dict(sample__task='inpaint', sampling__method='ode'), ValueError,
     'pass --config.sampling.method=pc'),
    (dict(sample__task='inpaint', sample__input=str(tmp_path / 'none')), FileNotFoundError,
     'is not a folder'),
    (dict(sample__task='conditional'), FileNotFoundError, 'needs a classifier, and .* holds none'),
    (dict(sample__pc_steps=3, training__continuous=False), ValueError,
     'pc_steps needs a continuous-time'),
  ]
  for overrides, error, message in cases:
    with pytest.raises(error, match=message):
      _run(tmp_path, **common, **overrides)
  assert not (tmp_path / 'generated').exists()  # all refused before anything was written


def test_unwritable_workdir_and_mixed_folders_are_refused(trained, tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(PermissionError, match='Cannot write the samples to .*file/generated'):
    _run(tmp_path / 'file', sample__ckpt=_ckpt(trained))
  common = dict(sample__ckpt=_ckpt(trained), sample__out='mine', sample__num=2)
  _run(tmp_path, **common)
  with pytest.raises(ValueError, match=r"another checkpoint, config or sampler \(sampler.snr: 0.16 "
                                       r"there, 0.2 now\).*pass another --config.sample.out"):
    _run(tmp_path, sampling__snr=0.2, **common)
  with pytest.raises(ValueError, match=r"checkpoint.path: '.*checkpoint_2.pth' there, "
                                       r"'.*checkpoint_1.pth' now"):
    _run(tmp_path, **dict(common, sample__ckpt=_ckpt(trained, 1)))
  # another seed range and batch size may share the folder
  folder = _run(tmp_path, **dict(common, sample__seeds='1-3', sample__batch_size=1))
  assert _samples(folder).shape[0] == 3 and _names(folder) == [f'{k:06d}.png' for k in range(4)]



def test_processes_that_loaded_different_checkpoints_stop(trained, monkeypatch):
  """With ckpt='latest' a checkpoint replaced by training between two processes' reads would
  mix images of two weights in one folder: the processes compare what they loaded first."""
  real = sample_lib.distributed.gather_objects
  monkeypatch.setattr(sample_lib.distributed, 'gather_objects', lambda value: (
    [value, ('checkpoints-meta/checkpoint.pth', 7)] if isinstance(value, tuple) else real(value)))
  with pytest.raises(RuntimeError, match='loaded different checkpoints'):
    _run(trained, sample__out='mixed')
  assert not (trained / 'generated' / 'mixed').exists()


def test_a_folder_of_an_older_seed_scheme_is_not_extended(trained):
  """Image k's seed changes with seeds.SCHEME: a folder drawn with another scheme (or before
  folders recorded one) is refused rather than completed with images of the new seeds."""
  from seeds import SCHEME
  folder = _run(trained, sample__out='old_scheme', sample__num=2)
  meta = json.loads((folder / 'meta.json').read_text())
  for old in (SCHEME - 1, None):
    meta['seed_scheme'] = old
    (folder / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f'seed_scheme: {old} there, {SCHEME} now'):
      _run(trained, sample__out='old_scheme', sample__num=4)


def test_seed_ranges_record_lists_without_losing_seeds():
  """meta.json records the seeds as inclusive ranges: one range stays [a, b], a list keeps every
  seed in its order."""
  assert sample_lib.seed_ranges(sample_lib.parse_seeds('0-9', 0)) == [[0, 9]]
  ranges = sample_lib.seed_ranges(sample_lib.parse_seeds('7,0,5,10-12,13', 0))
  assert ranges == [[7, 7], [0, 0], [5, 5], [10, 13]]
  assert [k for a, b in ranges for k in range(a, b + 1)] == [7, 0, 5, 10, 11, 12, 13]
