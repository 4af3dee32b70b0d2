"""pipelines.py: ScoreSdeVeScheduler and ScoreSdeVePipeline against closed forms, against our
PC sampler, and (when diffusers is installed) against diffusers' own classes."""
import math

import numpy as np
import pytest
import torch

import diffusers_convert
import pipelines
import sampling
import sde_lib
from models.utils import create_model



MU, S0 = 0.5, 0.1  # Gaussian data N(MU, S0^2 I): its score at noise sigma is known exactly


class GaussianScore(torch.nn.Module):
  """Exact score of N(MU, S0^2) perturbed by N(0, sigma^2): -(x - MU) / (S0^2 + sigma^2)."""

  def __init__(self, mu=MU):
    super().__init__()
    self.mu = mu

  def forward(self, x, sigma):
    return -(x - self.mu) / (S0 ** 2 + sigma.reshape(-1, 1, 1, 1) ** 2)


# The smallest faithful NCSN++ of diffusers' kind (attention levels need >= 128 channels).
TINY_UNET = dict(sample_size=8, block_out_channels=[32, 128], layers_per_block=1,
                 down_block_types=['SkipDownBlock2D', 'AttnSkipDownBlock2D'],
                 up_block_types=['AttnSkipUpBlock2D', 'SkipUpBlock2D'],
                 time_embedding_type='fourier', mid_block_scale_factor=math.sqrt(2.),
                 norm_eps=1e-6, norm_num_groups=None, attention_head_dim=None,
                 center_input_sample=True)


def tiny_ncsnpp(seed=0):
  """Our NCSN++ with TINY_UNET's architecture and random (non-zero-init) weights."""
  config = diffusers_convert.ncsnpp_config(TINY_UNET)
  config.device = torch.device('cpu')
  model = create_model(config).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.ndim > 1 else 0.1))
  return model


def _scheduler(**kw):
  return pipelines.ScoreSdeVeScheduler(**{**dict(num_train_timesteps=50, snr=0.16, sigma_max=10.),
                                          **kw})


def _pipeline(model, scheduler, **kw):
  pipe = pipelines.ScoreSdeVePipeline(model, scheduler, **kw)
  pipe.set_progress_bar_config(disable=True)
  return pipe


# --- scheduler, closed forms ----------------------------------------------------------------------
def test_schedule_is_the_ve_sde():
  s = pipelines.ScoreSdeVeScheduler()
  assert dict(s.config) == dict(num_train_timesteps=2000, snr=0.15, sigma_min=0.01,
                                sigma_max=1348.0, sampling_eps=1e-5, correct_steps=1)
  assert s.config.snr == 0.15 and s.init_noise_sigma == 1348.0 and len(s) == 2000
  assert s.order == 1
  s.set_timesteps(7)
  s.set_sigmas(7)
  t = torch.linspace(1, 1e-5, 7, dtype=torch.float64)
  np.testing.assert_allclose(s.timesteps, t, rtol=1e-6)
  np.testing.assert_allclose(s.sigmas, 0.01 * (1348.0 / 0.01) ** t, rtol=2e-5)  # sigma(t_i)
  ladder = s.discrete_sigmas.double()
  np.testing.assert_allclose(ladder[[0, -1]], [0.01, 1348.0], rtol=1e-5)
  np.testing.assert_allclose(ladder[1:] / ladder[:-1], (1348.0 / 0.01) ** (1 / 6), rtol=1e-5)
  with pytest.raises(AttributeError, match='frozen'):
    s.config.snr = 0.2
  assert s.scale_model_input(t) is t


def test_step_pred_is_the_reverse_smld_step():
  """x_mean = x + (sigma_i^2 - sigma_{i-1}^2) s, x = x_mean + sqrt(.) z, i = floor(t (N - 1))."""
  N = 10
  s = _scheduler()
  s.set_timesteps(N)
  s.set_sigmas(N)
  ve = sde_lib.VESDE(0.01, 10., N)
  x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
  score = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
  for t in [s.timesteps[0], s.timesteps[4], s.timesteps[-1]]:
    out = s.step_pred(score, t, x, generator=torch.Generator().manual_seed(2))
    _, G = ve.discretize(x, t.expand(3))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    g = G.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out.prev_sample_mean, x + g ** 2 * score, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prev_sample, x + g ** 2 * score + g * z, rtol=1e-5, atol=1e-5)
  # at the last step (index 0) the adjacent sigma is 0, so G = sigma_min
  _, mean = s.step_pred(score, s.timesteps[-1], x, return_dict=False)
  torch.testing.assert_close(mean, x + 0.01 ** 2 * score)


