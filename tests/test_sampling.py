"""Samplers against closed forms: with Gaussian (mixture) data the exact score of every marginal is
known (tests/gaussian_score.py), so the samples' mean and variance must match the data's.

Batch 512 of 16-dimensional events (8,192 numbers): the normalised mean has standard error 0.011
and the normalised variance 0.016. PC samplers must match within 0.05 on both (about 3-4 standard
errors plus discretisation error), at the SDE's N = 1000 steps with snr 0.16 and one corrector
step. Corrector-only samplers use N = 500 with 4 corrector steps (Langevin at snr 0.1: the
unadjusted Langevin bias grows with snr^2; annealed Langevin at snr 0.316 as NCSN's config).
One exception, a property of the update rule rather than of this code: annealed Langevin alone
under sub-VP. Its step 2 (r std_t)^2 uses sub-VP's std_t = 1 - exp(-int beta) ~ beta_0 t, which
vanishes so fast that the chain freezes while p_t is still narrower than the data in the wide
coordinates (variance 0.876 at N = 500 or 1000, 4 or 8 steps); it gets a 0.15 tolerance.
"""
import ml_collections
import pytest
import torch

import sampling
import sde_lib
from configs import with_defaults
from conftest import FIXTURES
from gaussian_score import ExactScoreModel, GaussianMixture

EVENT = (1, 4, 4)
BATCH = 512
TOL = 0.05
SDES = {'ve': (sde_lib.VESDE, 1e-5), 'vp': (sde_lib.VPSDE, 1e-3), 'subvp': (sde_lib.subVPSDE, 1e-3)}
identity = lambda x: x


def _gaussian():
  g = torch.Generator().manual_seed(0)
  mean = torch.rand(EVENT, generator=g) - 0.5
  std = 0.5 + torch.rand(EVENT, generator=g)  # unequal variances in [0.25, 2.25]
  return GaussianMixture.gaussian(mean, std)


GAUSSIAN = _gaussian()


def _normalised_moments(x, mixture):
  mean, var = mixture.moments()
  z = (x - mean) / var.sqrt()
  return z.mean().item(), z.var().item()


def _pc_cases():
  """(sde, continuous, predictor, corrector) the reference allows; a fast subset unmarked."""
  cases = []
  for name, continuous in [('ve', True), ('vp', True), ('subvp', True), ('ve', False), ('vp', False)]:
    for p in ['euler_maruyama', 'reverse_diffusion', 'ancestral_sampling', 'none']:
      for c in ['langevin', 'ald', 'none']:
        if (p, c) == ('none', 'none') or (p == 'ancestral_sampling' and name == 'subvp'):
          continue
        fast = continuous and (c == 'none' or p in ('reverse_diffusion', 'none'))
        marks = () if fast else (pytest.mark.slow,)
        cases.append(pytest.param(name, continuous, p, c, marks=marks,
                                  id=f'{name}-{"cont" if continuous else "disc"}-{p}-{c}'))
  return cases


@pytest.mark.parametrize('sde_name,continuous,predictor,corrector', _pc_cases())
def test_pc_sampler_matches_gaussian(sde_name, continuous, predictor, corrector):
  cls, eps = SDES[sde_name]
  corrector_only = predictor == 'none'
  N, n_steps = (500, 4) if corrector_only else (1000, 1)
  snr = {'langevin': 0.1, 'ald': 0.316}[corrector] if corrector_only else 0.16
  sde = cls(N=N)
  model = ExactScoreModel(sde, GAUSSIAN, continuous=continuous)
  sampler = sampling.get_pc_sampler(sde, (BATCH,) + EVENT, sampling.get_predictor(predictor),
                                    sampling.get_corrector(corrector), identity, snr=snr,
                                    n_steps=n_steps, continuous=continuous, eps=eps, device='cpu')
  torch.manual_seed(1)
  x, nfe = sampler(model)
  mean, var = _normalised_moments(x, GAUSSIAN)
  tol = 0.15 if (sde_name, predictor, corrector) == ('subvp', 'none', 'ald') else TOL
  assert abs(mean) < tol and abs(var - 1) < tol, f'normalised mean {mean:.4f}, variance {var:.4f}'
  # Honest NFE: one evaluation per predictor step (none: 0), n_steps per corrector call (none: 0).
  expected = N * ((predictor != 'none') + (corrector != 'none') * n_steps)
  assert nfe == expected


