"""Peak memory of one training step (loss, backward, gradient clipping, Adam, EMA) by config, batch
size, precision and activation checkpointing (model.checkpointing), the largest batch that fits a
16 / 24 / 40 / 80 GiB card, and what checkpointing costs in time.

    python bench/bench_memory.py                      # the table of docs/memory.md (fake, ~15 min)
    python bench/bench_memory.py --validate           # the method against real CPU steps
    python bench/bench_memory.py --timing             # CelebA-HQ 256, batch 2, real CPU steps
    python bench/bench_memory.py --device cuda --configs ve/celebahq_256_ncsnpp_continuous \
        --batches 8                                   # real GPU peaks next to the estimate

How it is measured (`--device fake`, the default; memory.measure_step): the step runs under
torch's FakeTensorMode (operators compute shapes, dtypes and strides, no numbers, no memory: a
1024 px step takes seconds). A TorchDispatchMode (memory.LiveBytes) adds the bytes of every new
storage an operator returns (rounded up to CUDA's 512-byte blocks) and subtracts them when it is
freed (weakref finalizer); its peak plus the bytes held between steps (weights, buffers, EMA,
Adam's moments, the batch) is the step's peak, as torch.cuda.max_memory_allocated counts it
(without CUDA context, cuBLAS / cuDNN workspaces, fragmentation). A steady step: Adam's moments
exist, the previous gradients are freed. The CPU takes CUDA's code paths (memory.like_cuda:
autocast policy, fused dropout, FIR filters under autocast, multi-tensor Adam and EMA), checked
operator by operator against CUDA autocast on fake CUDA tensors. `--validate` compares on real
CPU steps (CPU paths, exact bytes) the same count on real tensors, glibc's bytes in use (mallinfo2
after every operator: independent of torch's dispatcher) and the fake measurement. Batch per
card: the loss + backward peak is affine in the batch where activations dominate (fitted at
--fit-batches; `--check` measures at the predicted 80 / 16 GiB batches and refits where the fit
misses), the optimizer phase does not grow; a G GiB card leaves 0.9 G - 1 GiB to the step
(memory.usable_bytes). `--device cuda` measures real GPU steps (max_memory_allocated after a
warm-up step) beside the estimate. Writes bench/results/memory.json (--out).
"""
import argparse
import ctypes
import platform
import statistics
import sys
import time

import torch

from report import RESULTS, ROOT, device_name, print_table, write_json

sys.path.insert(0, str(ROOT))

import memory  # noqa: E402
from configs import load_config  # noqa: E402
from models import layers  # noqa: E402

CONFIGS = ('ve/cifar10_ncsnpp_continuous', 've/celebahq_256_ncsnpp_continuous',
           've/ffhq_ncsnpp_continuous')
CARDS_GIB = (16, 24, 40, 80)
GiB = memory.GiB


def grid(args):
  """One row per (config, precision, checkpointing, batch), measured on fake tensors, for the
  table's batches and the fit's."""
  rows = []
  for name in args.configs:
    config = load_config(name)
    for precision in args.precisions:
      for ckpt in args.checkpointing:
        for batch in sorted(set(args.batches) | set(args.fit_batches)):
          start = time.perf_counter()
          r = memory.measure_step(config, batch, precision=precision, checkpointing=ckpt)
          rows.append(dict(config=name, precision=precision, checkpointing=ckpt, batch=batch,
                           peak_gib=r['peak_bytes'] / GiB, state_gib=r['state_bytes'] / GiB,
                           forward_backward_gib=r['forward_backward_bytes'] / GiB,
                           update_gib=r['update_bytes'] / GiB, peak_op=r['peak_op'],
                           seconds=time.perf_counter() - start))
          print(f'{name} {precision} {ckpt} batch {batch}: {rows[-1]["peak_gib"]:.2f} GiB '
                f'({rows[-1]["seconds"]:.0f} s)', flush=True)
  return rows


def fits(rows, fit_batches):
  """Per (config, precision, checkpointing): the affine fit of the loss + backward peak at
  `fit_batches` and the largest batch per card. Small batches do not fit it: there the peak
  comes where the gradients, not the activations, are largest (CIFAR-10 at batch 1-8 is flat)."""
  out = []
  keys = dict.fromkeys((r['config'], r['precision'], r['checkpointing']) for r in rows)
  for key in keys:
    mine = [r for r in rows if (r['config'], r['precision'], r['checkpointing']) == key]
    fb = {r['batch']: r['forward_backward_gib'] * GiB for r in mine if r['batch'] in fit_batches}
    fixed, per_image = memory.fit_affine(fb)
    est = dict(fixed_bytes=fixed, per_image_bytes=per_image,
               update_bytes=max(r['update_gib'] for r in mine) * GiB)
    error = max(abs(fixed + per_image * b - v) / v for b, v in fb.items())
    out.append(dict(config=key[0], precision=key[1], checkpointing=key[2],
                    fixed_gib=fixed / GiB, per_image_gib=per_image / GiB,
                    update_gib=est['update_bytes'] / GiB, fit_error=error,
                    max_batch={str(g): memory.max_batch(est, g * GiB) for g in CARDS_GIB}))
  return out


