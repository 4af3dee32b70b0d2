"""NCSN++ with the VE SDE on the embedded 16x16 digits: trains on 2 CPU cores in ~10 minutes.

The network is the second variant of /work/shared/measurements.md (nf 32, ch_mult (1, 2, 2), one
res-block per level, no attention, no FIR, no progressive input; 1.2M parameters, ~0.27 s per
step of 64 images on 2 cores): 2,000 steps give recognisable digits with the PC sampler.
    python main.py --config configs/ve/digits_ncsnpp_continuous.py --workdir runs/digits_ve --mode train
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

  evaluate = config.eval
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 2
  evaluate.batch_size = 100                    # the 300 test digits in 3 batches
  evaluate.num_samples = 1000
  evaluate.enable_bpd = True                   # offline: loss and bits/dim need no download

  data = config.data
  data.dataset = 'DIGITS'
  data.image_size = 16
  data.num_channels = 1
  data.random_flip = False                     # a mirrored digit is not a digit
  data.centered = False

  model = config.model                         # CIFAR-10's NCSN++, made small (see above)
  model.sigma_min = 0.01
  model.sigma_max = 20.                        # ~ the largest distance between two digits
  model.num_scales = 200                       # PC sampling steps
  model.dropout = 0.1
  model.nf = 32
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = ()
  model.fir = False
  model.progressive_input = 'none'
  model.embedding_type = 'fourier'
  model.fourier_scale = 16

  optim = config.optim
  optim.lr = 1e-3
  optim.warmup = 200
  optim.grad_clip = 1.
  return config
