"""Inpainting, colorization and class-conditional sampling checked against Gaussian closed forms.

The score networks here are exact: for Gaussian data N(mu, Sigma) the perturbed marginal at t is
N(a mu, a^2 Sigma + std^2 I) (a, std from `sde.marginal_prob`), so the score and, for a mixture,
the noise-conditional class posterior have closed forms. The networks answer in the conventions of
continuous-time checkpoints (VE: label sigma(t), output the score; VP: label 999 t, output
-std * score), so they go through `models.utils.get_score_fn` like a trained model.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import controllable_generation as cg
import sampling
import sde_lib
from gaussian_score import ExactScoreModel, GaussianMixture

SHAPE = (1, 4, 4)  # one-channel 4x4 images: 16 "pixels"
D = 16


def _time_from_label(sde, labels):
  if isinstance(sde, sde_lib.VESDE):
    return torch.log(labels / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
  return labels / 999.


def _mean_std(sde, t):
  a = sde.marginal_prob(torch.ones_like(t), t)[0]
  return a, sde.marginal_prob(torch.zeros_like(t), t)[1]


def _net_output(sde, score, std):
  return score if isinstance(sde, sde_lib.VESDE) else -score * std.view(-1, *[1] * (score.ndim - 1))


class GaussianScoreNet(nn.Module):
  """Exact score network of N(mean, cov) data, mean (d,), cov (d, d), d = C*H*W (a full
  covariance, which tests/gaussian_score.py's diagonal mixtures do not cover)."""

  def __init__(self, sde, mean, cov):
    super().__init__()
    self.sde = sde
    self.mean = mean
    self.evals, self.evecs = torch.linalg.eigh(cov)

  def forward(self, x, labels):
    a, std = _mean_std(self.sde, _time_from_label(self.sde, labels))
    diff = x.flatten(1) - a[:, None] * self.mean
    var_t = a[:, None] ** 2 * self.evals + std[:, None] ** 2  # eigenvalues of the covariance at t
    score = -((diff @ self.evecs) / var_t) @ self.evecs.T
    return _net_output(self.sde, score.view_as(x), std)


def _mixture_model(sde, mus, s):
  """Exact score network of 1/K sum_k N(mus[k], s^2 I) (tests/gaussian_score.py)."""
  mixture = GaussianMixture(torch.ones(len(mus)), mus.view(len(mus), *SHAPE),
                            torch.full((len(mus),) + SHAPE, s))
  return ExactScoreModel(sde, mixture, continuous=True)


class ExactMixtureClassifier(nn.Module):
  """log p_t(y | x) of the mixture, up to a constant, from x(t) and the marginal std at t."""

  def __init__(self, sde, mus, s):
    super().__init__()
    self.sde, self.mus, self.s = sde, mus, s

  def forward(self, x, noise_scale):
    # VE: x(t) = x(0) + sigma z; VP: x(t) = a x(0) + std z with a^2 + std^2 = 1.
    a = torch.ones_like(noise_scale) if isinstance(self.sde, sde_lib.VESDE) \
      else torch.sqrt(1 - noise_scale ** 2)
    var_t = (a ** 2 * self.s ** 2 + noise_scale ** 2)[:, None]
    diff = x.flatten(1)[:, None, :] - a[:, None, None] * self.mus[None]
    return -(diff ** 2).sum(-1) / (2 * var_t)


def _sde(kind, N):
  if kind == 've':
    return sde_lib.VESDE(sigma_min=0.01, sigma_max=10., N=N), 1e-5
  return sde_lib.VPSDE(beta_min=0.1, beta_max=20., N=N), 1e-3


def _identity(x):
  return x


def _gaussian_kl(m0, c0, m1, c1):
  """KL(N(m0, c0) || N(m1, c1)) in nats."""
  c1_inv = torch.linalg.inv(c1)
  d = m1 - m0
  k = m0.numel()
  return 0.5 * (torch.trace(c1_inv @ c0) + d @ c1_inv @ d - k
                + torch.logdet(c1) - torch.logdet(c0)).item()


def _half_mask(batch):
  mask = torch.zeros(batch, *SHAPE)
  mask[..., :2] = 1.  # left two columns known
  return mask


@pytest.mark.parametrize('kind', ['ve', 'vp'])
def test_inpainting_independent_gaussian_unknown_pixels_have_the_marginal(kind):
  torch.manual_seed(0)
  sde, eps = _sde(kind, N=200)
  mean = torch.linspace(-0.5, 0.5, D)
  std = torch.linspace(0.2, 0.6, D)
  model = GaussianScoreNet(sde, mean, torch.diag(std ** 2))
  batch = 2000
  data = mean + std * torch.randn(batch, D)
  data = data.view(batch, *SHAPE)
  mask = _half_mask(batch)
  inpainter = cg.get_pc_inpainter(sde, sampling.ReverseDiffusionPredictor,
                                  sampling.LangevinCorrector, _identity, snr=0.16,
                                  continuous=True, eps=eps)
  out = inpainter(model, data, mask, generator=torch.Generator().manual_seed(1))

  known = mask.bool()
  assert torch.equal(out[known], data[known]), 'known pixels changed'
  unknown = ~mask[0].bool().flatten()
  samples = out.flatten(1)[:, unknown]
  m_err = (samples.mean(0) - mean[unknown]).abs() / std[unknown]
  v_ratio = samples.var(0) / std[unknown] ** 2
  print(f'[{kind}] unknown pixels: max |mean err| / std = {m_err.max():.4f}, '
        f'var / true var in [{v_ratio.min():.4f}, {v_ratio.max():.4f}]')
  # Monte-Carlo standard errors with 2000 samples: 0.022 (mean/std), 0.032 (var ratio).
  assert m_err.max() < 0.1
  assert (v_ratio - 1).abs().max() < 0.12
  # Independence: inpainted pixels do not copy the known ones.
  corr = torch.corrcoef(torch.cat([samples, data.flatten(1)[:, ~unknown]], 1).T)
  assert corr[:samples.shape[1], samples.shape[1]:].abs().max() < 0.1


def _correlated_cov():
  # Squared-exponential kernel over the 4x4 grid: neighbouring pixels correlate at ~0.6.
  ij = torch.stack(torch.meshgrid(torch.arange(4.), torch.arange(4.), indexing='ij'), -1).view(D, 2)
  dist2 = ((ij[:, None] - ij[None]) ** 2).sum(-1)
  return 0.25 * torch.exp(-dist2 / 2.) + 0.01 * torch.eye(D)


@pytest.mark.parametrize('kind', ['ve', 'vp'])
def test_inpainting_correlated_gaussian_distance_to_exact_conditional(kind):
  torch.manual_seed(0)
  sde, eps = _sde(kind, N=200)
  mean = torch.zeros(D)
  cov = _correlated_cov()
  model = GaussianScoreNet(sde, mean, cov)
  x0 = mean + torch.linalg.cholesky(cov) @ torch.randn(D) + 0.5  # one image, off-centre
  batch = 2000
  data = x0.view(1, *SHAPE).expand(batch, *SHAPE).contiguous()
  mask = _half_mask(batch)
  k = mask[0].bool().flatten()
  u = ~k
  # Exact conditional p(x_u | x_k) of the Gaussian.
  gain = cov[u][:, k] @ torch.linalg.inv(cov[k][:, k])
  cond_mean = (mean[u] + gain @ (x0[k] - mean[k])).double()
  cond_cov = (cov[u][:, u] - gain @ cov[k][:, u]).double()

  def kl_to_exact(samples):
    """KL(Gaussian fit of samples || exact conditional)."""
    samples = samples.double()
    return _gaussian_kl(samples.mean(0), torch.cov(samples.T), cond_mean, cond_cov)

  kls = {}
  for corrector in ('langevin', None):
    inpainter = cg.get_pc_inpainter(sde, 'reverse_diffusion', corrector, _identity, snr=0.16,
                                    continuous=True, eps=eps)
    out = inpainter(model, data, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[mask.bool()], data[mask.bool()])
    kls[corrector] = kl_to_exact(out.flatten(1)[:, u])
  exact = cond_mean + torch.randn(batch, int(u.sum()), dtype=torch.float64) @ \
    torch.linalg.cholesky(cond_cov).T
  kl_noise = kl_to_exact(exact)  # the same statistic on exact conditional samples
  kl_marginal = _gaussian_kl(mean[u].double(), cov[u][:, u].double(), cond_mean, cond_cov)
  print(f'[{kind}] correlated Gaussian, 8 of 16 pixels inpainted, N=200, 2000 samples: '
        f'KL(inpainted || exact conditional) = {kls["langevin"]:.4f} nats with PC (reverse '
        f'diffusion + Langevin), {kls[None]:.4f} predictor only; {kl_noise:.4f} for exact '
        f'samples (sampling noise); KL(unconditional marginal || exact) = {kl_marginal:.3f}')
  # Imputation by re-noising the known pixels only approximates the conditional of correlated
  # data, the more so without a corrector; PC must land far closer than ignoring the known pixels.
  assert kls['langevin'] < 0.1 * kl_marginal
  assert kls['langevin'] < kls[None]
  assert kls[None] < 0.5 * kl_marginal


def test_inpainting_denoise_false_still_keeps_known_pixels_and_denoise_helps():
  torch.manual_seed(0)
  sde, eps = _sde('ve', N=50)
  mean, std = torch.zeros(D), torch.full((D,), 0.3)
  model = GaussianScoreNet(sde, mean, torch.diag(std ** 2))
  data = (std * torch.randn(500, D)).view(500, *SHAPE)
  mask = torch.zeros(1, 1, 4, 4)
  mask[..., 0] = 1.  # a broadcast mask: first column known
  outs = {}
  for denoise in (True, False):
    inpainter = cg.get_pc_inpainter(sde, 'reverse_diffusion', None, _identity, snr=0.16,
                                    continuous=True, denoise=denoise, eps=eps)
    outs[denoise] = inpainter(model, data, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(outs[denoise][..., 0], data[..., 0])
  # Same noise, so the two differ by the last step's noise exactly in the unknown region.
  diff = (outs[True] - outs[False])[..., 1:]
  assert diff.abs().max() > 0, 'denoise did not reach the unknown pixels'
  # The last reverse-diffusion step's noise has std sqrt(sigma_1^2 - sigma_0^2) at t = eps.
  G = sde.discretize(torch.zeros(1), torch.tensor([eps]))[1].item()
  assert abs(diff.std().item() / G - 1) < 0.1


def test_colorization_keeps_the_gray_channel():
  torch.manual_seed(0)
  sde, eps = _sde('ve', N=100)
  d = 3 * 4 * 4
  # Colour channels strongly correlated, as in natural images.
  chan_cov = torch.tensor([[1., .8, .6], [.8, 1., .8], [.6, .8, 1.]]) * 0.2
  cov = torch.kron(chan_cov, torch.eye(16)) + 0.01 * torch.eye(d)
  mean = torch.kron(torch.tensor([0.3, 0., -0.3]), torch.ones(16))
  model = GaussianScoreNet(sde, mean, cov)
  color = (mean + torch.randn(256, d) @ torch.linalg.cholesky(cov).T).view(256, 3, 4, 4)
  gray = color.mean(1, keepdim=True).expand(-1, 3, -1, -1)

  def inverse_scaler(x):
    return (x + 1.) / 2.

  colorizer = cg.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', inverse_scaler, snr=0.16,
                                  continuous=True, eps=eps)
  out = colorizer(model, gray, generator=torch.Generator().manual_seed(2))
  assert out.shape == gray.shape
  torch.testing.assert_close(out.mean(1), inverse_scaler(gray[:, 0]), atol=1e-5, rtol=0)
  # It does produce colour, and colour that follows the data: channel means as the data's.
  chroma = out - out.mean(1, keepdim=True)
  assert chroma.std() > 0.1
  target = inverse_scaler(mean.view(3, 16)).mean(1) - inverse_scaler(mean.view(3, 16)).mean()
  got = chroma.mean(dim=(0, 2, 3))
  print(f'colorization: mean chroma per channel {got.tolist()} (data: {target.tolist()})')
  torch.testing.assert_close(got, target, atol=0.03, rtol=0)
  # A one-channel gray image means the same.
  out1 = colorizer(model, gray[:, :1], generator=torch.Generator().manual_seed(2))
  torch.testing.assert_close(out1, out, atol=1e-5, rtol=0)


def test_gray_basis_is_orthonormal_with_gray_first():
  M = cg.gray_basis(torch.float64)
  torch.testing.assert_close(M.T @ M, torch.eye(3, dtype=torch.float64))
  torch.testing.assert_close(M[:, 0], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))