def check_fits(fitted, rows, cards=(80, 16), rounds=3):
  """Measure each setting at the batch its fit says fills a card (`cards`, GiB); where the
  measurement misses the fit by more than 0.5 % of the card, refit through the two largest
  batches measured (convex, piecewise affine: the large-batch line is the one that matters)
  and measure again. Updates `fitted` in place; returns the checks."""
  checks = []
  for f in fitted:
    key = (f['config'], f['precision'], f['checkpointing'])
    points = {r['batch']: r['forward_backward_gib'] for r in rows
              if (r['config'], r['precision'], r['checkpointing']) == key}
    points = {b: points[b] for b in sorted(points)[-2:]}
    for card in cards:
      for _ in range(rounds):
        est = dict(fixed_bytes=f['fixed_gib'] * GiB, per_image_bytes=f['per_image_gib'] * GiB,
                   update_bytes=f['update_gib'] * GiB)
        batch = memory.max_batch(est, card * GiB)
        if not batch or batch in points:
          break
        r = memory.measure_step(load_config(key[0]), batch, key[1], key[2])
        predicted = memory.step_bytes(est, batch) / GiB
        checks.append(dict(config=key[0], precision=key[1], checkpointing=key[2], card_gib=card,
                           batch=batch, predicted_gib=predicted, measured_gib=r['peak_bytes'] / GiB,
                           usable_gib=memory.usable_bytes(card * GiB) / GiB))
        print(checks[-1], flush=True)
        points[batch] = r['forward_backward_bytes'] / GiB
        if abs(checks[-1]['measured_gib'] - predicted) <= 0.005 * card:
          break
        top = sorted(points)[-2:]
        fixed, per_image = memory.fit_affine({b: points[b] for b in top})
        f.update(fixed_gib=fixed, per_image_gib=per_image, refit_batches=top)
    est = dict(fixed_bytes=f['fixed_gib'] * GiB, per_image_bytes=f['per_image_gib'] * GiB,
               update_bytes=f['update_gib'] * GiB)
    f['max_batch'] = {str(g): memory.max_batch(est, g * GiB) for g in CARDS_GIB}
  return checks


def ratios(rows):
  """Peak with checkpointing / peak without, per config, precision, level and batch."""
  none = {(r['config'], r['precision'], r['batch']): r['peak_gib'] for r in rows
          if r['checkpointing'] == 'none'}
  return [dict(config=r['config'], precision=r['precision'], checkpointing=r['checkpointing'],
               batch=r['batch'], ratio=r['peak_gib'] / none[r['config'], r['precision'],
                                                         r['batch']])
          for r in rows if r['checkpointing'] != 'none'
          and (r['config'], r['precision'], r['batch']) in none]


def markdown(rows, fitted):
  """The peak table (GiB) and the batch-per-card table of docs/memory.md."""
  batches = sorted({r['batch'] for r in rows})
  peak = {(r['config'], r['precision'], r['checkpointing'], r['batch']): r['peak_gib']
          for r in rows}
  lines = ['| config | precision | checkpointing | ' + ' | '.join(f'batch {b}' for b in batches)
           + ' | per image | fixed |', '|' + '---|' * (len(batches) + 5)]
  for f in fitted:
    key = (f['config'], f['precision'], f['checkpointing'])
    cells = [f'{peak[key + (b,)]:.2f}' if key + (b,) in peak else '-' for b in batches]
    lines.append(f'| {key[0]} | {key[1]} | {key[2]} | ' + ' | '.join(cells)
                 + f' | {f["per_image_gib"]:.3f} | {f["fixed_gib"]:.2f} |')
  lines += ['', '| config | precision | checkpointing | '
            + ' | '.join(f'{g} GiB' for g in CARDS_GIB) + ' |', '|' + '---|' * (len(CARDS_GIB) + 3)]
  for f in fitted:
    lines.append(f'| {f["config"]} | {f["precision"]} | {f["checkpointing"]} | '
                 + ' | '.join(str(f['max_batch'][str(g)]) for g in CARDS_GIB) + ' |')
  return '\n'.join(lines)


