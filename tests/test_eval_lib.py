"""Tests of eval_lib: `--mode eval` on a checkpoint of a tiny digits model writes the loss,
bits/dim and sample files, resumes without redoing finished work, and without Inception weights
still runs loss and bits/dim before stopping with the file to place."""
import json
import os
import pathlib
import threading
import time

import numpy as np
import pytest
import torch

import checkpoints
import datasets
import eval_lib
import evaluation
import likelihood
import run_lib
import sampling
import utils
from configs import load_config
from workdir import Layout
from test_evaluation import save_stand_in


def tiny_config(tmp_path, inception=True):
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  config.model.nf = 8
  config.model.ch_mult = (1, 2)
  config.model.num_scales = 4            # PC steps
  ev = config.eval
  ev.begin_ckpt = ev.end_ckpt = 1
  ev.batch_size = 20                     # 20 test digits (see few_digits) = 1 batch (x 5 repeats)
  ev.num_samples = 30                    # 2 sampling rounds, the second one half used
  ev.enable_loss = ev.enable_bpd = ev.enable_sampling = True
  ev.bpd_dataset = 'test'
  ev.bpd_num_repeats = None              # the reference's 5 passes over the test split
  ev.bpd_rtol = ev.bpd_atol = 1e-3       # the reference's 1e-5 is benchmarked, not tested
  ev.ckpt_timeout_s = 0.
  ev.feature_network = 'inception'       # DIGITS defaults to the digits classifier (tested below)
  ev.stats_file = str(tmp_path / 'digits_stats.npz')
  ev.inception_path = str(save_stand_in(tmp_path / 'standin.pt') if inception
                          else tmp_path / 'absent' / evaluation.INCEPTION_FILE)
  return config


@pytest.fixture(autouse=True)
def few_digits(monkeypatch):
  """The first 200 train / 20 test digits, to keep the likelihood ODEs few on 2 CPU cores."""
  get = datasets.DATASETS.get

  def build(config, train, root, download):
    full = get('DIGITS')(config, train, root, download)
    n = 200 if train else 20
    return datasets.InMemoryImages(full.images[:n], full.labels[:n])

  monkeypatch.setattr(datasets.DATASETS, 'get', lambda name: build if name == 'DIGITS' else get(name))


def write_checkpoint(config, workdir, ckpt=1):
  torch.manual_seed(0)
  state = checkpoints.build_state(config)
  with torch.no_grad():  # move the EMA away from the initial weights (init_scale=0 zeroes layers)
    for p in state['ema'].shadow_params:
      p.add_(1e-3 * torch.randn_like(p))
  checkpoints.save_checkpoint(Layout(str(workdir)).snapshot(ckpt), state)


def _counting(monkeypatch, module, name):
  calls = []
  original = getattr(module, name)

  def build(*args, **kwargs):
    fn = original(*args, **kwargs)

    def counted(*a, **k):
      calls.append(1)
      return fn(*a, **k)
    return counted

  monkeypatch.setattr(module, name, build)
  return calls


def _mtimes(folder):
  return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(folder) for f in files}