@pytest.mark.parametrize('corrector', ['langevin', 'ald'])
def test_corrector_with_zero_steps_is_no_corrector(corrector):
  """n_steps = 0 (sampling.n_steps_each) makes no correction: the predictor-only samples, with
  their NFE (the reference fails there, reading a value the empty loop never set)."""
  sde = sde_lib.VESDE(N=20)
  model = ExactScoreModel(sde, GAUSSIAN, continuous=True)
  out = {}
  for name, n_steps in ((corrector, 0), ('none', 1)):
    sampler = sampling.get_pc_sampler(sde, (8,) + EVENT, sampling.get_predictor('reverse_diffusion'),
                                      sampling.get_corrector(name), identity, snr=0.16,
                                      n_steps=n_steps, eps=1e-5, device='cpu')
    out[name] = sampler(model, generator=torch.Generator().manual_seed(0))
  assert torch.equal(out[corrector][0], out['none'][0]) and out[corrector][1] == out['none'][1] == 20


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
@pytest.mark.parametrize('predictor', ['euler_maruyama', 'reverse_diffusion'])
def test_pc_probability_flow_predictor(sde_name, predictor):
  """Predictors stepping the probability-flow ODE (no noise) also reach the data distribution."""
  cls, eps = SDES[sde_name]
  sde = cls(N=1000)
  sampler = sampling.get_pc_sampler(sde, (BATCH,) + EVENT, sampling.get_predictor(predictor), None,
                                    identity, snr=0.16, probability_flow=True, continuous=True,
                                    eps=eps, device='cpu')
  torch.manual_seed(2)
  x, nfe = sampler(ExactScoreModel(sde, GAUSSIAN))
  mean, var = _normalised_moments(x, GAUSSIAN)
  assert abs(mean) < TOL and abs(var - 1) < TOL, f'normalised mean {mean:.4f}, variance {var:.4f}'
  assert nfe == 1000


def _mixture():
  """Two well separated modes (weights 0.3 / 0.7) at -1 and +1 with std 0.4 in every coordinate."""
  ones = torch.ones(EVENT)
  return GaussianMixture(torch.tensor([0.3, 0.7]), torch.stack([-ones, ones]),
                         torch.stack([0.4 * ones, 0.4 * ones]))


def _check_mixture_samples(x, mixture):
  """Mode weights 0.3 / 0.7 (standard error 0.02) and, within each mode, its mean and variance.

  All coordinates of a sample share its mode, so the pooled moments of the whole mixture have a
  large standard error; moments measured around each sample's own mode do not.
  """
  upper = x.mean(dim=(1, 2, 3)) > 0
  assert abs(upper.float().mean().item() - 0.7) < 0.06, upper.float().mean()
  mode_mean = torch.where(_bcast(upper, x), mixture.means[1], mixture.means[0])
  z = (x - mode_mean) / 0.4
  mean, var = z.mean().item(), z.var().item()
  assert abs(mean) < TOL and abs(var - 1) < TOL, f'within-mode mean {mean:.4f}, variance {var:.4f}'


def _bcast(v, x):
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_pc_sampler_matches_mixture(sde_name):
  cls, eps = SDES[sde_name]
  sde = cls(N=1000)
  mixture = _mixture()
  sampler = sampling.get_pc_sampler(sde, (BATCH,) + EVENT, sampling.ReverseDiffusionPredictor,
                                    sampling.LangevinCorrector, identity, snr=0.16,
                                    continuous=True, eps=eps, device='cpu')
  torch.manual_seed(3)
  x, _ = sampler(ExactScoreModel(sde, mixture))
  _check_mixture_samples(x, mixture)


