#!/usr/bin/env bash
# Everything a lent GPU should do first, in ONE call of at most ~590 s, in the guide's order:
# the restorer (bench/train_restorer_gpu.sh, issue #8/#12), then bench/gpu_scale.sh (#17) with the
# time left. Outputs are packed as they finish so that at most 8 files come back, each < 16 MiB:
#   $OUT/restorer-logs.tar, $OUT/restorer.tar.part-*, $OUT/scale.tar
# First `bash bench/gpu_prepare.sh` (what the call carries, within 64 MiB), then in the call:
#   INIT=.gpu/init DARL_PHOTOS_DIR=.gpu/photos OUT=$OUT bash bench/gpu_session.sh    # carry .whl and .gpu
# On an H200 (2026-11-27) 2.0 + 4.0 minutes of training took 437 s with loading and export, which
# left gpu_scale 128 s, too few for its RL iteration (~200 s with --rounds 2): hence 1.75 + 3.5.
#   DEVICE=cpu S1_MINUTES=0.1 S2_MINUTES=0.1 TINY=1 SCALE_ARGS="--size tiny --device cpu --steps 3 --lq 24" OUT=/tmp/s bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-out}; BUDGET=${BUDGET:-585}; WORKOUT=${WORKOUT:-/tmp/gpu_session}
S1_MINUTES=${S1_MINUTES:-1.75}; S2_MINUTES=${S2_MINUTES:-3.5}
mkdir -p "$OUT" "$WORKOUT/restorer" "$WORKOUT/scale"
# What bench/gpu_prepare.sh made, when the call carries it (models/ and data/ stay behind).
if [ -d .gpu/init ]; then export INIT=${INIT:-.gpu/init}; fi
if [ -f .gpu/photos/index.json ]; then export DARL_PHOTOS_DIR=${DARL_PHOTOS_DIR:-.gpu/photos}; fi
SECONDS=0
OUT="$WORKOUT/restorer" S1_MINUTES=$S1_MINUTES S2_MINUTES=$S2_MINUTES S1_ARGS="${S1_ARGS:---lr 5e-4}" \
  bash bench/train_restorer_gpu.sh || echo "restorer script failed (rc $?)" | tee -a "$WORKOUT/restorer/failed.txt"
echo "restorer phase ended at ${SECONDS} s" | tee -a "$WORKOUT/restorer/gpu.txt"
if [ -f "$WORKOUT/restorer/restorer.tar" ]; then
  split -b 15M "$WORKOUT/restorer/restorer.tar" "$OUT/restorer.tar.part-"
fi
tar -C "$WORKOUT/restorer" --exclude restorer.tar -cf "$OUT/restorer-logs.tar" .
left=$((BUDGET - SECONDS))
echo "gpu_scale gets ${left} s"
if [ "$left" -gt 30 ]; then
  # shellcheck disable=SC2086
  OUT="$WORKOUT/scale" timeout "$left" bash bench/gpu_scale.sh ${SCALE_ARGS:---rounds 2 --repeats 3} \
    || echo "gpu_scale failed or ran out of time (rc $?)" | tee -a "$WORKOUT/scale/failed.txt"
fi
tar -C "$WORKOUT/scale" -cf "$OUT/scale.tar" .
ls -la "$OUT"; echo "session done at ${SECONDS} s"
