"""models.utils.ScoreModel: the one place a network's output becomes a score (get_score_fn's
numbers, bit for bit), its Tweedie denoiser and noise prediction against Gaussian closed forms, and
its evaluation count against a forward hook in every sampler that takes it."""
import pytest
import torch

import controllable_generation as cg
import fast_sampling as fs
import likelihood
import sampling
import sde_lib
from gaussian_score import ExactScoreModel, GaussianMixture
from models import utils as mutils

EVENT = (1, 4, 4)
SDES = {'ve': (sde_lib.VESDE, 1e-5), 'vp': (sde_lib.VPSDE, 1e-3), 'subvp': (sde_lib.subVPSDE, 1e-3)}
identity = lambda x: x


class TinyNet(torch.nn.Module):
  """A conv net that uses its labels, so a wrong label or output scaling shows."""

  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    self.dropout = torch.nn.Dropout(0.5)
    with torch.no_grad():
      for p in self.parameters():
        p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))

  def forward(self, x, labels):
    return self.dropout(self.conv(x)) * (1 + labels.float().reshape(-1, 1, 1, 1) / 7.)


def _reference_score_fn(sde, model, train, continuous):
  """get_score_fn's closure as it was before ScoreModel (score_sde_pytorch's logic)."""
  model_fn = mutils.get_model_fn(model, train=train)

  def score_fn(x, t):
    labels = sde.noise_label(t, continuous)
    if not torch.is_tensor(labels):
      labels = torch.full((x.shape[0],), labels, device=x.device)
    return sde.output_to_score(model_fn(x, labels), t, labels, continuous)

  return score_fn


@pytest.mark.parametrize('sde_name,continuous', [('ve', True), ('ve', False), ('vp', True),
                                                 ('vp', False), ('subvp', True)])
def test_score_is_get_score_fns_bit_for_bit(sde_name, continuous):
  sde = SDES[sde_name][0](N=50)
  net = TinyNet()
  x = torch.randn((5,) + EVENT, generator=torch.Generator().manual_seed(1))
  score_fn = mutils.get_score_fn(sde, net, train=False, continuous=continuous)
  assert isinstance(score_fn, mutils.ScoreModel)
  reference = _reference_score_fn(sde, net, False, continuous)
  for t in (torch.tensor([1., 0.7, 0.5, 0.2, 1e-3]), torch.full((5,), 0.31), 0.31, 1e-3):
    if not continuous and not torch.is_tensor(t):
      t = torch.full((5,), t)  # the discrete chains index with (B,) times
    expected = reference(x, t)
    assert torch.equal(score_fn(x, t), expected)
    assert torch.equal(score_fn.score(x, t), expected)
  assert not net.training  # train=False switched the network to eval mode
  assert score_fn.nfe == 8


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
def test_denoised_and_noise_match_the_gaussian_closed_form(sde_name):
  """Data N(mu, diag s0^2): p_t = N(a mu, v), v = a^2 s0^2 + std^2. Tweedie's
  E[x0 | x] = (a s0^2 x + std^2 mu) / v and E[z | x] = std (x - a mu) / v."""
  sde = SDES[sde_name][0]()
  g = torch.Generator().manual_seed(2)
  mu = torch.rand(EVENT, generator=g) - 0.5
  s0 = 0.3 + torch.rand(EVENT, generator=g)
  score_model = mutils.ScoreModel(sde, ExactScoreModel(sde, GaussianMixture.gaussian(mu, s0)),
                                  continuous=True)
  t = torch.tensor([1., 0.5, 0.1, 0.01, 1e-3])
  a, std = (v.double().reshape(-1, 1, 1, 1) for v in (
    sde.marginal_prob(torch.ones(5), t)[0], sde.marginal_prob(torch.zeros(5), t)[1]))
  x0 = mu + s0 * torch.randn((5,) + EVENT, generator=g)
  x = (a * x0 + std * torch.randn((5,) + EVENT, generator=g)).float()
  xd, mud, s2 = x.double(), mu.double(), s0.double() ** 2
  v = a ** 2 * s2 + std ** 2
  denoised = (a * s2 * xd + std ** 2 * mud) / v
  noise = std * (xd - a * mud) / v
  scale = x.abs().amax(dim=(1, 2, 3), keepdim=True).double()  # float32 rounding of x and score
  assert ((score_model.denoised(x, t).double() - denoised).abs() / (scale / a)).max() < 1e-6
  assert ((score_model.noise(x, t).double() - noise).abs()).max() < 1e-6
  # One float time for the whole batch, as the ODE samplers call it.
  for i, ti in enumerate(t.tolist()):
    torch.testing.assert_close(score_model.denoised(x[i:i + 1], ti).double(), denoised[i:i + 1],
                               rtol=0, atol=1e-6 * float(scale[i] / a[i]))
    torch.testing.assert_close(score_model.noise(x[i:i + 1], ti).double(), noise[i:i + 1],
                               rtol=0, atol=1e-6)
  assert score_model.nfe == 2 + 2 * len(t)


