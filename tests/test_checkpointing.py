"""Activation checkpointing (model.checkpointing) of NCSN++ / DDPM++ / DDPM: bitwise the gradients
of the plain network (dropout on), the same state dict, a plain call outside training, bf16
autocast, channels_last, DDP, torch.compile, a killed and resumed run; and memory.py, which
measures a training step's memory on fake tensors and explains an out-of-memory error."""
import signal
import subprocess
import sys

import pytest
import torch
import torch.utils.checkpoint

import memory
from conftest import ROOT, assert_same_run
from model_checks import load_parity, parity_config, randomize_
from models import layers
from models import utils as mutils

sys.path.insert(0, str(ROOT / 'bench'))

# (fixture, model overrides): NCSN++ (VE) as in CIFAR-10 and as in CelebA-HQ 256 (progressive
# output and input skips), NCSN++ with DDPM blocks and separate resamplers (every 'all' path),
# DDPM++ (VP) and DDPM; 16x16, nf 16-32, dropout 0.1.
VARIANTS = {
  'ncsnpp_ve': ('ve__cifar10_ncsnpp_continuous', {}),
  'ncsnpp_skips': ('ve__cifar10_ncsnpp_continuous',
                   dict(progressive='output_skip', progressive_input='input_skip')),
  'ncsnpp_ddpm_blocks': ('ve__cifar10_ncsnpp_continuous',
                         dict(resblock_type='ddpm', progressive='residual', fir=False)),
  'ddpmpp_vp': ('vp__cifar10_ddpmpp_continuous', {}),
  'ddpm': ('vp__ddpm__cifar10', {}),
}


def tiny(variant, checkpointing='none', **overrides):
  fixture, options = VARIANTS[variant]
  config = parity_config(load_parity(fixture))
  for key, value in dict(options, checkpointing=checkpointing, **overrides).items():
    config.model[key] = value
  return config


def build(config, seed=0):
  torch.manual_seed(seed)
  return randomize_(mutils.create_model(config), seed).train()


def inputs(config, batch=3):
  g = torch.Generator().manual_seed(1)
  x = torch.rand(batch, config.data.num_channels, 16, 16, generator=g)
  if config.model.name == 'ncsnpp' and config.model.embedding_type == 'fourier':
    return x, torch.tensor([0.01, 1.0, 50.0])[:batch]
  return x, torch.tensor([0., 400.5, 999.])[:batch]


def train_pass(model, x, labels, seed=5):
  """Output, gradients and the global RNG state after one forward + backward from `seed`."""
  torch.manual_seed(seed)
  out = model(x, labels)
  out.float().square().mean().backward()
  grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
  model.zero_grad(set_to_none=True)
  return out.detach(), grads, torch.get_rng_state()


def assert_bitwise(a, b):
  out_a, grads_a, rng_a = a
  out_b, grads_b, rng_b = b
  assert torch.equal(out_a, out_b)
  assert grads_a.keys() == grads_b.keys() and grads_a
  for name, grad in grads_a.items():
    assert torch.equal(grad, grads_b[name]), name
  assert torch.equal(rng_a, rng_b)  # later dropout masks are the same too


@pytest.mark.parametrize('level', ['blocks', 'all'])
@pytest.mark.parametrize('variant', list(VARIANTS))
def test_gradients_are_bitwise_those_without_checkpointing(variant, level):
  assert tiny(variant).model.dropout > 0  # the recomputation must redraw the same masks
  plain, ckpt = build(tiny(variant)), build(tiny(variant, level))
  x, labels = inputs(tiny(variant))
  assert_bitwise(train_pass(plain, x, labels), train_pass(ckpt, x, labels))


@pytest.mark.parametrize('variant', ['ncsnpp_ve', 'ddpm'])
def test_state_dict_is_unchanged(variant):
  plain, ckpt = build(tiny(variant)), build(tiny(variant, 'all'))
  assert [(k, v.shape) for k, v in plain.state_dict().items()] == \
    [(k, v.shape) for k, v in ckpt.state_dict().items()]
  ckpt.load_state_dict(plain.state_dict(), strict=True)


