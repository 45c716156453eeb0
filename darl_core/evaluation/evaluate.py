"""Evaluate restorers on held-out pairs: a markdown + CSV table and training plots.

    python -m darl_core.evaluation.evaluate --models sft=models/sft-blind darl=models/darl-blind \\
        --reward niqe --nr-metric piqe --out docs/results

Rows: the degraded input (bicubic-upsampled to the GT's size for x4
pairs), then each model (any family ``load_restorer`` loads). Columns: PSNR, SSIM, the reward
metric and a no-reference metric that was not the reward, over the whole
held-out set and over its hardest quartile, where "hardest" is ranked by the
difficulty (1 - SSIM) of the *first* model's restorations (the SFT model by
convention). The default data are the built-in held-out photos (darl_core.data.clean),
degraded with ``--task`` at ``--seed``; ``--data DIR`` takes a folder with lq/
and gt/ instead.

``--runs name=DIR ...`` adds PNG plots from training runs: reward and
validation PSNR over rounds (training_curves.png) and how per-sample
difficulty moved between the first and last round (difficulty_moves.png).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.clean import HELDOUT_IMAGES, folder_images, heldout_pairs
from ..data.degrade import get_preset
from ..data.images import pil_to_tensor
from ..models.loading import ModelLoadError, load_restorer
from ..models.restorer import Precision, Restorer
from ..rewards.registry import get_metric

__all__ = ["evaluate", "heldout_check", "main"]


def _pairs(data: str | None, task: str, seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    if data is None:
        return heldout_pairs(get_preset(task), seed)
    lqs, gts = dict(folder_images(Path(data) / "lq", 1)), dict(folder_images(Path(data) / "gt", 1))
    return [(n, pil_to_tensor(lqs[n]), pil_to_tensor(gts[n])) for n in sorted(lqs) if n in gts]


def _resize_to(img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if img.shape[-2:] == ref.shape[-2:]:
        return img
    return torch.nn.functional.interpolate(img[None], size=tuple(ref.shape[-2:]), mode="bicubic",
                                           align_corners=False)[0].clamp(0, 1)


def _score(imgs: list[torch.Tensor], gts: list[torch.Tensor], metrics: list[str], device: str
           ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in metrics}
    for img, gt in zip(imgs, gts):
        for m in metrics:
            met = get_metric(m, device)
            out[m].append(float(met(img[None], gt[None] if met.full_reference else None)))
    return out


def evaluate(models: dict[str, str], reward: str = "niqe", nr_metric: str = "piqe", data: str | None = None,
             task: str = "blind", seed: int = 0, steps: int = 4, device: str = "cpu",
             precision: Precision = "auto") -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(summary rows, per-image rows). Summary rows: model, subset, n and one column per metric."""
    pairs = _pairs(data, task, seed)
    if not pairs:
        raise ValueError("no evaluation pairs")
    names = [p[0] for p in pairs]
    gts = [p[2] for p in pairs]
    metrics = ["psnr", "ssim", reward, nr_metric]
    inputs = [_resize_to(lq, gt) for _, lq, gt in pairs]  # bicubic up-sampling for super-resolution pairs
    per_model: dict[str, dict[str, list[float]]] = {"input": _score(inputs, gts, metrics, device)}
    first = None
    for label, path in models.items():
        pipe = load_restorer(path, device)
        pipe.set_precision(precision)
        outs = [pipe.restore_tensor(lq[None], steps, generator=torch.Generator().manual_seed(i))[0].cpu()
                for i, (_, lq, _) in enumerate(tqdm(pairs, desc=f"restore {label}", leave=False))]
        for (name, lq, gt), o in zip(pairs, outs):
            if o.shape != gt.shape:
                raise ValueError(f"{label} turns the {tuple(lq.shape[1:])} LQ {name} into {tuple(o.shape[1:])}, "
                                 f"but its GT is {tuple(gt.shape[1:])} (the model's output scale is "
                                 f"{pipe.output_scale}: evaluate x4 models on x4 pairs, --task sr4 or --data "
                                 f"with GT 4x the LQ)")
        per_model[label] = _score(outs, gts, metrics, device)
        first = first or label
    # Hardest quartile by the first model's difficulty, d = 1 - SSIM.
    ref = per_model[first] if first else per_model["input"]
    d = [1 - s for s in ref["ssim"]]
    k = max(1, math.ceil(len(d) / 4))
    hard = sorted(range(len(d)), key=lambda i: -d[i])[:k]
    rows, per_image = [], []
    for label, sc in per_model.items():
        for subset, idx in (("all", list(range(len(d)))), ("hardest quartile", hard)):
            row: dict[str, object] = {"model": label, "subset": subset, "n": len(idx)}
            for m in metrics:
                row[m] = sum(sc[m][i] for i in idx) / len(idx)
            rows.append(row)
        for i, n in enumerate(names):
            per_image.append({"model": label, "image": n, "hard": i in hard, **{m: sc[m][i] for m in metrics}})
    return rows, per_image