def test_step_correct_is_langevin_with_snr_step():
  s = _scheduler(snr=0.2)
  x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
  score = 3 * torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
  new = s.step_correct(score, x, generator=torch.Generator().manual_seed(2)).prev_sample
  z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
  eps = 2 * (0.2 * z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()) ** 2
  torch.testing.assert_close(new, x + eps * score + (2 * eps).sqrt() * z)
  # one generator per example: example b uses generator b's first draw
  gens = [torch.Generator().manual_seed(10 + b) for b in range(4)]
  new = s.step_correct(score, x, generator=gens)[0]
  z = torch.cat([torch.randn((1, 3, 4, 4), generator=torch.Generator().manual_seed(10 + b))
                 for b in range(4)])
  eps = 2 * (0.2 * z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()) ** 2
  torch.testing.assert_close(new, x + eps * score + (2 * eps).sqrt() * z)
  with pytest.raises(ValueError, match='generators'):
    s.step_correct(score, x, generator=gens[:3])


def test_scheduler_and_pipeline_copy_and_pickle():
  """copy.deepcopy / pickle rebuild the frozen config from its items (diffusers' copy too)."""
  import copy
  import pickle
  s = _scheduler(snr=0.2)
  for other in (copy.deepcopy(s), pickle.loads(pickle.dumps(s)), copy.copy(s)):
    assert other.config == s.config and other.config.snr == 0.2
    with pytest.raises(AttributeError, match='frozen'):
      other.config['snr'] = 1.
  pipe = _pipeline(GaussianScore(), s, sample_size=4, num_channels=3)
  assert copy.deepcopy(pipe).scheduler.config == s.config


def test_scheduler_config_round_trip(tmp_path):
  s = _scheduler(correct_steps=2)
  s.save_pretrained(tmp_path)
  loaded = pipelines.ScoreSdeVeScheduler.from_pretrained(tmp_path)
  assert loaded.config == s.config
  assert torch.equal(loaded.discrete_sigmas, s.discrete_sigmas)
  assert pipelines.ScoreSdeVeScheduler.from_config(s.config, snr=0.3).config.snr == 0.3
  with pytest.warns(UserWarning, match=r"no parameter\(s\) \['tensor_format'\]"):
    old = pipelines.ScoreSdeVeScheduler.from_config({**s.config, 'tensor_format': 'pt'})
  assert old.config == s.config
  with pytest.raises(FileNotFoundError, match='scheduler_config.json'):
    pipelines.ScoreSdeVeScheduler.from_pretrained(tmp_path / 'nowhere')


# --- pipeline, closed form and our PC sampler ---------------------------------------------------
def test_pipeline_samples_gaussian_data():
  """With the exact score of N(0.5, 0.1^2), 100 PC steps draw that law (mean, std); 20 steps
  are visibly too coarse (the discretisation error of this sampler)."""
  print()
  for steps in (20, 100):
    pipe = _pipeline(GaussianScore(), _scheduler(num_train_timesteps=steps), sample_size=4,
                     num_channels=3)
    images = pipe(batch_size=500, num_inference_steps=steps, output_type='np',
                  generator=torch.Generator().manual_seed(0)).images
    print(f'{steps} steps: sample mean {images.mean():.4f} (exact {MU}), '
          f'std {images.std():.4f} (exact {S0})')
  assert images.shape == (500, 4, 4, 3) and images.dtype == np.float32
  assert abs(images.mean() - MU) < 3e-3  # std of the mean is ~7e-4
  assert abs(images.std() / S0 - 1) < 0.03


def test_pipeline_equals_pc_sampler():
  """The pipeline is get_pc_sampler(VESDE(N=steps), ReverseDiffusion, Langevin, continuous,
  eps=1e-5, denoise=True) with the output clamped to [0, 1]: same generator, same samples."""
  print()
  for steps in (5, 20):
    for mu in (MU, 0.95):  # 0.95: about 30% of the pixels end above 1 and get clamped
      model = GaussianScore(mu)
      pipe = _pipeline(model, _scheduler(), sample_size=4, num_channels=3)
      ours = pipe(batch_size=8, num_inference_steps=steps, output_type='np',
                  generator=torch.Generator().manual_seed(0)).images
      sampler = sampling.get_pc_sampler(
        sde_lib.VESDE(0.01, 10., steps), (8, 3, 4, 4), sampling.ReverseDiffusionPredictor,
        sampling.LangevinCorrector, lambda x: x, snr=0.16, n_steps=1, continuous=True, eps=1e-5,
        denoise=True, device='cpu')
      pc, nfe = sampler(model, generator=torch.Generator().manual_seed(0))
      pc = pc.permute(0, 2, 3, 1).numpy()
      diff_clamped = np.abs(ours - pc.clip(0, 1)).max()
      diff_raw = np.abs(ours - pc).max()
      clamped = np.mean((pc < 0) | (pc > 1))
      print(f'steps {steps}, data mean {mu}: max|pipeline - clamp(pc_sampler)| = '
            f'{diff_clamped:.3g}, max|pipeline - pc_sampler| = {diff_raw:.3g} '
            f'({clamped:.0%} clamped)')
      assert nfe == 2 * steps
      assert diff_clamped <= 1e-6
      np.testing.assert_array_equal(ours, pc.clip(0, 1))