def _count_checkpoints(monkeypatch):
  calls = []
  real = torch.utils.checkpoint.checkpoint

  def counting(*args, **kwargs):
    calls.append(kwargs)
    return real(*args, **kwargs)

  monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', counting)
  return calls


@pytest.mark.parametrize('variant', ['ncsnpp_ve', 'ddpm'])
def test_plain_call_in_eval_mode_and_without_grad(variant, monkeypatch):
  calls = _count_checkpoints(monkeypatch)
  model = build(tiny(variant, 'blocks'))
  x, labels = inputs(tiny(variant))
  with torch.no_grad():
    model(x, labels)  # training mode, but no backward pass can follow
  model.eval()
  out = model(x, labels)
  assert calls == [] and out.requires_grad
  model.train()
  model(x, labels)
  assert calls and all(c == dict(use_reentrant=False, preserve_rng_state=True) for c in calls)


def test_levels_checkpoint_what_they_say(monkeypatch):
  calls = _count_checkpoints(monkeypatch)
  config = tiny('ncsnpp_ddpm_blocks')
  x, labels = inputs(config)
  counts = {}
  for level in ('blocks', 'all'):
    calls.clear()
    build(tiny('ncsnpp_ddpm_blocks', level))(x, labels)
    counts[level] = len(calls)
  model = build(config)
  resnets = sum(isinstance(m, layers.ResnetBlockDDPM) for m in model.all_modules)
  attention = sum(isinstance(m, layers.AttnBlock) for m in model.all_modules)
  # Each residual block: its own checkpoint and one nested in it for each of its two halves.
  assert counts['blocks'] == 3 * resnets + attention
  assert counts['all'] > counts['blocks']  # + resamplers, pyramid steps, output head


def test_unknown_level_is_refused():
  with pytest.raises(ValueError, match="config.model.checkpointing 'layers'.*none, blocks, all"):
    mutils.create_model(tiny('ncsnpp_ve', 'layers'))


def test_configs_default_to_none():
  from configs import load_config
  for name in ('ve/cifar10_ncsnpp_continuous', 've/celebahq_256_ncsnpp_continuous',
               'vp/ddpm/cifar10', 'default_celeba_configs'):
    assert load_config(name).model.checkpointing == 'none'


@pytest.mark.parametrize('variant', ['ncsnpp_ve', 'ddpm'])
def test_bf16_autocast(variant):
  """Under CPU bf16 autocast: the checkpointed network's gradients are bitwise those of the
  plain one in bf16, and close to float32's."""
  runs = {}
  for level in ('none', 'blocks'):
    model = build(tiny(variant, level))
    x, labels = inputs(tiny(variant))
    with torch.autocast('cpu', dtype=torch.bfloat16):
      runs[level] = train_pass(model, x, labels)
  assert_bitwise(runs['none'], runs['blocks'])
  _, fp32, _ = train_pass(build(tiny(variant)), x, labels)
  bf16 = runs['blocks'][1]
  assert all(torch.isfinite(g).all() for g in bf16.values())
  flat = lambda grads: torch.cat([grads[name].flatten() for name in sorted(grads)])
  error = (flat(bf16) - flat(fp32)).norm() / flat(fp32).norm()
  assert error < 0.03, error  # bf16's 8 bits of mantissa through the network and back


def test_channels_last():
  runs = []
  for level in ('none', 'blocks'):
    config = tiny('ncsnpp_ve', level, channels_last=True)
    model = build(config)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()
               if p.dim() == 4)
    x, labels = inputs(config)
    runs.append(train_pass(model, x.to(memory_format=torch.channels_last), labels))
  assert_bitwise(*runs)


