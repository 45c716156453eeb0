"""The RL diagnostics of several runs side by side: which term sets the direction of the updates.

    .venv/bin/python bench/rl_diagnostics.py runs/eq_cpu/darl runs/eq_cpu/darl-s1 runs/eq_cpu/rl_uniform \\
        --out docs/equal_budget_cpu/diagnostics.md

Reads each run's ``metrics.jsonl`` (written by ``darl_core.cli.train_rl`` with ``diag_every`` > 0) and prints,
per run and then per method (runs named ``method``, ``method-s1``, ... are seeds of one method), the
median over rounds of the gradient norm of the RL, SFT and KL terms (each with its weight in the loss),
the RL:SFT ratio of those medians, the median cosine of a round's RL gradient with the previous round's
(near 0: noise; clearly above: a direction that persists), the within-group reward std, the clip
fraction, the pool's mean w at the first and the last round, and its shares of w = 0 / w = 1 at the last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

KEYS = ("grad_norm_rl", "grad_norm_sft", "grad_norm_kl", "rl_grad_cos_prev", "group_reward_std", "clip_frac",
        "round_s")


def summarise(records: list[dict]) -> dict[str, float | int | None]:
    """Medians over rounds of ``KEYS`` (None where no round logged it), the RL:SFT ratio of the medians,
    and the pool's w statistics at the first and the last round."""
    out: dict[str, float | int | None] = {"rounds": len(records)}
    for key in KEYS:
        vals = [float(r[key]) for r in records if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    rl, sft = out["grad_norm_rl"], out["grad_norm_sft"]
    out["rl_over_sft"] = rl / sft if rl is not None and sft else None
    for tag, rec in (("first", records[0]), ("last", records[-1])):
        for key in ("pool_w_mean", "pool_w0_share", "pool_w1_share"):
            out[f"{key}_{tag}"] = rec.get(key)
    return out


def summarise_method(runs: list[list[dict]]) -> dict[str, float | int | None]:
    """``summarise`` of all rounds of a method's runs pooled, with the pool's w statistics averaged over
    the runs' first and last rounds (and ``rounds`` the total)."""
    out = summarise([r for recs in runs for r in recs])
    for tag, idx in (("first", 0), ("last", -1)):
        for key in ("pool_w_mean", "pool_w0_share", "pool_w1_share"):
            vals = [float(recs[idx][key]) for recs in runs if recs[idx].get(key) is not None]
            out[f"{key}_{tag}"] = statistics.fmean(vals) if vals else None
    return out


def _fmt(v: float | int | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(summaries: dict[str, dict], label: str = "run") -> list[str]:
    lines = [f"| {label} | rounds | grad RL | grad SFT | grad KL | RL : SFT | RL cos prev | group std | clip frac "
             "| pool w first → last | w = 0 / w = 1 last | s / round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['rounds']} | {_fmt(s['grad_norm_rl'], '.4f')} | {_fmt(s['grad_norm_sft'], '.4f')} | "
                     f"{_fmt(s['grad_norm_kl'], '.4f')} | {_fmt(s['rl_over_sft'], '.2f')} | "
                     f"{_fmt(s['rl_grad_cos_prev'], '.2f')} | {_fmt(s['group_reward_std'], '.3f')} | "
                     f"{_fmt(s['clip_frac'], '.2f')} | {_fmt(s['pool_w_mean_first'], '.3f')} → "
                     f"{_fmt(s['pool_w_mean_last'], '.3f')} | {_fmt(s['pool_w0_share_last'], '.2f')} / "
                     f"{_fmt(s['pool_w1_share_last'], '.2f')} | {_fmt(s['round_s'], '.0f')} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (with metrics.jsonl)")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = ap.parse_args(argv)
    per_run, per_method = {}, {}
    for run in args.runs:
        log = run / "metrics.jsonl"
        if not log.is_file():
            ap.error(f"{run}: no metrics.jsonl")
        records = []
        for n, line in enumerate(log.read_text().splitlines(), 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                ap.error(f"{log}: line {n} is not JSON ({e.msg}; a line cut off by a crash?)")
        if not records:
            ap.error(f"{run}: metrics.jsonl is empty")
        per_run[run.name] = summarise(records)
        per_method.setdefault(run.name.split("-s")[0], []).append(records)
    lines = ["Per run (medians over rounds; gradient norms include each term's weight in the loss):", "",
             *table(per_run), "", "Per method (medians over all rounds of all its runs; pool w: mean over its runs):", "",
             *table({m: summarise_method(r) for m, r in per_method.items()}, "method"), ""]
    text = "\n".join(lines)
    print(text, end="")  # the text ends with its newline
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
