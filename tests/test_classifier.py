"""The noise-conditional Wide-ResNet classifier and its training mode (`classifier_lib`)."""
import json
import os
import signal
import subprocess

import pytest
import torch

import checkpoints
import classifier_lib
from models.wideresnet import classifier_config, create_classifier
import sde_lib
from configs import load_config
from models.wideresnet import WideResNet


def _tiny(num_channels=1, **kwargs):
  torch.manual_seed(0)
  return WideResNet(num_classes=10, num_channels=num_channels, blocks_per_group=1,
                    channel_multiplier=1, embedding_size=16, **kwargs).eval()


def test_architecture_follows_the_jax_wrn():
  net = WideResNet(num_classes=10, num_channels=3, blocks_per_group=4, channel_multiplier=10)
  # WRN-28-10: 3 groups of 4 blocks, widths 160 / 320 / 640, two 3x3 convs per block.
  assert len(net.blocks) == 12
  assert [b.conv2.out_channels for b in net.blocks[::4]] == [160, 320, 640]
  assert [b.conv1.stride[0] for b in net.blocks] == [1] * 4 + [2, 1, 1, 1] * 2
  assert [b.activate_before_residual for b in net.blocks] == [True] + [False] * 11
  # GroupNorm with min(C // 4, 32) groups, eps 1e-5.
  assert net.blocks[0].init_bn.num_groups == 4 and net.blocks[1].init_bn.num_groups == 32
  # The Fourier features are fixed, as the JAX stop_gradient; they are not optimised.
  assert not net.fourier.W.requires_grad and net.fourier.W.shape == (128,)
  x = torch.randn(2, 3, 32, 32)
  assert net(x, torch.tensor([0.1, 10.])).shape == (2, 10)


def test_logits_ignore_per_image_affine_changes_but_depend_on_sigma():
  net = _tiny()
  x = torch.rand(4, 1, 16, 16)
  sigma = torch.tensor([0.01, 0.1, 1., 10.])
  with torch.no_grad():
    logits = net(x, sigma)
    # Per-image standardisation: a positive scale and a shift per image change nothing.
    scale = torch.tensor([0.5, 2., 3., 10.]).view(-1, 1, 1, 1)
    shift = torch.tensor([-1., 0., 4., 0.3]).view(-1, 1, 1, 1)
    torch.testing.assert_close(net(scale * x + shift, sigma), logits, atol=1e-4, rtol=1e-4)
    # The noise level enters through the embedding: other sigmas, other logits.
    assert (net(x, sigma.flip(0)) - logits).abs().max() > 1e-3
    # A scalar sigma broadcasts over the batch.
    torch.testing.assert_close(net(x, torch.tensor(0.1)), net(x, torch.full((4,), 0.1)))


def test_classifier_gradient_flows_to_the_input():
  net = _tiny()
  x = torch.rand(2, 1, 16, 16, requires_grad=True)
  torch.log_softmax(net(x, torch.ones(2)), -1)[:, 3].sum().backward()
  assert x.grad is not None and x.grad.abs().sum() > 0


def test_wrong_input_shapes_give_clear_errors():
  net = _tiny(num_channels=3)
  with pytest.raises(ValueError, match=r'shape \(batch, 3, H, W\)'):
    net(torch.zeros(2, 1, 16, 16), torch.ones(2))
  with pytest.raises(ValueError, match=r'shape \(batch, 3, H, W\)'):
    net(torch.zeros(3, 16, 16), torch.ones(3))


def test_perturbation_has_the_marginal_std():
  sde = sde_lib.VPSDE(0.1, 20., 1000)
  x = torch.full((20000, 1, 2, 2), 0.7)
  x_t, std = classifier_lib.perturb(sde, x, 1e-3, torch.Generator().manual_seed(0))
  # With t ~ U(eps, 1): E[x(t)] = E[a(t)] 0.7, and (x(t) - a 0.7) / std is standard normal.
  a = torch.sqrt(1 - std ** 2).view(-1, 1, 1, 1)
  z = (x_t - a * 0.7) / std.view(-1, 1, 1, 1)
  assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
  assert std.min() >= sde.marginal_prob(x[:1], torch.tensor([1e-3]))[1].item() - 1e-6


