"""Can a no-reference metric judge an RL fine-tune of the default SFT model? The metrics' scores of the
ground truth, of the SFT model's restorations, of other models', and of the SFT restorations moved part of
the way towards the truth (x + a (truth - x): strictly more faithful, less texture in flat areas).

    .venv/bin/python bench/judge_check.py --models backprop-r20=runs/bp_b/snapshots/round-0020 \\
        --out docs/rl_study_cpu/judges.md

A judge that scores the truth, or a restoration moved towards it, *worse* than the SFT output rewards a
model for moving away from the truth: it cannot confirm a fine-tune that is more faithful and cleaner in
flat areas (the RL issue's point 4 asks for both and for such a judge to improve). Crops: the independent
evaluation set (``darl_core.evaluation.evalset``, the Pillow / numpy / libjpeg recipe), as bench/pareto.py scores them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.evaluation.evalset import RANDOM, flat_hf_ratio, independent_pairs
from darl_core.models.loading import DEFAULT_MODEL, load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS
from darl_core.rewards.registry import get_metric


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(DEFAULT_MODEL), help="the SFT model")
    ap.add_argument("--models", nargs="*", default=[], help="label=model folder: more rows")
    ap.add_argument("--judges", nargs="+", default=["niqe", "brisque", "piqe"], help="no-reference metrics")
    ap.add_argument("--towards", nargs="*", type=float, default=[0.25, 0.5, 0.75],
                    help="fractions a of the way from the SFT output to the truth")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--per-image", type=int, default=1)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--max-crops", type=int, default=0, help="at most this many crops per seed (0: all)")
    ap.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    args = ap.parse_args(argv)
    judges = {n: get_metric(n) for n in args.judges}
    for n, m in judges.items():
        if m.full_reference:
            ap.error(f"--judges take no-reference metrics, {n} is full-reference")
    psnr = get_metric("psnr")
    pipes = {"SFT": load_restorer(args.base)}
    for item in args.models:
        label, sep, folder = item.partition("=")
        if not sep:
            ap.error(f"--models takes label=folder, got {item!r}")
        pipes[label] = load_restorer(folder)
    rows: dict[str, dict[str, list[float]]] = {}
    better: dict[tuple[str, str], list[bool]] = {}  # (row, judge): scored better than the SFT output, per crop
    t0 = time.time()
    for seed in args.seeds:
        pairs = independent_pairs(RANDOM, seed=seed, size=args.size, per_image=args.per_image)
        for k, (name, lq, hq, _info) in enumerate(pairs[: args.max_crops or None]):  # noqa: B007
            outs = {"the degraded input": lq, "the ground truth": hq}
            for label, pipe in pipes.items():
                g = torch.Generator().manual_seed(seed * 100_000 + k)  # bench/pareto.py's noise per crop
                outs[label] = pipe.restore_tensor(lq[None], args.steps, eta=0.0, generator=g)[0]
            for a in args.towards:
                outs[f"SFT, {a:g} of the way to the truth"] = (outs["SFT"] + a * (hq - outs["SFT"])).clamp(0, 1)
            scores = {}
            for label, x in outs.items():
                s = {n: float(m(x[None])) for n, m in judges.items()}
                s["flat_hf"] = flat_hf_ratio(x, hq) if label != "the ground truth" else 1.0
                s["psnr"] = float(psnr(x[None], hq[None])) if label != "the ground truth" else float("inf")
                scores[label] = s
                for key, v in s.items():
                    rows.setdefault(label, {}).setdefault(key, []).append(v)
            for label, s in scores.items():
                for n, m in judges.items():
                    sign = -1 if m.lower_better else 1
                    better.setdefault((label, n), []).append(sign * (s[n] - scores["SFT"][n]) > 0)
            print(f"  seed {seed} crop {k + 1} ({time.time() - t0:.0f} s)", file=sys.stderr)
    n_crops = len(next(iter(rows.values()))["psnr"])
    arrows = {n: "↓" if m.lower_better else "↑" for n, m in judges.items()}
    lines = [(f"Independent evaluation set: {n_crops} crops ({args.size} px, seeds {args.seeds}), {args.steps} "
              "steps, eta 0. Mean over crops; in brackets, the share of crops the judge scores better than the SFT "
              "model's restoration."), "",
             "| image | PSNR ↑ | flat_hf (→ 1) | " + " | ".join(f"{n} {arrows[n]}" for n in judges) + " |",
             "|---|---:|---:|" + "---:|" * len(judges)]
    for label, vals in rows.items():
        p = statistics.fmean(vals["psnr"]) if label != "the ground truth" else float("inf")
        cells = [f"{statistics.fmean(vals[n]):.3f}" + ("" if label == "SFT" else
                 f" ({100 * statistics.fmean(better[(label, n)]):.0f} %)") for n in judges]
        lines.append(f"| {label} | {'—' if p == float('inf') else f'{p:.3f}'} | "
                     f"{statistics.fmean(vals['flat_hf']):.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `.venv/bin/python bench/judge_check.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
              ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
