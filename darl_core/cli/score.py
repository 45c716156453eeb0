"""Score images with IQA metrics and print a table.

    python -m darl_core.cli.score a.png b.png --metrics niqe,piqe
    python -m darl_core.cli.score restored/*.png --metrics psnr,ssim,niqe --ref gt/      # FR metrics need --ref
    python -m darl_core.cli.score x.png --metrics niqe --csv scores.csv

``--ref`` is one reference image (for a single input) or a folder holding
references with the same file names. Raw metric values are printed (the
arrow says which way is better); a metric that cannot score an image (too
small, missing weights, no reference) reports why instead of a number.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..data.images import ImageError, load_rgb, pil_to_tensor
from ..rewards.registry import MissingWeightsError, get_metric


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Score images with pyiqa metrics (offline ones work out of the box).")
    ap.add_argument("images", nargs="+", type=Path)
    ap.add_argument("--metrics", default="niqe,piqe", help="comma-separated pyiqa metric names")
    ap.add_argument("--ref", type=Path, default=None, help="reference image, or folder of same-named references")
    ap.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    metrics = {}
    for n in names:
        try:
            metrics[n] = get_metric(n, args.device)
        except (MissingWeightsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rows: list[dict[str, str]] = []
    for path in tqdm(args.images, desc="score", unit="img", disable=len(args.images) < 4):
        row = {"image": str(path)}
        try:
            x = pil_to_tensor(load_rgb(path))[None]
        except ImageError as e:
            rows.append({**row, **{n: f"error: {e}" for n in names}})
            continue
        ref, ref_err = None, "needs --ref"
        if args.ref is not None:
            rp = args.ref / path.name if args.ref.is_dir() else args.ref
            try:
                ref = pil_to_tensor(load_rgb(rp))[None]
            except ImageError as e:
                ref_err = str(e)
        for n, m in metrics.items():
            try:
                if m.full_reference and ref is None:
                    raise ValueError(ref_err)
                row[n] = f"{float(m(x, ref if m.full_reference else None)):.4f}"
            except ValueError as e:
                row[n] = f"error: {e}"
        rows.append(row)
    head = ["image"] + [f"{n} {'↓' if m.lower_better else '↑'}" for n, m in metrics.items()]
    table = [head] + [[r["image"]] + [r[n] for n in names] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerows(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
