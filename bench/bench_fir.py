"""FIR up/down-sampling (models/up_or_down_sampling.upfirdn2d, the [1, 3, 3, 1] filter of NCSN++)
in reduced precision: the depthwise convolution run directly in that dtype against
`upfirdn2d`, which on CPU filters bf16 / fp16 in float32 and casts back.

  python bench/bench_fir.py                  # CPU, bf16, the feature-map sizes of CIFAR-10 NCSN++
  python bench/bench_fir.py --dtype fp16 --device cuda

Forward alone and forward + backward, NCHW and channels_last, medians in milliseconds. Prints a
table and writes bench/results/bench_fir.json.
"""
import argparse
import sys

import torch
import torch.nn.functional as F

from report import RESULTS, ROOT, median_seconds, print_table, write_json

sys.path.insert(0, str(ROOT))

from models import up_or_down_sampling as uds  # noqa: E402

DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}
# (batch, channels, size) of the resampled feature maps in ve/cifar10_ncsnpp_continuous at batch 8.
SHAPES = ((8, 128, 32), (8, 256, 16), (8, 256, 8), (8, 256, 4))


def direct(x, kernel, up):
  """The depthwise convolution of `upfirdn2d` run in x's own dtype (what it did before)."""
  c = x.shape[1]
  weight = kernel.expand(c, 1, *kernel.shape)
  if up:
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)
  return F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.flip(weight, (2, 3)), stride=2, groups=c)


def routed(x, kernel, up):
  """The project's path: upfirdn2d, which filters reduced precision in float32 on CPU."""
  if up:
    return uds.upfirdn2d(x, kernel, up=2, pad=(2, 1))
  return uds.upfirdn2d(x, kernel, down=2, pad=(1, 1))


def time_ms(fn, x, kernel, up, backward, repeats, device):
  x = x.detach().requires_grad_(backward)
  grad = torch.ones_like(fn(x, kernel, up))

  def call():
    with torch.set_grad_enabled(backward):
      out = fn(x, kernel, up)
      if backward:
        out.backward(grad)

  return median_seconds(call, repeats, device)[0] * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dtype', default='bf16', choices=sorted(DTYPES))
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--out', default=str(RESULTS / 'bench_fir.json'))
  args = parser.parse_args()
  device, dtype = torch.device(args.device), DTYPES[args.dtype]
  kernel = uds.fir_kernel((1, 3, 3, 1), 4., torch.zeros((), dtype=dtype, device=device))
  rows = []
  for batch, channels, size in SHAPES:
    for channels_last in (False, True):
      x = torch.randn(batch, channels, size, size, device=device).to(dtype)
      if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
      for up in (True, False):
        torch.testing.assert_close(routed(x, kernel, up), direct(x, kernel, up),
                                   rtol=2e-2, atol=2e-2)  # the same filter, whichever path
        row = {'op': 'up' if up else 'down', 'shape': [batch, channels, size, size],
               'layout': 'nhwc' if channels_last else 'nchw'}
        for name, fn in (('direct', direct), ('upfirdn2d', routed)):
          for backward in (False, True):
            key = f"{name}_{'fwd_bwd' if backward else 'fwd'}_ms"
            row[key] = time_ms(fn, x, kernel, up, backward, args.repeats, device)
        rows.append(row)
  print(f'{args.dtype} on {args.device}, {torch.get_num_threads()} threads, '
        f'median of {args.repeats} (ms); direct = the depthwise convolution in {args.dtype}')
  print_table(rows, [
      ('op', lambda r: r['op']), ('shape', lambda r: 'x'.join(map(str, r['shape']))),
      ('layout', lambda r: r['layout']),
      ('direct fwd', lambda r: f"{r['direct_fwd_ms']:.2f}"),
      ('upfirdn2d fwd', lambda r: f"{r['upfirdn2d_fwd_ms']:.2f}"),
      ('direct fwd+bwd', lambda r: f"{r['direct_fwd_bwd_ms']:.2f}"),
      ('upfirdn2d fwd+bwd', lambda r: f"{r['upfirdn2d_fwd_bwd_ms']:.2f}")])
  write_json(args.out, {'dtype': args.dtype, 'device': args.device,
                        'threads': torch.get_num_threads(), 'torch': torch.__version__,
                        'rows': rows})


if __name__ == '__main__':
  main()