def test_of_keeps_a_score_model_and_wraps_a_network_or_a_score_function():
  sde = sde_lib.VPSDE()
  net = TinyNet()
  score_model = mutils.ScoreModel(sde, net, continuous=True)
  assert mutils.ScoreModel.of(sde, score_model, continuous=False) is score_model
  wrapped = mutils.ScoreModel.of(sde, net, continuous=True)
  assert isinstance(wrapped, mutils.ScoreModel) and wrapped.network is net and wrapped.continuous
  assert mutils.ScoreModel.of_score_fn(sde, score_model) is score_model
  given = mutils.ScoreModel.of_score_fn(sde, lambda x, t: -x)
  x = torch.randn((2,) + EVENT)
  assert torch.equal(given(x, torch.full((2,), 0.5)), -x) and given.nfe == 1


class _ForwardCount:
  """Forward passes of a module, counted by a hook."""

  def __init__(self, module):
    self.count = 0
    self.handle = module.register_forward_hook(lambda *_: setattr(self, 'count', self.count + 1))


def _samplers(sde, eps):
  shape = (4,) + EVENT
  return {
    'pc': sampling.get_pc_sampler(sde, shape, sampling.ReverseDiffusionPredictor,
                                  sampling.LangevinCorrector, identity, snr=0.16, n_steps=2,
                                  continuous=True, eps=eps, device='cpu'),
    'pc-corrector-only': sampling.get_pc_sampler(sde, shape, None, sampling.AnnealedLangevinDynamics,
                                                 identity, snr=0.16, continuous=True, eps=eps,
                                                 device='cpu'),
    'ode-rk4': sampling.get_ode_sampler(sde, shape, identity, denoise=True, method='rk4',
                                        num_steps=4, eps=eps, device='cpu'),
    'ode-dopri5': sampling.get_ode_sampler(sde, shape, identity, method='dopri5', rtol=1e-3,
                                           atol=1e-3, eps=eps, device='cpu'),
    'heun': fs.get_heun_sampler(sde, shape, identity, num_steps=4, eps=eps, device='cpu'),
    'dpm_solver': fs.get_dpm_solver_sampler(sde, shape, identity, num_steps=5, order=3, eps=eps,
                                            device='cpu', denoise_to_zero=True),
    'likelihood': likelihood.get_likelihood_fn(sde, identity, method='rk4', num_steps=3, eps=eps),
    'likelihood-exact': likelihood.get_likelihood_fn(sde, identity, hutchinson_type='exact',
                                                     method='euler', num_steps=2, eps=eps),
  }


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_nfe_is_every_forward_pass_once(sde_name):
  """The NFE a sampler reports, and the growth of a given ScoreModel's `nfe`, equal the network's
  forward passes (a forward hook), with a bare network or a ScoreModel passed in."""
  cls, eps = SDES[sde_name]
  sde = cls(N=6)
  network = ExactScoreModel(sde, GaussianMixture.gaussian(torch.zeros(EVENT), torch.ones(EVENT)))
  data = torch.randn((4,) + EVENT, generator=torch.Generator().manual_seed(3))
  expected = {'pc': 6 * 3, 'pc-corrector-only': 6, 'ode-rk4': 4 * 4 + 1, 'heun': 7,
              'dpm_solver': 6, 'likelihood': 3 * 4, 'likelihood-exact': 2}
  score_model = mutils.ScoreModel(sde, network, continuous=True)
  for name, sampler in _samplers(sde, eps).items():
    for model in (network, score_model):
      hook = _ForwardCount(network)
      before = score_model.nfe
      args = (model, data) if name.startswith('likelihood') else (model,)
      torch.manual_seed(4)
      nfe = sampler(*args)[-1]
      hook.handle.remove()
      assert nfe == hook.count > 0, (name, nfe, hook.count)
      assert name not in expected or nfe == expected[name], (name, nfe)
      if model is score_model:
        assert score_model.nfe - before == nfe, name