# --- Validation against real steps ---------------------------------------------------------------

class _Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
    'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
    'fordblks', 'keepcost')]


class MallocPeak(memory.LiveBytes):
  """LiveBytes that also samples glibc's bytes in use (heap + mmapped) after every operator."""

  def __init__(self):
    super().__init__(round_to=1)
    self._mallinfo2 = ctypes.CDLL('libc.so.6').mallinfo2
    self._mallinfo2.restype = _Mallinfo2
    self.malloc_base = self.malloc_peak = 0

  def __enter__(self):  # the step starts: what malloc holds now is the state
    self.malloc_base = self.malloc_peak = self._in_use()
    return super().__enter__()

  def _in_use(self):
    info = self._mallinfo2()
    return info.uordblks + info.hblkhd

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    out = super().__torch_dispatch__(func, types, args, kwargs)
    self.malloc_peak = max(self.malloc_peak, self._in_use())
    return out


def validate(args):
  """Real CPU steps (tracker on real tensors, glibc's count) against the fake measurement, and
  the CUDA emulation's forward operators against CUDA autocast on fake CUDA tensors."""
  rows = []
  cases = [('ve/cifar10_ncsnpp_continuous', 'fp32', 'none', 1),
           ('ve/cifar10_ncsnpp_continuous', 'fp32', 'none', 8),
           ('ve/cifar10_ncsnpp_continuous', 'fp32', 'blocks', 8),
           ('ve/cifar10_ncsnpp_continuous', 'bf16', 'none', 2),
           ('ve/celebahq_256_ncsnpp_continuous', 'fp32', 'none', 1),
           ('ve/celebahq_256_ncsnpp_continuous', 'fp32', 'blocks', 1)]
  for name, precision, ckpt, batch in cases:
    config = load_config(name)
    fake = memory.measure_step(config, batch, precision, ckpt, fake=True, cuda=False, round_to=1)
    tracker = MallocPeak()
    real = memory.measure_step(config, batch, precision, ckpt, fake=False, cuda=False,
                               round_to=1, tracker=tracker)['peak_bytes']
    rows.append(dict(config=name, precision=precision, checkpointing=ckpt, batch=batch,
                     fake_gib=fake['peak_bytes'] / GiB, real_tracker_gib=real / GiB,
                     malloc_gib=(real - tracker.peak + tracker.malloc_peak
                                 - tracker.malloc_base) / GiB))
    print(rows[-1], flush=True)
  # bf16 forward passes: the same operators, output dtypes and shapes under memory.like_cuda as
  # under CUDA autocast (math attention on both: fake CUDA tensors cannot pick a fused kernel).
  same = {n: forward_ops(load_config(n), 1, 'cuda') == forward_ops(load_config(n), 1, 'cpu')
          for n in CONFIGS}
  return dict(rows=rows, forward_ops_match_cuda_autocast=same)


def forward_ops(config, batch, device):
  """[operator, output dtypes and shapes] of the network's bf16 training forward pass on fake
  `device` tensors: 'cuda' under CUDA autocast, 'cpu' under CPU autocast with memory.like_cuda."""
  import contextlib
  from torch._subclasses.fake_tensor import FakeTensorMode
  from torch.nn.attention import SDPBackend, sdpa_kernel
  from torch.utils._python_dispatch import TorchDispatchMode
  from torch.utils._pytree import tree_leaves
  from models import utils as mutils

  class Log(TorchDispatchMode):
    ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
      out = func(*args, **(kwargs or {}))
      if func is not torch.ops.prim.device.default:
        self.ops.append([str(func)] + [f'{t.dtype} {tuple(t.shape)}' for t in tree_leaves(out)
                                       if isinstance(t, torch.Tensor)])
      return out

  with contextlib.ExitStack() as stack:
    stack.enter_context(memory._fresh_kernel_cache())
    stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
    stack.enter_context(torch.device(device))
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    model = mutils.get_model(config.model.name)(config).train()
    size = config.data.image_size
    x, t = torch.rand(batch, config.data.num_channels, size, size), torch.rand(batch) + 0.5
    if device == 'cuda':  # torch.autocast('cuda') turns itself off without a GPU
      torch.set_autocast_enabled('cuda', True)
      torch.set_autocast_dtype('cuda', torch.bfloat16)
      stack.callback(torch.set_autocast_enabled, 'cuda', False)
    else:
      stack.enter_context(memory.like_cuda())
      stack.enter_context(torch.autocast('cpu', dtype=torch.bfloat16))
    log = stack.enter_context(Log())
    log.ops = []
    model(x, t).float().square().sum()
  return log.ops


