"""Enlarged crops of several models' restorations side by side, to look at what the numbers summarise.

    .venv/bin/python bench/compare_crops.py --models sft=models/sft-blind-fast bp=runs/bp_b/snapshots/round-0040 \\
        --crops 0 3 6 9 --out docs/rl_study_cpu/crops_backprop.png

Crops of the independent evaluation set (``darl_core.evaluation.evalset``, seed 0, 192 px), restored at ``--steps`` with
the same noise for every model (eta 0); from each, the centre ``--zoom-size`` pixels enlarged ``--zoom`` times
(nearest neighbour, so every pixel shows). Columns: the degraded input, each model, the ground truth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.evaluation.evalset import RANDOM, independent_pairs
from darl_core.data.images import tensor_to_pil
from darl_core.models.loading import load_restorer


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="label=model folder")
    ap.add_argument("--crops", nargs="+", type=int, default=[0, 3, 6, 9], help="indices into the seed-0 crops")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--zoom-size", type=int, default=96)
    ap.add_argument("--zoom", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    pairs = independent_pairs(RANDOM, seed=0, size=192, per_image=1)
    picked = [pairs[i] for i in args.crops]
    models = [m.partition("=") for m in args.models]
    lo, hi, side = (192 - args.zoom_size) // 2, (192 + args.zoom_size) // 2, args.zoom_size * args.zoom
    columns: list[list[torch.Tensor]] = [[lq for _, lq, _, _ in picked]]
    for _, _, folder in models:
        pipe = load_restorer(folder)
        columns.append([pipe.restore_tensor(lq[None], args.steps, generator=torch.Generator().manual_seed(k))[0]
                        for k, (_, lq, _, _) in enumerate(picked)])
    columns.append([hq for _, _, hq, _ in picked])
    labels = ["input"] + [label for label, _, _ in models] + ["ground truth"]
    head = 18
    grid = Image.new("RGB", (side * len(columns), head + side * len(picked)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, col) in enumerate(zip(labels, columns)):
        draw.text((c * side + 4, 3), label, fill="black")
        for r, t in enumerate(col):
            tile = tensor_to_pil(t[:, lo:hi, lo:hi]).resize((side, side), Image.NEAREST)
            grid.paste(tile, (c * side, head + r * side))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}: rows {[p[0] for p in picked]}")


if __name__ == "__main__":
    main()
