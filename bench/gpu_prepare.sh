#!/usr/bin/env bash
# Prepares what a lent GPU call carries, within the device tool's 64 MiB for the whole tree
# (tracked files are ~63 MB, most of it models/, so they must leave the working tree for the call):
#   .whl/        diffusers, pyiqa (without its bundled calibration images and docs) and peft wheels
#   .gpu/init    a copy of models/sft-blind (the restorer run's INIT, the RL runs' BASE)
#   .gpu/iqa     a copy of models/darl-iqa (the RL runs' reward, DARL_IQA_DIR)
#   .gpu/fast    with FAST=1 only: models/sft-blind-fast's denoiser and configs (bench/distill_fast_gpu.sh's
#                INIT; its stage 1 is sft-blind's, taken from .gpu/init there); every other train photo
#                is then left out as well, to stay within the limit (the distillation's targets are the
#                teacher's outputs, so it needs fewer photos)
#   .gpu/photos  the photo corpus's train split as hard links, every 10th photo left out to fit
#                (.gpu/photos_dropped.txt lists them; 242 of 268 on 2026-11-27)
# Then, for the call:  rm -rf models docs tests/data   (tracked: `git checkout -- models docs tests/data` after)
#   device run, carry [".whl", ".gpu"]:
#   OUT=$OUT bash bench/gpu_session.sh            (it finds .gpu/init and .gpu/photos itself)
#   OUT=$OUT bash bench/rl_ablations_gpu.sh       (the RL runs: it finds .gpu/init, .gpu/iqa, .gpu/photos)
#   with FAST=1: OUT=$OUT bash bench/distill_fast_gpu.sh   (#17's fast denoiser: .gpu/fast taught by .gpu/init)
# Needs `make bench-setup photos` (data/photos) and network access to the package index.
set -euo pipefail
PY=${PY:-.venv/bin/python}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl .gpu && mkdir -p .whl .gpu/photos
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 pyiqa==0.1.16 peft==0.21.2
tmp=$(mktemp -d)
(cd "$tmp" && unzip -q "$OLDPWD"/.whl/pyiqa-*.whl && rm -rf ResultsCalibra build docs tests options \
  && rm "$OLDPWD"/.whl/pyiqa-*.whl && zip -qr "$OLDPWD/.whl/pyiqa-0.1.16-py3-none-any.whl" pyiqa pyiqa-0.1.16.dist-info)
rm -rf "$tmp"
cp -r models/sft-blind .gpu/init
cp -r models/darl-iqa .gpu/iqa
if [ "${FAST:-0}" = 1 ]; then mkdir -p .gpu/fast && cp -r models/sft-blind-fast/{model_index.json,scheduler,unet} .gpu/fast/; fi
$PY - <<'PYEOF'
import json, os, shutil
from pathlib import Path
recs = json.load(open("data/photos/index.json"))
train = sorted(r["file"] for r in recs if r["split"] == "train")
drop = set(train[1::2] if os.environ.get("FAST") == "1" else train[9::10])
for f in train:
    if f not in drop:
        dst = Path(".gpu/photos") / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(Path("data/photos") / f, dst)
shutil.copy("data/photos/index.json", ".gpu/photos/index.json")
Path(".gpu/photos_dropped.txt").write_text("\n".join(sorted(drop)) + "\n")
print(f"{len(train) - len(drop)} of {len(train)} train photos")
PYEOF
code=$(git ls-files -z | grep -zv "^models/\|^docs/\|^tests/data" | xargs -0 du -cb | tail -1 | cut -f1)
carry=$(du -cb .whl .gpu | tail -1 | cut -f1)
echo "the call would send $(( (code + carry) / 1000000 )) MB (limit 67.1 MB)"
