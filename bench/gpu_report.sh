#!/usr/bin/env bash
# The README's GPU table in one run, on synthetic data (no dataset download): for
# ve/cifar10_ncsnpp_continuous and vp/cifar10_ddpmpp_continuous,
#   training images/s at batch 128 in fp32, bf16, and bf16 + channels_last + torch.compile +
#   fused Adam;
#   sampling images/s with DPM-Solver (20 network evaluations) at batch 1,000 in fp32 and in
#   bf16 + channels_last;
# with peak memory and achieved TFLOP/s against the GPU's dense peak (bench/report.py).
# Each measurement has a time limit (590 s in all, most of it for compiling), so the whole run stays
# under 10 minutes on one H100 / H200 and a slow step costs only its own row.
#
#   bash bench/gpu_report.sh            # results in bench/results/gpu/, table on stdout
set -u
cd "$(dirname "$0")/.."
OUT=bench/results/gpu
mkdir -p "$OUT"
rm -f "$OUT"/*.json  # a step that times out must not leave an older run's row in the table
CONFIGS="ve/cifar10_ncsnpp_continuous vp/cifar10_ddpmpp_continuous"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

run() {  # run NAME SECONDS COMMAND...: one measurement, its output kept in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" --device cuda --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" | tail -3
}

# One process per configuration and variant: a step that runs out of time loses only its row.
for config in $CONFIGS; do
  tag=$(basename "$config")
  run "train_fp32_$tag" 40 python bench/bench_train.py --configs "$config" --batch 128 --steps 10
  run "train_bf16_$tag" 40 python bench/bench_train.py --configs "$config" --batch 128 --steps 10 \
    --precision bf16
  run "train_bf16_nhwc_compiled_$tag" 130 python bench/bench_train.py --configs "$config" \
    --batch 128 --steps 10 --precision bf16 --channels-last --compile --adam-impl fused
  run "sample_fp32_$tag" 50 python bench/bench_sampling.py --configs "$config" --batch 1000 --repeats 1
  run "sample_bf16_nhwc_$tag" 35 python bench/bench_sampling.py --configs "$config" --batch 1000 \
    --repeats 1 --precision bf16 --channels-last
done

echo
echo "fp32 rows: PyTorch's default, TF32 convolutions and float32 matmuls; their fraction is of the"
echo "67 TFLOP/s float32 peak, so it can pass 100 %. bf16 rows: of the 989 TFLOP/s bf16 dense peak."
python bench/report.py table $(ls "$OUT"/train_*.json "$OUT"/sample_*.json 2>/dev/null) | tee "$OUT/table.md"