def test_eval_writes_everything_and_resumes_only_missing_work(tmp_path, monkeypatch):
  config = tiny_config(tmp_path)
  workdir = tmp_path / 'run'
  write_checkpoint(config, workdir)
  stats_path = eval_lib.fid_stats(config, str(workdir))
  stats = evaluation.load_stats(stats_path, mode='legacy_tensorflow')
  assert stats['pool_3'].shape == (200, 16)  # every train digit, stand-in features

  eval_lib.evaluate(config, str(workdir))
  eval_dir = workdir / 'eval'
  loss = np.load(eval_dir / 'ckpt_1_loss.npz')
  assert loss['all_losses'].shape == (1,) and np.isfinite(loss['mean_loss'])
  bpds = [np.load(eval_dir / f'test_ckpt_1_bpd_{k}.npz')['arr_0'] for k in range(5)]
  assert all(b.shape == (20,) and np.all(np.isfinite(b)) for b in bpds)
  assert not np.allclose(bpds[0], bpds[2])  # repeat 2: other dequantization noise and probes
  for r in range(2):
    samples = np.load(eval_dir / 'ckpt_1' / f'samples_{r}.npz')['samples']
    assert samples.shape == (20, 16, 16, 1) and samples.dtype == np.uint8
    latents = np.load(eval_dir / 'ckpt_1' / f'statistics_{r}.npz')
    assert latents['pool_3'].shape == (20, 16) and latents['logits'].shape == (20, 12)
  report = np.load(eval_dir / 'report_1.npz')
  assert float(report['fid']) > 0 and 1 <= float(report['IS']) <= 12 and np.isfinite(report['kid'])
  summary = json.loads((eval_dir / 'report.json').read_text())['1']
  assert summary['loss'] == pytest.approx(float(loss['mean_loss']))
  assert summary['bpd'] == pytest.approx(np.concatenate(bpds).mean())
  # FID uses the first num_samples samples, rounds in order.
  pool = np.concatenate([np.load(eval_dir / 'ckpt_1' / f'statistics_{r}.npz')['pool_3']
                         for r in range(2)])[:30]
  assert summary['fid'] == pytest.approx(evaluation.frechet_distance(
    *evaluation.feature_statistics(pool), stats['mu'], stats['sigma']), rel=1e-9)

  # Preemption: one sampling round and one bits/dim batch are lost; only they are redone.
  before = _mtimes(eval_dir)
  old_round = np.load(eval_dir / 'ckpt_1' / 'samples_1.npz')['samples']
  for lost in ('ckpt_1/samples_1.npz', 'ckpt_1/statistics_1.npz', 'test_ckpt_1_bpd_3.npz'):
    os.remove(eval_dir / lost)
  sampler_calls = _counting(monkeypatch, sampling, 'get_sampling_fn')
  likelihood_calls = _counting(monkeypatch, likelihood, 'get_likelihood_fn')
  time.sleep(0.01)
  eval_lib.evaluate(config, str(workdir))
  assert len(sampler_calls) == 1 and len(likelihood_calls) == 1
  after = _mtimes(eval_dir)
  redone = {'ckpt_1/samples_1.npz', 'ckpt_1/statistics_1.npz', 'test_ckpt_1_bpd_3.npz',
            'report_1.npz', 'report.json'}
  assert set(after) == set(before)
  assert {f for f in after if after[f] != before[f]} == redone
  # Seeded by (seed, checkpoint, round / batch): the redone pieces are what the first run made.
  np.testing.assert_array_equal(np.load(eval_dir / 'ckpt_1' / 'samples_1.npz')['samples'], old_round)
  np.testing.assert_allclose(np.load(eval_dir / 'test_ckpt_1_bpd_3.npz')['arr_0'], bpds[3], rtol=1e-6)
  new_summary = json.loads((eval_dir / 'report.json').read_text())['1']
  assert new_summary['fid'] == pytest.approx(summary['fid'], rel=1e-9)


def test_without_inception_weights_loss_runs_then_sampling_stops(tmp_path, monkeypatch):
  config = tiny_config(tmp_path, inception=False)
  config.eval.enable_bpd = False
  workdir = tmp_path / 'run'
  write_checkpoint(config, workdir)
  with pytest.raises(FileNotFoundError) as err:
    eval_lib.evaluate(config, str(workdir))
  assert evaluation.INCEPTION_FILE in str(err.value) and evaluation.INCEPTION_URL in str(err.value)
  assert (workdir / 'eval' / 'ckpt_1_loss.npz').exists()
  assert not (workdir / 'eval' / 'ckpt_1').exists()
  # Sampling alone: stops at once, before restoring or sampling anything.
  config.eval.enable_loss = False
  os.remove(workdir / 'eval' / 'ckpt_1_loss.npz')
  monkeypatch.setattr(eval_lib, 'restore_ckpt', lambda *a, **k: pytest.fail('restored'))
  with pytest.raises(FileNotFoundError, match=evaluation.INCEPTION_FILE):
    eval_lib.evaluate(config, str(workdir))


def test_waiting_for_checkpoints(tmp_path):
  path = tmp_path / 'checkpoint_3.pth'
  start = time.monotonic()
  with pytest.raises(TimeoutError, match='checkpoint_3.pth'):
    eval_lib.wait_for_checkpoint(str(path), timeout_s=0.3, poll_s=0.05)
  assert 0.3 <= time.monotonic() - start < 2
  threading.Timer(0.2, path.touch).start()
  eval_lib.wait_for_checkpoint(str(path), timeout_s=10, poll_s=0.05)
  assert path.exists()


