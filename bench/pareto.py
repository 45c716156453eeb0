"""Fidelity against reward, one point per RL snapshot: the Pareto plot of the RL issue.

    .venv/bin/python bench/pareto.py --base models/sft-blind \\
        --runs darl=runs/rl/darl rl_uniform=runs/rl/rl_uniform darl-s1=runs/rl/darl-s1 \\
        --reward darl_iqa --other niqe --seeds 0 1 --per-image 2 --out docs/pareto

Each run folder's ``snapshots/round-NNNN`` (``RLConfig.snapshot_every``; without snapshots, its final
``model/``) is restored on the independent evaluation set (``darl_core.evaluation.evalset``: photos no model
trained on, degraded by Pillow / numpy / libjpeg) at ``--steps`` DDIM steps (``--eta``, 0 by default; the same noise
per crop for every model), and the base SFT model is round 0 of every run. Per point: PSNR, SSIM, the
reward (a reward spec, oriented so that higher is better) and ``--other``, a no-reference metric that
was *not* the reward, averaged over all crops and over the hardest quartile (the quarter of crops with
the highest 1 - SSIM under the base model, per seed), then over seeds. Label seeds of one method
``method-s1``, ``method-s2``: they share a colour. Writes ``pareto.csv`` (one row per point and
subset), ``pareto.md`` and ``pareto.png`` (PSNR against the reward and against the other metric; all
crops and hardest quartile).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.evaluation.evalset import RANDOM, flat_hf_ratio, independent_pairs
from darl_core.models.loading import load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS
from darl_core.rewards.registry import create_reward, get_metric


KEYS = ("psnr", "ssim", "reward", "other", "flat_hf")  # what is scored per crop


def run_points(run: Path) -> list[tuple[int, Path]]:
    """(round, model folder) of a run: its snapshots in order, else its final model."""
    snaps = sorted((int(m.group(1)), p) for p in (run / "snapshots").glob("round-*")
                   if (m := re.fullmatch(r"round-(\d+)", p.name)) and p.is_dir())
    if snaps:
        return snaps
    if (run / "model").is_dir():
        rounds = 0
        log = run / "metrics.jsonl"
        if log.is_file():
            recs = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            rounds = max((int(r.get("round", 0)) for r in recs), default=0)
        return [(rounds, run / "model")]
    raise SystemExit(f"{run}: no snapshots/round-* and no model/ (train with --snapshot-every N)")


def score_model(path: Path, pairs: dict[int, list], steps: int, reward, other, device: str = "cpu",  # noqa: ANN001
                eta: float = 0.0, also: dict | None = None) -> dict[tuple[int, str], dict]:
    """Per (seed, crop): psnr, ssim, reward (full-reference terms against the truth), other, flat_hf
    (texture in the crop's flattest areas against the truth's) and each metric of ``also`` (name ->
    no-reference metric) of ``path``'s restorations."""
    pipe = load_restorer(path).to(device)
    psnr, ssim = get_metric("psnr", device), get_metric("ssim", device)
    out = {}
    for seed, items in pairs.items():
        for k, (name, lq, hq, _info) in enumerate(items):
            g = torch.Generator().manual_seed(seed * 100_000 + k)  # on the CPU: the same noise on every device
            x = pipe.restore_tensor(lq[None].to(device), steps, eta=eta, generator=g)
            hq = hq[None].to(device)
            out[(seed, name)] = {"psnr": float(psnr(x, hq)), "ssim": float(ssim(x, hq)),
                                 "reward": float(reward(x, hq if reward.full_reference else None)),
                                 "other": float(other(x)), "flat_hf": flat_hf_ratio(x[0].cpu(), hq[0].cpu()),
                                 **{name: float(m(x)) for name, m in (also or {}).items()}}
    return out


def aggregate(scores: dict[tuple[int, str], dict], crops: dict[int, list[str]],
              keys: tuple[str, ...] = KEYS) -> dict[str, float]:
    """Mean over ``crops`` of each seed, then over seeds."""
    res = {}
    for key in keys:
        per_seed = [statistics.fmean(scores[(s, c)][key] for c in cs) for s, cs in crops.items()]
        res[key] = statistics.fmean(per_seed)
        res[key + "_std"] = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    return res