ODE_METHODS = [('RK45', None), ('dopri5', None), ('euler', 2000), ('midpoint', 100), ('heun', 100),
               ('rk4', 50)]


@pytest.mark.parametrize('sde_name', ['ve', 'vp', 'subvp'])
@pytest.mark.parametrize('method,num_steps', ODE_METHODS)
def test_ode_sampler_matches_gaussian(sde_name, method, num_steps):
  cls, eps = SDES[sde_name]
  sde = cls()
  sampler = sampling.get_ode_sampler(sde, (BATCH,) + EVENT, identity, method=method, eps=eps,
                                     device='cpu', num_steps=num_steps or 100)
  torch.manual_seed(4)
  x, nfe = sampler(ExactScoreModel(sde, GAUSSIAN))
  mean, var = _normalised_moments(x, GAUSSIAN)
  assert abs(mean) < TOL and abs(var - 1) < TOL, f'normalised mean {mean:.4f}, variance {var:.4f}'
  if num_steps:
    per_step = {'euler': 1, 'midpoint': 2, 'heun': 2, 'rk4': 4}[method]
    assert nfe == num_steps * per_step


def test_ode_sampler_matches_mixture():
  sde = sde_lib.VPSDE()
  mixture = _mixture()
  sampler = sampling.get_ode_sampler(sde, (BATCH,) + EVENT, identity, method='dopri5', device='cpu')
  torch.manual_seed(5)
  x, _ = sampler(ExactScoreModel(sde, mixture))
  _check_mixture_samples(x, mixture)


def test_dopri5_takes_the_steps_of_scipy_rk45():
  """The device solver follows scipy's RK45 (same controller): same NFE and the same solution."""
  sde = sde_lib.VESDE()
  model = ExactScoreModel(sde, GAUSSIAN)
  z = sde.prior_sampling((16,) + EVENT, generator=torch.Generator().manual_seed(6))
  out = {}
  for method in ['RK45', 'dopri5']:
    out[method] = sampling.get_ode_sampler(sde, z.shape, identity, method=method, eps=1e-5,
                                           device='cpu')(model, z=z)
  assert out['RK45'][1] == out['dopri5'][1]
  assert torch.allclose(out['RK45'][0], out['dopri5'][0], atol=1e-5)


def test_dopri5_max_steps_is_the_number_of_steps_allowed():
  """A solve of exactly max_steps accepted steps returns; one step fewer raises."""
  import ode_solvers
  fn = lambda t, y: -y  # smooth: no rejected step, so steps = (NFE - 2) / 6
  y0 = torch.ones(4)
  y, nfe = ode_solvers.solve(fn, y0, 0., 1., 'dopri5', rtol=1e-6, atol=1e-6)
  steps = (nfe - 2) // 6
  assert 2 <= steps and nfe == 2 + 6 * steps
  assert torch.equal(ode_solvers.solve(fn, y0, 0., 1., 'dopri5', rtol=1e-6, atol=1e-6,
                                       max_steps=steps)[0], y)
  with pytest.raises(RuntimeError, match=f'more than max_steps={steps - 1} steps'):
    ode_solvers.solve(fn, y0, 0., 1., 'dopri5', rtol=1e-6, atol=1e-6, max_steps=steps - 1)


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
  """Counts the ATen ops run under it."""

  def __init__(self):
    super().__init__()
    self.count = 0

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    self.count += 1
    return func(*args, **(kwargs or {}))


class _IdentityNetwork(torch.nn.Module):
  def forward(self, x, labels):
    return x  # no ops: what is counted is the sampler's own work