@pytest.mark.parametrize('kind', ['ve', 'vp'])
def test_conditional_sampling_two_gaussians_lands_in_the_requested_component(kind):
  torch.manual_seed(0)
  sde, eps = _sde(kind, N=100)
  mus = torch.stack([torch.full((D,), 0.5), torch.full((D,), -0.5)])
  s = 0.4
  score_model = _mixture_model(sde, mus, s)
  classifier = ExactMixtureClassifier(sde, mus, s)
  batch = 400
  labels = torch.arange(batch) % 2

  def in_requested(x):
    dist = ((x.flatten(1)[:, None] - mus[None]) ** 2).sum(-1)
    return (dist.argmin(1) == labels).float().mean().item()

  sampler = cg.get_pc_conditional_sampler(sde, score_model, classifier, (batch,) + SHAPE,
                                          'reverse_diffusion', 'langevin', _identity, snr=0.16,
                                          continuous=True, eps=eps)
  x = sampler(labels, generator=torch.Generator().manual_seed(1))
  frac = in_requested(x)
  # Within the component the guided score is the component's own score: check its spread too.
  comp_std = (x.flatten(1) - mus[labels]).std().item()
  print(f'[{kind}] class-conditional: {100 * frac:.1f}% in the requested component; '
        f'within-component std {comp_std:.3f} (true {s})')
  assert frac >= 0.95
  assert abs(comp_std / s - 1) < 0.1

  # Control: a classifier without information leaves the mixture's 50/50 split.
  blind = cg.get_pc_conditional_sampler(sde, score_model, lambda x, n: torch.zeros(len(x), 2),
                                        (batch,) + SHAPE, 'reverse_diffusion', 'langevin',
                                        _identity, snr=0.16, continuous=True, eps=eps)
  frac_blind = in_requested(blind(labels, generator=torch.Generator().manual_seed(1)))
  assert 0.35 < frac_blind < 0.65


