"""NCSN++ with the VE SDE on the embedded 16x16 digits: the quick start (2,000 steps, ~5
minutes on 2 CPU cores), clean digits under every sampler.

    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode train
    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode sample
    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits --mode eval

The network is CIFAR-10's NCSN++ made small: nf 32, ch_mult (1, 2, 2), one res-block per level,
no attention, no FIR, no progressive input (1.2M parameters). Three choices, each measured with
the digits quality number (bench/digits_recipe.md), make the probability-flow ODE samplers (RK45,
DPM-Solver, Heun) as clean as the PC sampler after 2,000 steps; with CIFAR-10's values 46 % of
their samples were noise:
  data.centered = True       data in [-1, 1], as DDPM++ has it;
  model.sigma_max = 10       about 0.6x the largest distance between two training digits (17):
                             20 left noise images, 5 and 7 cost sample quality;
  model.fourier_scale = 0.1  Fourier features of log sigma that vary slowly with it (CIFAR-10's
                             16 makes them oscillate ~100 times over the sigma range).
Samples are drawn with the paper's PC sampler (reverse diffusion + Langevin, 200 steps, 400
evaluations; the best digits here); DPM-Solver++ at 20 evaluations is
--config.sampling.method=dpm_solver (README: the sampler table).
"""
from configs.default_cifar10_configs import get_default_configs
from configs.ve._ncsnpp import set_ncsnpp


def get_config():
  config = set_ncsnpp(get_default_configs())
  training = config.training
  training.continuous = True
  training.batch_size = 64
  training.n_iters = 2000
  training.snapshot_freq = 1000                # samples/iter_1000, iter_2000
  training.snapshot_freq_for_preemption = 250
  training.log_freq = 50
  training.eval_freq = 100

  evaluate = config.eval                       # --mode eval of the last checkpoint in minutes
  evaluate.begin_ckpt = 2
  evaluate.end_ckpt = 2
  evaluate.batch_size = 100                    # the 300 test digits in 3 batches
  evaluate.enable_sampling = True              # the digits quality number: no download
  evaluate.num_samples = 300                   # as many as the floor's held-out digits
  evaluate.enable_bpd = True
  evaluate.bpd_num_repeats = 1                 # the reference's 5 passes take 5x as long

  data = config.data
  data.dataset = 'DIGITS'
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False                     # a mirrored digit is not a digit
  data.centered = True

  model = config.model                         # CIFAR-10's NCSN++, made small (see above)
  model.sigma_min = 0.01
  model.sigma_max = 10.
  model.num_scales = 200                       # PC sampling steps
  model.dropout = 0.1
  model.nf = 32
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.fir = False
  model.progressive_input = 'none'
  model.embedding_type = 'fourier'
  model.fourier_scale = 0.1

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200
  optim.grad_clip = 1.
  return config
