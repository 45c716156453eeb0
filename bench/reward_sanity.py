"""Reward sanity table: for each reward spec, the share of clean crops it scores above the same crop
distorted (noise, blur, JPEG 30, over-sharpening) and above a restorer's own output (darl_core.rewards.check).

    .venv/bin/python bench/reward_sanity.py --specs niqe piqe "niqe + 0.1*piqe" --model models/sft-blind \
        --crops 24 --out docs/reward_sanity.md

Crops: 192 px centre crops of the reward-check share of the corpus's *training* photos
(``reward_check.is_check_photo``: 1 in 8, which the learned ``darl_iqa`` never trained on; the
built-in training photos when the corpus is not fetched), never the evaluation photos. A reward fit
for RL orders at least 85 % of pairs right in every column (issue #13's bar).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data import photos
from darl_core.data.clean import TRAIN_IMAGES, builtin_image
from darl_core.data.images import pil_to_tensor
from darl_core.models.loading import load_restorer
from darl_core.rewards.check import is_check_photo, reward_sanity
from darl_core.rewards.registry import create_reward


def crops(n: int, size: int = 192) -> list[torch.Tensor]:
    ims = [im for i, (_, im) in enumerate(photos.train_images()) if is_check_photo(i)]
    ims = ims or [builtin_image(x) for i, x in enumerate(TRAIN_IMAGES) if is_check_photo(i)]
    out = []
    for im in ims[:n]:
        x = pil_to_tensor(im)
        h, w = x.shape[1:]
        if min(h, w) >= size:
            out.append(x[:, (h - size) // 2 : (h - size) // 2 + size, (w - size) // 2 : (w - size) // 2 + size])
    return out


def calibration_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(reference, distorted) of pyiqa's calibration suite (tests/data/calibration, see its README)."""
    from PIL import Image

    folder = Path(__file__).resolve().parent.parent / "tests" / "data" / "calibration"
    return [(pil_to_tensor(Image.open(r).convert("RGB")), pil_to_tensor(Image.open(folder / r.name.replace("ref_", "dist_")).convert("RGB")))
            for r in sorted(folder.glob("ref_*.png"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--specs", nargs="*", default=["niqe", "piqe", "niqe + 0.1*piqe"])
    ap.add_argument("--model", default="models/sft-blind", help="restorer for the 'restored' column ('' for none)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--crops", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    clean = crops(a.crops)
    pipe = load_restorer(a.model) if a.model else None
    t0 = time.time()
    rows = {}
    calib = calibration_pairs()
    for spec in a.specs:
        reward = create_reward(spec)
        rows[spec] = reward_sanity(reward, clean, pipe, a.steps)
        print(f"{spec}: {rows[spec]} ({time.time() - t0:.0f} s)", file=sys.stderr)
        # The calibration suite's five (reference, distorted) pairs: not a pass/fail column (5 pairs).
        rows[spec]["calibration"] = sum(float(reward(r[None])[0]) > float(reward(d[None])[0]) for r, d in calib) / len(calib)
    cols = list(next(iter(rows.values())))
    lines = [(f"Share of {len(clean)} clean crops scored above their distorted copy (higher is better; "
              f"'restored' = {a.model or '—'} at {a.steps} steps on a `realistic` degradation; 'calibration' = "
              f"the share of pyiqa's {len(calib)} calibration pairs with the reference above the distorted image, "
              f"not part of the pass bar)."), "",
             "| reward | " + " | ".join(cols) + " | passes (all ≥ 85 %) |", "|---|" + "---:|" * (len(cols) + 1)]
    for spec, r in rows.items():
        ok = all(v >= 0.85 for c, v in r.items() if c != "calibration")
        lines.append(f"| `{spec}` | " + " | ".join(f"{100 * r[c]:.0f} %" for c in cols) + f" | {'yes' if ok else 'no'} |")
    lines += ["", f"Command: `.venv/bin/python bench/reward_sanity.py {shlex.join(sys.argv[1:])}`", ""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
