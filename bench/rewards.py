"""Reward scoring throughput on this CPU: images per second, batched versus one by one.

Times pyiqa's own batched call against a loop of single images (this is
what decided darl_core.rewards.registry.SERIAL_ON_CPU), and the Metric wrapper.

    python bench/rewards.py [--metrics niqe,piqe] [--n 16] [--size 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.rewards.registry import get_metric


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", default="niqe,piqe")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.n, 3, args.size, args.size)
    print(f"{args.n} images of {args.size}x{args.size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} repeats")
    print("| metric | pyiqa batched (img/s) | one by one (img/s) | batched/serial | darl Metric (img/s) |")
    print("|---|---:|---:|---:|---:|")
    for name in args.metrics.split(","):
        m = get_metric(name)
        m(x[:2])  # warm-up
        batched, single, wrapped = [], [], []
        with torch.no_grad():
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                m.net(x)
                batched.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(args.n):
                    m.net(x[i : i + 1])
                single.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m(x)
                wrapped.append(time.perf_counter() - t0)
        b, s, w = (args.n / statistics.median(v) for v in (batched, single, wrapped))
        print(f"| {name} | {b:.1f} | {s:.1f} | {b / s:.2f} | {w:.1f} |")


if __name__ == "__main__":
    main()