@pytest.mark.parametrize('sde_name, budget', [('ve', 6), ('vp', 7), ('subvp', 7)])
def test_ode_sampler_op_budget_per_evaluation(sde_name, budget):
  """The ODE sampler's tensor ops per Euler step outside the network: the casts of the float64
  state to the network's float32 and of the drift back, the label vector, the probability-flow
  drift (VE: zeros + one fused add; VP: f x, the eps -> score division, one fused add) and the
  Euler update. After each network call every op
  costs ~10 us on the CPU, so this count is the sampler's overhead. With a (B,) time vector and
  tensor SDE coefficients (the reference's way, and ours before the scalar-time path) a step took
  12 (VE), 27 (VP) and 33 (sub-VP) ops."""
  sde = SDES[sde_name][0]()
  z = torch.randn((2,) + EVENT, generator=torch.Generator().manual_seed(8))
  counts = []
  for steps in (2, 3):  # the difference cancels the fixed costs (prior, casts at both ends)
    sampler = sampling.get_ode_sampler(sde, z.shape, identity, method='euler', num_steps=steps,
                                       device='cpu')
    with _OpCounter() as counter:
      sampler(_IdentityNetwork(), z=z)
    counts.append(counter.count)
  assert counts[1] - counts[0] == budget


class _TensorOnlyVE(sde_lib.VESDE):
  """A user's SDE written with tensor-only formulas: float_time is left False."""

  float_time = False

  def sde(self, x, t):
    assert torch.is_tensor(t) and t.shape == (x.shape[0],), t
    return super().sde(x, t)


def test_sdes_without_float_time_get_time_vectors():
  """The ODE sampler and the likelihood hand a (B,) time vector to SDEs that do not declare
  float_time, and give the same numbers as through the float path (to float32 rounding)."""
  import likelihood
  z = torch.randn((4,) + EVENT, generator=torch.Generator().manual_seed(9)) * 50
  data = torch.randn((4,) + EVENT, generator=torch.Generator().manual_seed(10))
  model = ExactScoreModel(sde_lib.VESDE(), GAUSSIAN)  # the same schedule for both
  out = {}
  for cls in (sde_lib.VESDE, _TensorOnlyVE):
    sde = cls()
    x, _ = sampling.get_ode_sampler(sde, z.shape, identity, method='rk4', num_steps=20,
                                    eps=1e-5, device='cpu')(model, z=z)
    bpd, _, _ = likelihood.get_likelihood_fn(sde, identity, method='rk4', num_steps=20)(model, data)
    out[cls] = x, bpd
  torch.testing.assert_close(out[_TensorOnlyVE][0], out[sde_lib.VESDE][0], rtol=1e-4, atol=1e-4)
  torch.testing.assert_close(out[_TensorOnlyVE][1], out[sde_lib.VESDE][1], rtol=1e-4, atol=1e-4)


def test_ode_denoise_counts_its_evaluation():
  sde = sde_lib.VPSDE()
  model = ExactScoreModel(sde, GAUSSIAN)
  z = torch.randn((8,) + EVENT, generator=torch.Generator().manual_seed(7))
  kw = dict(method='rk4', num_steps=10, device='cpu')
  x0, nfe0 = sampling.get_ode_sampler(sde, z.shape, identity, denoise=False, **kw)(model, z=z)
  x1, nfe1 = sampling.get_ode_sampler(sde, z.shape, identity, denoise=True, **kw)(model, z=z)
  assert (nfe0, nfe1) == (40, 41)
  assert not torch.equal(x0, x1)


@pytest.mark.parametrize('kind', ['pc', 'ode'])
def test_samplers_are_reproducible(kind):
  sde = sde_lib.VESDE(N=50)
  model = ExactScoreModel(sde, GAUSSIAN)
  shape = (8,) + EVENT
  if kind == 'pc':
    sampler = sampling.get_pc_sampler(sde, shape, sampling.ReverseDiffusionPredictor,
                                      sampling.LangevinCorrector, identity, snr=0.16,
                                      continuous=True, eps=1e-5, device='cpu')
  else:
    sampler = sampling.get_ode_sampler(sde, shape, identity, method='dopri5', denoise=True,
                                       rtol=1e-3, atol=1e-3, device='cpu')
  runs = []
  for _ in range(2):
    torch.manual_seed(8)
    runs.append(sampler(model)[0])
  assert torch.equal(runs[0], runs[1])
  g = [sampler(model, generator=torch.Generator().manual_seed(s))[0] for s in (9, 9, 10)]
  assert torch.equal(g[0], g[1]) and not torch.equal(g[0], g[2])


