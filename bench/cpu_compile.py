"""Is torch.compile a CPU speed lever for the shipped denoiser? One forward pass, eager against compiled.

    .venv/bin/python bench/cpu_compile.py            # ~3 min on 2 cores, most of it compiling

The shipped ``sft-blind`` diffusion UNet at 256x256 (the default tile), fp32 and channels-last as
``set_precision`` leaves it on a CPU without native bf16, timestep 500. Medians of ``--repeats`` after
one warm-up call; the ratio is eager / compiled from the same run; the compile time is the first
compiled call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cpu_speed import median_time

from darl_core.models.loading import load_restorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/sft-blind", help="model folder")
    ap.add_argument("--size", type=int, default=256, help="input side in pixels (a tile)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per mode (median)")
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = load_restorer(args.model, "cpu")
    print("precision:", pipe.set_precision("auto"))
    unet = pipe.unet.eval()
    x = torch.randn(1, unet.config.in_channels, args.size, args.size).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500])
    with torch.no_grad():
        eager = median_time(lambda: unet(x, t), args.repeats)
        compiled = torch.compile(unet)
        t0 = time.perf_counter()
        compiled(x, t)
        compile_s = time.perf_counter() - t0
        comp = median_time(lambda: compiled(x, t), args.repeats)
    print(f"{args.size}x{args.size} forward, median of {args.repeats}: eager {eager:.3f} s, compiled {comp:.3f} s, "
          f"ratio {eager / comp:.2f}x; first compiled call {compile_s:.0f} s")


if __name__ == "__main__":
    main()