def test_classifier_config_rejects_unknown_keys():
  config = load_config('ve/digits_ncsnpp_continuous')
  config.classifier = {'channel_multipler': 2}
  with pytest.raises(ValueError, match='channel_multipler'):
    classifier_config(config)


def _digits_config():
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  config.training.batch_size = 64
  config.optim.lr = 2e-3
  config.optim.warmup = 10
  config.data.num_workers = 0
  config.classifier = dict(blocks_per_group=1, channel_multiplier=1, embedding_size=32,
                           n_iters=120, log_freq=40, eval_freq=120, snapshot_freq=60,
                           snapshot_freq_for_preemption=60, eval_times=(0., 0.3))
  return config


def test_train_classifier_on_digits_beats_chance(tmp_path):
  config = _digits_config()
  result = classifier_lib.train_classifier(config, str(tmp_path))
  history = json.load(open(tmp_path / 'classifier' / 'metrics.json'))
  before, after = history[0]['accuracy'], result['accuracy']
  print(f'digits classifier, 120 steps: test accuracy (EMA) at step 0 {before}, '
        f'at step {result["step"]} {after}')
  assert history[0]['step'] == 0 and result['step'] == 120
  assert after['t=0'] > 0.5, 'clean test digits: chance is 0.1'
  assert after['t=0'] > before['t=0'] + 0.3
  # Checkpoints like the score model's, loadable for sampling.
  for name in ('checkpoints/checkpoint_1.pth', 'checkpoints/checkpoint_2.pth',
               'checkpoints-meta/checkpoint.pth'):
    assert os.path.exists(tmp_path / 'classifier' / name), name
  ckpt = torch.load(tmp_path / 'classifier/checkpoints/checkpoint_2.pth', weights_only=True)
  assert {'optimizer', 'model', 'ema', 'step'} <= set(ckpt) and ckpt['step'] == 121
  classifier = checkpoints.load_classifier(
    config, tmp_path / 'classifier/checkpoints/checkpoint_2.pth')
  import datasets
  _, test_ds, _ = datasets.get_dataset(config, evaluation=True, with_labels=True)
  sde, eps = sde_lib.get_sde(config)
  acc = classifier_lib.accuracy(classifier, sde, test_ds, datasets.get_data_scaler(config), 0.,
                                eps, config.device)
  assert acc == pytest.approx(after['t=0'])


def test_train_classifier_resumes_where_it_stopped(tmp_path):
  config = _digits_config()
  config.classifier.update(n_iters=8, eval_freq=3, snapshot_freq=4,
                           snapshot_freq_for_preemption=4, embedding_size=8)
  straight = classifier_lib.train_classifier(config, str(tmp_path / 'a'))
  # Stop after step 4 (the resume checkpoint then says 5 steps done), then go on to 8.
  config.classifier.n_iters = 4
  classifier_lib.train_classifier(config, str(tmp_path / 'b'))
  # As if the run had gone on to evaluate step 6 and been killed before its next checkpoint.
  metrics = tmp_path / 'b' / 'classifier' / 'metrics.json'
  metrics.write_text(json.dumps(json.loads(metrics.read_text())
                                + [{'step': 6, 'accuracy': {'t=0': -1.}}]))
  config.classifier.n_iters = 8
  resumed = classifier_lib.train_classifier(config, str(tmp_path / 'b'))
  assert resumed['accuracy'] == straight['accuracy']
  steps = [entry['step'] for entry in json.loads(metrics.read_text())]
  assert steps == [0, 3, 4, 6, 8]  # step 6 evaluated once, by the resumed run
  assert json.loads(metrics.read_text())[3] == json.loads(
    (tmp_path / 'a' / 'classifier' / 'metrics.json').read_text())[2]  # a's step 6
  a = torch.load(tmp_path / 'a/classifier/checkpoints-meta/checkpoint.pth', weights_only=True)
  b = torch.load(tmp_path / 'b/classifier/checkpoints-meta/checkpoint.pth', weights_only=True)
  for k in a['model']:
    torch.testing.assert_close(a['model'][k], b['model'][k], rtol=0, atol=0, msg=k)