def test_wrong_shapes_give_clear_errors():
  sde, eps = _sde('ve', N=2)
  model = GaussianScoreNet(sde, torch.zeros(D), torch.eye(D))
  inpainter = cg.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', _identity, 0.16,
                                  continuous=True)
  data = torch.zeros(2, *SHAPE)
  with pytest.raises(ValueError, match='mask of shape'):
    inpainter(model, data, torch.ones(2, 1, 4, 3))
  with pytest.raises(ValueError, match='mask of shape'):
    inpainter(model, data, torch.ones(4, 4))
  with pytest.raises(ValueError, match='only 0'):
    inpainter(model, data, torch.full((2, 1, 4, 4), 0.5))
  with pytest.raises(ValueError, match='data must be'):
    inpainter(model, torch.zeros(1, 4, 4), torch.ones(1, 4, 4))

  colorizer = cg.get_pc_colorizer(sde, 'reverse_diffusion', 'langevin', _identity, 0.16)
  with pytest.raises(ValueError, match='gray_scale_img must be'):
    colorizer(model, torch.zeros(2, 2, 4, 4))
  with pytest.raises(ValueError, match='gray_scale_img must be'):
    colorizer(model, torch.zeros(3, 4, 4))

  mus = torch.stack([torch.ones(D), -torch.ones(D)])
  sampler = cg.get_pc_conditional_sampler(sde, _mixture_model(sde, mus, 0.5),
                                          ExactMixtureClassifier(sde, mus, 0.5), (4,) + SHAPE,
                                          'reverse_diffusion', None, _identity, 0.16,
                                          continuous=True)
  with pytest.raises(ValueError, match='labels must be'):
    sampler(torch.zeros(3, dtype=torch.long))
  with pytest.raises(ValueError, match='labels must be'):
    sampler(torch.zeros(4))
  with pytest.raises(ValueError, match='out of range'):
    sampler(torch.full((4,), 2))
  with pytest.raises(ValueError, match='Unknown predictor'):
    cg.get_pc_inpainter(sde, 'no_such_predictor', None, _identity, 0.16)