def test_digits_eval_reports_the_digits_quality_with_its_floor_and_logs_progress(tmp_path, caplog):
  """On DIGITS the default feature network is the digits classifier: no Inception, no stats
  file. bpd_num_repeats sets the passes over the split; every long step logs before it starts
  and each bits/dim batch logs its NFE."""
  import digits_quality
  config = tiny_config(tmp_path, inception=False)  # no Inception weights: not needed here
  config.eval.feature_network = 'auto'
  config.eval.bpd_num_repeats = 2
  workdir = tmp_path / 'run'
  write_checkpoint(config, workdir)
  caplog.set_level('INFO')
  eval_lib.evaluate(config, str(workdir))
  eval_dir = workdir / 'eval'
  assert sorted(p.name for p in eval_dir.glob('test_ckpt_1_bpd_*.npz')) == [
    'test_ckpt_1_bpd_0.npz', 'test_ckpt_1_bpd_1.npz']  # 1 batch x 2 repeats, not 5
  latents = np.load(eval_dir / 'ckpt_1' / 'statistics_0.npz')
  assert latents['pool_3'].shape == (20, digits_quality.FEATURES) and latents['logits'].shape == (20, 10)
  summary = json.loads((eval_dir / 'report.json').read_text())['1']
  samples = np.concatenate([np.load(eval_dir / 'ckpt_1' / f'samples_{r}.npz')['samples']
                            for r in range(2)])[:30]
  expected = digits_quality.score_samples(samples)
  for key in ('digits_fd', 'digits_cs', 'digits_fd_floor', 'digits_cs_floor'):
    assert summary[key] == pytest.approx(expected[key], rel=1e-6), key
  # An untrained network draws noise: far above the floor (20 held-out digits here, whose FD
  # against the 200 training digits is large at this n: 658).
  assert summary['digits_fd'] > 2 * summary['digits_fd_floor']
  assert summary['digits_cs'] < summary['digits_cs_floor'] - 3
  assert float(np.load(eval_dir / 'report_1.npz')['digits_fd']) == pytest.approx(summary['digits_fd'])
  text = caplog.text
  for line in ('Evaluating checkpoint 1', 'loss, bits/dim, sample quality',
               'bits/dim of 2 batch(es) of 20 test images', 'drawing 2 round(s) of 20 samples',
               'Loss of the EMA weights on 1 test batches'):
    assert line in text, line
  assert text.count('evaluations,') >= 2 + 2  # 2 bits/dim batches and 2 sampling rounds, with NFE


def test_bad_eval_settings_are_named(tmp_path):
  config = tiny_config(tmp_path)
  config.eval.bpd_num_repeats = 0
  sde, eps = eval_lib.sde_lib.get_sde(config)
  with pytest.raises(ValueError, match='bpd_num_repeats is 0'):
    eval_lib.build_tools(config, sde, eps)
  config.eval.bpd_num_repeats = 1
  config.eval.feature_network = 'clip'
  with pytest.raises(ValueError, match="feature_network is 'clip'"):
    eval_lib.build_tools(config, sde, eps)


