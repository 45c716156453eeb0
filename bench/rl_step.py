"""What an RL round costs, part by part, and how much faster the code got.

    python bench/rl_step.py                        # the study's setting, this tree
    python bench/rl_step.py --before 8f252f9       # the same setting with the code of a commit, in one run
    python bench/rl_step.py --bare                 # a round against the bare UNet compute inside it
    python bench/rl_step.py --compare-bf16         # fp32 and bf16 runs from the same seed

Each tree runs ``--rounds`` darl rounds in a fresh process (the allocator setting of
``darl_core.train.allocator`` is per process), at the setting of the issue that asked for cheaper rounds
(``--setting issue``: ``sft-blind-fast``, the ``darl_iqa`` reward, a ``realistic`` pool of 32 crops
of 96 px, batch 4 x G = 8 rollouts, 2 DDIM steps, one PPO epoch, lambda_sft 0.1, no extra diagnostic
pass, pool difficulty every 5 rounds, no probe). With ``--before`` the two trees alternate
``--repeats`` times, so a load on the machine hits both alike. Prints the median of the rounds after
the first (which warms up) and, from their total, the mean round with the difficulty refreshes
amortised, rollouts per second, each part of a round (the parts this tree's logs have), and the ratio
old / new.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS: dict[str, dict[str, object]] = {
    "issue": {"base_model": "models/sft-blind-fast", "reward": "darl_iqa", "task": "realistic", "pool_size": 32,
              "patch": 96, "batch_size": 4, "group_size": 8, "num_steps": 2, "lr": 3e-5, "lambda_sft": 0.1,
              "epochs": 1, "diag_every": 0, "difficulty_every": 5, "probe_every": 0, "val_every": 0},
    # the shipped darl preset's own sizes (192 px, 4 steps, G = 4, 2 epochs, diagnostics every round)
    "preset": {"base_model": "models/sft-blind-fast", "reward": "darl_iqa", "batch_size": 4, "pool_size": 4,
               "val_every": 0},
}
PARTS = ("difficulty_s", "rollout_s", "reward_s", "reference_s", "update_s", "probe_s")

CHILD = r"""
import json, sys, tempfile
from dataclasses import replace
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
from darl_core.train.rl import darl, train_rl
with tempfile.TemporaryDirectory() as tmp:
    fields = json.loads(sys.argv[2])
    train_rl(replace(darl(), output=tmp, ckpt_every=100000, rounds=int(sys.argv[3]), device="cpu", **fields))
    print("METRICS " + json.dumps([json.loads(x) for x in open(Path(tmp) / "metrics.jsonl")]))
