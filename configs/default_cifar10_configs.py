"""Defaults shared by the CIFAR-10 configs (32x32), and the meaning of every config key.

`default_celeba_configs` and `default_lsun_configs` start from these and change a few values.
Each config under ve/, vp/ and subvp/ then sets the SDE, the sampler and the network.

Keys that the configs set (not defined here):
  training.sde           'vesde' | 'vpsde' | 'subvpsde', built by `sde_lib.get_sde`.
  sampling.method        'pc' (predictor-corrector), 'ode', or a fast sampler ('heun',
                         'dpm_solver', 'unipc'; see sampling.num_steps / order).
  sampling.predictor     registered predictor, e.g. 'reverse_diffusion', 'euler_maruyama',
                         'ancestral_sampling', 'none'.
  sampling.corrector     registered corrector: 'langevin', 'ald' (annealed Langevin) or 'none'.
  data.category          LSUN scene ('bedroom', 'church_outdoor').
  data.tfrecords_path    the official TFRecord file of FFHQ / CelebA-HQ (kept for reference;
                         this project reads image folders from `data.root`).
  model.name             registered network: 'ncsnpp', 'ddpm', 'ncsn', 'ncsnv2_64', 'ncsnv2_128'.
  model.scale_by_sigma   divide the network output by sigma (VE models predict the score).
  model.ema_rate         decay of the exponential moving average of the weights.
  model.normalization    'GroupNorm' (NCSN++/DDPM) or 'InstanceNorm++' (NCSN/NCSNv2).
  model.nonlinearity     'swish' | 'elu' | 'relu' | 'lrelu'.
  model.nf               base channel count; level i has nf * ch_mult[i] channels.
  model.ch_mult          channel multiplier per resolution level (one level per entry).
  model.num_res_blocks   residual blocks per level.
  model.attn_resolutions feature-map sizes that get a self-attention block.
  model.resamp_with_conv up/downsample with a 3x3 convolution rather than pure resampling.
  model.conditional      condition the network on the noise level / time.
  model.fir, fir_kernel  resample with an FIR filter (StyleGAN2's upfirdn2d) and its taps.
  model.skip_rescale     scale skip connections by 1/sqrt(2).
  model.resblock_type    'ddpm' or 'biggan' (BigGAN blocks resample inside the block).
  model.progressive      output path: 'none' | 'output_skip' | 'residual'.
  model.progressive_input  input path: 'none' | 'input_skip' | 'residual'.
  model.progressive_combine  how the progressive paths merge: 'sum' | 'cat'.
  model.attention_type   'ddpm' self-attention.
  model.init_scale       scale of the last layer of each block at init (0: start as identity).
  model.fourier_scale    std of the Gaussian Fourier features ('fourier' embedding).
  model.conv_size        kernel size of the NCSN++ convolutions.
  model.interpolation    NCSN/NCSNv2 upsampling mode.
  optim.amsgrad          (NCSN configs) kept for the record; Adam is built without it.
"""
import ml_collections
import torch
from ml_collections import config_dict


