"""What `--mode sample` draws (config.sample.task): 'generate', 'inpaint', 'colorize' or
'conditional', each a class built with (config, workdir, sde, eps) before the checkpoint is
loaded, so that a bad sampler name or a missing input fails before any work. Each offers

  draw(model, seeds, generators) -> (images in [0, 1] (B, C, H, W), network evaluations)
  settings()       the task's config.sample entries (recorded in meta.json, resolved)
  describe()       the sampler, for the log
  previews(seeds)  {file name: uint8 (N, H, W, C)} written next to grid.png

Image k of an inverse problem uses input image k mod the number of inputs, and the random mask
of image k its own generator, so that image k depends only on (config.seed, k).
"""
import pathlib

import torch

import controllable_generation as cg
import datasets
import precision
import sampling
from checkpoints import latest_checkpoint, load_classifier
from datasets import to_uint8
from models.utils import ScoreModel
from seeds import INPUT_MASK, derive_seed
from workdir import Layout

MASKS = ('center', 'right', 'random')


def make_mask(kind, shape, generator=None):
  """A 0/1 mask (1 = known) of `shape` (B, C, H, W): the centre square of half the side hidden,
  the right half hidden, or half of the pixels hidden at random (same over channels)."""
  b, _, h, w = shape
  mask = torch.ones(b, 1, h, w)
  if kind == 'center':
    mask[:, :, h // 4:h - h // 4, w // 4:w - w // 4] = 0.
  elif kind == 'right':
    mask[:, :, :, w // 2:] = 0.
  elif kind == 'random':
    mask = (torch.rand(b, 1, h, w, generator=generator) < 0.5).float()
  else:
    raise ValueError(f'Unknown mask {kind!r}; use {", ".join(MASKS)}.')
  return mask.expand(shape).contiguous()


def _shape(config, batch):
  return (batch, config.data.num_channels, config.data.image_size, config.data.image_size)


def _count_calls(task, model, run):
  """run(score_model) with `model` as the task's sampler calls it (a `ScoreModel` over the
  prepared network), and the number of network evaluations it made (the ScoreModel's count)."""
  score_model = ScoreModel(task.sde, task.network(model), continuous=task.options['continuous'])
  return run(score_model), score_model.nfe


class Task:
  """What the tasks share: the config, SDE and eps, no extra settings and no previews."""

  def __init__(self, config, workdir, sde, eps):
    self.config, self.sde, self.eps = config, sde, eps

  def settings(self):
    return {}

  def previews(self, seeds):
    return {}


class Generate(Task):
  """Unconditional samples from the sampler config.sampling.method selects."""

  def __init__(self, config, workdir, sde, eps):
    super().__init__(config, workdir, sde, eps)
    self._samplers = {}  # batch size -> sampler (the last batch may be smaller)
    self._sampler(config.sample.batch_size)  # an unknown sampler or option fails here

  def _sampler(self, batch):
    if batch not in self._samplers:
      self._samplers[batch] = sampling.get_sampling_fn(
        self.config, self.sde, _shape(self.config, batch),
        datasets.get_data_inverse_scaler(self.config), self.eps)
    return self._samplers[batch]

  def draw(self, model, seeds, generators):
    return self._sampler(len(seeds))(model, generator=generators)

  def describe(self):
    s = self.config.sampling
    if s.method == 'pc':
      return f'pc ({s.predictor} + {s.corrector}, {self.sde.N} steps)'
    if s.method == 'ode':
      return f'ode ({s.ode_method})'
    return f'{s.method} ({s.num_steps} steps)'


class _Controllable(Task):
  """The PC samplers of controllable_generation, with config.sampling's predictor, corrector,
  snr, n_steps_each, probability_flow and noise_removal."""

  def __init__(self, config, workdir, sde, eps):
    super().__init__(config, workdir, sde, eps)
    s = config.sampling
    if s.method.lower() != 'pc':
      raise ValueError(f'config.sample.task={config.sample.task!r} samples with the PC sampler; '
                       f'config.sampling.method is {s.method!r}: pass --config.sampling.method=pc.')
    self.options = dict(predictor=sampling.get_predictor(s.predictor.lower()),
                        corrector=sampling.get_corrector(s.corrector.lower()),
                        inverse_scaler=datasets.get_data_inverse_scaler(config), snr=s.snr,
                        n_steps=s.n_steps_each, probability_flow=s.probability_flow,
                        continuous=config.training.continuous, denoise=s.noise_removal, eps=eps)
    self.scaler = datasets.get_data_scaler(config)
    # config.sampling.precision / compile / channels_last, as get_sampling_fn applies them.
    self.network = precision.sampling_model_fn(config) or (lambda model: model)


class InputImages:
  """The images to inpaint or colorize: every image of the folder config.sample.input (sorted,
  centre-cropped to a square and resized), or else the eval split of config.data."""

  def __init__(self, config):
    self.config = config
    folder = config.sample.input
    if folder:
      path = pathlib.Path(folder).expanduser().resolve()
      if not path.is_dir():
        raise FileNotFoundError(f'config.sample.input={folder!r} is not a folder of images.')
      transform = datasets.pil_transform(config.data.image_size, crop='square')
      self.images, self.source = datasets.ImageFolderFlat(path, transform), str(path)
    else:
      self.images = datasets.split_images(config, False)
      self.source = f'{config.data.dataset} eval split'
    if len(self.images) == 0:
      raise FileNotFoundError(f'{self.source} holds no images.')

  def batch(self, seeds):
    """Input image k mod count for each seed k, float (B, C, H, W) in [0, 1] on the CPU."""
    x = torch.stack([self.images[k % len(self.images)][0] for k in seeds]).float() / 255.
    channels = self.config.data.num_channels
    if x.shape[1] != channels:  # folders are read as RGB
      x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    return x


class _InverseProblem(_Controllable):
  """A task on input images: `shown(x, seeds)` is what the sampler is given of them."""

  def __init__(self, config, workdir, sde, eps):
    super().__init__(config, workdir, sde, eps)
    self.inputs = InputImages(config)

  def settings(self):
    return dict(input=self.inputs.source)

  def previews(self, seeds):
    x = self.inputs.batch(seeds)
    return {'inputs.png': to_uint8(x), 'masked.png': to_uint8(self.shown(x, seeds))}


class Inpaint(_InverseProblem):
  """Fill in the part of each input hidden by config.sample.mask (paper, App. I.2)."""

  def __init__(self, config, workdir, sde, eps):
    if config.sample.mask not in MASKS:
      raise ValueError(f'Unknown config.sample.mask {config.sample.mask!r}; use '
                       f'{", ".join(MASKS)}.')
    super().__init__(config, workdir, sde, eps)
    self.inpainter = cg.get_pc_inpainter(sde, **self.options)

  def _masks(self, seeds):
    shape = _shape(self.config, 1)
    return torch.cat([make_mask(self.config.sample.mask, shape,
                                torch.Generator().manual_seed(derive_seed(self.config.seed, INPUT_MASK, k)))
                      for k in seeds])

  def settings(self):
    return dict(super().settings(), mask=self.config.sample.mask)

  def shown(self, x, seeds):
    mask = self._masks(seeds)
    return x * mask + 0.5 * (1 - mask)  # hidden pixels mid-gray

  def draw(self, model, seeds, generators):
    device = self.config.device
    data = self.scaler(self.inputs.batch(seeds).to(device))
    mask = self._masks(seeds).to(device)
    return _count_calls(self, model, lambda score_model: self.inpainter(
      score_model, data, mask, generator=generators))

  def describe(self):
    return f'PC inpainting of {self.inputs.source}, mask {self.config.sample.mask}'


class Colorize(_InverseProblem):
  """Colour the gray version of each input (paper, App. I.3); RGB data only."""

  def __init__(self, config, workdir, sde, eps):
    if config.data.num_channels != 3:
      raise ValueError(f'Colorization needs RGB data; {config.data.dataset} has '
                       f'{config.data.num_channels} channel(s).')
    super().__init__(config, workdir, sde, eps)
    self.colorizer = cg.get_pc_colorizer(sde, **self.options)

  def shown(self, x, seeds):
    return x.mean(1, keepdim=True).expand(-1, 3, -1, -1)

  def draw(self, model, seeds, generators):
    gray = self.scaler(self.shown(self.inputs.batch(seeds), seeds).to(self.config.device))
    return _count_calls(self, model, lambda score_model: self.colorizer(
      score_model, gray, generator=generators))

  def describe(self):
    return f'PC colorization of {self.inputs.source}'


class Conditional(_Controllable):
  """Class-conditional samples with a noise-conditional classifier (paper, App. I.4): class
  config.sample.class_label, or seed k mod the number of classes when it is -1."""

  def __init__(self, config, workdir, sde, eps):
    super().__init__(config, workdir, sde, eps)
    folder = pathlib.Path(Layout(str(workdir)).classifier.snapshots)
    path = config.sample.classifier_ckpt or latest_checkpoint(folder)
    if not path:
      raise FileNotFoundError(f'Conditional sampling needs a classifier, and {folder} holds none: '
                              'train one with --mode train_classifier, or pass '
                              '--config.sample.classifier_ckpt=/path/to/checkpoint.pth.')
    self.classifier_path = pathlib.Path(path).expanduser().resolve()
    self.classifier = load_classifier(config, self.classifier_path)
    self.num_classes, label = self.classifier.num_classes, config.sample.class_label
    if not -1 <= label < self.num_classes:
      raise ValueError(f'config.sample.class_label is {label}; the classifier has '
                       f'{self.num_classes} classes (0 .. {self.num_classes - 1}; -1 cycles them).')

  def labels(self, seeds):
    label = self.config.sample.class_label
    return [k % self.num_classes if label == -1 else label for k in seeds]

  def draw(self, model, seeds, generators):
    labels = torch.tensor(self.labels(seeds), device=self.config.device)
    shape = _shape(self.config, len(seeds))
    return _count_calls(self, model, lambda score_model: cg.get_pc_conditional_sampler(
      self.sde, score_model, self.classifier, shape, **self.options)(labels, generator=generators))

  def settings(self):
    return dict(classifier_ckpt=str(self.classifier_path), num_classes=self.num_classes,
                class_label=self.config.sample.class_label)

  def describe(self):
    return f'PC class-conditional sampling, classifier {self.classifier_path}'


TASKS = {'generate': Generate, 'inpaint': Inpaint, 'colorize': Colorize, 'conditional': Conditional}
