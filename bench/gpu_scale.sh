#!/usr/bin/env bash
# bench/gpu_scale.py in one call on a lent GPU machine, whose image has torch, transformers and
# accelerate but not diffusers or pyiqa: those travel as wheels in .whl (see docs/benchmarks.md).
#   OUT=$OUT bash bench/gpu_scale.sh            # writes gpu_scale-<card>.{json,md} and the log to $OUT
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
source bench/gpu_env.sh
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 bench/gpu_scale.py --out "$OUT" "$@" 2>&1 | grep --line-buffered -v "it/s\]" | tee "$OUT/gpu_scale.log"
