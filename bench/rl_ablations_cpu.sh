#!/usr/bin/env bash
# The four ablations (darl, sft, rl_uniform, rl_gt_reward) from the shipped SFT model at the SAME
# budget (rounds x batch), one after another on a CPU, then the evaluation CLI on the held-out set.
# A small budget (a CPU round of the darl preset at batch 4, 192 px, takes about a minute); the
# GPU script bench/rl_ablations_gpu.sh runs the larger one.
#   ROUNDS=12 BATCH=4 POOL=16 OUT=docs/ablation_cpu bash bench/rl_ablations_cpu.sh
set -euo pipefail
OUT=${OUT:-docs/ablation_cpu}; ROUNDS=${ROUNDS:-12}; BATCH=${BATCH:-4}; POOL=${POOL:-16}; RUNS=${RUNS:-runs/ablation_cpu}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT" "$RUNS"
COMMON="--rounds $ROUNDS --batch-size $BATCH --pool-size $POOL --lr 3e-5 --val-every 0 --ckpt-every 1000 --device cpu"
for m in darl sft rl_uniform rl_gt_reward; do
  echo "== $m"
  /usr/bin/time -f "$m wall %e s" $PY -m darl_core.train_rl --preset $m --output "$RUNS/$m" $COMMON 2>&1 \
    | grep -v "it/s\]\|round/s\]\|s/round\]" | tail -n 3
done
$PY -m darl_core.evaluate --out "$OUT" \
  --models sft=models/sft-blind sft_more="$RUNS/sft/model" rl_uniform="$RUNS/rl_uniform/model" \
           rl_gt_reward="$RUNS/rl_gt_reward/model" darl="$RUNS/darl/model" \
  --runs sft="$RUNS/sft" rl_uniform="$RUNS/rl_uniform" rl_gt_reward="$RUNS/rl_gt_reward" darl="$RUNS/darl" \
  2>&1 | grep -v "it/s\]" | tee "$OUT/eval.log"
mkdir -p "$OUT/logs"
for m in darl sft rl_uniform rl_gt_reward; do
  mkdir -p "$OUT/logs/$m" && cp "$RUNS/$m/metrics.jsonl" "$RUNS/$m/difficulty.jsonl" "$RUNS/$m/config.json" "$OUT/logs/$m/"
done
