"""Training of the noise-conditional classifier p_t(y | x(t)) used for class-conditional sampling
(Song et al. 2021, App. I.4): `train_classifier(config, workdir)` (main.py --mode train_classifier).

The classifier (`models.wideresnet.WideResNet`) is trained with cross-entropy on data perturbed by
the same SDE as the score model: t ~ U(eps, T), x(t) = mean(x(0), t) + std(t) z, and it sees
x(t) with std(t). Under the same workdir as the score model it writes

  classifier/checkpoints/checkpoint_N.pth     snapshots every classifier.snapshot_freq steps and
                                              at the last step ({optimizer, model, ema, step,
                                              architecture: the WideResNet arguments})
  classifier/checkpoints-meta/checkpoint.pth  the resume checkpoint (a stopped run continues)
  classifier/metrics.json                     accuracy of the EMA weights on the test split per
                                              noise level, at every evaluation
  classifier/stdout.txt                       the log

Settings come from `config.classifier` where a config defines it, else `CLASSIFIER_DEFAULTS`;
the optimizer, data, SDE and seed are the score model's (config.optim, config.data,
config.training.sde, config.seed).
"""
import json
import logging
import os

import ml_collections
import torch
import torch.nn.functional as F

import datasets
import losses
import sde_lib
from seeds import TRAINING_NOISE, derive_seed
from models.ema import ExponentialMovingAverage
from models.wideresnet import WideResNet
from utils import load_checkpoint_file, restore_checkpoint, save_checkpoint, write_json_atomic

# config.classifier keys. Architecture: the JAX original's WRN-28-10. Loop: like config.training.
CLASSIFIER_DEFAULTS = dict(
  blocks_per_group=4,       # residual blocks per group (depth 6 * blocks_per_group + 4)
  channel_multiplier=10,    # widths 16k, 32k, 64k
  embedding_size=128,       # Gaussian Fourier features of log(sigma) (x2 for sin and cos)
  fourier_scale=16.,        # std of the Fourier frequencies
  ema_rate=0.999,           # EMA of the weights (what sampling uses)
  n_iters=None,             # training steps; None: config.training.n_iters
  log_freq=None,            # None: config.training.log_freq
  eval_freq=None,           # steps between test accuracies; None: config.training.eval_freq
  snapshot_freq=None,       # None: config.training.snapshot_freq
  snapshot_freq_for_preemption=None,  # None: config.training.snapshot_freq_for_preemption
  eval_times=(0., 0.25, 0.5),  # t of the reported accuracies (0 means eps: clean data)
)


def classifier_config(config):
  """config.classifier with every key of CLASSIFIER_DEFAULTS filled in (a new ConfigDict)."""
  given = config.get('classifier', None)
  given = given.to_dict() if isinstance(given, ml_collections.ConfigDict) else dict(given or {})
  unknown = sorted(set(given) - set(CLASSIFIER_DEFAULTS))
  if unknown:
    raise ValueError(f'Unknown config.classifier keys {unknown}; known: '
                     f'{", ".join(sorted(CLASSIFIER_DEFAULTS))}.')
  merged = dict(CLASSIFIER_DEFAULTS, **given)
  for key in ('n_iters', 'log_freq', 'eval_freq', 'snapshot_freq', 'snapshot_freq_for_preemption'):
    if merged[key] is None:
      merged[key] = config.training[key]
  return ml_collections.ConfigDict(merged)


def perturb(sde, x, eps, generator=None):
  """x(t) for t ~ U(eps, T) per example. Returns (x(t), std(t) (B,))."""
  t = torch.rand(x.shape[0], generator=generator, device=x.device) * (sde.T - eps) + eps
  mean, std = sde.marginal_prob(x, t)
  z = torch.randn(x.shape, generator=generator, device=x.device)
  return mean + std.view(-1, *[1] * (x.ndim - 1)) * z, std


def classifier_loss(classifier, sde, images, labels, eps, generator=None):
  """Cross-entropy of the classifier on images perturbed to a random time (mean over batch)."""
  x_t, std = perturb(sde, images, eps, generator)
  return F.cross_entropy(classifier(x_t, std), labels)


