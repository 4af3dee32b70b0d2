"""Post-hoc EMA (phema.py, phema_lib.py): EDM2's closed forms against numerical integrals and the
tracking recursion, the least-squares coefficients against the normal equations built from
integrals, exact reconstruction of an EMA tracked in the same run, kill-and-resume bit identity
with the tracked averages in the resume checkpoint, and --mode phema's checkpoints."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import integrate

import phema
import phema_lib
import run_lib
from checkpoints import load_score_model
from test_train import tiny_config

WIDTHS = (0.05, 0.1)


def profile(t, sigma_rel):
  """The continuous power-function profile ending at t: tau -> (g + 1) tau^g / t^(g + 1)."""
  g = float(phema.sigma_rel_to_gamma(sigma_rel))
  return lambda tau: (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.


def test_gamma_and_width_are_inverse_and_match_edm2():
  gammas = phema.sigma_rel_to_gamma(WIDTHS)
  # EDM2's two tracked profiles: gamma 16.97 (sigma_rel 0.05) and 6.94 (0.10).
  assert gammas == pytest.approx([16.97, 6.94], abs=0.01)
  widths = np.linspace(0.01, 0.28, 12)
  assert phema.gamma_to_sigma_rel(phema.sigma_rel_to_gamma(widths)) == pytest.approx(widths, rel=1e-9)
  # sigma_rel is the profile's standard deviation over t, by integration.
  for w in (0.03, 0.1, 0.25):
    p = profile(1., w)
    mean = integrate.quad(lambda u: u * p(u), 0, 1)[0]
    var = integrate.quad(lambda u: (u - mean) ** 2 * p(u), 0, 1)[0]
    assert math.sqrt(var) == pytest.approx(w, rel=1e-6)


@pytest.mark.parametrize('a,b', [((1000., 0.05), (1000., 0.1)), ((400., 0.1), (1000., 0.05)),
                                 ((1000., 0.2), (300., 0.02)), ((700., 0.08), (700., 0.08))])
def test_correlation_is_the_integral_of_the_profiles_product(a, b):
  pa, pb = profile(*a), profile(*b)
  numeric = integrate.quad(lambda u: pa(u) * pb(u), 0, min(a[0], b[0]), limit=200)[0]
  assert phema.correlation(a[0], a[1], b[0], b[1]) == pytest.approx(numeric, rel=1e-7)


def test_tracker_follows_the_discrete_profile_and_it_the_power_function():
  """Tracker.update on unit vectors gives `tracked_profile` exactly, and that profile is the
  power function on the step grid (to O(1/t))."""
  T = 400
  weights = torch.zeros(T, dtype=torch.float64, requires_grad=True)
  tracker = phema.Tracker(WIDTHS, [weights])
  tracker.averages = [[torch.zeros(T, dtype=torch.float64)] for _ in WIDTHS]
  for k in range(T):
    with torch.no_grad():
      weights.zero_()
      weights[k] = 1.
    tracker.update()
  for w, average in zip(WIDTHS, tracker.averages):
    exact = phema.tracked_profile(w, T)
    assert average[0].numpy() == pytest.approx(exact, abs=1e-14)
    assert exact.sum() == pytest.approx(1.)
    # Total variation to the power function on the grid: 0.02 at t = 400, falling as 1/t.
    tv = [np.abs(phema.tracked_profile(w, n) - [profile(n, w)(k) for k in range(1, n + 1)]).sum()
          for n in (T, 4 * T)]
    assert tv[0] < 0.03 and tv[1] / tv[0] == pytest.approx(0.25, abs=0.03)


def _integral_normal_equations(in_t, in_s, out_t, out_s):
  """A, B of the least squares built from numerical integrals (not the closed forms)."""
  def inner(a, b):
    pa, pb = profile(*a), profile(*b)
    return integrate.quad(lambda u: pa(u) * pb(u), 0, min(a[0], b[0]), limit=200)[0]
  ins = list(zip(in_t, in_s))
  A = np.array([[inner(x, y) for y in ins] for x in ins])
  B = np.array([inner(x, (out_t, out_s)) for x in ins])
  return A, B


def test_coefficients_solve_the_least_squares_built_from_integrals():
  in_t = [250., 250., 500., 500., 750., 750., 1000., 1000.]
  in_s = [0.05, 0.1] * 4
  A, B = _integral_normal_equations(in_t, in_s, 1000., 0.07)
  x = np.linalg.solve(A, B)
  X = phema.solve_coefficients(in_t, in_s, 1000., [0.07])
  assert X[:, 0] == pytest.approx(x / x.sum(), rel=1e-5, abs=1e-6)
  assert X.sum() == pytest.approx(1.)
  # A profile among the inputs is itself: coefficient 1 on it, 0 elsewhere.
  X = phema.solve_coefficients(in_t, in_s, 750., [0.1])
  assert X[:, 0] == pytest.approx(np.eye(8)[5], abs=1e-8)
  # The fit's squared L2 error (closed forms) is a tenth of the best single snapshot's or less.
  q = float(phema.correlation(1000., 0.07, 1000., 0.07))
  x = phema.solve_coefficients(in_t, in_s, 1000., [0.07])[:, 0]
  err = q - 2 * x @ B + x @ A @ x
  assert 0 <= err < 0.1 * min(q - 2 * B + np.diag(A)) and err < 5e-3 * q


def test_exponential_fit_beats_every_single_snapshot():
  in_t = [t for t in range(100, 1001, 100) for _ in WIDTHS]
  in_s = list(WIDTHS) * 10
  x = phema.exponential_coefficients(in_t, in_s, 0.99, 1000)
  target = phema.exponential_profile(0.99, 1000)
  target = np.concatenate([[target[0] + target[1]], target[2:]])
  basis = np.zeros((len(in_t), 1000))
  for i, (t, s) in enumerate(zip(in_t, in_s)):
    basis[i, :t] = phema.tracked_profile(s, t)
  fit = np.linalg.norm(x @ basis - target)
  assert x.sum() == pytest.approx(1.)
  assert fit < 0.2 * min(np.linalg.norm(b - target) for b in basis)


def test_bad_widths_name_the_key():
  config = tiny_config(5, **{'training.phema_sigma_rels': (0.05, 0.3)})
  with pytest.raises(ValueError, match='training.phema_sigma_rels'):
    phema.check_training_config(config)
  config = tiny_config(5, **{'training.phema_snapshot_dtype': 'bf16'})
  with pytest.raises(ValueError, match='phema_snapshot_dtype'):
    phema.check_training_config(config)
  with pytest.raises(ValueError, match='phema.sigma_rels'):
    phema.parse_widths('0.1,abc', 'phema.sigma_rels')


def _phema_config(n_iters, widths=(0.05, 0.07, 0.1), freq=10, **more):
  return tiny_config(n_iters, **{'training.phema_sigma_rels': widths,
                                 'training.phema_snapshot_freq': freq, 'optim.lr': 5e-3,
                                 'model.dropout': 0., **more})


def _rel_rms(a, b):
  a, b = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
  return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_a_tracked_ema_is_reconstructed_from_the_other_snapshots(tmp_path, dtype):
  """Track 0.05, 0.07 and 0.10; rebuild 0.07 at the last step from the 0.05 / 0.10 snapshots
  alone: within 1e-3 relative RMS of the weights, and far closer than the nearest tracked EMA;
  from float16 snapshots too (each rounded at 5e-4 relative)."""
  config = _phema_config(80, freq=4, **{'training.eval_freq': 1000, 'training.log_freq': 1000,
                                        'training.phema_snapshot_dtype': dtype})
  state = run_lib.train(config, str(tmp_path))
  snapshots = phema.list_snapshots(str(tmp_path))
  assert [s for s, _ in snapshots] == list(range(4, 81, 4))
  inputs = [(path, i) for _, path in snapshots for i in (0, 2)]
  t = [phema.load_snapshot(p)['t'] for p, _ in inputs]
  assert t[-1] == 81
  X = phema.solve_coefficients(t, [WIDTHS[i // 2] for i in (0, 2)] * 20, 81, [0.07])
  rebuilt = phema.reconstruct(inputs, X)[0]
  last = phema.load_snapshot(snapshots[-1][1])['averages']
  error = _rel_rms(rebuilt, last[1])
  nearest = min(_rel_rms(last[0], last[1]), _rel_rms(last[2], last[1]))
  raw = _rel_rms([p.detach() for p in state['model'].parameters() if p.requires_grad], last[1])
  print(f'relative RMS: reconstruction {error:.2e}, nearest tracked {nearest:.2e}, raw {raw:.2e}')
  assert error < 1e-3 and error < 0.05 * nearest


def test_resume_is_bit_identical_with_tracking(tmp_path):
  whole, split = tmp_path / 'whole', tmp_path / 'split'
  run_lib.train(_phema_config(12, widths=WIDTHS, freq=4), str(whole))
  run_lib.train(_phema_config(7, widths=WIDTHS, freq=4), str(split))  # stops after step 7
  run_lib.train(_phema_config(12, widths=WIDTHS, freq=4), str(split))  # and resumes
  from conftest import assert_same_run
  a, b = (torch.load(d / 'checkpoints-meta' / 'checkpoint.pth', weights_only=True)
          for d in (whole, split))
  assert_same_run(a, b)
  assert a['phema']['t'] == b['phema']['t'] == 13
  for x, y in zip(a['phema']['averages'], b['phema']['averages']):
    assert all(torch.equal(u, v) for u, v in zip(x, y))
  resumed = dict(phema.list_snapshots(str(split)))
  for s, p in phema.list_snapshots(str(whole)):
    assert all(torch.equal(u, v) for u, v in zip(
      phema.load_snapshot(p)['averages'][1], phema.load_snapshot(resumed[s])['averages'][1]))
  assert [s for s, _ in phema.list_snapshots(str(split))] == [4, 7, 8, 12]  # 7: the short run's end
  # Snapshot checkpoints stay ordinary (no tracker state in them).
  assert 'phema' not in torch.load(whole / 'checkpoints' / 'checkpoint_0.pth', weights_only=True)


def test_resume_without_tracker_state(tmp_path):
  """A run trained without tracking resumes with it off (its older config.json lacks the keys);
  turning it on for that run is refused, naming the setting."""
  run_lib.train(tiny_config(4), str(tmp_path))
  path = tmp_path / 'config.json'
  saved = json.loads(path.read_text())
  for key in ('phema_sigma_rels', 'phema_snapshot_freq', 'phema_snapshot_dtype'):
    del saved['training'][key]
  del saved['phema']
  path.write_text(json.dumps(saved))
  run_lib.train(tiny_config(6), str(tmp_path))
  config = _phema_config(6, widths=WIDTHS)
  with pytest.raises(ValueError, match='phema_sigma_rels'):
    run_lib.train(config, str(tmp_path))
  model = torch.nn.Linear(2, 2)
  with pytest.raises(ValueError, match='holds no power-function EMA state'):
    phema.tracker_for_run(config, model, str(tmp_path), 7, None)


def test_mode_phema_writes_ordinary_checkpoints(tmp_path, capsys):
  config = _phema_config(30, widths=WIDTHS, freq=10, **{'training.snapshot_freq': 30})
  run_lib.train(config, str(tmp_path))
  config.phema.sigma_rels = '0.05,0.08'
  config.phema.ema_rates = '0.9'
  paths = phema_lib.run(config, str(tmp_path))
  assert sorted(paths) == ['phema_30_ema0.9', 'phema_30_sigma0.050', 'phema_30_sigma0.080']
  assert 'phema_30_sigma0.080.pth' in capsys.readouterr().out
  # A tracked width at the last snapshot is that snapshot (coefficient 1).
  model, step = load_score_model(config, paths['phema_30_sigma0.050'])
  assert step == 31
  last = phema.load_snapshot(phema.list_snapshots(str(tmp_path))[-1][1])['averages'][0]
  trainable = [p for p in model.parameters() if p.requires_grad]
  assert _rel_rms(trainable, last) < 1e-6
  info = json.loads((tmp_path / 'phema' / 'reconstruction_30.json').read_text())
  assert len(info['inputs']) == 6 and info['outputs']['phema_30_sigma0.080']['sigma_rel'] == 0.08
  config.phema.step = '15'
  with pytest.raises(ValueError, match='phema.step=15'):
    phema_lib.run(config, str(tmp_path))


def test_sweep_scores_each_ema_and_marks_the_best(tmp_path):
  config = _phema_config(10, widths=WIDTHS, freq=5, **{'training.snapshot_freq': 10})
  run_lib.train(config, str(tmp_path))
  config.phema.sigma_rels = '0.03,0.1'
  config.phema.sweep = True
  config.phema.sweep_num_samples = 12
  config.phema.sweep_repeats = 2
  phema_lib.run(config, str(tmp_path))
  sweep = json.loads((tmp_path / 'phema' / 'sweep.json').read_text())
  rows = {r['name']: r for r in sweep['rows']}
  assert sorted(rows) == ['checkpoint_ema0.999', 'phema_10_sigma0.030', 'phema_10_sigma0.100']
  assert rows['checkpoint_ema0.999']['tracked'] and rows['checkpoint_ema0.999']['sigma_rel'] is None
  for r in rows.values():
    fd = [v['digits_fd'] for v in r['values']]
    assert len(fd) == 2 and r['mean']['digits_fd'] == pytest.approx(np.mean(fd))
    assert r['std']['digits_fd'] == pytest.approx(np.std(fd, ddof=1))
  assert sweep['best'] == min(('phema_10_sigma0.030', 'phema_10_sigma0.100'),
                              key=lambda n: rows[n]['mean']['digits_fd'])
  from PIL import Image
  with Image.open(tmp_path / 'phema' / 'sweep.png') as image:
    assert image.size == (640, 400)


def test_sweep_scores_fid_off_digits(tmp_path):
  """With config.eval.feature_network='inception' the sweep ranks by FID (a stand-in Inception
  network and statistics of 40 real digits here)."""
  import datasets
  import evaluation
  from test_evaluation import save_stand_in
  config = _phema_config(5, widths=WIDTHS, freq=5)
  run_lib.train(config, str(tmp_path))
  config.eval.feature_network = 'inception'
  config.eval.inception_path = str(save_stand_in(tmp_path / 'standin.pt'))
  config.eval.stats_file = str(tmp_path / 'stats.npz')
  inception = evaluation.get_inception_model(config)
  train_ds, _, _ = datasets.get_dataset(config, evaluation=True)
  real = datasets.to_uint8(next(iter(train_ds))[:40].clamp(0, 1))
  evaluation.save_stats(config.eval.stats_file, inception(real)['pool_3'], inception.mode)
  config.phema.sigma_rels, config.phema.sweep, config.phema.sweep_baseline = '0.1', True, False
  config.phema.sweep_num_samples, config.phema.sweep_repeats = 10, 1
  phema_lib.run(config, str(tmp_path))
  sweep = json.loads((tmp_path / 'phema' / 'sweep.json').read_text())
  assert sweep['metric'] == 'fid' and sweep['best'] == 'phema_5_sigma0.100'
  assert np.isfinite(sweep['rows'][0]['mean']['fid'])
