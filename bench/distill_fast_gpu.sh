#!/usr/bin/env bash
# Issue #17: distils sft-blind-fast's denoiser further on one lent GPU, in ONE call of at most 600 s:
# the default SFT model since 2026-11-29 (2.6x cheaper a step than its teacher sft-blind), whose flat
# areas at 4 steps still hold 1.8x sft-blind's texture (docs/results.md 0b). Preset
# gpu_stage2_distill: along the student's own 2- and 4-step paths, the error's high frequencies
# weighted, MINUTES of training, then bench/distill_check.py (teacher, start, result) on the GPU.
# Run from the repo root on the GPU machine after `FAST=1 bash bench/gpu_prepare.sh` (it makes .gpu/fast)
# and `rm -rf models docs tests/data` (`git checkout -- models docs tests/data` after):
#   device run, carry [".whl", ".gpu"]:  OUT=$OUT bash bench/distill_fast_gpu.sh   # writes $OUT/fast.tar, check
#   DEVICE=cpu MINUTES=0.2 OUT=/tmp/d bash bench/distill_fast_gpu.sh               # CPU dry run (~3 min)
# Back here: tar -xf fast.tar -C /tmp/fast && cp -r models/sft-blind/stage1 /tmp/fast/model/, then
# bench/quality.py on /tmp/fast/model against models/sft-blind and models/sft-blind-fast.
set -euo pipefail
OUT=${OUT:-out}; MINUTES=${MINUTES:-7}; DEVICE=${DEVICE:-cuda}; ARGS=${ARGS:-}; WORK=${WORK:-/tmp/distill}
if [ -d .gpu/fast ]; then INIT=${INIT:-.gpu/fast}; TEACHER=${TEACHER:-.gpu/init}; fi
INIT=${INIT:-models/sft-blind-fast}; TEACHER=${TEACHER:-models/sft-blind}
if [ -f .gpu/photos/index.json ]; then export DARL_PHOTOS_DIR=${DARL_PHOTOS_DIR:-.gpu/photos}; fi
export DARL_PHOTOS_DIR=${DARL_PHOTOS_DIR:-data/photos}
mkdir -p "$OUT" "$WORK"
if [ ! -d "$INIT/stage1" ]; then  # .gpu/fast travels without its stage 1: sft-blind's, bit for bit
  rm -rf "$WORK/init" && cp -r "$INIT" "$WORK/init" && cp -r "$TEACHER/stage1" "$WORK/init/" && INIT=$WORK/init
fi
source bench/gpu_env.sh
test -f "$DARL_PHOTOS_DIR/index.json" || { echo "$DARL_PHOTOS_DIR missing: run python -m darl_core.data.photos fetch" >&2; exit 2; }
PY=python3; [ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=.venv/bin/python
EXTRA=(); CHECK=()
if [ "$DEVICE" = cpu ]; then
  EXTRA=(--device cpu --bf16 false --num-workers 0 --batch-size 4 --patch 64 --data-on-device false --ckpt-every 5)
  CHECK=(--crops 2 --seeds 0)
fi
SECONDS=0
# shellcheck disable=SC2086
$PY -m darl_core.cli.train_sft --preset gpu_stage2_distill --init-from "$INIT" --distill-from "$TEACHER" \
  --output "$WORK/fast" --max-minutes "$MINUTES" "${EXTRA[@]}" $ARGS 2>&1 | tr '\r' '\n' \
  | awk 'NR % 100 == 1 || /written|Error|error/' | tee "$OUT/distill.log"
echo "training done at ${SECONDS} s" | tee -a "$OUT/distill.log"
# without stage 1 (sft-blind's, unchanged): under the 16 MiB a returned file may have
tar -C "$WORK/fast" --exclude model/stage1 -cf "$OUT/fast.tar" model config.json metrics.jsonl
$PY bench/distill_check.py "$TEACHER" "$INIT" "$WORK/fast/model" --device "$DEVICE" "${CHECK[@]}" \
  --json "$OUT/check.json" 2>&1 | grep -v Warning | tee "$OUT/check.txt" || echo "check failed" | tee -a "$OUT/check.txt"
echo "done at ${SECONDS} s: $OUT/fast.tar (model without stage 1, config, metrics), $OUT/check.txt"