@torch.no_grad()
def accuracy(classifier, sde, batches, scaler, t, eps, device, generator=None):
  """Fraction of `batches` ((images in [0, 1], labels) pairs) classified right at time t. The
  batches are whole (datasets.ImageBatches drops the remainder, as evaluation does): CIFAR-10's
  test split in batches of 1,024 scores 9,216 of its 10,000 images.

  t = 0 (or anything <= eps) feeds the clean images with the smallest noise level std(eps).
  """
  classifier.eval()
  right = total = 0
  for images, labels in batches:
    x = scaler(images.to(device))
    labels = labels.to(device)
    t_vec = torch.full((x.shape[0],), max(float(t), eps), device=device)
    mean, std = sde.marginal_prob(x, t_vec)
    if t > eps:
      z = torch.randn(x.shape, generator=generator, device=device)
      x = mean + std.view(-1, 1, 1, 1) * z
    right += (classifier(x, std).argmax(-1) == labels).sum().item()
    total += len(labels)
  return right / total


def _setup_logging(path):
  logger = logging.getLogger()
  path = os.path.abspath(path)
  if not any(getattr(h, 'baseFilename', None) == path for h in logger.handlers):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter('%(levelname)s - %(asctime)s - %(message)s'))
    logger.addHandler(handler)
  logger.setLevel(logging.INFO)


ARCHITECTURE_KEYS = ('blocks_per_group', 'channel_multiplier', 'embedding_size', 'fourier_scale')


def architecture(config):
  """The classifier's constructor arguments under `config` (saved in its checkpoints)."""
  cc = classifier_config(config)
  arch = {k: cc[k] for k in ARCHITECTURE_KEYS}
  arch.update(num_classes=config.data.get('num_classes', 10), num_channels=config.data.num_channels)
  return arch


def create_classifier(config, arch=None):
  """The noise-conditional classifier of `config` (or of `arch`, see `architecture`) on
  config.device."""
  return WideResNet(**(arch or architecture(config))).to(config.device)


def build_classifier_state(config, arch=None):
  """Classifier, its EMA and optimizer (config.optim), as a checkpointable state dict."""
  classifier = create_classifier(config, arch)
  ema = ExponentialMovingAverage(classifier.parameters(), decay=classifier_config(config).ema_rate)
  optimizer = losses.get_optimizer(config, classifier.parameters())
  return dict(optimizer=optimizer, model=classifier, ema=ema, step=0,
              architecture=arch or architecture(config))


def load_classifier(config, ckpt_path, use_ema=True):
  """The classifier of a checkpoint written by `train_classifier`, in eval mode on config.device.

  The architecture is the one saved in the checkpoint, so config.classifier need not repeat it.
  """
  arch = load_checkpoint_file(ckpt_path, 'cpu').get('architecture')
  state = build_classifier_state(config, arch)
  state['optimizer'] = None
  restore_checkpoint(ckpt_path, state, config.device)
  if use_ema:
    state['ema'].copy_to(state['model'].parameters())
  return state['model'].eval()


def _evaluate(state, sde, test_ds, scaler, cc, eps, device, generator):
  """Test accuracy of the EMA weights at each of cc.eval_times."""
  model, ema = state['model'], state['ema']
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  try:
    return {f't={t:g}': accuracy(model, sde, test_ds, scaler, t, eps, device, generator)
            for t in cc.eval_times}
  finally:
    ema.restore(model.parameters())