def test_controllable_samplers_count_through_a_given_score_model():
  sde = sde_lib.VESDE(N=5)
  network = ExactScoreModel(sde, GaussianMixture.gaussian(torch.zeros(3, 4, 4),
                                                          torch.ones(3, 4, 4)))
  score_model = mutils.ScoreModel(sde, network, continuous=True)
  data = torch.zeros(2, 3, 4, 4)
  mask = torch.ones_like(data)
  mask[..., 2:] = 0.
  runs = {
    'inpaint': lambda: cg.get_pc_inpainter(sde, 'reverse_diffusion', 'langevin', identity, 0.16,
                                           n_steps=2, continuous=True)(score_model, data, mask),
    'colorize': lambda: cg.get_pc_colorizer(sde, 'euler_maruyama', 'ald', identity, 0.16,
                                            continuous=True)(score_model, data),
    'conditional': lambda: cg.get_pc_conditional_sampler(
      sde, score_model, lambda x, n: torch.zeros(len(x), 2), (2, 3, 4, 4), 'reverse_diffusion',
      None, identity, 0.16, continuous=True)(torch.tensor([0, 1])),
  }
  for name, run in runs.items():
    hook = _ForwardCount(network)
    before = score_model.nfe
    run()
    hook.handle.remove()
    assert score_model.nfe - before == hook.count == {'inpaint': 15, 'colorize': 10,
                                                       'conditional': 5}[name], name


def test_pc_loop_hooks():
  """The projection runs after every corrector and every predictor step; the score modifier is
  added to the score: a zero score plus the exact score as the modifier is the exact score."""
  sde = sde_lib.VESDE(N=7)
  exact = mutils.ScoreModel(sde, ExactScoreModel(sde, GaussianMixture.gaussian(
    torch.zeros(EVENT), torch.ones(EVENT))), continuous=True)
  x = sde.prior_sampling((3,) + EVENT, generator=torch.Generator().manual_seed(5))
  kw = dict(predictor=sampling.ReverseDiffusionPredictor, corrector=sampling.LangevinCorrector,
            snr=0.16, eps=1e-5)
  plain = sampling.pc_loop(sde, exact, x=x, generator=torch.Generator().manual_seed(6), **kw)
  guided = sampling.pc_loop(sde, lambda y, t: torch.zeros_like(y), x=x, score_modifier=exact,
                            generator=torch.Generator().manual_seed(6), **kw)
  assert torch.equal(plain[0], guided[0]) and torch.equal(plain[1], guided[1])
  times = []

  def project(y, y_mean, t):
    times.append(float(t[0]))
    return y, y_mean

  projected = sampling.pc_loop(sde, exact, x=x, project=project,
                               generator=torch.Generator().manual_seed(6), **kw)
  assert torch.equal(projected[0], plain[0])
  steps = torch.linspace(sde.T, 1e-5, sde.N).tolist()
  assert times == [t for t in steps for _ in range(2)]


def test_get_sampling_fn_refuses_a_score_model_it_would_not_prepare():
  from configs.default_cifar10_configs import get_default_configs
  config = get_default_configs()
  config.device = torch.device('cpu')
  config.training.continuous = True
  config.sampling.update(dict(method='pc', predictor='reverse_diffusion', corrector='none',
                              progress=False, precision='bf16'))
  sde = sde_lib.VESDE(N=2)
  sampler = sampling.get_sampling_fn(config, sde, (1,) + EVENT, identity, 1e-5)
  network = ExactScoreModel(sde, GaussianMixture.gaussian(torch.zeros(EVENT), torch.ones(EVENT)))
  with pytest.raises(TypeError, match='pass the network'):
    sampler(mutils.ScoreModel(sde, network, continuous=True))
  assert sampler(network)[1] == 2