def test_ddp_single_process():
  """Under DistributedDataParallel (gloo, one process) the reducer sees the gradients the
  recomputation produces: the same as the plain network's."""
  import torch.distributed as dist
  from torch.nn.parallel import DistributedDataParallel
  dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
  try:
    runs = []
    for level in ('none', 'blocks'):
      model = build(tiny('ncsnpp_ve', level))
      x, labels = inputs(tiny('ncsnpp_ve'))
      out, grads, rng = train_pass(DistributedDataParallel(model), x, labels)
      runs.append((out, {k.removeprefix('module.'): v for k, v in grads.items()}, rng))
    assert_bitwise(*runs)
  finally:
    dist.destroy_process_group()


@pytest.mark.slow
def test_torch_compile():
  """torch.compile (inductor builds C++ on the CPU) of the checkpointed network: eager's
  output and gradients up to float32 reassociation (dropout off: compiled RNG differs)."""
  config = tiny('ncsnpp_ve', 'blocks', dropout=0.)
  model = build(config)
  x, labels = inputs(config)
  _, eager, _ = train_pass(model, x, labels)
  compiled = torch.compile(model)
  _, grads, _ = train_pass(compiled, x, labels)
  for name, grad in eager.items():
    torch.testing.assert_close(grads['_orig_mod.' + name] if '_orig_mod.' + name in grads
                               else grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


# --- Training runs: a SIGKILLed and resumed run with checkpointing ------------------------------

TINY_NCSNPP = {'model.name': 'ncsnpp', 'model.ch_mult': (1, 2), 'model.attn_resolutions': (4,)}


@pytest.mark.slow
def test_sigkill_and_resume_with_checkpointing_gives_the_uninterrupted_weights(tmp_path):
  """test_train's kill test on a tiny NCSN++ (dropout 0.1) with model.checkpointing='blocks':
  the resumed run ends with the uninterrupted run's weights, EMA, Adam state and RNG, and these
  are bitwise those of a run without checkpointing (a resumed run may change the key)."""
  import run_lib
  from test_train import _load, _train_command, tiny_config
  n_iters = 30
  runs = {}
  for level in ('none', 'blocks'):
    run_lib.train(tiny_config(n_iters, **TINY_NCSNPP, **{'model.checkpointing': level}),
                  str(tmp_path / level))
    runs[level] = _load(tmp_path / level / 'checkpoints-meta' / 'checkpoint.pth')
  overrides = dict(TINY_NCSNPP, **{'model.checkpointing': 'blocks'})
  cmd, env = _train_command(tmp_path / 'killed', n_iters, kill_at_meta_save=3, **overrides)
  proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  stopped_at = _load(tmp_path / 'killed' / 'checkpoints-meta' / 'checkpoint.pth')['step']
  assert 0 < stopped_at < n_iters
  run_lib.train(tiny_config(n_iters, **overrides), str(tmp_path / 'killed'))
  runs['killed'] = _load(tmp_path / 'killed' / 'checkpoints-meta' / 'checkpoint.pth')

  whole = runs['blocks']
  for other in (runs['killed'], runs['none']):
    assert whole['step'] == n_iters + 1
    assert_same_run(whole, other)  # dropout's stream included
  assert any('all_modules.' in k for k in whole['model']), list(whole['model'])[:3]  # NCSN++


# --- memory.py ------------------------------------------------------------------------------------

def test_live_bytes_counts_new_storages_until_freed():
  a = torch.zeros(1000)
  with memory.LiveBytes(round_to=1) as tracker:
    b = a * 2             # new: 4000 bytes
    view = b[:10]         # a view: nothing new
    a.add_(1)             # in place on a tensor made before: nothing new
    c = torch.ones(250)   # 1000 bytes
    del b                 # still alive through the view
    assert tracker.live == 5000
    del view, c
    assert tracker.live == 0 and tracker.peak == 5000
  with memory.LiveBytes() as tracker:
    d = torch.ones(3)     # rounded up to CUDA's 512-byte blocks
    assert tracker.live == 512
    del d


def _tiny_train_config(**model):
  from configs import load_config
  config = load_config('ve/digits_ncsnpp_continuous')
  config.model.nf = 8
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = (8,)
  config.model.update(model)
  return config


def test_fake_step_measures_what_the_real_step_allocates():
  """The fake-tensor measurement of a training step equals the count on the real CPU step (CPU
  code paths, exact bytes), for every checkpointing level; in bf16 up to torch's meta kernel of
  GroupNorm, whose mean / rstd are bf16 where the CPU kernel's are float32 (N x groups x 2
  bytes per layer; CUDA autocast runs GroupNorm in float32)."""
  config = _tiny_train_config()
  for precision, ckpt in (('fp32', 'none'), ('fp32', 'blocks'), ('bf16', 'all')):
    fake = memory.measure_step(config, 2, precision, ckpt, fake=True, cuda=False, round_to=1)
    real = memory.measure_step(config, 2, precision, ckpt, fake=False, cuda=False, round_to=1)
    assert real['peak_bytes'] > real['state_bytes'] == fake['state_bytes'] > 0
    tolerance = 0 if precision == 'fp32' else 1e-3 * real['peak_bytes']
    for key in ('peak_bytes', 'forward_backward_bytes', 'update_bytes'):
      assert abs(fake[key] - real[key]) <= tolerance, (precision, ckpt, key)
  # Checkpointing lowers the forward / backward peak, the state stays.
  none, blocks = (memory.measure_step(config, 8, checkpointing=c) for c in ('none', 'blocks'))
  assert blocks['state_bytes'] == none['state_bytes']
  assert blocks['forward_backward_bytes'] < none['forward_backward_bytes']


def test_nested_halves_and_the_skip_gradients_lower_the_peak(monkeypatch):
  """'blocks' recomputes one half of a residual block at a time (checkpoints nested in the
  block's) and the up path's concatenation hands back gradients of their own (not views that
  keep the 2x-wide gradient alive until the down path's backward): each lowers the measured
  peak of a training step, with the gradients still bitwise the plain network's (above)."""
  config = _tiny_train_config(ch_mult=(1, 1), num_res_blocks=2, nf=16)
  peak = lambda: memory.measure_step(config, 8, 'fp32', 'blocks')['forward_backward_bytes']
  both = peak()
  with monkeypatch.context() as m:
    m.setattr(layers, 'checkpoint_halves', lambda model: None)
    without_halves = peak()
  with monkeypatch.context() as m:
    m.setattr(layers._CatChannels, 'apply', lambda h, skip: torch.cat([h, skip], dim=1))
    with_view_gradients = peak()
  assert both < without_halves and both < with_view_gradients, (both, without_halves,
                                                                with_view_gradients)
  h, skip = torch.rand(2, 3, 4, 4, requires_grad=True), torch.rand(2, 5, 4, 4, requires_grad=True)
  grad = torch.rand(2, 8, 4, 4)
  layers._CatChannels.apply(h, skip).backward(grad)
  assert torch.equal(h.grad, grad[:, :3]) and torch.equal(skip.grad, grad[:, 3:])
  assert skip.grad.untyped_storage().nbytes() == skip.grad.numel() * 4


def test_fake_steps_leave_no_fake_tensor_behind():
  config = _tiny_train_config()
  state = torch.get_rng_state()
  memory.measure_step(config, 2)
  assert torch.equal(torch.get_rng_state(), state)
  from models import up_or_down_sampling as uds
  kernel = uds.fir_kernel((1, 3, 3, 1), 1., torch.zeros(1))
  assert type(kernel) is torch.Tensor and kernel.sum().item() == pytest.approx(1.)


@pytest.mark.parametrize('variant', ['ncsnpp_skips', 'ddpm'])
def test_cuda_emulation_matches_cuda_autocast_operator_by_operator(variant):
  """memory.like_cuda on the CPU runs the bf16 forward pass with the operators, output dtypes
  and shapes of CUDA autocast (on fake CUDA tensors: no GPU needed)."""
  import bench_memory
  config = tiny(variant)
  cpu, cuda = (bench_memory.forward_ops(config, 2, device) for device in ('cpu', 'cuda'))
  assert cpu == cuda and len(cpu) > 100
  assert any('native_group_norm' in op[0] and 'torch.float32' in op[1] for op in cuda)


def test_upfirdn2d_shim_is_the_original_off_the_cpu_detour():
  from models import up_or_down_sampling as uds
  x = torch.randn(2, 3, 8, 8)
  kernel = uds.fir_kernel((1, 3, 3, 1), 4., x)
  for kwargs in (dict(up=2, pad=(2, 1)), dict(down=2, pad=(1, 1)), dict(pad=(2, 1))):
    torch.testing.assert_close(memory._upfirdn2d_as_on_cuda(x, kernel, **kwargs),
                               uds.upfirdn2d(x, kernel, **kwargs))


def _estimates():
  GiB = memory.GiB
  est = lambda fixed, per_image: dict(fixed_bytes=fixed * GiB, per_image_bytes=per_image * GiB,
                                      update_bytes=fixed * GiB, state_bytes=fixed * GiB)
  return {('fp32', 'none'): est(2., 2.5), ('fp32', 'blocks'): est(2., 0.8),
          ('fp32', 'all'): est(2., 0.75), ('bf16', 'none'): est(2.2, 1.5),
          ('bf16', 'blocks'): est(2.2, 0.5), ('bf16', 'all'): est(2.2, 0.45)}


def test_explain_oom_says_what_to_change():
  config = _tiny_train_config()
  config.training.batch_size = 16
  error = torch.cuda.OutOfMemoryError(
    'CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB '
    'of which 1.06 GiB is free. Of the allocated memory 21.7 GiB is allocated by PyTorch')
  text = memory.explain_oom(config, error, estimates=_estimates())
  usable = 0.9 * 23.55 - 1  # GiB
  assert 'CUDA out of memory. Tried to allocate 2.00 GiB.' in text
  assert f'{2 + 2.5 * 16:.1f} GiB at 16 images per GPU' in text
  assert f'--config.training.batch_size={int((usable - 2) // 2.5)}' in text
  assert '--config.model.checkpointing=blocks: 0.800 GiB per image, 14.8 GiB at this batch; ' \
         'fits batch_size=16' in text
  assert '--config.training.precision=bf16: 1.500 GiB per image, 26.2 GiB at this batch; ' \
         f'then batch_size <= {int((usable - 2.2) // 1.5)}' in text
  assert '--config.training.precision=bf16 --config.model.checkpointing=blocks' in text
  # Two GPUs share the batch: 8 per GPU fits with blocks; the sizes are global.
  text = memory.explain_oom(config, error, world_size=2, estimates=_estimates())
  assert f'--config.training.batch_size={2 * int((usable - 2) // 2.5)} (2 GPUs' in text
  assert '--config.model.checkpointing=blocks: 0.800 GiB per image, 8.4 GiB at this batch; ' \
         'fits batch_size=16' in text


def test_explained_oom_reraises_with_the_advice_measured_on_fake_tensors():
  config = _tiny_train_config()
  config.training.batch_size = 4
  error = torch.cuda.OutOfMemoryError('CUDA out of memory. GPU 0 has a total capacity of '
                                      '0.05 GiB of which 0 bytes is free.')
  others = {k: v for k, v in _estimates().items() if k != ('fp32', 'none')}
  real_explain = memory.explain_oom
  with pytest.MonkeyPatch.context() as patch:  # this setting measured, the others given
    patch.setattr(memory, 'explain_oom', lambda *a, **k: real_explain(*a, **k, estimates=others))
    with pytest.raises(torch.cuda.OutOfMemoryError) as caught:
      with memory.explained_oom(config):
        raise error
  assert caught.value.__cause__ is error
  text = str(caught.value)
  assert 'memory.estimate of this step' in text and 'GiB per image' in text
  assert 'not even 1 image per GPU fits' in text  # 0.05 GiB leaves nothing after the context
  with pytest.raises(ValueError):  # other errors pass unchanged
    with memory.explained_oom(config):
      raise ValueError('not memory')
