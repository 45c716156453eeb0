#!/usr/bin/env bash
# Runs the four ablations of docs/results.md (darl, sft, rl_uniform, rl_gt_reward) from the
# shipped SFT model on one lent GPU, side by side, then the evaluation CLI on the held-out set.
#   ROUNDS=80 OUT=/some/dir bash bench/rl_ablations_gpu.sh
set -euo pipefail
OUT=${OUT:-out}; ROUNDS=${ROUNDS:-80}; MINUTES=${MINUTES:-3.8}; DEVICE=${DEVICE:-cuda}; EXTRA=${EXTRA:-}
mkdir -p "$OUT"
source bench/gpu_env.sh
python3 -c "import torch; from darl_core.rewards import get_metric; print('niqe ok', float(get_metric('niqe', '$DEVICE')(torch.rand(1, 3, 192, 192))))"
COMMON="--rounds $ROUNDS --batch-size 16 --pool-size 64 --lr 3e-5 --val-every 10 --ckpt-every 1000 --device $DEVICE --max-minutes $MINUTES $EXTRA"
for m in darl sft rl_uniform rl_gt_reward; do
  python3 -m darl_core.train_rl --preset $m --output /tmp/runs/$m $COMMON > /tmp/runs_$m.log 2>&1 &
done
wait
for m in darl sft rl_uniform rl_gt_reward; do echo "== $m"; tail -c 300 /tmp/runs_$m.log; tail -n 1 /tmp/runs/$m/metrics.jsonl; done
python3 -m darl_core.evaluate --device $DEVICE --out /tmp/runs/results \
  --models sft=models/sft-blind sft_more=/tmp/runs/sft/model rl_uniform=/tmp/runs/rl_uniform/model \
           rl_gt_reward=/tmp/runs/rl_gt_reward/model darl=/tmp/runs/darl/model \
  --runs sft=/tmp/runs/sft rl_uniform=/tmp/runs/rl_uniform rl_gt_reward=/tmp/runs/rl_gt_reward darl=/tmp/runs/darl \
  2>&1 | grep -v "it/s\]" | tee "$OUT/eval.log"
tar -C /tmp/runs -cf "$OUT/logs.tar" results $(cd /tmp/runs && ls -d */metrics.jsonl */difficulty.jsonl */config.json)
tar -C /tmp/runs/darl -cf - model | split -b 15M - "$OUT/darl-model.tar.part-"
