#!/bin/bash
# The digits comparison of docs/likelihood_training.md: the three VP digits recipes (default;
# likelihood weighting + importance sampling; the same + variational dequantization) trained
# 2,000 steps from the same seed, then at step 2,000: the SDE bound (N = 200), digits FD / CS with
# each config's own sampler (Euler-Maruyama, 500 steps, 300 samples), and the ODE bits/dim over
# all 300 test digits in 2 passes; then the table (bench/bench_likelihood_training.py table).
#   bash bench/likelihood_digits.sh [RUNS_DIR]      # default runs/; ~4.5 h on 2 CPU cores
# Each recipe is one chain of jobs; the chains run side by side, one torch thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"
E="--config.eval.begin_ckpt=2 --config.eval.end_ckpt=2 --config.eval.enable_loss=False"

chain() {  # NAME CONFIG
  local W=$RUNS/lik2_$1 C=configs/vp/$2.py
  python main.py --config $C --workdir $W --mode train --config.training.snapshot_sampling=False
  python main.py --config $C --workdir $W --mode eval --eval_folder eval_bound $E \
    --config.eval.enable_sampling=False --config.eval.enable_bpd=False --config.eval.enable_bound=True \
    --config.eval.bound_num_samples=200 --config.eval.bpd_num_repeats=1
  python main.py --config $C --workdir $W --mode eval --eval_folder eval_samples $E \
    --config.eval.enable_sampling=True --config.eval.enable_bpd=False
  python main.py --config $C --workdir $W --mode eval --eval_folder eval_ode2 $E \
    --config.eval.enable_sampling=False --config.eval.enable_bpd=True --config.eval.bpd_num_repeats=2
}

chain default digits_ddpmpp_continuous > $RUNS/lik2_default.log 2>&1 &
chain is digits_ddpmpp_likelihood > $RUNS/lik2_is.log 2>&1 &
chain deq digits_ddpmpp_likelihood_deq > $RUNS/lik2_deq.log 2>&1 &
wait
t() { echo "$1=$RUNS/lik2_$1/eval_ode2,$RUNS/lik2_$1/eval_bound,$RUNS/lik2_$1/eval_samples"; }
python bench/bench_likelihood_training.py table --ckpt 2 --run "$(t default)" --run "$(t is)" --run "$(t deq)"
