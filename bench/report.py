"""What every benchmark script shares: where the repository and the results live, one way to
write a result file (JSON, next to the printed table), and the speed options with what they are
measured against (images/s, peak memory, FLOP/s against the device's dense peak).

    python bench/report.py table bench/results/gpu/*.json   # the README's GPU table
    python bench/report.py peak --threads 1                # this CPU's matmul / conv TFLOP/s
"""
import argparse
import json
import pathlib
import resource
import statistics
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / 'bench' / 'results'  # git-ignored


def write_json(path, result):
  """Write `result` (JSON-serialisable) to `path`, creating its folder, and say where."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print(f'wrote {path}')
  return path


# Dense peak throughput in TFLOP/s by (device kind, precision), what "fraction of peak" divides
# by. NVIDIA H100 / H200 SXM datasheet (dense, no sparsity): bf16 / fp16 989, TF32 494, fp32 67;
# A100: bf16 312, fp32 19.5. The CPU rows are measured on this machine's 2 AMD EPYC cores (AVX-512
# with bf16 dot products, no AMX), one core at a time because the cores are shared: a 64->64 3x3
# convolution at 64x16x16 reaches 0.266 TFLOP/s in fp32 on one core and a 2048^3 bf16 matmul
# 0.515 (`python bench/report.py peak`; MKL's fp32 matmul takes a slower path on AMD, 0.12),
# so 2 cores: 0.53 fp32, 1.03 bf16. fp16 has no arithmetic on these cores (an fp16 matmul runs
# at 0.002 TFLOP/s): no CPU fp16 peak is given.
PEAK_TFLOPS = {('H100', 'fp32'): 67., ('H100', 'bf16'): 989., ('H100', 'fp16'): 989.,
               ('H200', 'fp32'): 67., ('H200', 'bf16'): 989., ('H200', 'fp16'): 989.,
               ('A100', 'fp32'): 19.5, ('A100', 'bf16'): 312., ('A100', 'fp16'): 312.,
               ('cpu', 'fp32'): 0.53, ('cpu', 'bf16'): 1.03}


def add_speed_args(parser, batch=None):
  """--precision, --channels-last, --compile, --adam-impl, --device, --batch, --peak-tflops,
  --threads."""
  parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16', 'fp16'],
                      help='autocast precision of the network (weights stay fp32)')
  parser.add_argument('--channels-last', action='store_true', help='NHWC network layout')
  parser.add_argument('--compile', action='store_true', help='torch.compile the network')
  parser.add_argument('--compile-mode', default='default')
  parser.add_argument('--adam-impl', default='default', choices=['default', 'foreach', 'fused'],
                      help="config.optim.adam_impl ('fused': ~1 ulp per step from the reference)")
  parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
  parser.add_argument('--batch', type=int, default=batch)
  parser.add_argument('--peak-tflops', type=float, default=None,
                      help='dense peak of the device in this precision (default: PEAK_TFLOPS)')
  parser.add_argument('--threads', type=int, default=2, help='CPU threads')
  return parser


def device_name(device):
  device = torch.device(device)
  return torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'


def peak_tflops(device, precision, override=None):
  """(dense peak TFLOP/s, what it is) for `device` in `precision`; (None, ...) if unknown."""
  if override is not None:
    return override, 'given'
  name = device_name(device)
  for (kind, prec), value in PEAK_TFLOPS.items():
    if prec == precision and kind in name:
      return value, f'{kind} {prec} dense'
  return None, f'unknown for {name}: pass --peak-tflops'


def configure(config, args):
  """Apply the speed options of `args` to `config` (as --config.X=... would) and set up torch."""
  torch.set_num_threads(args.threads)
  config.device = torch.device(args.device)
  config.training.precision = config.sampling.precision = args.precision
  config.model.channels_last = args.channels_last
  config.training.compile = config.sampling.compile = args.compile
  config.training.compile_mode = config.sampling.compile_mode = args.compile_mode
  config.optim.adam_impl = args.adam_impl
  import precision
  precision.configure_backends(config.device)
  return config


def sync(device):
  if torch.device(device).type == 'cuda':
    torch.cuda.synchronize(device)


def reset_peak_memory(device):
  if torch.device(device).type == 'cuda':
    torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device):
  """CUDA: the peak of torch's allocations since the last reset. CPU: the process's peak
  resident set (ru_maxrss; it cannot be reset, so it covers everything run before)."""
  if torch.device(device).type == 'cuda':
    return torch.cuda.max_memory_allocated(device) / 2 ** 30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kB on Linux


def median_seconds(fn, repeats, device, warmup=1):
  """Median wall time of `fn()` over `repeats` calls after `warmup` calls (device synchronised)."""
  for _ in range(warmup):
    fn()
  sync(device)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    sync(device)
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def count_flops(fn):
  """FLOPs of `fn()` (matmuls and convolutions, forward and backward: what torch's
  FlopCounterMode counts; elementwise work is left out)."""
  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:
    fn()
  return counter.get_total_flops()


def throughput(images, seconds, flops, device, precision, override=None):
  """images/s, achieved TFLOP/s and its fraction of the dense peak, as a dict."""
  peak, peak_source = peak_tflops(device, precision, override)
  achieved = flops / seconds / 1e12
  return dict(images_per_second=images / seconds, tflops=achieved, peak_tflops=peak,
              peak_source=peak_source, fraction_of_peak=achieved / peak if peak else None)


def print_table(rows, columns):
  """Print `rows` (dicts) in aligned columns; `columns` is [(header, row -> text)]."""
  table = [[header for header, _ in columns]] + [[cell(r) for _, cell in columns] for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
  for line in table:
    print('  '.join(text.ljust(w) if i == 0 else text.rjust(w)
                    for i, (text, w) in enumerate(zip(line, widths))))


def speed_columns(memory_key='peak_memory_gb'):
  """The columns every benchmark ends with: images/s, TFLOP/s, fraction of peak, memory."""
  return [('img/s', lambda r: f'{r["images_per_second"]:.2f}'),
          ('TFLOP/s', lambda r: f'{r["tflops"]:.3g}'),
          ('of peak', lambda r: f'{100 * r["fraction_of_peak"]:.0f} %' if r['fraction_of_peak']
           else '-'),
          ('mem GB', lambda r: f'{r[memory_key]:.2f}')]


def option_columns():
  """precision, channels_last, compile, Adam implementation and batch columns."""
  return [('prec', lambda r: r['precision']), ('NHWC', lambda r: str(r['channels_last'])),
          ('compile', lambda r: str(r['compile'])), ('adam', lambda r: r.get('adam_impl', '-')),
          ('batch', lambda r: str(r['batch']))]


def measure_matmul_tflops(dtype=torch.float32, n=2048, repeats=20, device='cpu'):
  """The best TFLOP/s of an n^3 matmul in `dtype`: what the device reaches in practice."""
  a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
  best = 0.
  for _ in range(repeats):
    sync(device)
    start = time.perf_counter()
    a @ b
    sync(device)
    best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e12)
  return best


def measure_conv_tflops(dtype=torch.float32, repeats=20, device='cpu'):
  """The best TFLOP/s of a 3x3 convolution, 64 -> 64 channels at batch 64, 16x16, in `dtype`."""
  x = torch.randn(64, 64, 16, 16, device=device).to(dtype)
  w = torch.randn(64, 64, 3, 3, device=device).to(dtype)
  flops = 2 * 64 * 64 * 9 * 16 * 16 * 64
  best = 0.
  for _ in range(repeats):
    sync(device)
    start = time.perf_counter()
    torch.nn.functional.conv2d(x, w, padding=1)
    sync(device)
    best = max(best, flops / (time.perf_counter() - start) / 1e12)
  return best


def markdown_table(paths):
  """The rows of the result files at `paths` (bench_train / bench_sampling JSON) as one
  markdown table: what the README's GPU table shows."""
  lines = ['| config | what | precision | channels_last | compile | Adam | batch | images/s | '
           'TFLOP/s (% of peak) | peak memory GB |', '|' + '---|' * 10]
  for path in paths:
    result = json.loads(pathlib.Path(path).read_text())
    for r in result['rows']:
      fraction = f' ({100 * r["fraction_of_peak"]:.0f} %)' if r.get('fraction_of_peak') else ''
      lines.append(f'| {r["config"]} | {result["what"]} | {r["precision"]} | '
                   f'{r["channels_last"]} | {r["compile"]} | {r.get("adam_impl", "-")} | '
                   f'{r["batch"]} | '
                   f'{r["images_per_second"]:.1f} | {r["tflops"]:.3g}{fraction} | '
                   f'{r["peak_memory_gb"]:.1f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  parser = argparse.ArgumentParser(description='Result files as a markdown table (table), or '
                                   "this CPU's matmul / convolution TFLOP/s (peak).")
  parser.add_argument('command', choices=['table', 'peak'])
  parser.add_argument('paths', nargs='*', help='table: bench_train / bench_sampling JSON files')
  parser.add_argument('--threads', type=int, default=1, help='peak: CPU threads')
  args = parser.parse_args()
  if args.command == 'table':
    print(markdown_table(args.paths))
  else:
    torch.set_num_threads(args.threads)
    for dtype in (torch.float32, torch.bfloat16):
      print(f'{dtype}: matmul 2048^3 {measure_matmul_tflops(dtype):.3f} TFLOP/s, 3x3 convolution '
            f'64->64 at 64x16x16 {measure_conv_tflops(dtype):.3f} TFLOP/s (best of 20)')
