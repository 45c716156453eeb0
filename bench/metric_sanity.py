"""Does each offline no-reference metric rank a degraded image below its clean original?

    python bench/metric_sanity.py [--metrics niqe,piqe] [--tasks blind,denoise,deblur,jpeg]

On the built-in held-out crops (darl_core.data.clean.heldout_pairs, seed 0) prints,
per task and metric: mean score of degraded and clean images and the share
of pairs where the degraded one scores worse ("ranked right").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data.clean import heldout_pairs
from darl_core.data.degrade import get_preset
from darl_core.rewards.registry import get_metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", default="niqe,piqe")
    ap.add_argument("--tasks", default="blind,denoise,deblur,jpeg")
    args = ap.parse_args()
    print("| task | metric | degraded (mean) | clean (mean) | pairs ranked right |")
    print("|---|---|---:|---:|---:|")
    for task in args.tasks.split(","):
        pairs = heldout_pairs(get_preset(task), seed=0)
        lq, hq = torch.stack([p[1] for p in pairs]), torch.stack([p[2] for p in pairs])
        for name in args.metrics.split(","):
            m = get_metric(name)
            a, b = m(lq), m(hq)
            worse = (a > b) if m.lower_better else (a < b)
            print(f"| {task} | {name} | {a.mean():.2f} | {b.mean():.2f} | "
                  f"{int(worse.sum())}/{len(a)} ({100 * worse.float().mean():.0f}%) |")


if __name__ == "__main__":
    main()
