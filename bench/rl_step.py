"""Time of one RL iteration (rollout, rewards, update) against the bare UNet compute inside it.

    python bench/rl_step.py [--batch 4] [--steps 4] [--patch 192] [--rounds 3] [--device cpu]

Runs ``--rounds`` darl rounds from the shipped SFT model on a pool of
``--batch`` samples (pool difficulty is timed apart and left out), then
times the UNet work such an iteration contains, with the same shapes:
``steps`` rollout forwards, and per PPO epoch K = steps - 1 policy
forward+backward passes, K reference forwards (KL) and one SFT
forward+backward. Prints medians and the ratio iteration / bare compute
(target <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.loading import load_restorer  # noqa: E402
from darl_core.rl import darl, train_rl  # noqa: E402


def bare_compute(batch: int, steps: int, patch: int, epochs: int, device: str, repeats: int) -> float:
    unet = load_restorer(None, device).unet
    x = torch.randn(batch, 6, patch, patch, device=device)
    t = torch.full((batch,), 500, device=device)
    k = steps - 1

    def once() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                unet(x, t)
            for _ in range(epochs * k):
                unet(x, t)  # reference forward for the KL
        for _ in range(epochs * (k + 1)):  # policy passes, plus the SFT pass
            unet(x, t).sample.float().pow(2).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(repeats))


def _run(args: argparse.Namespace, bf16: bool) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(darl(), output=tmp, rounds=args.rounds, batch_size=args.batch, pool_size=args.batch,
                      hard_fraction=1.0, num_steps=args.steps, patch=args.patch, reward=args.reward,
                      val_every=0, ckpt_every=10_000, device=args.device, bf16=bf16)
        train_rl(cfg)
        return [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl")]


def compare_bf16(args: argparse.Namespace) -> None:
    """fp32 and bf16 runs from the same seed: do reward and losses follow, and what is the speed-up?"""
    from darl_core.restorer import cpu_bf16_supported

    runs = {"fp32": _run(args, False), "bf16": _run(args, True)}
    print(f"darl rounds, batch {args.batch}, {args.steps} steps, {args.patch}px, device {args.device}, "
          f"{torch.get_num_threads()} threads, native CPU bf16: {cpu_bf16_supported()}")
    print("| round | reward fp32 | reward bf16 | loss_rl fp32 | loss_rl bf16 | kl fp32 | kl bf16 | s fp32 | s bf16 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(runs["fp32"], runs["bf16"]):
        cells = [f"{a.get(k, float('nan')):.4g} | {b.get(k, float('nan')):.4g}" for k in ("reward", "loss_rl", "kl")]
        print(f"| {a['round']} | {' | '.join(cells)} | {a['round_s']:.1f} | {b['round_s']:.1f} |")
    med = {k: statistics.median(r["round_s"] for r in v[1:]) for k, v in runs.items()}
    print(f"median round (after the first): fp32 {med['fp32']:.2f} s, bf16 {med['bf16']:.2f} s, "
          f"speed-up {med['fp32'] / med['bf16']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--patch", type=int, default=192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reward", default="niqe")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compare-bf16", action="store_true",
                    help="run the same seeded rounds in fp32 and with bf16 autocast; print both curves and the "
                         "speed-up per iteration")
    args = ap.parse_args()
    if args.compare_bf16:
        compare_bf16(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(darl(), output=tmp, rounds=args.rounds, batch_size=args.batch, pool_size=args.batch,
                      hard_fraction=1.0, num_steps=args.steps, patch=args.patch, reward=args.reward,
                      val_every=0, ckpt_every=10_000, device=args.device)
        train_rl(cfg)
        recs = [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl")]
    iters = [r["round_s"] - r["difficulty_s"] for r in recs[1:]]  # the first round warms up
    it = statistics.median(iters)
    bare = bare_compute(args.batch, args.steps, args.patch, cfg.epochs, args.device, 3)
    print(f"darl iteration: batch {args.batch}, {args.steps} DDIM steps, {args.patch}px, {cfg.epochs} PPO epochs, "
          f"reward {args.reward}, device {args.device}, {torch.get_num_threads()} threads")
    print(f"median iteration (rollout + rewards + update) {it:.3f} s over {len(iters)} rounds")
    print(f"median bare UNet compute inside it           {bare:.3f} s")
    print(f"ratio                                         {it / bare:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
