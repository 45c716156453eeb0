#!/usr/bin/env bash
# The four ablations (darl, sft, rl_uniform, rl_gt_reward) from the shipped SFT model at the SAME
# budget (rounds x batch), one after another on a CPU, then the evaluation CLI on the held-out set.
# A small budget (a CPU round of the darl preset at batch 4, 192 px, takes about a minute); the
# GPU script bench/rl_ablations_gpu.sh runs the larger one.
# SEEDS="0 1 2" repeats every preset per seed (pool, batches and noise all follow the seed); the
# evaluation below then covers seed 0, and bench/quality.py --models takes the other seeds' models.
#   ROUNDS=12 BATCH=4 POOL=16 OUT=docs/ablation_cpu bash bench/rl_ablations_cpu.sh
#   SEEDS="0 1 2" GROUP=4 BATCH=2 TASK=realistic EXTRA="--probe-every 4" bash bench/rl_ablations_cpu.sh
# REWARD=spec is the reward of darl and rl_uniform (rl_gt_reward keeps PSNR; sft has none), e.g. darl_iqa.
# BASE=folder starts from another SFT model; PRESETS="darl rl_uniform" runs a subset; EVAL=0 skips the
# held-out evaluation (then judge the models with bench/quality.py on the independent set).
set -euo pipefail
OUT=${OUT:-docs/ablation_cpu}; ROUNDS=${ROUNDS:-12}; BATCH=${BATCH:-4}; POOL=${POOL:-16}; RUNS=${RUNS:-runs/ablation_cpu}
SEEDS=${SEEDS:-0}; GROUP=${GROUP:-4}; TASK=${TASK:-blind}; EXTRA=${EXTRA:-}; BASE=${BASE:-models/sft-blind}
PRESETS=${PRESETS:-darl sft rl_uniform rl_gt_reward}; EVAL=${EVAL:-1}; REWARD=${REWARD:-}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT" "$RUNS"
COMMON="--rounds $ROUNDS --batch-size $BATCH --group-size $GROUP --pool-size $POOL --task $TASK --lr 3e-5 --val-every 0 --ckpt-every 1000 --device cpu --base-model $BASE $EXTRA"
for seed in $SEEDS; do
  for m in $PRESETS; do
    dir="$RUNS/$m"; [ "$seed" = 0 ] || dir="$RUNS/$m-s$seed"
    rw=""; [ -z "$REWARD" ] || [ "$m" = rl_gt_reward ] || [ "$m" = sft ] || rw="--reward $REWARD"
    echo "== $m seed $seed $rw"
    /usr/bin/time -f "$m seed $seed wall %e s" $PY -m darl_core.cli.train_rl --preset $m --seed "$seed" --output "$dir" $COMMON $rw 2>&1 \
      | grep -v "it/s\]\|round/s\]\|s/round\]" | tail -n 3
  done
done
mkdir -p "$OUT/logs"
for d in "$RUNS"/*/; do
  m=$(basename "$d"); mkdir -p "$OUT/logs/$m" && cp "$d/metrics.jsonl" "$d/difficulty.jsonl" "$d/config.json" "$OUT/logs/$m/"
done
[ "$EVAL" = 1 ] || exit 0
$PY -m darl_core.evaluation.evaluate --out "$OUT" \
  --models sft="$BASE" sft_more="$RUNS/sft/model" rl_uniform="$RUNS/rl_uniform/model" \
           rl_gt_reward="$RUNS/rl_gt_reward/model" darl="$RUNS/darl/model" \
  --runs sft="$RUNS/sft" rl_uniform="$RUNS/rl_uniform" rl_gt_reward="$RUNS/rl_gt_reward" darl="$RUNS/darl" \
  2>&1 | grep -v "it/s\]" | tee "$OUT/eval.log"