def test_inverse_scaler_and_denoise_semantics():
  """denoise returns the last x_mean; inverse_scaler is applied to the output."""
  sde = sde_lib.VESDE(N=20)
  model = ExactScoreModel(sde, GAUSSIAN)
  kw = dict(predictor=sampling.ReverseDiffusionPredictor, corrector=None, snr=0.16,
            continuous=True, eps=1e-5, device='cpu')
  outs = {}
  for denoise in (True, False):
    torch.manual_seed(11)
    outs[denoise] = sampling.get_pc_sampler(sde, (4,) + EVENT, inverse_scaler=lambda x: 2 * x + 1,
                                            denoise=denoise, **kw)(model)[0]
  # The last step (t = eps, sigma_min = 0.01) adds noise of std ~ sigma_min: the two outputs
  # differ by 2 x that noise.
  diff = (outs[False] - outs[True]) / 2
  assert 0.002 < diff.std().item() < 0.05


def _generator(seed):
  return torch.Generator().manual_seed(seed)


def test_langevin_step_size_is_per_example_with_per_example_generators():
  """Alg. 4's step eps = 2 alpha (r |z| / |s|)^2 (alpha = 1 under VE): from the batch-mean norms
  with one generator (the reference), from each example's own norms with a list of generators,
  so that an example's update does not depend on its batch-mates."""
  sde = sde_lib.VESDE(N=10)
  x = torch.randn((3,) + EVENT, generator=_generator(0)) * torch.tensor([1., 2., 3.]).view(3, 1, 1, 1)
  score_fn = lambda x, t: -x / 2.  # the score of N(0, 2 I)
  t = torch.full((3,), 0.5)
  grad = -x / 2.
  seeds = (5, 6, 7)
  z = torch.cat([torch.randn((1,) + EVENT, generator=_generator(s)) for s in seeds])
  corrector = sampling.LangevinCorrector(sde, score_fn, 0.16, 1, generator=[_generator(s) for s in seeds])
  new, new_mean = corrector.update_fn(x, t)
  eps = 2 * (0.16 * z.flatten(1).norm(dim=1) / grad.flatten(1).norm(dim=1)) ** 2
  assert eps.max() > 2 * eps.min()  # the examples' own steps differ
  expected_mean = x + eps.view(-1, 1, 1, 1) * grad
  torch.testing.assert_close(new_mean, expected_mean, rtol=1e-6, atol=1e-7)
  torch.testing.assert_close(new, expected_mean + (2 * eps).sqrt().view(-1, 1, 1, 1) * z,
                             rtol=1e-6, atol=1e-7)
  alone, _ = sampling.LangevinCorrector(sde, score_fn, 0.16, 1, generator=[_generator(6)]).update_fn(
    x[1:2], t[:1])
  torch.testing.assert_close(alone, new[1:2], rtol=0, atol=1e-7)

  shared, _ = sampling.LangevinCorrector(sde, score_fn, 0.16, 1, generator=_generator(5)).update_fn(x, t)
  z = torch.randn((3,) + EVENT, generator=_generator(5))
  eps = 2 * (0.16 * z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean()) ** 2
  torch.testing.assert_close(shared, x + eps * grad + (2 * eps).sqrt() * z, rtol=1e-6, atol=1e-7)