# --- Real GPU steps (bench/gpu_report.sh) ---------------------------------------------------------

def real_step_rows(args):
  """Peak memory of real training steps on args.device next to the fake estimate."""
  import precision as precision_lib
  import checkpoints
  import losses
  import sde_lib
  rows = []
  device = torch.device(args.device)
  for name in args.configs:
    for precision in args.precisions:
      for ckpt in args.checkpointing:
        for batch in args.batches:
          config = load_config(name)
          config.device = device
          config.training.batch_size = batch
          config.training.precision = precision
          config.model.checkpointing = ckpt
          precision_lib.configure_backends(device)
          torch.manual_seed(0)
          state = checkpoints.build_state(config)
          sde, _ = sde_lib.get_sde(config)
          scaler = precision_lib.grad_scaler(precision, device.type)
          step, _ = losses.step_fns_from_config(config, sde,
                                                torch.Generator(device).manual_seed(0),
                                                grad_scaler=scaler)
          images = torch.rand(batch, config.data.num_channels, config.data.image_size,
                              config.data.image_size, device=device)
          step(state, images).item()  # warm-up: Adam's moments, cuDNN's algorithm choice
          for p in state['model'].parameters():
            p.grad = None
          if device.type == 'cuda':
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step(state, images).item()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device)
          else:  # CPU: the tracker on the real step
            tracker = memory.LiveBytes(round_to=1)
            held = memory._storages_bytes(memory.state_tensors(state) + [images], 1)
            start = time.perf_counter()
            with tracker:
              step(state, images).item()
            seconds = time.perf_counter() - start
            peak = held + tracker.peak
          on_cuda = device.type == 'cuda'  # the CPU counts exact bytes
          est = memory.measure_step(load_config(name), batch, precision, ckpt, cuda=on_cuda,
                                    round_to=512 if on_cuda else 1)
          rows.append(dict(config=name, device=device_name(device), precision=precision,
                           checkpointing=ckpt, batch=batch, peak_gib=peak / GiB,
                           estimate_gib=est['peak_bytes'] / GiB, seconds_per_step=seconds))
          print(rows[-1], flush=True)
          del state, step
          if device.type == 'cuda':
            torch.cuda.empty_cache()
  return rows


def real_markdown(paths):
  """The rows of `--device cuda|cpu` result files as a markdown table (bench/gpu_report.sh)."""
  import json
  import pathlib
  rows = [r for p in paths for r in json.loads(pathlib.Path(p).read_text())['rows']]
  none = {(r['config'], r['precision'], r['batch']): r['peak_gib'] for r in rows
          if r['checkpointing'] == 'none'}
  lines = ['| config | device | precision | checkpointing | batch | peak GiB | estimate GiB | '
           'estimate / peak | peak / peak without | s/step |', '|' + '---|' * 10]
  for r in rows:
    base = none.get((r['config'], r['precision'], r['batch']))
    ratio = f'{r["peak_gib"] / base:.2f}' if base else '-'
    lines.append(f'| {r["config"]} | {r["device"]} | {r["precision"]} | {r["checkpointing"]} | '
                 f'{r["batch"]} | {r["peak_gib"]:.2f} | {r["estimate_gib"]:.2f} | '
                 f'{r["estimate_gib"] / r["peak_gib"]:.3f} | {ratio} | '
                 f'{r["seconds_per_step"]:.3f} |')
  return '\n'.join(lines)


# --- Time of a checkpointed step -----------------------------------------------------------------

def timing(args, name='ve/celebahq_256_ncsnpp_continuous', batch=2):
  """Median wall and CPU seconds of real fp32 CPU training steps of `name` at `batch` per
  checkpointing level, the levels interleaved (one step each in turn). On a CPU shared with
  other work the process's CPU time (all its threads) is the steadier measure of what
  recomputation costs; wall time moves with the other processes' load."""
  import checkpoints
  import losses
  import sde_lib
  config = load_config(name)
  config.device = torch.device('cpu')
  config.training.batch_size = batch
  torch.manual_seed(0)
  state = checkpoints.build_state(config)
  sde, _ = sde_lib.get_sde(config)
  step, _ = losses.step_fns_from_config(config, sde, torch.Generator().manual_seed(0))
  images = torch.rand(batch, 3, config.data.image_size, config.data.image_size)
  model = state['model']
  times = {level: ([], []) for level in args.checkpointing}
  for repeat in range(args.repeats + 1):  # the first round warms up
    for level in args.checkpointing:
      model.checkpointing = level  # the same weights; read at every forward pass
      layers.checkpoint_halves(model, level != 'none')
      wall, cpu = time.perf_counter(), time.process_time()
      step(state, images).item()
      wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
      if repeat:
        times[level][0].append(wall)
        times[level][1].append(cpu)
      print(f'{level}: {wall:.1f} s wall, {cpu:.1f} s CPU', flush=True)
  med = {level: (statistics.median(w), statistics.median(c)) for level, (w, c) in times.items()}
  base = med.get('none')
  return [dict(config=name, batch=batch, precision='fp32', checkpointing=level,
               threads=args.threads, seconds=med[level][0], cpu_seconds=med[level][1],
               all_seconds=w, all_cpu_seconds=c,
               ratio=med[level][0] / base[0] if base else None,
               cpu_ratio=med[level][1] / base[1] if base else None)
          for level, (w, c) in times.items()]


