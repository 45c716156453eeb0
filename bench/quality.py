"""The peer table: our restorers against the input, classical denoisers and the regression stage,
on the independent evaluation set (darl_core.evaluation.evalset: photos no model trained on, degraded by
Pillow / numpy / the real JPEG codec, not by darl_core.data.degrade).

    .venv/bin/python bench/quality.py --out docs/quality                 # 3 seeds, all rows
    .venv/bin/python bench/quality.py --seeds 0 --steps 1 4 --per-image 1 --out /tmp/q   # quick look

Rows: the degraded input; OpenCV non-local means (h=7; needs opencv-python-headless) and BM3D
(the ``bm3d`` package, sigma 12/255) when installed, a note otherwise; each model's stage 1 alone
(its regression restorer, ``steps=0``), the model at each of ``--steps``, and the pixel average of
stage 1 and the default setting (the bar a real second stage must clear). Columns: PSNR, SSIM,
NIQE, PIQE and ``flat_hf``, the high-frequency energy of the output in the flattest 10 % of each
crop divided by the ground truth's (1 = as flat as the original; > 1.5 = texture painted into
flat areas). Each seed draws new degradation strengths and new sampler noise; the table gives
the mean over crops, then mean ± std over seeds. Also writes per-crop CSV, the clean images'
NIQE/PIQE (the "as natural as the original" reference) and a picture of crops side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.evaluation.evalset import OUTSIDE, RANDOM, flat_hf_ratio, independent_pairs
from darl_core.models.loading import load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS
from darl_core.rewards.registry import get_metric

METRICS = ("psnr", "ssim", "niqe", "piqe", "brisque")


def _peers() -> dict[str, object]:
    """Classical denoisers that are installed: name -> function (uint8 HxWx3 -> uint8 HxWx3)."""
    peers: dict[str, object] = {}
    try:
        import cv2

        peers["opencv_nlm_h7"] = lambda a: cv2.fastNlMeansDenoisingColored(a, None, 7, 7, 7, 21)
    except ImportError:
        print("note: opencv-python-headless not installed: no OpenCV NLM row", file=sys.stderr)
    try:
        import bm3d

        peers["bm3d_s12"] = lambda a: np.clip(bm3d.bm3d_rgb(a / 255.0, 12 / 255.0) * 255.0, 0, 255).round().astype(np.uint8)
    except ImportError:
        print("note: bm3d not installed: no BM3D row (pip install bm3d)", file=sys.stderr)
    return peers


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def run(models: dict[str, str], steps: list[int], seeds: list[int], per_image: int, size: int, recipe: str,
        out: Path, peers: bool = True, picture_steps: list[int] | None = None, merge: Path | None = None,
        self_ensemble: bool = False) -> dict:
    mets = {m: get_metric(m) for m in METRICS}
    rows: list[dict] = []  # per crop
    pictures: dict[str, dict[str, torch.Tensor]] = {}
    # "path@1,4" gives a model its own step counts
    model_steps = {label: [int(x) for x in path.split("@", 1)[1].split(",")] if "@" in path else steps
                   for label, path in models.items()}
    pipes = {label: load_restorer(path.split("@", 1)[0]) for label, path in models.items()}
    peer_fns = _peers() if peers else {}
    clean_done = False
    t0 = time.time()
    for seed in seeds:
        pairs = independent_pairs(OUTSIDE if recipe == "outside" else RANDOM, seed=seed, size=size,
                                  per_image=per_image)
        print(f"seed {seed}: {len(pairs)} crops from {len({p[0].rsplit('_', 1)[0] for p in pairs})} photos",
              file=sys.stderr)
        for k, (name, lq, hq, info) in enumerate(pairs):
            outs: dict[str, torch.Tensor] = {"input": lq}
            for pname, fn in peer_fns.items():
                outs[pname] = torch.from_numpy(fn(_u8(lq))).permute(2, 0, 1).float() / 255.0
            for label, pipe in pipes.items():
                if pipe.has_stage1:
                    outs[f"{label}_stage1"] = pipe.restore_tensor(lq[None], 0)[0]
                    if self_ensemble:  # the 8 rotations and mirror images, averaged
                        outs[f"{label}_stage1_x8"] = pipe.restore_tensor(lq[None], 0, self_ensemble=True)[0]
                for s in model_steps[label]:
                    g = torch.Generator().manual_seed(seed * 100_000 + k)
                    outs[f"{label}_{s}step"] = pipe.restore_tensor(lq[None], s, generator=g)[0]
                # the bar a second stage must clear: a plain pixel average of stage 1 and the default setting
                if f"{label}_stage1" in outs and f"{label}_{DEFAULT_STEPS}step" in outs:
                    outs[f"{label}_avg_stage1_{DEFAULT_STEPS}step"] = (outs[f"{label}_stage1"]
                                                                     + outs[f"{label}_{DEFAULT_STEPS}step"]) / 2
            if not clean_done:
                outs["clean"] = hq
            for method, img in outs.items():
                rec = {"seed": seed, "crop": name, "method": method, **info}
                for m, met in mets.items():
                    if met.full_reference and method == "clean":
                        continue
                    try:
                        rec[m] = float(met(img[None], hq[None] if met.full_reference else None))
                    except Exception as e:  # a metric can fail on a flat crop; the row says so  # noqa: BLE001
                        rec[m] = float("nan")
                        print(f"warning: {m} on {name}/{method}: {e}", file=sys.stderr)
                rec["flat_hf"] = flat_hf_ratio(img, hq) if method != "clean" else 1.0
                rows.append(rec)
            if seed == seeds[0] and len(pictures) < 4 and k % max(1, len(pairs) // 4) == 0:
                pictures[name] = {m: v for m, v in outs.items()} | {"clean": hq}
                if not peers:  # the picture shows the peers even when the table merges their rows
                    for pname, fn in _peers().items():
                        pictures[name][pname] = torch.from_numpy(fn(_u8(lq))).permute(2, 0, 1).float() / 255.0
            print(f"  {k + 1}/{len(pairs)} {name} ({time.time() - t0:.0f} s)", file=sys.stderr)
        clean_done = True
    old: list[dict] = []
    if merge is not None:  # rows of methods this run did not compute, from an earlier run on the same crops
        mine = {r["method"] for r in rows}
        with open(merge, newline="") as f:
            old = [r for r in csv.DictReader(f) if r["method"] not in mine and int(r["seed"]) in seeds]
        for r in old:
            for k, v in r.items():
                if k not in ("crop", "method", "kind", "recipe"):
                    try:
                        r[k] = int(v) if k == "seed" else float(v)
                    except ValueError:
                        pass
        rows += old
        print(f"merged {len(old)} rows of {sorted({r['method'] for r in old})} from {merge}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_crop.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        wr.writeheader()
        wr.writerows(rows)
    summary = summarise(rows, seeds)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = table_md(summary, models, steps, seeds, len(rows), recipe)
    if merge is not None and old:
        table += f"Rows of {', '.join(sorted({r['method'] for r in old}))} are from `{merge}` (an earlier run on the same crops and seeds).\n"
    (out / "table.md").write_text(table)
    if pictures:
        shown = ["input", "bm3d_s12", *[f"{lbl}_stage1" for lbl in models],
                 *[f"{lbl}_{s}step" for lbl in models for s in model_steps[lbl] if s in (picture_steps or model_steps[lbl])],
                 "clean"]
        save_picture(pictures, out / "crops.png", [m for m in shown if m in next(iter(pictures.values()))])
    return summary


def summarise(rows: list[dict], seeds: list[int]) -> dict:
    """method -> metric -> {mean, std over seeds, per-seed means, share of crops better than the input}."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    inp = {(r["seed"], r["crop"]): r for r in rows if r["method"] == "input"}
    out: dict = {}
    for m in methods:
        out[m] = {}
        for met in (*METRICS, "flat_hf"):
            per_seed = []
            for s in seeds:
                v = [r[met] for r in rows if r["method"] == m and r["seed"] == s and met in r and r[met] == r[met]]
                if v:
                    per_seed.append(statistics.fmean(v))
            if not per_seed:
                continue
            out[m][met] = {"mean": statistics.fmean(per_seed),
                           "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0, "per_seed": per_seed}
        if m != "input" and m != "clean":
            better = [r["psnr"] > inp[(r["seed"], r["crop"])]["psnr"] for r in rows if r["method"] == m]
            out[m]["beats_input_psnr"] = sum(better) / max(1, len(better))
    return out


def table_md(summary: dict, models: dict[str, str], steps: list[int], seeds: list[int], n_rows: int,
             recipe: str) -> str:
    lines = [f"Independent evaluation set ({recipe} Pillow recipe), seeds {seeds}; mean over crops, "
             "then mean ± std over seeds. flat_hf: HF energy in the flattest 10 % vs the ground truth "
             "(1 = as flat). PSNR > input: share of crops where the method beats the input.", "",
             "| method | PSNR ↑ | SSIM ↑ | NIQE ↓ | PIQE ↓ | BRISQUE ↓ | flat_hf (→1) | PSNR > input |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, d in summary.items():
        def cell(k: str, nd: int) -> str:
            if k not in d:  # noqa: B023
                return "—"
            v = d[k]  # noqa: B023
            return f"{v['mean']:.{nd}f} ± {v['std']:.{nd}f}" if len(seeds) > 1 else f"{v['mean']:.{nd}f}"
        share = f"{100 * d['beats_input_psnr']:.0f} %" if "beats_input_psnr" in d else "—"
        lines.append(f"| {m} | {cell('psnr', 2)} | {cell('ssim', 4)} | {cell('niqe', 3)} | {cell('piqe', 2)} | "
                     f"{cell('brisque', 2)} | {cell('flat_hf', 2)} | {share} |")
    lines += ["", "Models: " + ", ".join(f"{k} = `{v}`" for k, v in models.items()) + ". Clean images: the "
              "ground truths' own NIQE / PIQE / BRISQUE.",
              f"Command: `.venv/bin/python bench/quality.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


def save_picture(pictures: dict[str, dict[str, torch.Tensor]], path: Path, methods: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pictures), len(methods), figsize=(2.2 * len(methods), 2.3 * len(pictures)),
                             squeeze=False)
    for i, (name, outs) in enumerate(pictures.items()):
        for j, m in enumerate(methods):
            ax = axes[i][j]
            ax.imshow(_u8(outs[m]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(m, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["sft=models/sft-blind", "darl=models/darl-blind"],
                    help="label=model folder pairs; label=folder@1,4 restricts that model to those step counts")
    ap.add_argument("--steps", nargs="*", type=int, default=[1, 2, 4, 10], help="DDIM step counts per model")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--per-image", type=int, default=4, help="crops per photo")
    ap.add_argument("--size", type=int, default=192, help="crop side")
    ap.add_argument("--recipe", choices=["random", "outside"], default="random")
    ap.add_argument("--no-peers", action="store_true", help="skip OpenCV NLM and BM3D")
    ap.add_argument("--self-ensemble", action="store_true",
                    help="also stage 1 with the x8 geometric self-ensemble (rows <label>_stage1_x8)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--picture-steps", nargs="*", type=int, default=None,
                    help="step counts shown in crops.png (default: all)")
    ap.add_argument("--out", type=Path, default=Path("docs/quality"))
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier per_crop.csv (same seeds, size, per-image): its rows of methods this run "
                         "does not compute join the table (e.g. models that did not change)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    models = dict(x.split("=", 1) for x in a.models)
    run(models, a.steps, a.seeds, a.per_image, a.size, a.recipe, a.out, not a.no_peers, a.picture_steps, a.merge,
        a.self_ensemble)
    print((a.out / "table.md").read_text())


if __name__ == "__main__":
    main()