def test_pipeline_maps_a_centred_model_back_from_minus_one_one(tmp_path):
  """A model trained on data in [-1, 1] (config.data.centered, as the quick-start digits): the
  pipeline applies the samplers' inverse scaler before clamping, so it still equals the PC
  sampler (it clamped the raw [-1, 1] samples before: half the pixels black). diffusers' own
  pipeline cannot: exporting such a model warns."""
  import ml_collections
  model = GaussianScore(-0.4)
  model.config = ml_collections.ConfigDict({'data': {'centered': True}})
  pipe = _pipeline(model, _scheduler(), sample_size=4, num_channels=3)
  ours = pipe(batch_size=8, num_inference_steps=5, output_type='np',
              generator=torch.Generator().manual_seed(0)).images
  sampler = sampling.get_pc_sampler(
    sde_lib.VESDE(0.01, 10., 5), (8, 3, 4, 4), sampling.ReverseDiffusionPredictor,
    sampling.LangevinCorrector, lambda x: (x + 1.) / 2., snr=0.16, n_steps=1, continuous=True,
    eps=1e-5, denoise=True, device='cpu')
  pc, _ = sampler(model, generator=torch.Generator().manual_seed(0))
  np.testing.assert_array_equal(ours, pc.permute(0, 2, 3, 1).numpy().clip(0, 1))
  assert 0.2 < ours.mean() < 0.4  # (-0.4 + 1) / 2 = 0.3
  centred = tiny_ncsnpp()
  centred.config.data.centered = True
  with pytest.warns(UserWarning, match=r'samples in \[-1, 1\].*\(x \+ 1\) / 2'):
    diffusers_convert.save_pipeline_folder(tmp_path, centred, _scheduler())
  back, _ = diffusers_convert.load_pipeline_folder(tmp_path)  # and back: center_input_sample=False
  assert back.config.data.centered


def test_pipeline_outputs_and_progress_bar(capsys):
  model = tiny_ncsnpp()
  pipe = pipelines.ScoreSdeVePipeline(model, _scheduler())
  out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
  err = capsys.readouterr().err  # tqdm writes to stderr
  assert '3/3' in err, f'no progress bar in stderr: {err!r}'
  assert isinstance(out, pipelines.ImagePipelineOutput) and len(out.images) == 2
  assert out.images[0].size == (8, 8) and out.images[0].mode == 'RGB'
  pipe.set_progress_bar_config(disable=True)
  arr, = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
              output_type='np', return_dict=False)
  assert 0 <= arr.min() and arr.max() <= 1
  np.testing.assert_array_equal(np.stack([np.asarray(im) for im in out.images]),
                                (arr * 255).round().astype(np.uint8))
  with pytest.raises(ValueError, match='output_type'):
    pipe(output_type='latent')
  with pytest.raises(ValueError, match='sample_size'):
    pipelines.ScoreSdeVePipeline(GaussianScore(), _scheduler())(num_inference_steps=1)


# --- against diffusers --------------------------------------------------------------------------
def _diffusers():
  return pytest.importorskip('diffusers', reason='diffusers is a test dependency '
                             '(requirements-dev.txt); these tests compare against it')


