#!/usr/bin/env bash
# The RL issue's equal-budget comparison on one lent GPU in ONE call of at most 600 s: the four presets
# (darl, sft, rl_uniform, rl_gt_reward) x SEEDS, all side by side from the same SFT model, exactly ROUNDS
# rounds each (MINUTES is only a safety stop: a run it cuts short is not at equal budget and the log says
# so), a model snapshot every SNAP rounds, then the Pareto plot (bench/pareto.py) on the independent
# evaluation set, on the GPU. darl and rl_uniform use REWARD, rl_gt_reward PSNR.
#   OUT=$OUT bash bench/rl_ablations_gpu.sh                                  # carry .whl and .gpu (gpu_prepare.sh)
#   DEVICE=cpu ROUNDS=2 SEEDS=0 PRESETS="darl sft" BATCH=2 GROUP=2 POOL=4 PATCH=64 EXTRA="--num-steps 2" \
#     PARETO_ARGS="--max-crops 2 --size 96" OUT=/tmp/r bash bench/rl_ablations_gpu.sh    # CPU dry run
set -euo pipefail
OUT=${OUT:-out}; ROUNDS=${ROUNDS:-40}; MINUTES=${MINUTES:-6.5}; DEVICE=${DEVICE:-cuda}; EXTRA=${EXTRA:-}
SEEDS=${SEEDS:-0 1 2}; PRESETS=${PRESETS:-darl sft rl_uniform rl_gt_reward}; REWARD=${REWARD:-darl_iqa}
BATCH=${BATCH:-8}; GROUP=${GROUP:-4}; POOL=${POOL:-64}; PATCH=${PATCH:-192}; SNAP=${SNAP:-5}; TASK=${TASK:-realistic}
RUNS=${RUNS:-/tmp/runs}; PARETO_ARGS=${PARETO_ARGS:-}
# What bench/gpu_prepare.sh made, when the call carries it (models/ stays behind).
if [ -d .gpu/init ]; then BASE=${BASE:-.gpu/init}; else BASE=${BASE:-models/sft-blind}; fi
if [ -d .gpu/iqa ]; then export DARL_IQA_DIR=${DARL_IQA_DIR:-.gpu/iqa}; fi
if [ -f .gpu/photos/index.json ]; then export DARL_PHOTOS_DIR=${DARL_PHOTOS_DIR:-.gpu/photos}; fi
mkdir -p "$OUT" "$RUNS"
[ "$DEVICE" = cpu ] || source bench/gpu_env.sh
python3 -c "import torch; from darl_core.rewards.registry import create_reward; print('reward ok', create_reward('$REWARD', '$DEVICE')(torch.rand(1, 3, 192, 192, device='$DEVICE')))"
COMMON="--rounds $ROUNDS --batch-size $BATCH --group-size $GROUP --pool-size $POOL --patch $PATCH --task $TASK
  --base-model $BASE --lr 3e-5 --val-every 0 --ckpt-every 1000 --snapshot-every $SNAP --probe-every $SNAP
  --device $DEVICE --max-minutes $MINUTES $EXTRA"
SECONDS=0
runs=()
for seed in $SEEDS; do
  for m in $PRESETS; do
    r=$REWARD; [ "$m" = rl_gt_reward ] && r=psnr
    # shellcheck disable=SC2086
    python3 -m darl_core.cli.train_rl --preset "$m" --reward "$r" --seed "$seed" --output "$RUNS/$m-s$seed" $COMMON \
      > "$RUNS/$m-s$seed.log" 2>&1 &
    runs+=("$m-s$seed=$RUNS/$m-s$seed")
  done
done
wait
echo "runs done at ${SECONDS} s" | tee "$OUT/summary.txt"
for run in "${runs[@]}"; do
  d=${run#*=}; last=$(tail -n 1 "$d/metrics.jsonl" 2>/dev/null || echo "{}")
  echo "${run%%=*}: $(python3 -c "import json,sys; r=json.loads(sys.argv[1] or '{}'); print('round', r.get('round'), 'of $ROUNDS', '' if r.get('round') == $ROUNDS else '(NOT equal budget)')" "$last")" \
    | tee -a "$OUT/summary.txt"
done
# shellcheck disable=SC2086
python3 bench/pareto.py --base "$BASE" --runs "${runs[@]}" --reward "$REWARD" --other niqe --device "$DEVICE" \
  --seeds 0 1 --per-image 3 --out "$RUNS/pareto" $PARETO_ARGS 2>&1 | tail -n 40 | tee "$OUT/pareto.log" || true
echo "pareto done at ${SECONDS} s" | tee -a "$OUT/summary.txt"
# Logs and the Pareto files (small); the darl seed-0 model (the candidate to ship), split < 16 MiB.
tar -C "$RUNS" -cf "$OUT/logs.tar" $(cd "$RUNS" && ls -d pareto */metrics.jsonl */difficulty.jsonl */config.json *.log 2>/dev/null)
if [ -d "$RUNS/darl-s0/model" ]; then tar -C "$RUNS/darl-s0" -cf - model | split -b 15M - "$OUT/darl-model.tar.part-"; fi
ls -la "$OUT"
