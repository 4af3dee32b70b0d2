"""Write notebooks/score_sde_demo.ipynb (outputs stripped) from the cells below.

    python notebooks/make_notebook.py            # rewrite the notebook
    python notebooks/make_notebook.py --check    # exit 1 if the committed notebook differs

Edit the cells here, not in Jupyter, so that the notebook stays reviewable as plain Python and
tests/test_notebook.py can check that the committed file is this script's output.
"""
import argparse
import pathlib
import sys

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK = HERE / 'score_sde_demo.ipynb'
DRIVE = 'https://drive.google.com/drive/folders/'

CELLS = [
  ('md', f'''\
# Score-based generative modeling through SDEs: a walkthrough

The steps of the paper's PyTorch Colab ([Song et al., ICLR 2021](https://arxiv.org/abs/2011.13456);
[Colab](https://colab.research.google.com/drive/17lTrPLTt_0EDXa4hkbHmbAFQEkpRDZnh)) with this
repository's code, on the small digits model shipped in `assets/pretrained/ve_digits.pth`
(NCSN++ under the VE SDE, 1.2M parameters, 16x16 digits, trained with the README's quick-start
command). It runs on the CPU in a few minutes, and on CUDA when a GPU is visible.

Open it from the repository root or from `notebooks/` (`pip install jupyterlab`, then
`jupyter lab notebooks/score_sde_demo.ipynb`).
`SCORESDE_NOTEBOOK_QUICK=1` shrinks every sample count, step count and tolerance so that the
whole notebook runs in well under a minute (the test suite runs it that way; the pictures are
then rough).'''),
  ('code', '''\
import os, pathlib, sys, time, warnings
import torch

# tqdm.auto warns when ipywidgets is missing; this notebook shows no progress bars.
warnings.filterwarnings('ignore', message='IProgress not found')

# The repository root on the import path, whether Jupyter started in notebooks/ or in the root.
ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / 'sde_lib.py').is_file())
sys.path.insert(0, str(ROOT))

QUICK = os.environ.get('SCORESDE_NOTEBOOK_QUICK') == '1'  # tiny runs (tests/test_notebook.py)
device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
B = 4 if QUICK else 64                # images per sample grid (PC, DPM-Solver, pipeline)
B_SLOW = 4 if QUICK else 16           # images for the adaptive ODE solvers, likelihood, inpainting
PC_STEPS = 20 if QUICK else None      # None: the config's model.num_scales
ODE_TOL = 1e-2 if QUICK else 1e-3     # rtol = atol of the ODE samplers
BPD_TOL = 1e-2 if QUICK else 1e-5     # rtol = atol for likelihoods and decoding (the paper's)
print(f'device: {device}, quick mode: {QUICK}')'''),
  ('code', '''\
import IPython.display
from PIL import Image
from torchvision.utils import make_grid


def show(images, title='', nrow=8, scale=4):
  """Display images (B, C, H, W) with values in [0, 1] as one grid, enlarged `scale` times."""
  grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.)
  picture = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype('uint8'))
  if title:
    print(title)
  IPython.display.display(picture.resize((picture.width * scale, picture.height * scale),
                                         Image.NEAREST))'''),
  ('md', '''\
## 1. Config and SDE

A config is score_sde's `ml_collections.ConfigDict`; `configs/default_cifar10_configs.py` explains
every key once. `training.sde` picks the SDE (`vesde`, `vpsde`, `subvpsde`); `model.sigma_min` /
`model.sigma_max` (VE) or `model.beta_min` / `model.beta_max` (VP, sub-VP) set its noise
schedule; `model.num_scales` is N, the number of discretisation steps of the PC sampler;
`data.centered` says whether the network sees data in [-1, 1] or [0, 1].
`sde_lib.get_sde(config)` is the one place a config becomes an SDE; it also returns `eps`, the
last time the samplers reach (1e-5 for VE, 1e-3 for VP and sub-VP).'''),
  ('code', '''\
import datasets, sde_lib
from configs import load_config

config = load_config('ve/digits_ncsnpp_continuous')
config.device = device
config.data.num_workers = 0                                # the test digits are in memory
sde, eps = sde_lib.get_sde(config)
scaler = datasets.get_data_scaler(config)                  # data in [0, 1] -> the network's range
inverse_scaler = datasets.get_data_inverse_scaler(config)  # and back
shape = (B, config.data.num_channels, config.data.image_size, config.data.image_size)
print(f'{type(sde).__name__}: sigma from {sde.sigma_min} to {sde.sigma_max}, N = {sde.N}, '
      f'eps = {eps}; batches of {shape}')'''),
  ('md', f'''\
## 2. Restore the checkpoint

`assets/pretrained/ve_digits.pth` has score_sde_pytorch's checkpoint layout (`model` with
`module.` keys, `ema`, `step`) with only the EMA weights, stored in float16 and restored as
float32. `utils.restore_checkpoint` loads it strictly, with `weights_only=True`; `ema.copy_to`
puts the averaged weights, the ones the paper samples with, into the network.
(`pretrained.load('ve_digits')` does these lines in one.)

The paper's own checkpoints load the same way: download one from score_sde_pytorch's
[Google Drive]({DRIVE}1tFmF_uh57O6lx9ggtZT_5LdonVK2cV-e) and load the config of the same name,
e.g.

| checkpoint | config | sample shape |
|---|---|---|
| [`ve/cifar10_ncsnpp_continuous/checkpoint_24.pth`]({DRIVE}1b0gy_LLgO_DaQBgoWXwlVnL_rcAUgREh) | `ve/cifar10_ncsnpp_continuous` | (B, 3, 32, 32) |
| [`vp/cifar10_ddpmpp_continuous/checkpoint_8.pth`]({DRIVE}1xYjVMx10N9ivQQBIsEoXEeu9nvSGTBrC) | `vp/cifar10_ddpmpp_continuous` | (B, 3, 32, 32) |
| [`subvp/cifar10_ddpmpp_continuous/checkpoint_26.pth`]({DRIVE}1bLgmnEAZnysRZfWt8qN3omGfijJ_B884) | `subvp/cifar10_ddpmpp_continuous` | (B, 3, 32, 32) |
| [`ve/celebahq_256_ncsnpp_continuous/`]({DRIVE}19VJ7UZTE-ytGX6z5rl-tumW9c0Ps3itk) (its one checkpoint) | `ve/celebahq_256_ncsnpp_continuous` | (B, 3, 256, 256) |

CelebA-HQ 256 is also on the Hugging Face Hub as a diffusers pipeline,
`google/ncsnpp-celebahq-256`; section 11 shows how to load such a hub id. The 32x32 CIFAR-10 models take
seconds per image on a CPU at the paper's step counts, the 256x256 ones minutes: use a GPU.'''),
  ('code', '''\
import utils
from models import utils as mutils
from models.ema import ExponentialMovingAverage

ckpt = ROOT / 'assets' / 'pretrained' / 've_digits.pth'
model = mutils.create_model(config)
ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
state = utils.restore_checkpoint(ckpt, dict(model=model, ema=ema, step=0), config.device)
ema.copy_to(model.parameters())
model.eval()
print(f'{sum(p.numel() for p in model.parameters()):,} parameters, step {state["step"]}, '
      f'{next(model.parameters()).dtype}')
print('how it was made:', state['meta'])

# The 300 test digits (a fixed split of scikit-learn's digits), in batches of config.eval.batch_size.
_, test_batches, _ = datasets.get_dataset(config, evaluation=True)
digits = next(iter(test_batches))[:B_SLOW].to(device)
show(digits, f'{len(digits)} test digits')'''),
  ('md', '''\
## 3. Predictor-corrector sampling

The paper's Algorithm 1: at each of N times from T down to `eps`, `n_steps` corrector steps
(Langevin MCMC at that noise level) and one predictor step (a step of the reverse-time SDE).
The config's choices are `sampling.predictor` (`reverse_diffusion`, `euler_maruyama`,
`ancestral_sampling`, `none`), `sampling.corrector` (`langevin`, `ald`, `none`), `sampling.snr`
(the corrector's step size: larger gives smoother samples), `sampling.n_steps_each` and N
(`model.num_scales`). Each step costs `1 + n_steps` network evaluations (NFE).
`sampling.get_sampling_fn(config, ...)` builds the sampler the config names; here the
score_sde_pytorch entry point is called directly, with an SDE of `PC_STEPS` steps.'''),
  ('code', '''\
import sampling

steps = PC_STEPS or config.model.num_scales
pc_sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max, N=steps)
pc_sampler = sampling.get_pc_sampler(pc_sde, shape, sampling.ReverseDiffusionPredictor,
                                     sampling.LangevinCorrector, inverse_scaler,
                                     snr=config.sampling.snr, n_steps=config.sampling.n_steps_each,
                                     continuous=config.training.continuous, eps=eps, device=device)
start = time.time()
pc_samples, nfe = pc_sampler(model, generator=torch.Generator().manual_seed(0))
show(pc_samples, f'PC sampling: {steps} steps, NFE = {nfe}, {time.time() - start:.1f} s')'''),
  ('md', '''\
## 4. Probability-flow ODE sampling

The deterministic ODE with the same marginals as the SDE (Eq. 13), integrated from T to `eps`
by an adaptive solver: scipy's RK45 as in the paper (the state goes to the host at every
evaluation), or `dopri5`, the same Dormand-Prince pair on the device. The config keys are
`sampling.method = 'ode'`, `sampling.ode_method`, `sampling.ode_rtol`, `sampling.ode_atol`; the
NFE follows from the tolerances (here 1e-3; the paper's 1e-5 takes about three times as many
evaluations). The same noise gives the same image with either solver.'''),
  ('code', '''\
ode_shape = (B_SLOW,) + shape[1:]
for method in ('RK45', 'dopri5'):
  ode_sampler = sampling.get_ode_sampler(sde, ode_shape, inverse_scaler, rtol=ODE_TOL,
                                         atol=ODE_TOL, method=method, eps=eps, device=device)
  start = time.time()
  ode_samples, nfe = ode_sampler(model, generator=torch.Generator().manual_seed(0))
  show(ode_samples, f'probability-flow ODE, {method}, tol {ODE_TOL:g}: NFE = {nfe}, '
                    f'{time.time() - start:.1f} s')'''),
  ('md', '''\
## 5. A fast sampler: DPM-Solver++ at 10-20 NFE

DPM-Solver++ (Lu et al. 2022) integrates the same ODE in a few large steps
(`sampling.method = 'dpm_solver'`, `sampling.num_steps` = the NFE, `sampling.order`,
`sampling.dpm_method` = `multistep` or `singlestep`); docs/samplers.md's sampler table compares it with
the others at equal NFE. EDM's Heun sampler is `sampling.method = 'heun'`.'''),
  ('code', '''\
fast_config = config.copy_and_resolve_references()
fast_config.sampling.method = 'dpm_solver'
fast_config.sampling.dpm_method = 'multistep'
fast_config.sampling.order = 2
fast_config.sampling.progress = False
for nfe_budget in (10, 20):
  fast_config.sampling.num_steps = nfe_budget
  fast_sampler = sampling.get_sampling_fn(fast_config, sde, shape, inverse_scaler, eps)
  start = time.time()
  fast_samples, nfe = fast_sampler(model, generator=torch.Generator().manual_seed(0))
  show(fast_samples, f'DPM-Solver++ (2M): NFE = {nfe}, {time.time() - start:.1f} s')'''),
  ('md', '''\
## 6. Likelihood: bits/dim on the test digits

The probability-flow ODE gives exact log-likelihoods (Eq. 39): integrate the data from `eps` to
T, add the divergence of the drift (Hutchinson's estimator with a Rademacher probe) and the
prior's log-density. The data are dequantized (`(255 x + u) / 256`, u uniform) as in the paper;
bits/dim count 8-bit pixels. `main.py --mode eval` with `eval.enable_bpd` computes the same over
the whole split (`eval.bpd_dataset`, `eval.bpd_rtol` / `eval.bpd_atol`).'''),
  ('code', '''\
import likelihood

_, dequantized, _ = datasets.get_dataset(config, uniform_dequantization=True, evaluation=True)
data = next(iter(dequantized))[:B_SLOW].to(device)
likelihood_fn = likelihood.get_likelihood_fn(sde, inverse_scaler, rtol=BPD_TOL, atol=BPD_TOL,
                                             eps=1e-5)
start = time.time()
bpd, z, nfe = likelihood_fn(model, scaler(data), generator=torch.Generator().manual_seed(0))
print(f'bits/dim on {len(data)} test digits: {bpd.mean().item():.3f} '
      f'(per digit {", ".join(f"{b:.2f}" for b in bpd[:8].tolist())}{", ..." if len(bpd) > 8 else ""}); '
      f'NFE = {nfe}, {time.time() - start:.1f} s')'''),
  ('md', '''\
## 7. Encode and decode

The likelihood computation also returns the latent code z = x(T) of each digit. Integrating the
ODE back from T with z as the starting point (`get_ode_sampler(...)(model, z=z)`) decodes it:
the round trip returns the digit up to the solver's tolerance.'''),
  ('code', '''\
decoder = sampling.get_ode_sampler(sde, data.shape, inverse_scaler, rtol=BPD_TOL, atol=BPD_TOL,
                                   eps=1e-5, device=device)
decoded, nfe = decoder(model, z=z)
rms = (decoded - data).pow(2).mean().sqrt().item()
show(data, 'digits')
show(z / (4 * z.std()) + 0.5, f'their latent codes z (std {z.std().item():.1f}, shown scaled)')
show(decoded, f'decoded from z: NFE = {nfe}, RMS difference from the digits {rms:.1e}')'''),
  ('md', '''\
## 8. Inpainting

Controllable generation with the unconditional model (App. I.2): PC sampling where, after every
step, the known pixels are replaced by a fresh draw from the forward process at the current time,
so only the masked ones are generated. The mask is 1 on known pixels; here the right half is
hidden. `scripts/controllable.py --tasks inpaint --mask center|right|random` and
`main.py --mode sample --config.sample.task=inpaint` do the same from the command line.'''),
  ('code', '''\
import controllable_generation

mask = torch.ones_like(digits)
mask[..., config.data.image_size // 2:] = 0.
inpainter = controllable_generation.get_pc_inpainter(
  pc_sde, sampling.ReverseDiffusionPredictor, sampling.LangevinCorrector, inverse_scaler,
  snr=config.sampling.snr, n_steps=config.sampling.n_steps_each,
  continuous=config.training.continuous, eps=eps)
inpainted = inpainter(model, scaler(digits), mask, generator=torch.Generator().manual_seed(0))
show(digits * mask, 'the known pixels')
show(inpainted, f'inpainted ({steps} PC steps)')'''),
  ('md', f'''\
## 9. Colorization

Colorization is inpainting in a basis whose first axis is the gray level (App. I.3), so it needs
an RGB model. The digits are gray, so the cell below only says so; with an RGB config and its
checkpoint (e.g. `ve/cifar10_ncsnpp_continuous` and
[`checkpoint_24.pth`]({DRIVE}1b0gy_LLgO_DaQBgoWXwlVnL_rcAUgREh) from section 2) the same cell
colorizes gray versions of its test images.'''),
  ('code', '''\
if config.data.num_channels == 3:
  colorizer = controllable_generation.get_pc_colorizer(
    pc_sde, sampling.ReverseDiffusionPredictor, sampling.LangevinCorrector, inverse_scaler,
    snr=config.sampling.snr, n_steps=config.sampling.n_steps_each,
    continuous=config.training.continuous, eps=eps)
  gray = digits.mean(1, keepdim=True).expand(-1, 3, -1, -1)
  show(gray, 'gray inputs')
  show(colorizer(model, scaler(gray), generator=torch.Generator().manual_seed(0)), 'colorized')
else:
  print(f'Colorization skipped: {config.data.dataset} has {config.data.num_channels} channel(s); '
        'it needs an RGB model such as ve/cifar10_ncsnpp_continuous.')'''),
  ('md', '''\
## 10. Class-conditional sampling

Conditional generation adds the gradient of a noise-conditional classifier's log p_t(y | x) to
the score at every step (Eq. 14, App. I.4). The classifier (the JAX original's Wide-ResNet, sized
by `config.classifier`) is trained on digits perturbed by the same SDE. Here a small one is
trained for a few hundred steps with the same code as
`python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train_classifier`
(a temporary workdir; it prints its test accuracy at a few noise levels). Each row of the picture
asks for one class.'''),
  ('code', '''\
import logging, tempfile
import checkpoints, classifier_lib

clf_config = config.copy_and_resolve_references()
clf_steps = 100 if QUICK else 500
clf_config.classifier = dict(blocks_per_group=1, channel_multiplier=2, n_iters=clf_steps,
                             log_freq=clf_steps, eval_freq=clf_steps, snapshot_freq=clf_steps,
                             snapshot_freq_for_preemption=clf_steps)
clf_config.optim.warmup = 20
start = time.time()
with tempfile.TemporaryDirectory() as workdir:
  result = classifier_lib.train_classifier(clf_config, workdir)
  classifier = checkpoints.load_classifier(
    clf_config, pathlib.Path(workdir) / 'classifier' / 'checkpoints' / 'checkpoint_1.pth')
  for handler in logging.getLogger().handlers[:]:  # close its log file before the folder goes
    if str(getattr(handler, 'baseFilename', '')).startswith(workdir):
      logging.getLogger().removeHandler(handler)
      handler.close()
print(f'classifier: {clf_steps} steps in {time.time() - start:.0f} s, test accuracy {result["accuracy"]}')

classes = 2 if QUICK else 10
per_class = 2 if QUICK else 4
labels = torch.arange(classes, device=device).repeat_interleave(per_class)
conditional_sampler = controllable_generation.get_pc_conditional_sampler(
  pc_sde, model, classifier, (len(labels),) + shape[1:], sampling.ReverseDiffusionPredictor,
  sampling.LangevinCorrector, inverse_scaler, snr=config.sampling.snr,
  n_steps=config.sampling.n_steps_each, continuous=config.training.continuous, eps=eps)
conditional = conditional_sampler(labels, generator=torch.Generator().manual_seed(0))
show(conditional, f'classes {labels.unique().tolist()}, {per_class} per row', nrow=per_class)'''),
  ('md', '''\
## 11. The diffusers-style pipeline

`pipelines.ScoreSdeVePipeline` has the API of diffusers' `ScoreSdeVePipeline` (the paper's PC
sampler: reverse diffusion + Langevin) and takes our networks as they are: a VE model called as
`unet(x, sigma)`. `diffusers_convert.scheduler_from_config(config)` makes its scheduler from the
config (`model.num_scales`, `model.sigma_min` / `sigma_max`, `sampling.snr`,
`sampling.n_steps_each`). With the same generator it draws the same images as the PC sampler of
section 3, clamped to [0, 1]. The digits network has no diffusers counterpart, so it is built
here rather than loaded with `from_pretrained`.

A hub id loads as in diffusers, through `huggingface_hub` and its cache
(`pip install huggingface_hub`; with `HF_HUB_OFFLINE=1` only the cache is read; a local folder
works too); CelebA-HQ 256 at the paper's 2000 steps wants a GPU:

```python
pipe = pipelines.ScoreSdeVePipeline.from_pretrained("google/ncsnpp-celebahq-256", device="cuda")
images = pipe(batch_size=4, num_inference_steps=2000, generator=torch.Generator().manual_seed(0)).images
```'''),
  ('code', '''\
import diffusers_convert, pipelines

scheduler = diffusers_convert.scheduler_from_config(config)
pipe = pipelines.ScoreSdeVePipeline(unet=model, scheduler=scheduler)
pipe.set_progress_bar_config(disable=True)
images = pipe(batch_size=B, num_inference_steps=steps, output_type='np',
              generator=torch.Generator().manual_seed(0)).images    # (B, H, W, C) in [0, 1]
images = torch.from_numpy(images).permute(0, 3, 1, 2)
difference = (images - pc_samples.cpu().clamp(0, 1)).abs().max().item()
show(images, f'pipeline, {steps} steps: max |pipeline - PC sampler of section 3| = {difference:.1e}')'''),
  ('md', '''\
## Where next

- Train the digits model yourself (about 5 minutes on 2 CPU cores):
  `python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train`;
  `scripts/export_pretrained.py` turns a run into a file like the one used here.
- Images from any checkpoint with any sampler, one PNG per seed: `main.py --mode sample`.
- FID / IS / KID and bits/dim over whole splits: `main.py --mode eval` (README, Evaluation).'''),
]


def build():
  """The notebook (nbformat 4, no outputs) made from CELLS."""
  make = {'md': nbformat.v4.new_markdown_cell, 'code': nbformat.v4.new_code_cell}
  nb = nbformat.v4.new_notebook()
  nb.metadata.update(kernelspec={'name': 'python3', 'display_name': 'Python 3',
                                 'language': 'python'},
                     language_info={'name': 'python'})
  nb.cells = [make[kind](source) for kind, source in CELLS]
  for i, cell in enumerate(nb.cells):
    cell.id = f'cell-{i:02d}'  # stable ids: regenerating gives the same file
  nbformat.validate(nb)
  return nb


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--check', action='store_true', help='compare with the committed notebook')
  args = parser.parse_args()
  text = nbformat.writes(build()) + '\n'
  if args.check:
    same = NOTEBOOK.is_file() and NOTEBOOK.read_text() == text
    print(f'{NOTEBOOK} is {"up to date" if same else "out of date: run make_notebook.py"}')
    sys.exit(0 if same else 1)
  NOTEBOOK.write_text(text)
  print(f'Wrote {NOTEBOOK} ({len(CELLS)} cells).')


if __name__ == '__main__':
  main()