def get_default_configs():
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128
  training.n_iters = 1300001
  training.snapshot_freq = 50000               # steps between kept checkpoints
  training.log_freq = 50
  training.eval_freq = 100                     # steps between evaluation-loss logs
  training.snapshot_freq_for_preemption = 10000  # steps between the overwritten resume checkpoint
  training.snapshot_sampling = True            # draw samples at each snapshot
  training.likelihood_weighting = False        # weight the loss by g(t)^2 (Song et al. 2021b)
  training.importance_weighting = False        # with it, t ~ g^2 / std^2 and reweighted: the same
                                               # loss, far lower variance (importance.py)
  training.smallest_time = 1e-5                # t of the continuous loss is drawn from [this, 1]
  training.dequantizer = False                 # train a variational dequantizer q(u | x) with
                                               # the model, on the likelihood bound (dequantizer.py)
  training.dequantizer_nf = 32                 # its channels
  training.dequantizer_couplings = 4           # its affine coupling layers
  training.continuous = True                   # sample t in [eps, 1] (False: discrete N levels)
  training.reduce_mean = False                 # mean (not sum) of the loss over pixels
  training.max_runtime_s = config_dict.placeholder(float)  # stop after this many seconds of
                                               # this process, as on SIGTERM: checkpoint, exit
                                               # status 75 (docs/cluster.md); None: no limit
  # Precision and speed (precision.py). The defaults give the numbers score_sde_pytorch gives.
  training.precision = 'fp32'                  # 'fp32' | 'bf16' | 'fp16': autocast of the forward
                                               # pass and loss (fp16 with a gradient scaler);
                                               # weights, Adam and EMA stay float32
  training.compile = False                     # torch.compile the network (needs g++ / Triton)
  training.compile_mode = 'default'            # its mode: 'default' | 'reduce-overhead' |
                                               # 'max-autotune' (also sampling.compile_mode)
  training.cudnn_benchmark = config_dict.placeholder(bool)  # autotune cuDNN convolutions;
                                               # None: on when training on CUDA
  training.tf32 = config_dict.placeholder(bool)  # CUDA: TF32 matmuls and convolutions (True),
                                               # neither (False); None: torch's default
                                               # (convolutions only, as the reference ran)
  # Post-hoc EMA (phema.py, docs/phema.md): power-function EMAs tracked while training, from
  # whose snapshots --mode phema reconstructs an EMA of any width afterwards.
  training.phema_sigma_rels = ()               # relative widths tracked: () off; EDM2's
                                               # (0.05, 0.1) with --config.training.
                                               # phema_sigma_rels=0.05,0.1
  training.phema_snapshot_freq = 25000         # steps between snapshots (and the last step);
                                               # the disk use is logged when training starts
  training.phema_snapshot_dtype = 'float32'    # snapshots' dtype: 'float32' | 'float16' (half
                                               # the disk; ~1e-4 relative rounding)

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.n_steps_each = 1                    # corrector steps per noise level
  sampling.noise_removal = True                # final denoising step (no noise) at t = eps
  sampling.probability_flow = False            # predictor follows the probability-flow ODE
  sampling.snr = 0.16                          # signal-to-noise ratio of the Langevin corrector
  sampling.num_steps = 18                      # steps of the fast samplers (heun: noise levels,
                                               # 2 num_steps - 1 NFE; dpm_solver, unipc: NFE,
                                               # a final denoising step included)
  # The few-step solvers' settings; None: chosen for num_steps and the SDE (fast_sampling.
  # budget_settings, docs/few_step_sampling.md). dpm_solver: once one of order / dpm_method /
  # dpm_schedule is set (and not denoise_to_zero, which is newer), those left None keep their
  # former defaults (3, 'singlestep', 'logsnr', False): such configs sample as before.
  sampling.order = config_dict.placeholder(int)  # 'dpm_solver' / 'unipc' order (1, 2 or 3)
  sampling.dpm_method = config_dict.placeholder(str)  # 'singlestep' | 'multistep' (DPM-Solver)
  sampling.dpm_algorithm = 'dpmsolver++'       # 'dpmsolver++' (data prediction) | 'dpmsolver'
  sampling.dpm_schedule = config_dict.placeholder(str)  # the noise levels of dpm_solver / unipc:
                                               # 'logsnr' | 'time_uniform' | 'time_quadratic' |
                                               # 'edm'
  sampling.denoise_to_zero = config_dict.placeholder(bool)  # dpm_solver / unipc: the last
                                               # evaluation returns D(x; sigma_last), the sample
                                               # at t = 0
  sampling.unipc_variant = config_dict.placeholder(str)  # UniPC's B(h): 'bh1' (h) | 'bh2'
  sampling.step_ladder = ''                    # dpm_solver / unipc: a ladder JSON written by
                                               # scripts/optimize_ladder.py ('': none)
  sampling.heun_schedule = 'edm'               # Heun's noise levels: 'edm' (rho) | 'logsnr' | ...
  sampling.heun_rho = 7.                       # EDM's rho
  sampling.churn = 0.                          # EDM's S_churn (0: deterministic Heun)
  sampling.ode_method = 'RK45'                 # 'ode' sampler: scipy's RK45 (the paper's),
                                               # on-device 'dopri5', or fixed-step 'euler',
                                               # 'midpoint', 'heun', 'rk4'
  sampling.ode_rtol = 1e-5                     # tolerances of the adaptive ODE methods
  sampling.ode_atol = 1e-5
  sampling.ode_num_steps = 100                 # steps of the fixed-step ODE methods
  sampling.progress = True                     # show a tqdm bar (with ETA) while sampling
  sampling.precision = 'fp32'                  # the network's precision while sampling (as
                                               # training.precision); sampler state stays fp32
  sampling.compile = False                     # torch.compile the network for sampling
  sampling.compile_mode = 'default'

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 9                      # first checkpoint number evaluated
  evaluate.end_ckpt = 26                       # last checkpoint number evaluated
  evaluate.batch_size = 1024
  evaluate.enable_sampling = False             # sample and compute FID / IS / KID
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False                  # compute likelihoods (bits/dim)
  evaluate.enable_bound = False                # and the SDE model's likelihood bound (bits/dim)
  evaluate.bound_num_samples = 1000            # time samples per image of the bound (reference's)
  evaluate.dequantization = 'uniform'          # of the 8-bit data for bits/dim: 'uniform' (the
                                               # paper's), 'variational' (the checkpoint's trained
                                               # dequantizer); 'none' is refused (no meaning)
  evaluate.bpd_dataset = 'test'                # split for the likelihoods: 'train' | 'test'
  evaluate.bpd_rtol = 1e-5                     # ODE tolerances of the likelihood (the reference's)
  evaluate.bpd_atol = 1e-5
  evaluate.precision = 'fp32'                  # the network's precision in evaluation sampling
                                               # (FID / IS / KID); bits/dim always run in fp32
  evaluate.inception_path = config_dict.placeholder(str)  # clean-fid's inception-2015-12-05.pt
  evaluate.inception_mode = 'legacy_tensorflow'  # resize as TF-GAN ('legacy_tensorflow') | 'clean'
  evaluate.inception_batch_size = 100
  evaluate.stats_file = config_dict.placeholder(str)  # dataset statistics; None: assets/stats/
  evaluate.is_splits = 10                      # Inception Score splits (the paper's 10)
  evaluate.feature_network = 'auto'            # sample features: 'inception' (IS/FID/KID),
                                               # 'digits' (digits_quality.py's classifier: FD and
                                               # classifier score with their real-data floor),
                                               # 'auto': digits on DIGITS, Inception elsewhere
  evaluate.bpd_num_repeats = config_dict.placeholder(int)  # passes over the bits/dim split with
                                               # fresh dequantization noise; None: the
                                               # reference's 5 on test, 1 on train
  evaluate.ckpt_timeout_s = 3 * 24 * 3600.     # give up waiting for a checkpoint after this
  evaluate.ckpt_poll_s = 60.                   # how often to look for it

  # --mode sample (sample_lib.py): images from one checkpoint with the sampler config.sampling
  # selects, written to WORKDIR/generated/<out>/ (grid.png, images/<seed>.png, samples.npz,
  # meta.json). Image k's noise comes from its own generator, seeded by (config.seed, k): it is
  # the same whatever the batch size, the number of processes or a restart. The Langevin
  # corrector then sizes its step per image (not from the batch-mean norms), and the adaptive
  # ODE methods (RK45, dopri5) still share one step sequence per batch (within their tolerances).
  config.sample = sample = ml_collections.ConfigDict()
  sample.ckpt = 'latest'                       # N (checkpoints/checkpoint_N.pth), 'latest', or
                                               # a checkpoint file (official ones too)
  sample.num = 64                              # images to draw (seeds 0 .. num - 1)
  sample.batch_size = 64                       # images per sampler call
  sample.ema = True                            # the EMA weights (False: the raw weights)
  sample.pc_steps = 0                          # PC steps of a continuous-time model; 0: its
                                               # model.num_scales (which stays as trained)
  sample.seeds = ''                            # '' (0 .. num - 1) or seeds / ranges: '0,5,10-19'
  sample.out = ''                              # folder under WORKDIR/generated; '': from the
                                               # step, task / sampler and a hash of the settings
  sample.task = 'generate'                     # 'generate' | 'inpaint' | 'colorize' |
                                               # 'conditional' (the last three: PC sampler)
  sample.input = ''                            # inpaint / colorize: image folder; '': eval split
  sample.mask = 'center'                       # inpaint: hide 'center' | 'right' | 'random'
  sample.class_label = -1                      # conditional: the class; -1: seed mod classes
  sample.classifier_ckpt = ''                  # conditional: '' = newest checkpoint under
                                               # WORKDIR/classifier/checkpoints

  # --mode phema (phema_lib.py): EMAs reconstructed from the snapshots of a run trained with
  # training.phema_sigma_rels, written as ordinary checkpoints to WORKDIR/phema/.
  config.phema = ph = ml_collections.ConfigDict()
  ph.sigma_rels = '0.02,0.04,0.06,0.08,0.1,0.13,0.16,0.2'  # widths to reconstruct (comma-separated)
  ph.ema_rates = ''                            # classic EMA decays to fit too, e.g. '0.999,0.9999'
                                               # (score_sde's warm-up included); '': none
  ph.step = 'latest'                           # 'latest' or the step of a snapshot
  ph.sweep = False                             # also score each EMA (digits quality number on
                                               # DIGITS, FID elsewhere): sweep.json, sweep.png
  ph.sweep_num_samples = 256                   # images scored per EMA and repeat
  ph.sweep_repeats = 3                         # repeats with other seeds: the spread
  ph.sweep_baseline = True                     # also score the EMA (model.ema_rate) of the
                                               # training checkpoint of the same step, if any

  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'CIFAR10'
  data.image_size = 32
  data.random_flip = True                      # horizontal flips in training
  data.centered = False                        # data in [-1, 1] (True) or [0, 1] (False)
  data.uniform_dequantization = False
  data.num_channels = 3
  data.root = config_dict.placeholder(str)     # image folder (FFHQ, CelebA-HQ, LSUN); None here
  data.download = False                        # let torchvision download where the licence allows
  data.num_workers = config_dict.placeholder(int)  # loader processes; None: 0 for in-memory
                                               # data (DIGITS, CIFAR10, SVHN), min(4, CPUs) else
  data.skip_unreadable = False                 # image folders: train without the files PIL
                                               # cannot open (False: refuse to start)

  config.model = model = ml_collections.ConfigDict()
  model.sigma_min = 0.01                       # VE SDE noise range
  model.sigma_max = 50.
  model.num_scales = 1000                      # N: discrete noise levels / time steps
  model.beta_min = 0.1                         # VP / sub-VP beta(t) range
  model.beta_max = 20.
  model.dropout = 0.1
  model.embedding_type = 'fourier'             # 'fourier' (of log sigma) | 'positional'
  model.channels_last = False                  # NHWC layout of the network's activations (pays
                                               # off with bf16 / fp16); checkpoints stay NCHW
  model.checkpointing = 'none'                 # 'blocks' | 'all': recompute activations in backward
                                               # (same gradients, less memory; docs/memory.md)

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.
  optim.optimizer = 'Adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000                          # steps of linear learning-rate warm-up
  optim.grad_clip = 1.                         # gradient-norm clip (negative: none)
  optim.adam_impl = 'default'                  # 'default' (torch's choice, as the reference),
                                               # 'foreach' (same numbers), 'fused' (~1 ulp off)

  # The noise-conditional classifier for class-conditional sampling (classifier_lib.py):
  # the JAX original's WRN-28-10; loop settings left None follow config.training.
  config.classifier = classifier = ml_collections.ConfigDict()
  classifier.blocks_per_group = 4              # residual blocks per group (depth 6k + 4)
  classifier.channel_multiplier = 10           # widths 16k, 32k, 64k
  classifier.embedding_size = 128              # Fourier features of log(sigma)
  classifier.fourier_scale = 16.
  classifier.ema_rate = 0.999
  classifier.n_iters = config_dict.placeholder(int)
  classifier.log_freq = config_dict.placeholder(int)
  classifier.eval_freq = config_dict.placeholder(int)
  classifier.snapshot_freq = config_dict.placeholder(int)
  classifier.snapshot_freq_for_preemption = config_dict.placeholder(int)
  classifier.eval_times = (0., 0.25, 0.5)      # t of the reported test accuracies (0: clean)

  config.seed = 42
  config.device = torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu')
  return config