def breakdown(config_name, precision, ckpt, batch, top=12):
  """What is live at the peak: bytes by creating operator and feature-map size."""
  config = load_config(config_name)
  first = memory.measure_step(config, batch, precision, ckpt)
  at_peak = memory.measure_step(config, batch, precision, ckpt, snapshot_at=first['peak_index'])
  print(f'{config_name} {precision} {ckpt} batch {batch}: peak {first["peak_bytes"] / GiB:.2f} '
        f'GiB at {first["peak_op"]}; state {first["state_bytes"] / GiB:.2f} GiB; live then:')
  for label, nbytes in at_peak['snapshot'].most_common(top):
    print(f'  {nbytes / GiB:7.3f} GiB  {label}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
  parser.add_argument('--batches', nargs='+', type=int, default=[1, 2, 4, 8])
  parser.add_argument('--fit-batches', nargs='+', type=int, default=[8, 16, 32],
                      help='batches the per-image fit uses (where activations dominate)')
  parser.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'])
  parser.add_argument('--checkpointing', nargs='+', default=['none', 'blocks', 'all'])
  parser.add_argument('--device', default='fake', help="'fake' (estimate), 'cpu' or 'cuda'")
  parser.add_argument('--validate', action='store_true', help='check the method on real steps')
  parser.add_argument('--timing', action='store_true', help='time real CPU steps (CelebA-HQ 256)')
  parser.add_argument('--breakdown', action='store_true', help="what is live at each peak")
  parser.add_argument('--check', action='store_true',
                      help='measure each setting at its predicted 80 GiB batch')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--table', nargs='+', metavar='JSON',
                      help='print the --device cuda / cpu result files as one markdown table')
  parser.add_argument('--out', default=str(RESULTS / 'memory.json'))
  args = parser.parse_args()
  if args.table:
    print(real_markdown(args.table))
    return
  torch.set_num_threads(args.threads)
  result = dict(what='training step peak memory', torch=torch.__version__,
                machine=platform.processor() or platform.machine(),
                usable=f'{memory.ALLOCATOR_FRACTION} x card - '
                       f'{memory.CONTEXT_BYTES / GiB:.0f} GiB')
  if args.breakdown:
    for name in args.configs:
      for precision in args.precisions:
        for ckpt in args.checkpointing:
          breakdown(name, precision, ckpt, max(args.batches))
    return
  if args.validate:
    result['validation'] = validate(args)
  elif args.timing:
    result['timing'] = timing(args)
    print_table(result['timing'], [
      ('checkpointing', lambda r: r['checkpointing']), ('s/step', lambda r: f'{r["seconds"]:.1f}'),
      ('x none', lambda r: f'{r["ratio"]:.2f}' if r['ratio'] else '-'),
      ('CPU s/step', lambda r: f'{r["cpu_seconds"]:.1f}'),
      ('CPU x none', lambda r: f'{r["cpu_ratio"]:.2f}' if r['cpu_ratio'] else '-')])
  elif args.device != 'fake':
    result['rows'] = real_step_rows(args)
    print_table(result['rows'], [(k, lambda r, k=k: str(r[k])) for k in
                                 ('config', 'device', 'precision', 'checkpointing', 'batch')]
                + [('peak GiB', lambda r: f'{r["peak_gib"]:.2f}'),
                   ('estimate GiB', lambda r: f'{r["estimate_gib"]:.2f}')])
  else:
    result['rows'] = rows = grid(args)
    result['fits'] = fitted = fits(rows, args.fit_batches)
    result['ratios'] = ratios(rows)
    if args.check:
      result['checks'] = check_fits(fitted, rows)
    result['markdown'] = markdown(rows, fitted)
    print(result['markdown'])
  write_json(args.out, result)


if __name__ == '__main__':
  main()