def test_unlabelled_dataset_is_refused_with_the_reason(tmp_path, monkeypatch):
  """Image folders and CelebA read as label -1: cross-entropy would fail with 'Target -1 is out
  of bounds' (a device-side assert on CUDA)."""
  import datasets
  config = _digits_config()
  get = datasets.DATASETS.get

  def unlabelled(config, train, root, download):
    full = get('DIGITS')(config, train, root, download)
    return datasets.InMemoryImages(full.images, torch.full_like(full.labels, -1))

  monkeypatch.setattr(datasets.DATASETS, 'get',
                      lambda name: unlabelled if name == 'DIGITS' else get(name))
  with pytest.raises(ValueError, match=r'labels -1..-1, not classes 0..9: .*labelled dataset'):
    classifier_lib.train_classifier(config, str(tmp_path))


def test_create_classifier_reads_the_config():
  config = _digits_config()
  net = create_classifier(config)
  assert net.num_channels == 1 and len(net.blocks) == 3 and net.num_classes == 10


def _resumable_config(n_iters=8):
  """Tiny classifier training with a resume checkpoint every 2 steps and evaluations at 0, 3, 6
  and the last step."""
  config = _digits_config()
  config.classifier.update(n_iters=n_iters, eval_freq=3, snapshot_freq=4,
                           snapshot_freq_for_preemption=2, embedding_size=8)
  return config


def _resume_checkpoint(run):
  return torch.load(run / 'classifier' / 'checkpoints-meta' / 'checkpoint.pth', weights_only=True)


def _assert_identical(a, b, where='checkpoint'):
  """Two checkpoints (nested dicts, lists, tensors, numbers) equal to the bit."""
  if torch.is_tensor(a):
    assert torch.is_tensor(b) and torch.equal(a, b), where
  elif isinstance(a, dict):
    assert a.keys() == b.keys(), where
    for key in a:
      _assert_identical(a[key], b[key], f'{where}.{key}')
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_identical(x, y, f'{where}[{i}]')
  else:
    assert a == b, where


@pytest.mark.slow
def test_sigkilled_classifier_resumes_to_the_uninterrupted_run(tmp_path):
  """The classifier trains in the score model's loop (train_loop): killed mid-write of a resume
  checkpoint and resumed, it ends with the weights, EMA, optimizer, RNG states and metrics of the
  run that never stopped."""
  from test_train import python_command
  classifier_lib.train_classifier(_resumable_config(), str(tmp_path / 'whole'))
  cmd, env = python_command('test_classifier, classifier_lib', 'classifier_lib.train_classifier('
                            f'test_classifier._resumable_config(), {str(tmp_path / "killed")!r})',
                            kill_at_meta_save=3)
  proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  assert _resume_checkpoint(tmp_path / 'killed')['step'] == 5  # after step 4; step 6's was cut
  classifier_lib.train_classifier(_resumable_config(), str(tmp_path / 'killed'))
  log = (tmp_path / 'killed' / 'classifier' / 'stdout.txt').read_text()
  assert 'Starting classifier training loop at step 5' in log

  whole, resumed = (_resume_checkpoint(tmp_path / run) for run in ('whole', 'killed'))
  assert whole['step'] == resumed['step'] == 9
  _assert_identical(whole, resumed)  # weights, EMA, optimizer and every RNG state
  metrics = [json.loads((tmp_path / run / 'classifier' / 'metrics.json').read_text())
             for run in ('whole', 'killed')]
  assert metrics[0] == metrics[1] and [m['step'] for m in metrics[0]] == [0, 3, 6, 8]


def test_classifier_checkpoint_with_the_noise_state_only_resumes(tmp_path):
  """Checkpoints written before the shared loop hold the loss noise's state as 'noise_rng' and no
  other RNG state; resuming one continues the noise (the classifier draws from nothing else)."""
  classifier_lib.train_classifier(_resumable_config(6), str(tmp_path / 'a'))
  classifier_lib.train_classifier(_resumable_config(3), str(tmp_path / 'b'))
  path = tmp_path / 'b' / 'classifier' / 'checkpoints-meta' / 'checkpoint.pth'
  old = _resume_checkpoint(tmp_path / 'b')
  old['noise_rng'] = old.pop('rng')[0]['noise']
  torch.save(old, path)
  classifier_lib.train_classifier(_resumable_config(6), str(tmp_path / 'b'))
  a, b = _resume_checkpoint(tmp_path / 'a'), _resume_checkpoint(tmp_path / 'b')
  assert b['step'] == 7 and 'noise_rng' not in b
  _assert_identical(a, b)
