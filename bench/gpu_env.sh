# Sourced by the bench/*_gpu.sh scripts: the lent GPU machine's image has torch but not diffusers, pyiqa
# and friends, which travel as wheels in .whl (see docs/benchmarks.md); then the card goes into $OUT/gpu.txt.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo no-gpu) | tee "$OUT/gpu.txt"
