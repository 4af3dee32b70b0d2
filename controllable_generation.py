"""Controllable generation with an unconditional score model (Song et al. 2021, Sec. 5, App. I):
inpainting, colorization and class-conditional sampling with Predictor-Corrector samplers.

Inpainting and colorization are imputation (App. I.2): after every predictor and every corrector
step the known part of x is replaced by a fresh draw from the forward marginal
p_{0t}(x(t) | known data) (`sde.marginal_prob`), so only the unknown part is generated.
Colorization is inpainting in an orthonormal basis whose first axis is the gray level (App. I.3).

Class-conditional sampling solves the conditional reverse SDE (Eq. 14, App. I.4): the score
grad_x log p_t(x) is replaced by grad_x log p_t(x) + grad_x log p_t(y | x), the second term from a
noise-conditional classifier, at every predictor and corrector step.

Signatures follow score_sde_pytorch (and the JAX score_sde for the conditional sampler). Every
`generator=` takes one torch.Generator or a list of B of them, example b's noise then coming from
generator b alone (`sde_lib.randn`; `main.py --mode sample` draws this way).
Deliberate fixes over the PyTorch reference, each covered by tests/test_controllable_generation.py:
  * the denoised output (`denoise=True`) really is the noise-free mean in the unknown region (the
    reference built `x_mean` from the noisy `x`, so denoising never reached the unknown pixels);
  * the returned images hold the given data exactly in the known region / gray channel (the
    reference left the marginal mean at t = eps there, a(eps) * data for VP);
  * the colorizer's first sample draws the unknown channels in the decoupled basis (the reference
    masked the prior noise in RGB space before decoupling).
"""
import math

import torch
import torch.nn.functional as F

import sampling
import sde_lib
from models import utils as mutils


def _predictor_class(predictor):
  """A predictor class, a registered name ('reverse_diffusion', ...) or None (no predictor)."""
  if predictor is None:
    return sampling.get_predictor('none')
  return sampling.get_predictor(predictor) if isinstance(predictor, str) else predictor


def _corrector_class(corrector):
  """A corrector class, a registered name ('langevin', ...) or None (no corrector)."""
  if corrector is None:
    return sampling.get_corrector('none')
  return sampling.get_corrector(corrector) if isinstance(corrector, str) else corrector


def _imputation(sde, known, mask, encode, decode, generator):
  """`pc_loop`'s projection for PC sampling with the masked part of `encode(x)` held to the
  forward marginal of `known`: after each step the known part of x becomes a fresh draw of
  p_0t(x(t) | known), and that of x_mean the marginal mean.

  Args:
    known: data in the encoded basis (B, C, H, W); only its masked part is used.
    mask: 0/1 tensor broadcastable to `known`, 1 = known (in the encoded basis).
    encode, decode: an orthonormal change of basis and its inverse (identity for inpainting).
  Returns:
    project(x, x_mean, t (B,)) -> (x, x_mean).
  """
  unknown = 1. - mask

  def project(x, x_mean, t):
    known_mean, std = sde.marginal_prob(known, t)
    noise = sde_lib.randn(known.shape, generator, device=known.device, dtype=known.dtype)
    known_t = known_mean + sde_lib.bcast(std, known) * noise
    return (decode(encode(x) * unknown + known_t * mask),
            decode(encode(x_mean) * unknown + known_mean * mask))

  return project


def _pc_options(predictor, corrector, snr, n_steps, probability_flow, eps):
  """`sampling.pc_loop`'s keyword arguments; predictor and corrector may be names or None."""
  return dict(predictor=_predictor_class(predictor), corrector=_corrector_class(corrector),
              snr=snr, n_steps=n_steps, probability_flow=probability_flow, eps=eps)


def _impute(sde, score_model, known, mask, encode, decode, denoise, generator, pc_options):
  """PC sampling (`sampling.pc_loop` with `pc_options`) with the masked part of `encode(x)`
  imputed (`_imputation`), from the prior in the unknown part.

  Returns:
    The sample (x_mean if `denoise`, else x) with the known part equal to `known` exactly.
  """
  unknown = 1. - mask
  prior = sde_lib.prior_draw(sde, known.shape, known.device, generator)
  x = decode(known * mask + encode(prior) * unknown)
  x, x_mean = sampling.pc_loop(sde, score_model, x=x, generator=generator,
                               project=_imputation(sde, known, mask, encode, decode, generator),
                               **pc_options)
  return decode(encode(x_mean if denoise else x) * unknown + known * mask)


