"""Restore benchmark: one 256x256 image at the default steps on this machine's CPU.

    python bench/restore.py [--model models/sft-blind] [--steps 4] [--repeats 5]

Prints the median wall time of a restore, the median time of one bare UNet
forward at the same size, their ratio wall / (steps x forward) (target
<= 1.15: the sampler, tiling and conversions add little), and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data.clean import builtin_image
from darl_core.models.loading import load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    pipe = load_restorer(args.model)
    pipe.set_progress_bar_config(disable=True)
    im = builtin_image("coffee.png").crop((0, 0, args.size, args.size))
    x = torch.rand(1, 6, args.size, args.size)
    t = torch.tensor([500])
    with torch.no_grad():
        pipe.unet(x, t)  # warm-up
        pipe(im, num_inference_steps=args.steps)
        fwd, wall = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pipe.unet(x, t)
            fwd.append(time.perf_counter() - t0)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pipe(im, num_inference_steps=args.steps)
            wall.append(time.perf_counter() - t0)
    f, w = statistics.median(fwd), statistics.median(wall)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"restore {args.size}x{args.size}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats")
    print(f"median wall time      {w:.3f} s")
    print(f"median UNet forward   {f:.3f} s")
    print(f"ratio wall/(steps*fwd) {w / (args.steps * f):.3f}  (target <= 1.15)")
    print(f"peak RSS              {rss:.0f} MiB")


if __name__ == "__main__":
    main()