@torch.no_grad()
def heldout_check(restorer: Restorer, steps: int, crops: int = 8, size: int = 128, seed: int = 0
                  ) -> dict[str, float]:
    """A quick check of a restorer on photos no model trained on, degraded by Pillow and the JPEG codec
    (``evalset``, random strengths): mean PSNR and SSIM of its restorations and of the inputs, over
    ``crops`` crops of the built-in held-out photos. What the worker registers with a finished job's
    model. x1 restorers only (the pairs are restoration pairs); others get an empty dict."""
    from .payoff import heldout_items

    if restorer.output_scale != 1:
        return {}
    psnr, ssim = get_metric("psnr"), get_metric("ssim")
    out = {"heldout_psnr": [], "heldout_ssim": [], "heldout_input_psnr": []}
    for i, it in enumerate(heldout_items(crops, size, seed)):
        lq, hq = it.lq, it.gt
        restored = restorer.restore_tensor(lq[None], steps, generator=torch.Generator().manual_seed(i)).cpu()
        out["heldout_psnr"].append(float(psnr(restored, hq[None])))
        out["heldout_ssim"].append(float(ssim(restored, hq[None])))
        out["heldout_input_psnr"].append(float(psnr(lq[None], hq[None])))
    return {k: sum(v) / len(v) for k, v in out.items()}


def write_tables(rows: list[dict[str, object]], per_image: list[dict[str, object]], out: Path,
                 header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    with open(out / "per_image.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(per_image[0]))
        wr.writeheader()
        wr.writerows(per_image)
    metrics = [k for k in rows[0] if k not in ("model", "subset", "n")]
    arrows = {m: ("↓" if get_metric(m).lower_better else "↑") for m in metrics}
    lines = [header, ""]
    for subset in ("all", "hardest quartile"):
        sub = [r for r in rows if r["subset"] == subset]
        lines += [f"### {subset} (n = {sub[0]['n']})", "",
                  "| model | " + " | ".join(f"{m.upper()} {arrows[m]}" for m in metrics) + " |",
                  "|---|" + "---:|" * len(metrics)]
        for r in sub:
            lines.append(f"| {r['model']} | " + " | ".join(f"{float(r[m]):.4f}" for m in metrics) + " |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))


def plot_runs(runs: dict[str, str], out: Path) -> list[Path]:
    """training_curves.png and difficulty_moves.png from the runs' logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, run in runs.items():
        recs = [json.loads(line) for line in open(Path(run) / "metrics.jsonl")]
        # Rewards of different runs can be different metrics (NIQE, PSNR): plot the change since the start.
        tr = [(r["round"], r["reward"]) for r in recs if "reward" in r]
        if tr:
            base = sum(v for _, v in tr[:5]) / len(tr[:5])
            axes[0].plot([x for x, _ in tr], [v - base for _, v in tr], label=label, alpha=0.8)
        for ax, key, rel in ((axes[1], "val_psnr", False), (axes[2], "val_reward", True)):
            v = [(r["round"], r[key]) for r in recs if key in r]
            if v:
                ax.plot([x for x, _ in v], [y - (v[0][1] if rel else 0) for _, y in v], marker="o", label=label)
    for ax, title in zip(axes, ("training reward minus its first-5-round mean", "validation PSNR (dB)",
                                "validation reward minus its round-0 value")):
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:  # e.g. runs trained with --val-every 0
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths = [out / "training_curves.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4), squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        recs = [json.loads(line) for line in open(Path(run) / "difficulty.jsonl")]
        if len(recs) < 2:
            continue
        a, b = recs[0]["difficulty"], recs[-1]["difficulty"]
        pts = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        ax.scatter(*zip(*pts), s=12)
        lim = [min(min(p) for p in pts), max(max(p) for p in pts)]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(f"{label}: round {recs[0]['round']} -> {recs[-1]['round']}")
        ax.set_xlabel("difficulty (1 - SSIM), first round")
        ax.set_ylabel("last round")
    fig.tight_layout()
    paths.append(out / "difficulty_moves.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def _pairs_arg(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=PATH, got {it!r}")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Evaluate DARL restorers on held-out pairs.")
    ap.add_argument("--models", nargs="+", required=True, help="NAME=PATH_OR_ID ...; the first ranks difficulty")
    ap.add_argument("--data", default=None, help="folder with lq/ and gt/ (default: built-in held-out photos "
                    f"{', '.join(HELDOUT_IMAGES)})")
    ap.add_argument("--task", default="blind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps (eta = 0)")
    ap.add_argument("--reward", default="niqe", help="the reward metric of the runs")
    ap.add_argument("--nr-metric", default="piqe", help="a no-reference metric that was not the reward")
    ap.add_argument("--runs", nargs="*", default=[], help="NAME=RUN_DIR ... for plots")
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="inference arithmetic (auto: bf16 where the CPU/GPU runs it natively)")
    args = ap.parse_args(argv)
    try:
        rows, per_image = evaluate(_pairs_arg(args.models), args.reward, args.nr_metric, args.data, args.task,
                                   args.seed, args.steps, args.device)
    except (ModelLoadError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    header = (f"Held-out evaluation: task `{args.task}`, seed {args.seed}, {args.steps} DDIM steps (eta 0), "
              f"data: {args.data or 'built-in held-out photos'}. Hardest quartile ranked by "
              f"1 - SSIM of the first model.")
    write_tables(rows, per_image, Path(args.out), header)
    if args.runs:
        plot_runs(_pairs_arg(args.runs), Path(args.out))
    print((Path(args.out) / "results.md").read_text())


if __name__ == "__main__":
    main()