def _check_mask(data, mask):
  if not torch.is_tensor(data) or data.ndim != 4:
    raise ValueError(f'data must be a (batch, channels, height, width) tensor; got shape '
                     f'{tuple(getattr(data, "shape", ()))}.')
  if not torch.is_tensor(mask) or mask.ndim != 4 or any(
      m not in (1, d) for m, d in zip(mask.shape, data.shape)):
    raise ValueError(f'mask of shape {tuple(getattr(mask, "shape", ()))} does not match data of '
                     f'shape {tuple(data.shape)}: give a 0/1 mask of the same shape (size-1 '
                     f'dimensions broadcast), 1 marking known pixels.')
  if not bool(((mask == 0) | (mask == 1)).all()):
    raise ValueError('mask must hold only 0 (pixel to generate) and 1 (known pixel).')


def get_pc_inpainter(sde, predictor, corrector, inverse_scaler, snr,
                     n_steps=1, probability_flow=False, continuous=False,
                     denoise=True, eps=1e-5):
  """Build an inpainting function by PC sampling with imputation (App. I.2).

  Args:
    sde: an `sde_lib.SDE`.
    predictor: a `sampling.Predictor` subclass, its registered name, or None.
    corrector: a `sampling.Corrector` subclass, its registered name, or None.
    inverse_scaler: maps model space back to data space (e.g. [-1, 1] -> [0, 1]).
    snr: signal-to-noise ratio of the corrector.
    n_steps: corrector steps per predictor step.
    probability_flow: the predictor integrates the probability-flow ODE.
    continuous: the score model was trained on continuous time.
    denoise: return the last noise-free mean instead of the last noisy sample.
    eps: the last time of the reverse process.
  Returns:
    inpainter(model, data, mask, generator=None): model the network or a
    `models.utils.ScoreModel`; data (B, C, H, W) in model space, mask a 0/1
    tensor of data's shape (size-1 dims broadcast), 1 = known. Returns inverse_scaler(images)
    whose known pixels equal data's.
  """
  pc_options = _pc_options(predictor, corrector, snr, n_steps, probability_flow, eps)

  def identity(x):
    return x

  def inpainter(model, data, mask, generator=None):
    _check_mask(data, mask)
    mask = mask.to(device=data.device, dtype=data.dtype)
    score_model = mutils.ScoreModel.of(sde, model, continuous=continuous)
    with torch.no_grad():
      x = _impute(sde, score_model, data, mask, identity, identity, denoise, generator,
                  pc_options)
      return inverse_scaler(x)

  return inpainter


def gray_basis(dtype=torch.float32, device=None):
  """The orthonormal 3x3 matrix M whose first column is the gray axis (1, 1, 1) / sqrt(3).

  `x @ M` (over channels) decouples an RGB image: channel 0 becomes sqrt(3) * gray level, channels
  1 and 2 carry the colour. The paper's M up to float32 rounding; exactly orthonormal here, so
  M^T is its inverse.
  """
  s2, s3, s6 = math.sqrt(2.), math.sqrt(3.), math.sqrt(6.)
  return torch.tensor([[1 / s3, -2 / s6, 0.],
                       [1 / s3, 1 / s6, 1 / s2],
                       [1 / s3, 1 / s6, -1 / s2]], dtype=dtype, device=device)


