#!/usr/bin/env bash
# Trained the first, single-stage SFT model (models/sft-blind-v1) on one lent GPU, time-boxed.
# The two-stage restorer: bench/train_restorer_gpu.sh.
# Run from the repo root on the GPU machine; diffusers travels as a wheel in .whl/.
#   MINUTES=5 OUT=/some/dir bash bench/train_sft_gpu.sh
set -euo pipefail
OUT=${OUT:-out}; MINUTES=${MINUTES:-5}
mkdir -p "$OUT"
source bench/gpu_env.sh
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$OUT/gpu.txt"
BUILTIN=true
python3 -c "from darl_core.data.clean import TRAIN_IMAGES, builtin_image; [builtin_image(n) for n in TRAIN_IMAGES]" || BUILTIN=false
python3 -m darl_core.cli.train_sft --preset gpu --output /tmp/sft --builtin $BUILTIN --val-every 0 \
  --max-minutes "$MINUTES" --steps 1000000 2>&1 | tr '\r' '\n' | awk 'NR % 200 == 1 || /written|Error|error/' | tee "$OUT/train.log"
tar -C /tmp/sft -cf "$OUT/sft-blind.tar" model config.json metrics.jsonl
