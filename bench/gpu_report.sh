#!/usr/bin/env bash
# The README's GPU table in one run, on synthetic data (no dataset download): for
# ve/cifar10_ncsnpp_continuous and vp/cifar10_ddpmpp_continuous,
#   training images/s at batch 128 in fp32, bf16, and bf16 + channels_last + torch.compile +
#   fused Adam;
#   sampling images/s with DPM-Solver (20 network evaluations) at batch 1,000 in fp32 and in
#   bf16 + channels_last;
# with peak memory and achieved TFLOP/s against the GPU's dense peak (bench/report.py); then the
# peak memory of a training step of ve/celebahq_256_ncsnpp_continuous at batch 8 in fp32 and bf16
# with and without activation checkpointing (model.checkpointing), beside bench/bench_memory.py's
# estimate from fake tensors (docs/memory.md). Each measurement has a time limit (710 s in all,
# most of it for compiling), so the whole run stays under 12 minutes on one H100 / H200 and a
# slow step costs only its own row.
#
#   bash bench/gpu_report.sh            # results in $OUT (default bench/results/gpu/), table on stdout
#
# The environment can shrink it (tests/test_gpu_report.py runs it so on the CPU): DEVICE (cuda),
# CONFIGS (the two above), TRAIN_BATCH (128), SAMPLE_BATCH (1000), STEPS (10), COMPILE (1; 0
# leaves out the compiled row), MEMORY_CONFIGS (ve/celebahq_256_ncsnpp_continuous), MEMORY_BATCH
# (8), OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
DEVICE=${DEVICE:-cuda}
CONFIGS=${CONFIGS:-"ve/cifar10_ncsnpp_continuous vp/cifar10_ddpmpp_continuous"}
TRAIN_BATCH=${TRAIN_BATCH:-128}
SAMPLE_BATCH=${SAMPLE_BATCH:-1000}
STEPS=${STEPS:-10}
COMPILE=${COMPILE:-1}
MEMORY_CONFIGS=${MEMORY_CONFIGS:-ve/celebahq_256_ncsnpp_continuous}
MEMORY_BATCH=${MEMORY_BATCH:-8}
mkdir -p "$OUT"
rm -f "$OUT"/*.json  # a step that times out must not leave an older run's row in the table
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

RESULTS=()  # the result files in the order measured: the table's row order
MEMORY_RESULTS=()  # those of the memory_* rows: a table of their own
run() {  # run NAME SECONDS COMMAND...: one measurement, its output kept in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" --device "$DEVICE" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log" \
    | tail -3
  if [ ! -f "$OUT/$name.json" ]; then echo "!! $name: no result"
  elif [[ $name == memory_* ]]; then MEMORY_RESULTS+=("$OUT/$name.json")
  else RESULTS+=("$OUT/$name.json"); fi
}

# One process per configuration and variant: a step that runs out of time loses only its row.
for config in $CONFIGS; do
  tag=$(basename "$config")
  train=(python bench/bench_train.py --configs "$config" --batch "$TRAIN_BATCH" --steps "$STEPS")
  sample=(python bench/bench_sampling.py --configs "$config" --batch "$SAMPLE_BATCH" --repeats 1)
  run "train_fp32_$tag" 40 "${train[@]}"
  run "train_bf16_$tag" 40 "${train[@]}" --precision bf16
  if [ "$COMPILE" = 1 ]; then
    run "train_bf16_nhwc_compiled_$tag" 130 "${train[@]}" --precision bf16 --channels-last \
      --compile --adam-impl fused
  fi
  run "sample_fp32_$tag" 50 "${sample[@]}"
  run "sample_bf16_nhwc_$tag" 35 "${sample[@]}" --precision bf16 --channels-last
done
# torch.cuda.max_memory_allocated of a step after a warm-up step, checkpointing none / blocks.
for config in $MEMORY_CONFIGS; do
  run "memory_$(basename "$config")" 120 python bench/bench_memory.py --configs "$config" \
    --batches "$MEMORY_BATCH" --precisions fp32 bf16 --checkpointing none blocks
done

echo
echo "fp32 rows: PyTorch's default, TF32 convolutions and float32 matmuls; their fraction is of the"
echo "67 TFLOP/s float32 peak, so it can pass 100 %. bf16 rows: of the 989 TFLOP/s bf16 dense peak."
python bench/report.py table "${RESULTS[@]}" | tee "$OUT/table.md"
if [ ${#MEMORY_RESULTS[@]} -gt 0 ]; then
  echo
  python bench/bench_memory.py --table "${MEMORY_RESULTS[@]}" | tee "$OUT/memory.md"
fi
