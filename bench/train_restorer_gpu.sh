#!/usr/bin/env bash
# Trains the shipped two-stage restorer on one lent GPU in ONE call of at most 600 s:
# stage 1 (regression, S1_MINUTES; continues INIT's stage 1) then stage 2 (the denoiser around it, S2_MINUTES), both
# time-boxed, degradations on the GPU (data_on_device), then a quick peer-table check.
# Run from the repo root on the GPU machine, carrying .whl (diffusers, pyiqa, ... wheels) and
# data/photos (python -m darl_core.data.photos fetch, ~40 MB):
#   OUT=$OUT bash bench/train_restorer_gpu.sh                     # writes $OUT/restorer.tar, logs
#   DEVICE=cpu S1_MINUTES=0.2 S2_MINUTES=0.2 TINY=1 OUT=/tmp/g bash bench/train_restorer_gpu.sh   # CPU dry run
set -euo pipefail
OUT=${OUT:-out}; S1_MINUTES=${S1_MINUTES:-3.5}; S2_MINUTES=${S2_MINUTES:-4.5}; DEVICE=${DEVICE:-cuda}
INIT=${INIT:-models/sft-blind}; S1_ARGS=${S1_ARGS:-}; S2_ARGS=${S2_ARGS:-}; WORK=${WORK:-/tmp/restorer}
mkdir -p "$OUT" "$WORK"
source bench/gpu_env.sh
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
export DARL_PHOTOS_DIR=${DARL_PHOTOS_DIR:-data/photos}
test -f "$DARL_PHOTOS_DIR/index.json" || { echo "$DARL_PHOTOS_DIR missing: run python -m darl_core.data.photos fetch and carry data/photos" >&2; exit 2; }
EXTRA=()
if [ "$DEVICE" = cpu ]; then EXTRA=(--device cpu --bf16 false --num-workers 0 --batch-size 4 --patch 64 --val-every 5 --ckpt-every 5); fi
if [ "${TINY:-0}" = 1 ]; then EXTRA+=(--stage1-size tiny --builtin false --dead-leaves 2 --val-crops 1 --val-steps 1); fi
SECONDS=0
python3 -m darl_core.cli.train_sft --preset gpu_stage1 --init-from "$INIT" --output "$WORK/s1" \
  --max-minutes "$S1_MINUTES" "${EXTRA[@]}" $S1_ARGS 2>&1 | tr '\r' '\n' | awk 'NR % 100 == 1 || /written|Error|error/' | tee "$OUT/stage1.log"
echo "stage 1 done at ${SECONDS} s" | tee -a "$OUT/stage1.log"
python3 -m darl_core.cli.train_sft --preset gpu_stage2 --init-from "$WORK/s1/model" --output "$WORK/s2" \
  --max-minutes "$S2_MINUTES" "${EXTRA[@]}" --export-fp16 "${EXPORT_FP16:-true}" $S2_ARGS 2>&1 | tr '\r' '\n' | awk 'NR % 100 == 1 || /written|Error|error/' | tee "$OUT/stage2.log"
echo "stage 2 done at ${SECONDS} s" | tee -a "$OUT/stage2.log"
cp "$WORK/s1/metrics.jsonl" "$OUT/stage1_metrics.jsonl"; cp "$WORK/s2/metrics.jsonl" "$OUT/stage2_metrics.jsonl"
tar -C "$WORK/s2" -cf "$OUT/restorer.tar" model config.json
echo "model in $OUT/restorer.tar (extract into models/ and evaluate with bench/quality.py on this CPU)"