def train_classifier(config, workdir):
  """Train the noise-conditional classifier of `config` under workdir/classifier (resumable).

  Returns:
    {'step': last step, 'accuracy': {'t=0': ..., ...}} of the EMA weights on the test split.
  """
  cc = classifier_config(config)
  root = os.path.join(workdir, 'classifier')
  ckpt_dir = os.path.join(root, 'checkpoints')
  meta_path = os.path.join(root, 'checkpoints-meta', 'checkpoint.pth')
  for d in (ckpt_dir, os.path.dirname(meta_path)):
    os.makedirs(d, exist_ok=True)
  _setup_logging(os.path.join(root, 'stdout.txt'))
  device = torch.device(config.device)

  torch.manual_seed(config.seed)
  state = build_classifier_state(config)
  noise = torch.Generator(device=device).manual_seed(derive_seed(config.seed, TRAINING_NOISE))
  if os.path.exists(meta_path):
    restore_checkpoint(meta_path, state, device)
    if 'noise_rng' in state:
      noise.set_state(state.pop('noise_rng'))
  initial_step = int(state['step'])

  train_ds, _, _ = datasets.get_dataset(
    config, uniform_dequantization=config.data.uniform_dequantization, with_labels=True)
  # One pass over the test split per evaluation, in its fixed order.
  _, test_ds, _ = datasets.get_dataset(config, evaluation=True, with_labels=True)
  train_iter = train_ds.iterate(initial_step)
  scaler = datasets.get_data_scaler(config)
  sde, eps = sde_lib.get_sde(config)
  optimize_fn = losses.optimization_manager(config)
  classifier, optimizer, ema = state['model'], state['optimizer'], state['ema']
  metrics_path = os.path.join(root, 'metrics.json')
  history = []
  if os.path.exists(metrics_path) and initial_step:
    with open(metrics_path) as f:  # evaluations after the resume point are run again
      history = [entry for entry in json.load(f) if entry['step'] < initial_step]

  def snapshot(path, steps_done):
    state['step'] = steps_done  # as score_sde's state['step']: optimizer steps taken
    save_checkpoint(path, dict(state, noise_rng=noise.get_state()))

  logging.info('Training the classifier from step %d to %d.', initial_step, cc.n_iters)
  result = history[-1] if history else None
  num_classes = config.data.get('num_classes', 10)
  for step in range(initial_step, cc.n_iters + 1):
    images, labels = next(train_iter)
    if labels.min() < 0 or labels.max() >= num_classes:  # on the CPU: no device sync
      raise ValueError(f'{config.data.dataset} gives labels {labels.min().item()}..'
                       f'{labels.max().item()}, not classes 0..{num_classes - 1}: a classifier '
                       'for conditional generation needs a labelled dataset (CIFAR10, SVHN, '
                       'DIGITS; image folders and CelebA have no class labels here), with '
                       'config.data.num_classes set to its class count.')
    images, labels = scaler(images.to(device)), labels.to(device)
    classifier.train()
    optimizer.zero_grad(set_to_none=True)
    loss = classifier_loss(classifier, sde, images, labels, eps, noise)
    loss.backward()
    optimize_fn(optimizer, classifier.parameters(), step=step)
    ema.update(classifier.parameters())
    if not torch.isfinite(loss):
      raise FloatingPointError(f'Classifier loss is {loss.item()} at step {step}; lower optim.lr.')
    if step % cc.log_freq == 0:
      logging.info('step: %d, classifier_loss: %.5e', step, loss.item())
    if step % cc.eval_freq == 0 or step == cc.n_iters:
      # Its own fixed noise: evaluating neither perturbs training nor varies between evaluations.
      eval_noise = torch.Generator(device=device).manual_seed(config.seed + 1)
      acc = _evaluate(state, sde, test_ds, scaler, cc, eps, device, eval_noise)
      result = {'step': step, 'accuracy': acc}
      history.append(result)
      logging.info('step: %d, test accuracy (EMA) %s', step,
                   ', '.join(f'{k}: {v:.3f}' for k, v in acc.items()))
      write_json_atomic(metrics_path, history, indent=1)  # a kill mid-write must not break resume
    if (step != 0 and step % cc.snapshot_freq == 0) or step == cc.n_iters:
      snapshot(os.path.join(ckpt_dir, f'checkpoint_{step // cc.snapshot_freq}.pth'), step + 1)
    if (step != 0 and step % cc.snapshot_freq_for_preemption == 0) or step == cc.n_iters:
      snapshot(meta_path, step + 1)
  return result