def test_a_folder_of_other_settings_is_refused_and_short_rounds_are_caught(tmp_path):
  """An interrupted evaluation resumes on its files only with the settings that made them:
  another batch size (or sampler, seed, bits/dim tolerance) is refused, naming it; growing
  num_samples is allowed. Rounds that hold fewer samples than num_samples are an error."""
  config = tiny_config(tmp_path)
  config.eval.enable_bpd = config.eval.enable_sampling = False
  workdir = tmp_path / 'run'
  write_checkpoint(config, workdir)
  eval_lib.evaluate(config, str(workdir))
  saved = json.loads((workdir / 'eval' / 'eval_config.json').read_text())
  assert saved['batch_size'] == 20 and saved['sampler']['method'] == config.sampling.method
  config.eval.num_samples = 60
  eval_lib.evaluate(config, str(workdir))
  config.eval.batch_size = 10
  with pytest.raises(ValueError, match=r'batch_size: 20 there, 10 now.*--eval_folder'):
    eval_lib.evaluate(config, str(workdir))
  eval_lib.evaluate(config, str(workdir), eval_folder='eval_b10')  # another folder is fine
  from seeds import SCHEME
  saved = json.loads((workdir / 'eval_b10' / 'eval_config.json').read_text())
  assert saved['seed_scheme'] == SCHEME
  (workdir / 'eval_b10' / 'eval_config.json').write_text(json.dumps(dict(saved, seed_scheme=1)))
  with pytest.raises(ValueError, match=f'seed_scheme: 1 there, {SCHEME} now'):
    eval_lib.evaluate(config, str(workdir), eval_folder='eval_b10')
  # A folder from before eval.dequantization / bound_num_samples existed resumes (its bits/dim
  # were uniformly dequantized); one that recorded another dequantization is refused.
  older = {k: v for k, v in saved['bpd'].items() if k not in ('dequantization', 'bound')}
  (workdir / 'eval_b10' / 'eval_config.json').write_text(json.dumps(dict(saved, bpd=older)))
  eval_lib.evaluate(config, str(workdir), eval_folder='eval_b10')
  (workdir / 'eval_b10' / 'eval_config.json').write_text(
    json.dumps(dict(saved, bpd=dict(older, dequantization='variational'))))
  with pytest.raises(ValueError, match="dequantization: 'variational' there"):
    eval_lib.evaluate(config, str(workdir), eval_folder='eval_b10')
  sample_dir = tmp_path / 'rounds'
  sample_dir.mkdir()
  for r in range(3):  # 3 rounds of 10 when 60 samples at batch 10 need 6 rounds of 10
    np.savez(sample_dir / f'statistics_{r}.npz', pool_3=np.zeros((10, 4)), logits=np.zeros((10, 3)))
  config.eval.num_samples = 25
  config.eval.batch_size = 5  # 5 rounds wanted, of which 3 exist with 30 samples
  with pytest.raises(FileNotFoundError):
    eval_lib.compute_metrics(config, str(sample_dir), lambda p, l: {})
  config.eval.batch_size = 20  # 2 rounds wanted: 20 samples found, 25 asked for
  with pytest.raises(ValueError, match='holds 20 samples, fewer than config.eval.num_samples'):
    eval_lib.compute_metrics(config, str(sample_dir), lambda p, l: {})


def test_every_process_samples_or_none(tmp_path, monkeypatch):
  """When another process cannot load the feature network or the statistics (e.g. its download
  failed), this one skips FID/IS/KID too, so that their barriers still pair up; loss and
  bits/dim go on."""
  config = tiny_config(tmp_path)
  config.eval.feature_network = 'digits'  # needs no statistics file
  sde, eps = eval_lib.sde_lib.get_sde(config)
  tools, error = eval_lib.build_tools(config, sde, eps)
  assert error is None and 'sampling_fn' in tools
  monkeypatch.setattr(eval_lib.distributed, 'all_ranks', lambda flag: False)  # another failed
  tools, error = eval_lib.build_tools(config, sde, eps)
  assert isinstance(error, FileNotFoundError) and 'another process' in str(error)
  assert 'sampling_fn' not in tools and 'inception' not in tools and 'likelihood_fn' in tools


def _tools_worker(rank, world, failing_rank, out):
  config = tiny_config(pathlib.Path(out))
  config.eval.feature_network = 'digits'
  if rank == failing_rank:
    def unavailable(config):
      raise FileNotFoundError('no feature network here')
    eval_lib._sampling_tools = unavailable
  with eval_lib.distributed.process_group(config):
    sde, eps = eval_lib.sde_lib.get_sde(config)
    tools, error = eval_lib.build_tools(config, sde, eps)
    eval_lib.distributed.barrier()  # a barrier left unpaired above would hang or fail here
  (pathlib.Path(out) / f'rank{rank}.json').write_text(json.dumps(
    {'sampling': 'sampling_fn' in tools, 'error': str(error) if error else None}))


@pytest.mark.slow
def test_two_processes_agree_whether_to_sample(tmp_path):
  """Rank 1 cannot load the feature network: neither rank samples (their barriers would pair
  wrongly otherwise), and the error names the cause on each."""
  from conftest import spawn_ranks
  spawn_ranks(_tools_worker, 1, str(tmp_path))
  ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
  assert [r['sampling'] for r in ranks] == [False, False]
  assert 'another process' in ranks[0]['error'] and 'no feature network here' in ranks[1]['error']