def test_schedule_and_steps_match_diffusers():
  diffusers = _diffusers()
  kw = dict(num_train_timesteps=100, snr=0.16, sigma_min=0.02, sigma_max=50., correct_steps=2)
  ours, theirs = pipelines.ScoreSdeVeScheduler(**kw), diffusers.ScoreSdeVeScheduler(**kw)
  for attr in ('timesteps', 'sigmas', 'discrete_sigmas'):
    assert torch.equal(getattr(ours, attr), getattr(theirs, attr)), attr
  assert ours.init_noise_sigma == theirs.init_noise_sigma
  x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
  score = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
  for n in (7, 2000):
    for s in (ours, theirs):
      s.set_timesteps(n, sampling_eps=1e-3)
      s.set_sigmas(n)
    for attr in ('timesteps', 'sigmas', 'discrete_sigmas'):
      assert torch.equal(getattr(ours, attr), getattr(theirs, attr)), (n, attr)
    for t in list(ours.timesteps[:3]) + list(ours.timesteps[-3:]) + [0.5]:
      for gen in (lambda: torch.Generator().manual_seed(3),
                  lambda: [torch.Generator().manual_seed(b) for b in range(3)]):
        a = ours.step_pred(score, t, x, generator=gen())
        b = theirs.step_pred(score, t, x, generator=gen())
        assert torch.equal(a.prev_sample, b.prev_sample)
        assert torch.equal(a.prev_sample_mean, b.prev_sample_mean)
        a = ours.step_correct(score, x, generator=gen())
        b = theirs.step_correct(score, x, generator=gen())
        assert torch.equal(a.prev_sample, b.prev_sample)
  idx = torch.tensor([0, 5, 99])
  assert torch.equal(ours.add_noise(x, score, idx), theirs.add_noise(x, score, idx))


def test_scheduler_config_read_by_diffusers(tmp_path):
  diffusers = _diffusers()
  ours = _scheduler(correct_steps=3)
  ours.save_pretrained(tmp_path)
  theirs = diffusers.ScoreSdeVeScheduler.from_pretrained(tmp_path)
  assert {k: theirs.config[k] for k in ours.config} == dict(ours.config)
  theirs.save_pretrained(tmp_path / 'back')
  assert pipelines.ScoreSdeVeScheduler.from_pretrained(tmp_path / 'back').config == ours.config


def test_pipeline_matches_diffusers(tmp_path):
  """Same converted weights, same torch.Generator seed: same images (np) as diffusers'."""
  diffusers = _diffusers()
  model = tiny_ncsnpp()
  scheduler = _scheduler()
  ours = _pipeline(model, scheduler)
  ours.save_pretrained(tmp_path)
  theirs = diffusers.ScoreSdeVePipeline.from_pretrained(tmp_path)
  theirs.set_progress_bar_config(disable=True)
  print()
  for steps in (1, 2, 5):
    for gen in (lambda: torch.Generator().manual_seed(steps),
                lambda: [torch.Generator().manual_seed(10 + b) for b in range(2)]):
      a = ours(batch_size=2, num_inference_steps=steps, generator=gen(), output_type='np').images
      b = theirs(batch_size=2, num_inference_steps=steps, generator=gen(), output_type='np').images
      print(f'{steps} steps: max|ours - diffusers| = {np.abs(a - b).max():.3g}')
      assert a.shape == b.shape == (2, 8, 8, 3)
      np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
      assert 0.05 < a.std()  # not all clamped to one value
  # the scheduler state the pipeline leaves behind is diffusers' too
  assert torch.equal(ours.scheduler.sigmas, theirs.scheduler.sigmas)
  # our pipeline also drives diffusers' UNet2DModel (its output has .sample)
  mixed = _pipeline(theirs.unet, _scheduler())
  a = mixed(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
            output_type='np').images
  b = theirs(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type='np').images
  np.testing.assert_array_equal(a, b)


def test_pipeline_precision_runs_the_network_under_autocast():
  """precision='bf16' rounds the network (its score moves by ~1e-2 relative) and nothing else:
  samples move a little, the output stays float32; an unknown precision is refused."""
  model = tiny_ncsnpp()
  outs = {}
  for precision in ('fp32', 'bf16'):
    pipe = _pipeline(model, _scheduler(num_train_timesteps=5), precision=precision)
    outs[precision] = pipe(batch_size=2, num_inference_steps=5, output_type='np',
                           generator=torch.Generator().manual_seed(0)).images
  assert outs['bf16'].dtype == np.float32
  diff = np.abs(outs['bf16'] - outs['fp32'])
  assert 0 < diff.max() < 0.1, diff.max()
  x = torch.randn(2, 3, 8, 8)
  sigma = torch.full((2,), 3.)
  exact = model(x, sigma)
  rounded = _pipeline(model, _scheduler(), precision='bf16')._score(x, sigma)
  assert rounded.dtype == torch.float32
  rel = ((rounded - exact).norm() / exact.norm()).item()
  assert 1e-4 < rel < 5e-2, rel
  with pytest.raises(ValueError, match='Unknown precision'):
    pipelines.ScoreSdeVePipeline(model, _scheduler(), precision='int8')