def get_pc_colorizer(sde, predictor, corrector, inverse_scaler,
                     snr, n_steps=1, probability_flow=False, continuous=False,
                     denoise=True, eps=1e-5):
  """Build a colorization function: inpainting of the colour axes of `gray_basis` (App. I.3).

  Arguments as `get_pc_inpainter`.
  Returns:
    colorizer(model, gray_scale_img, generator=None): gray_scale_img (B, 3, H, W) in model space
    with equal R, G, B (a (B, 1, H, W) image is repeated over 3 channels; for unequal channels
    their mean is the gray level). Returns inverse_scaler(images) whose channel mean equals the
    input's.
  """
  pc_options = _pc_options(predictor, corrector, snr, n_steps, probability_flow, eps)

  def colorizer(model, gray_scale_img, generator=None):
    img = gray_scale_img
    if not torch.is_tensor(img) or img.ndim != 4 or img.shape[1] not in (1, 3):
      raise ValueError(f'gray_scale_img must be a (batch, 3, height, width) or (batch, 1, height, '
                       f'width) tensor; got shape {tuple(getattr(img, "shape", ()))}.')
    if img.shape[1] == 1:
      img = img.expand(-1, 3, -1, -1)
    M = gray_basis(img.dtype, img.device)

    def encode(x):
      return torch.einsum('bihw,ij->bjhw', x, M)

    def decode(z):
      return torch.einsum('bjhw,ij->bihw', z, M)

    mask = torch.zeros(1, 3, 1, 1, device=img.device, dtype=img.dtype)
    mask[:, 0] = 1.
    score_model = mutils.ScoreModel.of(sde, model, continuous=continuous)
    with torch.no_grad():
      x = _impute(sde, score_model, encode(img), mask, encode, decode, denoise, generator,
                  pc_options)
      return inverse_scaler(x)

  return colorizer


def get_classifier_grad_fn(sde, classifier):
  """grad_x log p_t(y | x) from a noise-conditional classifier (App. I.4).

  Args:
    classifier: callable (x (B, C, H, W), noise_scale (B,)) -> logits (B, num_classes), called
      with the marginal std of `sde` at t (the JAX original's `ve_noise_scale`).
  Returns:
    grad_fn(x, t, labels) -> gradient of log softmax(logits)[labels], shape x.shape.
  """

  def grad_fn(x, t, labels):
    if isinstance(classifier, torch.nn.Module):
      classifier.eval()
    noise_scale = sde.marginal_prob(torch.zeros_like(x), t)[1]
    with torch.enable_grad():
      x_in = x.detach().requires_grad_(True)
      logits = classifier(x_in, noise_scale)
      if int(labels.max()) >= logits.shape[-1]:
        raise ValueError(f'label {int(labels.max())} out of range: the classifier has '
                         f'{logits.shape[-1]} classes.')
      log_prob = F.log_softmax(logits, dim=-1)
      log_prob = log_prob[torch.arange(len(labels), device=logits.device), labels].sum()
      if not log_prob.requires_grad:  # logits that do not depend on x
        return torch.zeros_like(x)
      grad = torch.autograd.grad(log_prob, x_in, allow_unused=True)[0]
      return torch.zeros_like(x) if grad is None else grad

  return grad_fn


def get_pc_conditional_sampler(sde, score_model, classifier, shape, predictor, corrector,
                               inverse_scaler, snr, n_steps=1, probability_flow=False,
                               continuous=False, denoise=True, eps=1e-5):
  """Build a class-conditional PC sampler with classifier guidance (Eq. 14, App. I.4).

  Every predictor and corrector step uses the conditional score
  s(x, t) + grad_x log p_t(y | x), the classifier seeing x(t) and the marginal std at t.

  Args:
    score_model: the unconditional score network, or a `models.utils.ScoreModel`.
    classifier: noise-conditional classifier, (x, noise_scale (B,)) -> logits; see
      `get_classifier_grad_fn`.
    shape: (B, C, H, W) of the batch to draw.
    Others as `get_pc_inpainter`.
  Returns:
    sampler(labels, generator=None): labels an integer tensor (B,), one class per sample, on the
    device to sample on. Returns inverse_scaler(samples) of `shape`.
  """
  pc_options = _pc_options(predictor, corrector, snr, n_steps, probability_flow, eps)
  score_model = mutils.ScoreModel.of(sde, score_model, continuous=continuous)
  classifier_grad_fn = get_classifier_grad_fn(sde, classifier)

  def sampler(labels, generator=None):
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != shape[0] or labels.is_floating_point():
      raise ValueError(f'labels must be an integer tensor of shape ({shape[0]},), one class per '
                       f'sample of shape {tuple(shape)}; got {labels.dtype} of shape '
                       f'{tuple(labels.shape)}.')
    if bool((labels < 0).any()):
      raise ValueError('labels must be non-negative class indices.')
    with torch.no_grad():
      x = sde_lib.prior_draw(sde, shape, labels.device, generator)
      x, x_mean = sampling.pc_loop(
        sde, score_model, x=x, generator=generator,
        score_modifier=lambda y, t: classifier_grad_fn(y, t, labels), **pc_options)
      return inverse_scaler(x_mean if denoise else x)

  return sampler
