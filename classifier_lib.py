"""Training of the noise-conditional classifier p_t(y | x(t)) used for class-conditional sampling
(Song et al. 2021, App. I.4): `train_classifier(config, workdir)` (main.py --mode train_classifier).

The classifier (`models.wideresnet.WideResNet`) is trained with cross-entropy on data perturbed by
the same SDE as the score model: t ~ U(eps, T), x(t) = mean(x(0), t) + std(t) z, and it sees
x(t) with std(t). Under the same workdir as the score model it writes

  classifier/checkpoints/checkpoint_N.pth     snapshots every classifier.snapshot_freq steps and
                                              at the last step ({optimizer, model, ema, step,
                                              architecture: the WideResNet arguments, rng})
  classifier/checkpoints-meta/checkpoint.pth  the resume checkpoint (a stopped run continues)
  classifier/metrics.json                     accuracy of the EMA weights on the test split per
                                              noise level, at every evaluation
  classifier/stdout.txt, tensorboard/         logs (classifier_loss, lr, grad_norm, accuracies)

The loop (seeding, resuming with every RNG state, logging, checkpoints) is `train_loop`'s, as for
the score model; checkpoints written before it, with the loss noise's state alone ('noise_rng'),
still resume.

Settings come from `config.classifier` (`models.wideresnet.classifier_config` fills what a
config leaves out from the defaults, and loop settings left None from config.training); the optimizer, data, SDE and seed are the score model's (config.optim, config.data,
config.training.sde, config.seed).
"""
import json
import logging
import os
import typing

import torch
import torch.nn.functional as F

import datasets
import losses
import sde_lib
import train_loop
from checkpoints import build_classifier_state
from models.wideresnet import classifier_config
from seeds import CLASSIFIER_EVAL, derive_seed
from workdir import Layout, write_json_atomic

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


def _evaluate(model, ema, sde, test_ds, scaler, cc, eps, device, generator):
  """Test accuracy of the EMA weights at each of cc.eval_times."""
  with ema.averaged(model.parameters()):
    return {f't={t:g}': accuracy(model, sde, test_ds, scaler, t, eps, device, generator)
            for t in cc.eval_times}


class _Labelled(typing.NamedTuple):
  """A batch for `losses.StepFn`, which runs the loss under autocast on the batch's device."""
  images: torch.Tensor
  labels: torch.Tensor

  @property
  def device(self):
    return self.images.device


class ClassifierTrainer(train_loop.Trainer):
  """The classifier's part of `train_loop.run`: classifier_config(config)'s schedule (with an
  evaluation at the last step too), cross-entropy on perturbed labelled data, the EMA weights'
  test accuracy per noise level (classifier/metrics.json). One process: not under torchrun."""
  name = 'classifier training'
  mode = 'train_classifier'
  loss_name = 'classifier_loss'
  distributed = False

  def __init__(self, config, workdir):
    self.cc = classifier_config(config)
    super().__init__(config, Layout(workdir).classifier,
                     train_loop.Schedule.of(self.cc, eval_at_end=True))
    self.metrics_path = os.path.join(self.layout.root, 'metrics.json')

  def build_state(self):
    return build_classifier_state(self.config)

  def start(self, state, run):
    config = self.config
    self.model, self.device = run.model, torch.device(config.device)
    train_ds, _, _ = datasets.get_dataset(
      config, uniform_dequantization=config.data.uniform_dequantization, with_labels=True)
    # One pass over the test split per evaluation, in its fixed order.
    _, self.test_ds, _ = datasets.get_dataset(config, evaluation=True, with_labels=True)
    self.train_iter = train_ds.iterate(run.initial_step)
    self.scaler = datasets.get_data_scaler(config)
    self.sde, self.eps = sde_lib.get_sde(config)

    def loss_fn(model, batch, generator=None, shard=None):
      model.train()
      return classifier_loss(model, self.sde, *batch, self.eps, generator)
    self.train_step = losses.StepFn(loss_fn, train=True, generator=run.noise_generator,
                                    optimize_fn=losses.optimization_manager(config))
    self.history = []
    if os.path.exists(self.metrics_path) and run.initial_step:
      with open(self.metrics_path) as f:  # evaluations after the resume point are run again
        self.history = [entry for entry in json.load(f) if entry['step'] < run.initial_step]

  def step(self, state, step):
    images, labels = next(self.train_iter)
    num_classes = self.config.data.get('num_classes', 10)
    if labels.min() < 0 or labels.max() >= num_classes:  # on the CPU: no device sync
      raise ValueError(f'{self.config.data.dataset} gives labels {labels.min().item()}..'
                       f'{labels.max().item()}, not classes 0..{num_classes - 1}: a classifier '
                       'for conditional generation needs a labelled dataset (CIFAR10, SVHN, '
                       'DIGITS; image folders and CelebA have no class labels here), with '
                       'config.data.num_classes set to its class count.')
    return self.train_step(state, _Labelled(self.scaler(images.to(self.device)),
                                            labels.to(self.device)))

  def scalars(self, state):
    return {'grad_norm': float(self.train_step.grad_norm)}

  def evaluate(self, state, step):
    # Its own fixed noise: evaluating neither perturbs training nor varies between evaluations.
    noise = torch.Generator(device=self.device).manual_seed(
      derive_seed(self.config.seed, CLASSIFIER_EVAL))
    acc = _evaluate(self.model, state['ema'], self.sde, self.test_ds, self.scaler, self.cc,
                    self.eps, self.device, noise)
    self.history.append({'step': step, 'accuracy': acc})
    logging.info('step: %d, test accuracy (EMA) %s', step,
                 ', '.join(f'{k}: {v:.3f}' for k, v in acc.items()))
    write_json_atomic(self.metrics_path, self.history, indent=1)  # a kill mid-write keeps resume
    return {f'test_accuracy/{k}': v for k, v in acc.items()}

  def result(self, state):
    return self.history[-1] if self.history else None


def train_classifier(config, workdir):
  """Train the noise-conditional classifier of `config` under workdir/classifier (resumable, with
  every RNG state: a run killed and resumed ends with the weights of one that never stopped).

  Returns:
    {'step': last step, 'accuracy': {'t=0': ..., ...}} of the EMA weights on the test split.
  """
  return train_loop.run(config, ClassifierTrainer(config, workdir))