def by_method(rows: list[dict], keys: tuple[str, ...] = KEYS) -> list[dict]:
    """Per method, round and subset present in every one of its runs (training seeds): the mean and the
    std over those runs of PSNR, SSIM, reward and the other metric, their change from the base model
    (round 0), and whether the reward gain exceeds twice the seed-to-seed std (the RL issue's bar)."""
    base = {r["subset"]: r for r in rows if r["round"] == 0}
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        runs = list(dict.fromkeys(r["run"] for r in rows if r["method"] == method))
        rounds = sorted(set.intersection(*({r["round"] for r in rows if r["run"] == run} for run in runs)) - {0})
        for rnd in rounds:
            for subset in ("all", "hardest"):
                pts = [r for r in rows if r["method"] == method and r["round"] == rnd and r["subset"] == subset]
                row: dict = {"method": method, "round": rnd, "subset": subset, "n_runs": len(pts)}
                for key in keys:
                    vals = [p[key] for p in pts]
                    row[key] = statistics.fmean(vals)
                    row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    row["d_" + key] = row[key] - base[subset][key]
                row["reward_gain_over_2std"] = len(pts) > 1 and row["d_reward"] > 2 * row["reward_std"]
                out.append(row)
    return out


def plot(rows: list[dict], reward: str, other: str, other_lower_better: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 8), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    styles = ["-", "--", ":", "-."]
    for i, subset in enumerate(("all", "hardest")):
        for j, (key, label) in enumerate((("reward", f"reward: {reward} (higher is better)"),
                                          ("other", f"{other} ({'lower' if other_lower_better else 'higher'} "
                                                    "is better; not the reward)"))):
            ax = axes[i][j]
            seen: dict[str, int] = {}  # runs of each method drawn so far: seeds share a colour, not a line style
            for run in dict.fromkeys(r["run"] for r in rows):
                pts = sorted((r for r in rows if r["run"] == run and r["subset"] == subset), key=lambda r: r["round"])
                m = pts[0]["method"]
                seed_idx = seen[m] = seen.get(m, -1) + 1
                ax.plot([p[key] for p in pts], [p["psnr"] for p in pts], styles[seed_idx % 4], marker="o",
                        ms=3, color=colours[m], label=m if seed_idx == 0 else None)
                ax.annotate(str(pts[-1]["round"]), (pts[-1][key], pts[-1]["psnr"]), fontsize=6)
            base = next(r for r in rows if r["subset"] == subset and r["round"] == 0)
            ax.plot([base[key]], [base["psnr"]], "k*", ms=12, label="SFT (round 0)")
            ax.set_xlabel(label)
            ax.set_ylabel("PSNR (dB)")
            ax.set_title(f"{'all crops' if subset == 'all' else 'hardest quartile'}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Fidelity against reward, one point per snapshot (numbers: last round)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the SFT model the runs started from (round 0)")
    ap.add_argument("--runs", nargs="+", required=True, help="label=run folder (seeds: method-s1=...)")
    ap.add_argument("--reward", required=True, help="the runs' reward spec, e.g. darl_iqa or 'niqe + 0.1*piqe'")
    ap.add_argument("--other", default="niqe", help="a no-reference metric that was not the reward")
    ap.add_argument("--also", nargs="*", default=[],
                    help="more no-reference metrics that were not the reward (scored and tabled, not plotted)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--eta", type=float, default=0.0,
                    help="DDIM eta (0: the app's and evaluation's sampler; 1: the RL rollouts' sampler)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--per-image", type=int, default=2, help="crops per evaluation photo")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--rounds", nargs="*", type=int, default=None,
                    help="only these snapshot rounds of each run (default: every snapshot)")
    ap.add_argument("--max-crops", type=int, default=0, help="at most this many crops per seed (0: all; quick looks)")
    ap.add_argument("--out", type=Path, default=Path("docs/pareto"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep:
            ap.error(f"--runs takes label=folder, got {item!r}")
        points = run_points(Path(folder))
        if args.rounds is not None:
            points = [(r, f) for r, f in points if r in args.rounds]
            if not points:
                ap.error(f"{folder}: no snapshot of rounds {args.rounds}")
        runs[label] = points
    reward, other = create_reward(args.reward, args.device), get_metric(args.other, args.device)
    also = {name: get_metric(name, args.device) for name in args.also}
    for name, m in {args.other: other, **also}.items():
        if m.full_reference:
            ap.error(f"--other and --also take no-reference metrics, {name} is full-reference")
    keys = KEYS + tuple(also)
    pairs = {s: independent_pairs(RANDOM, seed=s, size=args.size, per_image=args.per_image) for s in args.seeds}
    if args.max_crops:
        pairs = {s: items[: args.max_crops] for s, items in pairs.items()}
    t0 = time.time()
    base = score_model(Path(args.base), pairs, args.steps, reward, other, args.device, args.eta, also)
    crops_all = {s: [p[0] for p in items] for s, items in pairs.items()}
    crops_hard = {}
    for s, names in crops_all.items():  # the quarter of crops the base model restores worst (1 - SSIM)
        ranked = sorted(names, key=lambda c: base[(s, c)]["ssim"])
        crops_hard[s] = ranked[: max(1, len(ranked) // 4)]
    rows = []
    for label, points in runs.items():
        method = label.split("-s")[0]
        for rnd, folder in [(0, Path(args.base))] + points:
            scores = base if rnd == 0 else score_model(folder, pairs, args.steps, reward, other, args.device,
                                                       args.eta, also)
            for subset, crops in (("all", crops_all), ("hardest", crops_hard)):
                rows.append({"run": label, "method": method, "round": rnd, "model": str(folder), "subset": subset,
                             **aggregate(scores, crops, keys)})
            print(f"  {label} round {rnd}: PSNR {rows[-2]['psnr']:.3f}, reward {rows[-2]['reward']:.4f}, "
                  f"{args.other} {rows[-2]['other']:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "pareto.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    n = sum(len(v) for v in crops_all.values()) // len(args.seeds)
    lines = [f"Independent evaluation set, {n} crops per seed, seeds {args.seeds}, {args.steps} steps (eta {args.eta:g}); "
             f"hardest quartile = the {len(next(iter(crops_hard.values())))} crops per seed with the highest "
             f"1 - SSIM under the base model. reward = `{args.reward}` (higher is better); {args.other} was not "
             "the reward. Mean over crops, then over seeds (± std over seeds).", "",
             "| run | round | subset | PSNR ↑ | SSIM ↑ | reward ↑ | "
             + " | ".join(f"{n} {'↓' if m.lower_better else '↑'}" for n, m in {args.other: other, **also}.items())
             + " | flat_hf (→1) |", "|---|---:|---|---:|---:|---:|" + "---:|" * (len(also) + 2)]
    for r in rows:
        if r["round"] == 0 and r["run"] != next(iter(runs)):
            continue  # the base model's row once
        lines.append(f"| {r['run'] if r['round'] else 'SFT (base)'} | {r['round']} | {r['subset']} | "
                     f"{r['psnr']:.3f} ± {r['psnr_std']:.3f} | {r['ssim']:.4f} | {r['reward']:.4f} ± "
                     f"{r['reward_std']:.4f} | {r['other']:.3f} ± {r['other_std']:.3f} | "
                     + "".join(f"{r[n]:.3f} ± {r[n + '_std']:.3f} | " for n in also) + f"{r['flat_hf']:.2f} |")
    agg = by_method(rows, keys)
    if any(a["n_runs"] > 1 for a in agg):
        lo = " (lower is better)" if other.lower_better else ""
        lines += ["", "Per method over its runs (training seeds): mean ± std over runs, and the change from the "
                  f"SFT model (Δ; {args.other}{lo}). *gain > 2 std*: the reward rose by more than twice the "
                  "seed-to-seed std.", "",
                  "| method | round | subset | runs | PSNR (Δ) | reward (Δ) | " + args.other + " (Δ) | "
                  + "".join(f"{n} (Δ) | " for n in also) + "flat_hf (Δ) | gain > 2 std |",
                  "|---|---:|---|---:|---:|---:|---:|" + "---:|" * len(also) + "---:|:---:|"]
        for a in agg:
            lines.append(f"| {a['method']} | {a['round']} | {a['subset']} | {a['n_runs']} | {a['psnr']:.3f} ± "
                         f"{a['psnr_std']:.3f} ({a['d_psnr']:+.3f}) | {a['reward']:.4f} ± {a['reward_std']:.4f} "
                         f"({a['d_reward']:+.4f}) | {a['other']:.3f} ± {a['other_std']:.3f} ({a['d_other']:+.3f}) | "
                         + "".join(f"{a[n]:.3f} ± {a[n + '_std']:.3f} ({a['d_' + n]:+.3f}) | " for n in also) +
                         f"{a['flat_hf']:.2f} ({a['d_flat_hf']:+.2f}) | {'yes' if a['reward_gain_over_2std'] else 'no'} |")
        with open(args.out / "by_method.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(agg[0]))
            wr.writeheader()
            wr.writerows(agg)
    lines += ["", f"Command: `.venv/bin/python bench/pareto.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
              "", "![Pareto](pareto.png)", ""]
    (args.out / "pareto.md").write_text("\n".join(lines))
    plot(rows, args.reward, args.other, other.lower_better, args.out / "pareto.png")
    print(f"wrote {args.out}/pareto.csv, pareto.md, pareto.png", file=sys.stderr)


if __name__ == "__main__":
    main()