def test_unknown_names_are_clear():
  with pytest.raises(ValueError, match='Known predictors: ancestral_sampling, euler_maruyama'):
    sampling.get_predictor('euler')
  with pytest.raises(ValueError, match='Known correctors: ald, langevin, none'):
    sampling.get_corrector('hmc')
  with pytest.raises(ValueError, match='Known methods: RK45.*dopri5'):
    sampling.get_ode_sampler(sde_lib.VPSDE(), (1,) + EVENT, identity, method='rk5')
  config = ml_collections.ConfigDict({'sampling': {'method': 'ddim'}})
  with pytest.raises(ValueError, match="Unknown sampler 'ddim'. Known samplers: dpm_solver, heun, ode, pc"):
    sampling.get_sampling_fn(config, sde_lib.VPSDE(), (1,) + EVENT, identity, 1e-3)
  with pytest.raises(NotImplementedError, match='VESDE, VPSDE, not subVPSDE'):
    sampling.AncestralSamplingPredictor(sde_lib.subVPSDE(), lambda x, t: x)
  with pytest.raises(ValueError, match='no probability-flow'):
    sampling.AncestralSamplingPredictor(sde_lib.VPSDE(), lambda x, t: x, probability_flow=True)


def _sampling_config(method, **sampling_kw):
  from configs import with_defaults  # library code reads every key the defaults define
  return with_defaults(ml_collections.ConfigDict({
    'device': 'cpu', 'training': {'continuous': True},
    'sampling': dict(method=method, predictor='reverse_diffusion', corrector='langevin', snr=0.16,
                     n_steps_each=1, probability_flow=False, noise_removal=True, progress=False,
                     **sampling_kw)}))


def test_get_sampling_fn_builds_the_configured_sampler():
  sde = sde_lib.VESDE(N=30)
  model = ExactScoreModel(sde, GAUSSIAN)
  shape = (4,) + EVENT
  direct = sampling.get_pc_sampler(sde, shape, sampling.ReverseDiffusionPredictor,
                                   sampling.LangevinCorrector, identity, snr=0.16,
                                   continuous=True, eps=1e-5, device='cpu')
  from_config = sampling.get_sampling_fn(_sampling_config('pc'), sde, shape, identity, 1e-5)
  torch.manual_seed(12)
  a = direct(model)
  torch.manual_seed(12)
  b = from_config(model)
  assert torch.equal(a[0], b[0]) and a[1] == b[1] == 60
  ode = sampling.get_sampling_fn(_sampling_config('ODE', ode_method='rk4', ode_num_steps=5), sde,
                                 shape, identity, 1e-5)
  assert ode(model)[1] == 21  # 5 rk4 steps + the denoising step (noise_removal)


# --- A tiny NCSN++ end to end. ---

def tiny_ncsnpp_config():
  """The parity fixture's NCSN++ config shrunk to nf 8 on 8x8 images."""
  config = ml_collections.ConfigDict(torch.load(FIXTURES / 'parity' / 've__cifar10_ncsnpp_continuous.pt',
                                                weights_only=False)['config'])
  config.model.nf = 8
  config.data.image_size = 8
  config.device = 'cpu'
  # a reference config: completed with the keys added since, as every entry does
  return with_defaults(config)


def tiny_ncsnpp():
  from models import utils as mutils
  torch.manual_seed(0)
  config = tiny_ncsnpp_config()
  return config, mutils.create_model(config).eval()


@pytest.mark.parametrize('method', ['pc', 'ode-RK45', 'ode-dopri5', 'ode-heun'])
def test_tiny_ncsnpp_end_to_end(method):
  config, model = tiny_ncsnpp()
  config.model.num_scales = 4
  sde, eps = sde_lib.get_sde(config)
  shape = (2, 3, 8, 8)
  if method == 'pc':
    sampler = sampling.get_sampling_fn(_sampling_config('pc'), sde, shape, identity, eps)
    expected_nfe = 8
  else:
    sampler = sampling.get_ode_sampler(sde, shape, identity, method=method[4:], rtol=1e-2,
                                       atol=1e-2, num_steps=3, eps=eps, device='cpu')
    expected_nfe = 6 if method == 'ode-heun' else None
  torch.manual_seed(13)
  x, nfe = sampler(model)
  assert x.shape == shape and torch.isfinite(x).all()
  assert nfe > 0 and (expected_nfe is None or nfe == expected_nfe)


