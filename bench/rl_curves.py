"""Probe curves of RL runs with seed bands: what the training probe saw, round by round.

    .venv/bin/python bench/rl_curves.py runs/study/darl runs/study/darl-s1 runs/study/darl-s2 \\
        runs/study/sft runs/study/sft-s1 ... --out docs/rl_study_cpu/curves.png

Reads each run's ``metrics.jsonl`` (``darl_core.cli.train_rl`` with ``probe_every`` > 0: the fixed held-out
crops restored as the app restores them, at round 0 and every N rounds) and draws one panel per probe
metric (``probe_reward``, ``probe_psnr``, ``probe_flat_hf``), each as the change from the run's own round 0:
one line per method (runs named ``method``, ``method-s1``, ... are its seeds), the mean over seeds with a
band of ± one std. Also prints the table of those means at every probed round.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = (("probe_reward", "reward (higher is better)"), ("probe_psnr", "PSNR, dB"),
           ("probe_flat_hf", "flat-area texture vs truth (flat_hf)"))


def probe_series(run: Path) -> dict[str, dict[int, float]]:
    """Per probe metric: round -> change from round 0, of one run."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out: dict[str, dict[int, float]] = {}
    for key, _ in METRICS:
        pts = {int(r["round"]): float(r[key]) for r in recs if key in r}
        if 0 in pts:
            out[key] = {k: v - pts[0] for k, v in sorted(pts.items())}
    return out


def by_method(runs: list[Path]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """method -> metric -> round -> the runs' values (rounds every run of the method probed)."""
    grouped: dict[str, list[dict[str, dict[int, float]]]] = {}
    for run in runs:
        grouped.setdefault(run.name.split("-s")[0], []).append(probe_series(run))
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for method, series in grouped.items():
        out[method] = {}
        for key, _ in METRICS:
            have = [s[key] for s in series if key in s]
            if not have:
                continue
            rounds = sorted(set.intersection(*(set(h) for h in have)))
            out[method][key] = {r: [h[r] for h in have] for r in rounds}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="the PNG to write (a .md table goes beside it)")
    args = ap.parse_args(argv)
    data = by_method(args.runs)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6))
    lines = ["Change from round 0 on the probe (fixed held-out crops, eta 0): mean ± std over seeds (n runs).", "",
             "| method | round | n | " + " | ".join(f"Δ {k}" for k, _ in METRICS) + " |",
             "|---|---:|---:|" + "---:|" * len(METRICS)]
    for i, (method, metrics) in enumerate(data.items()):
        for ax, (key, label) in zip(axes, METRICS):
            if key not in metrics:
                continue
            rounds = list(metrics[key])
            mean = [statistics.fmean(metrics[key][r]) for r in rounds]
            std = [statistics.stdev(metrics[key][r]) if len(metrics[key][r]) > 1 else 0.0 for r in rounds]
            n = len(next(iter(metrics[key].values())))
            ax.plot(rounds, mean, color=f"C{i}", label=f"{method} ({n} seeds)")
            ax.fill_between(rounds, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=f"C{i}", alpha=0.2)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("round")
            ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3)
        first = next(iter(metrics.values()), {})
        for r in first:
            cells = []
            for key, _ in METRICS:
                vals = metrics.get(key, {}).get(r)
                cells.append("–" if not vals else f"{statistics.fmean(vals):+.3f} ± "
                             f"{statistics.stdev(vals) if len(vals) > 1 else 0.0:.3f}")
            lines.append(f"| {method} | {r} | {len(first[r])} | " + " | ".join(cells) + " |")
    axes[1].legend(fontsize=7)  # every run probes PSNR (an SFT run has no reward)
    fig.suptitle("The training probe, change from round 0 (band: ± one std over seeds)", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