"""


def run_tree(tree: Path, fields: dict[str, object], rounds: int, threads: int) -> list[dict]:
    """``rounds`` rounds with the code in ``tree`` (models are read from this checkout), in a fresh process."""
    fields = {k: (str(ROOT / v) if k == "base_model" else v) for k, v in fields.items()}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tree), json.dumps(fields), str(rounds), str(threads)],
                         capture_output=True, text=True, cwd=tree,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "DARL_IQA_DIR": str(ROOT / "models" / "darl-iqa")})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("METRICS ")]
    if res.returncode or not lines:
        raise RuntimeError(f"the run in {tree} failed:\n{res.stderr[-3000:]}")
    return [r for r in json.loads(lines[0][8:]) if r.get("round", 0) > 0]


def summary(runs: list[list[dict]], rollouts: int) -> dict[str, float]:
    steady = [r for recs in runs for r in recs[1:]]  # the first round of each run warms up
    mean = sum(r["round_s"] for r in steady) / len(steady)
    out = {"median round s": statistics.median(r["round_s"] for r in steady), "mean round s": mean,
           "rollouts/s": rollouts / mean}
    for p in PARTS:
        if all(p in r for r in steady):
            out[p] = sum(r[p] for r in steady) / len(steady)
    return out


def extract(rev: str, dest: Path) -> Path:
    """The files of commit ``rev`` in ``dest`` (git archive: no work tree of this checkout is touched)."""
    tar = dest / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "darl_core"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest


def compare(args: argparse.Namespace) -> None:
    fields = SETTINGS[args.setting]
    rollouts = int(fields.get("batch_size", 8)) * int(fields.get("group_size", 4))
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": ROOT}
        if args.before:
            trees = {"old": extract(args.before, Path(tmp)), "new": ROOT}
        runs: dict[str, list[list[dict]]] = {k: [] for k in trees}
        t0 = time.time()
        for _ in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_tree(tree, fields, args.rounds, args.threads))
    print(f"RL rounds at setting {args.setting!r}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    print(f"{args.rounds} rounds x {args.repeats} per tree, {args.threads} threads, "
          f"{'old = ' + args.before + ', ' if args.before else ''}{time.time() - t0:.0f} s in all\n")
    sums = {k: summary(v, rollouts) for k, v in runs.items()}
    keys = [k for k in sums["new"] if all(k in s for s in sums.values())] + \
        [k for k in sums["new"] if not all(k in s for s in sums.values())]
    print("| | " + " | ".join(sums) + (" | old / new |" if args.before else " |"))
    print("|---|" + "---:|" * (len(sums) + bool(args.before)))
    for k in keys:
        cells = [f"{s[k]:.3f}" if k in s else "–" for s in sums.values()]
        ratio = ""
        if args.before and k in sums["old"] and k in sums["new"] and min(sums["new"][k], sums["old"][k]) > 0.01:
            r = sums["old"][k] / sums["new"][k]
            ratio = f" | {1 / r if k == 'rollouts/s' else r:.2f}x"
        print(f"| {k} | " + " | ".join(cells) + (ratio if args.before else "") + " |")


def bare_compute(batch: int, steps: int, patch: int, epochs: int, repeats: int) -> float:
    from darl_core.models.loading import load_restorer

    from darl_core.models.pipeline import unshuffle_factor

    unet = load_restorer("models/sft-blind-fast", "cpu").unet
    x = torch.nn.functional.pixel_unshuffle(torch.randn(batch, 6, patch, patch), unshuffle_factor(unet))
    t = torch.full((batch,), 500)
    k = steps - 1

    def once() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps + k):  # rollout forwards, and the KL reference's
                unet(x, t)
        for _ in range(epochs * k + 1):  # the policy passes (the first epoch's forward is the rollout's), SFT
            unet(x, t).sample.float().pow(2).mean().backward()
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(repeats))


def bare(args: argparse.Namespace) -> None:
    from darl_core.train.rl import darl, train_rl

    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(darl(), output=tmp, rounds=args.rounds, ckpt_every=10_000, device="cpu",
                      **SETTINGS[args.setting])
        train_rl(cfg)
        recs = [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl")]
    iters = [r["round_s"] - r["difficulty_s"] for r in recs if r.get("round", 0) > 1]
    it = statistics.median(iters)
    b = bare_compute(cfg.batch_size * cfg.group_size, cfg.num_steps, cfg.patch, cfg.epochs, 3)
    print(f"median round without the difficulty refresh {it:.3f} s; bare UNet compute inside it {b:.3f} s; "
          f"ratio {it / b:.3f}")


def compare_bf16(args: argparse.Namespace) -> None:
    """fp32 and bf16 runs from the same seed: do reward and losses follow, and what is the speed-up?"""
    from darl_core.models.restorer import cpu_bf16_supported
    from darl_core.train.rl import darl, train_rl

    def one(bf16: bool) -> list[dict]:
        with tempfile.TemporaryDirectory() as tmp:
            train_rl(replace(darl(), output=tmp, rounds=args.rounds, ckpt_every=10_000, device="cpu", bf16=bf16,
                             **SETTINGS[args.setting]))
            return [json.loads(line) for line in open(Path(tmp) / "metrics.jsonl") if '"reward"' in line]

    runs = {"fp32": one(False), "bf16": one(True)}
    print(f"native CPU bf16: {cpu_bf16_supported()}")
    print("| round | reward fp32 | reward bf16 | kl fp32 | kl bf16 | s fp32 | s bf16 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(runs["fp32"], runs["bf16"]):
        print(f"| {a['round']} | {a['reward']:.4g} | {b['reward']:.4g} | {a.get('kl', 0):.3g} | {b.get('kl', 0):.3g} "
              f"| {a['round_s']:.1f} | {b['round_s']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", default="issue", choices=sorted(SETTINGS))
    ap.add_argument("--rounds", type=int, default=11, help="rounds per run (the first warms up)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per tree, alternating with --before's")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--before", metavar="REV", help="also run the code of this commit (git archive), in turns")
    ap.add_argument("--bare", action="store_true", help="a round against the bare UNet compute inside it")
    ap.add_argument("--compare-bf16", action="store_true", help="fp32 and bf16 autocast runs from the same seed")
    args = ap.parse_args()
    if args.compare_bf16:
        compare_bf16(args)
    elif args.bare:
        bare(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