# --- Same seed, same numbers as score_sde_pytorch (fixture from tests/fixtures/sampling/). ---

PARITY_MEAN = torch.linspace(-0.5, 0.5, 16).reshape(1, 1, 4, 4)
PARITY_VAR = torch.linspace(0.3, 2, 16).reshape(1, 1, 4, 4)


class PlainVEScore(torch.nn.Module):
  """As when the fixture was made (tests/fixtures/README.md): VE continuous, label sigma,
  output the Gaussian score."""

  def forward(self, x, labels):
    return -(x - PARITY_MEAN) / (PARITY_VAR + labels.reshape(-1, 1, 1, 1) ** 2)


class PlainVPEps(torch.nn.Module):
  """As when the fixture was made: VP continuous, label 999 t, output -score * std."""

  def forward(self, x, labels):
    t = labels / 999
    log_mean_coeff = -0.25 * t ** 2 * (20 - 0.1) - 0.5 * t * 0.1
    alpha = torch.exp(log_mean_coeff).reshape(-1, 1, 1, 1)
    std = torch.sqrt(1 - torch.exp(2 * log_mean_coeff)).reshape(-1, 1, 1, 1)
    return (x - alpha * PARITY_MEAN) / (alpha ** 2 * PARITY_VAR + std ** 2) * std


@pytest.mark.parametrize('sde_name', ['ve', 'vp'])
def test_same_numbers_as_the_reference(sde_name):
  """Under torch.manual_seed(0) the PC samplers, the ODE sampler (RK45, denoised) and
  likelihood_fn (RK45, Rademacher) reproduce score_sde_pytorch's outputs."""
  import likelihood
  ref = torch.load(FIXTURES / 'sampling' / 'reference_samples.pt', weights_only=False)
  sde, model = (sde_lib.VESDE(N=100), PlainVEScore()) if sde_name == 've' else \
    (sde_lib.VPSDE(N=100), PlainVPEps())
  shape = (8, 1, 4, 4)
  for p, c in [('reverse_diffusion', 'langevin'), ('euler_maruyama', 'ald'),
               ('ancestral_sampling', 'none')]:
    sampler = sampling.get_pc_sampler(sde, shape, sampling.get_predictor(p),
                                      sampling.get_corrector(c), identity, snr=0.16,
                                      continuous=True, eps=1e-3, device='cpu')
    torch.manual_seed(0)
    assert torch.allclose(sampler(model)[0], ref[f'{sde_name}/{p}/{c}'], rtol=1e-5, atol=1e-5), (p, c)
  torch.manual_seed(0)
  x = sampling.get_ode_sampler(sde, shape, identity, denoise=True, device='cpu')(model)[0]
  # Within the solver's tolerances (rtol = atol = 1e-5), which bound each step's error, not the
  # sample's: the adaptive step sequence depends on the last bits of the drift. The ODE sampler
  # computes the SDE's coefficients in float64 (one float time per batch), the reference in
  # float32 (its VP std sqrt(1 - exp(.)) cancels near t = eps). Measured VP gaps to the
  # reference: 1.3e-5 on an Intel AVX-512 CPU, 3.0e-5 on an AMD EPYC one (57 evaluations); the
  # same test network evaluated in float64 moves the sample by 7.8e-5 (45 evaluations). A wrong
  # drift or step rule moves it by 1e-2 or more.
  assert torch.allclose(x, ref[f'{sde_name}/ode'], rtol=1e-5, atol=1e-4)
  data = PARITY_MEAN + PARITY_VAR.sqrt() * torch.randn(shape, generator=torch.Generator().manual_seed(1))
  torch.manual_seed(0)
  bpd, z, _ = likelihood.get_likelihood_fn(sde, lambda v: (v + 1) / 2)(model, data)
  assert torch.allclose(bpd, ref[f'{sde_name}/bpd'], atol=1e-5)
  assert torch.allclose(z, ref[f'{sde_name}/z'], rtol=1e-5, atol=1e-5)