def _load_script():
  import importlib.util
  from conftest import ROOT
  spec = importlib.util.spec_from_file_location('controllable_script',
                                                ROOT / 'scripts' / 'controllable.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_script_writes_input_masked_output_grids(tmp_path):
  """scripts/controllable.py on a tiny (untrained) NCSN++ and classifier: every PNG, right size."""
  from PIL import Image

  import checkpoints
  from configs import load_config
  from models import utils as mutils
  from models.ema import ExponentialMovingAverage
  from utils import save_checkpoint

  script = _load_script()
  config = load_config('ve/digits_ncsnpp_continuous')
  config.device = torch.device('cpu')
  config.model.nf = 16
  config.model.ch_mult = (1, 2)
  config.model.num_scales = 3
  config.eval.batch_size = 10
  config.data.num_workers = 0
  # Data in [0, 1] as they are: with centered data, (2x - 1 + 1) / 2 can land one ulp below x
  # and the truncation to uint8 (the reference's) then shows a known pixel 1 level lower.
  config.data.centered = False
  config.classifier = dict(blocks_per_group=1, channel_multiplier=1, embedding_size=8)
  torch.manual_seed(0)
  model = mutils.create_model(config)
  save_checkpoint(tmp_path / 'checkpoints' / 'checkpoint_1.pth',
                  dict(model=model, ema=ExponentialMovingAverage(model.parameters(), 0.999),
                       optimizer=torch.optim.Adam(model.parameters()), step=1))
  save_checkpoint(tmp_path / 'classifier' / 'checkpoints' / 'checkpoint_1.pth',
                  checkpoints.build_classifier_state(config))
  assert script.latest_checkpoint(tmp_path / 'checkpoints').name == 'checkpoint_1.pth'

  config.classifier = {}  # the architecture comes from the classifier checkpoint
  written = script.run(config, tmp_path / 'checkpoints' / 'checkpoint_1.pth', tmp_path / 'out',
                       num=10, mask='right',
                       classifier_checkpoint=tmp_path / 'classifier/checkpoints/checkpoint_1.pth')
  # Digits have one channel: colorize is skipped; 10 classes x 1 sample each.
  assert set(written) == {'inpaint_input', 'inpaint_masked', 'inpaint_output', 'conditional_output'}
  size = 4 * (48 + 2) + 2  # make_grid: 4 columns of 16 px digits shown at 48, 2 px padding
  for name in ('inpaint_input', 'inpaint_masked', 'inpaint_output'):
    assert Image.open(written[name]).size == (size, 3 * 50 + 2), name
  assert Image.open(written['conditional_output']).size == (50 + 2, 10 * 50 + 2)
  # The known (left) half of every inpainted digit is the test digit itself.
  inp = torch.from_numpy(np.asarray(Image.open(written['inpaint_input'])).copy())
  out = torch.from_numpy(np.asarray(Image.open(written['inpaint_output'])).copy())
  left = [c for col in range(4) for c in range(2 + 50 * col, 2 + 50 * col + 24)]
  assert torch.equal(inp[:, left], out[:, left])
  with pytest.raises(ValueError, match='Unknown mask'):
    script.make_mask('square', (1, 1, 4, 4))
