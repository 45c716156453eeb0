"""The loop, end to end, through the app's own handlers: flag hard samples of one kind, fine-tune on them,
and measure whether the new model is better where the old one failed.

    .venv/bin/python bench/loop.py --seeds 0 1 2 --out docs/loop            # with ground truths
    .venv/bin/python bench/loop.py --seeds 0 1 2 --no-gt --out docs/loop_nogt   # the paper's case

1. The kind: each candidate degradation (``KINDS``: fixed Pillow / numpy / libjpeg recipes, the
   independent implementation of ``darl_core.evaluation.evalset``) is applied to crops of training photos, and the
   default model restores them; the kind it gains least on (PSNR over the input) is the one flagged.
2. Per seed, in a fresh data folder: ``--samples`` crops of training photos, degraded by that kind, are
   flagged through ``ui.restore_service.flag`` (with their ground truths unless ``--no-gt``), a job is
   launched through ``ui.finetune_tab.launch_job`` with the Fine-tune tab's defaults (method, reward,
   run size; ``--rounds``), and the worker runs it (``darl_core.jobs.worker.run_worker``, in this process).
3. Base against new: on the flagged samples (the job's own before and after, as the tab shows it), on
   crops of the *evaluation* photos degraded by the same kind (never flagged, never trained on), and on
   the general independent set (``evalset.RANDOM``); PSNR, SSIM, the job's reward and two no-reference
   judges that were not the reward (NIQE, BRISQUE).

The RL-loop issue's target, on the unflagged images of the flagged kind: PSNR up by at least 0.3 dB, or
the reward up by more than twice its seed std with a no-reference judge also better; on the general set no
loss larger than 0.2 dB. Writes ``loop.md`` (the table and the verdict) and ``loop.json`` under ``--out``.
Not a test: a seed takes minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data import photos
from darl_core.data.images import pil_to_tensor
from darl_core.evaluation.evalset import (
    RANDOM,
    PillowRecipe,
    independent_pairs,
    pillow_degrade,
)
from darl_core.evaluation.payoff import PayoffItem, before_after, payoff_summary
from darl_core.jobs.worker import run_worker
from darl_core.models.loading import DEFAULT_MODEL, load_restorer
from darl_core.models.pipeline import DEFAULT_STEPS
from darl_core.rewards.registry import get_metric
from storage import Store
from ui import finetune_tab, restore_service
from ui.context import AppContext

# Candidate kinds of hard sample: one strong degradation each (libjpeg at quality 95 where JPEG is not the kind).
KINDS = {
    "jpeg10": PillowRecipe(blur_radius=(0.0, 0.0), scale=(1.0, 1.0), noise_sigma=(0.0, 0.0), jpeg_quality=(10, 10),
                           random_filter=False),
    "noise25": PillowRecipe(blur_radius=(0.0, 0.0), scale=(1.0, 1.0), noise_sigma=(25.0, 25.0),
                            jpeg_quality=(95, 95), random_filter=False),
    "blur2": PillowRecipe(blur_radius=(2.0, 2.0), scale=(1.0, 1.0), noise_sigma=(0.0, 0.0), jpeg_quality=(95, 95),
                          random_filter=False),
}
JUDGES = ("niqe", "brisque")  # no-reference metrics that are not the reward


def train_crops(recipe: PillowRecipe, n: int, size: int, seed: int, offset: int = 0
                ) -> list[tuple[str, Any, Any]]:
    """(name, LQ image, GT image) of ``n`` crops of the training photos, one per photo, at positions and in
    an order drawn from ``seed``; ``offset`` skips that many photos (disjoint sets for one seed)."""
    ims = photos.train_images()
    if not ims:
        raise SystemExit("no training photos: run `make photos` (python -m darl_core.data.photos fetch) first")
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(ims))[offset:]
    out = []
    for i in order:
        name, im = ims[int(i)]
        w, h = im.size
        if min(w, h) < size:
            continue
        x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        hq = im.crop((x0, y0, x0 + size, y0 + size))
        lq, _ = pillow_degrade(hq, recipe, np.random.default_rng([seed, len(out), 11]))
        out.append((f"{name}@{x0},{y0}", lq, hq))
        if len(out) == n:
            break
    return out


def pick_kind(base: Any, size: int, steps: int, n: int = 8) -> tuple[str, dict[str, float]]:
    """The candidate kind the base model gains least on (mean PSNR of its restoration minus the input's)."""
    psnr = get_metric("psnr")
    gains = {}
    for kind, recipe in KINDS.items():
        g = []
        for k, (_, lq, hq) in enumerate(train_crops(recipe, n, size, seed=1000)):
            x, y = pil_to_tensor(lq)[None], pil_to_tensor(hq)[None]
            out = base.restore_tensor(x, steps, eta=0.0, generator=torch.Generator().manual_seed(k))
            g.append(float(psnr(out, y)) - float(psnr(x, y)))
        gains[kind] = statistics.fmean(g)
        print(f"  {kind}: the default model gains {gains[kind]:+.2f} dB over its input", file=sys.stderr)
    return min(gains, key=gains.get), gains  # type: ignore[arg-type]


def run_seed(kind: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One loop: flag, launch, train, compare. Returns the job's minutes and each set's summary."""
    ctx = AppContext(Store(directory=work / "data"))
    uploads = work / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    for k, (name, lq, hq) in enumerate(train_crops(KINDS[kind], args.samples, args.size, seed)):
        lq_path, gt_path = uploads / f"{k:03d}_lq.png", uploads / f"{k:03d}_gt.png"
        lq.save(lq_path)
        hq.save(gt_path)
        restore_service.flag(ctx, str(lq_path), "artifacts", note=f"{kind} {name}", user="loop",
                         gt_path=None if args.no_gt else str(gt_path))
    base_model = str(Path(args.base).resolve())
    ctx.store.register_checkpoint(base_model, Path(base_model).name)
    extra: dict[str, Any] = {"seed": seed}
    for item in args.set:  # RLConfig fields the form does not show (to try a setting before it is a default)
        key, _, value = item.partition("=")
        extra[key] = json.loads(value) if value[:1] in "0123456789-[{tfn\"" else value
    job = finetune_tab.launch_job(ctx, base_model, args.reward, args.method, args.rounds, "", "loop",
                                  size=args.run_size, extra=extra)
    t0 = time.time()
    run_worker(ctx.store, f"loop-{seed}", once=True)
    minutes = (time.time() - t0) / 60
    st = finetune_tab.job_status(ctx, job)
    if st["state"] != "succeeded":
        raise SystemExit(f"job #{job} {st['state']}: {st['error']}")
    cfg = ctx.store.job(job).config
    new_path = next(c.path for c in ctx.store.checkpoints() if c.job_id == job)
    base, new = load_restorer(base_model), load_restorer(new_path)
    res: dict[str, Any] = {"seed": seed, "job": job, "minutes": minutes, "log": st["log"]}
    flagged = [r.metrics for r in ctx.store.comparisons(job) if r.subset == "samples"]
    res["flagged"] = payoff_summary(flagged)
    steps = int(cfg.get("num_steps", DEFAULT_STEPS))
    sets = {"same kind, unflagged": independent_pairs(KINDS[kind], seed=seed, size=args.eval_size, per_image=2),
            "general": independent_pairs(RANDOM, seed=seed, size=args.eval_size, per_image=1)}
    for label, pairs in sets.items():
        items = [PayoffItem(n, lq, hq) for n, lq, hq, _ in pairs]
        rows = before_after(base, new, items, steps, args.reward, work / "eval" / label.replace(" ", "_"),
                            seed=seed, judges=JUDGES)
        res[label] = payoff_summary([r["metrics"] for r in rows], JUDGES)
    print(f"  seed {seed}: job #{job} {minutes:.1f} min; " + "; ".join(
        f"{k} PSNR {res[k].get('d_psnr', float('nan')):+.3f} reward {res[k].get('d_reward', float('nan')):+.3f}"
        for k in ("flagged", *sets)), file=sys.stderr)
    return res


def _ms(vals: list[float], nd: int) -> str:
    if not vals:
        return "—"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):+.{nd}f} ± {sd:.{nd}f}"


def report(kind: str, gains: dict[str, float], results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"# The loop, end to end ({'no ground truth' if args.no_gt else 'with ground truths'})", "",
             "Kinds of degradation, the default model's PSNR gain over its input on 8 training crops: "
             + ", ".join(f"{k} {v:+.2f} dB" for k, v in gains.items()) + f". Flagged: **{kind}** (the least gain).",
             "", f"Per seed: {args.samples} crops of training photos flagged ({args.size} px), a `{args.method}` job "
             f"(reward `{args.reward}`, run size {args.run_size}, {args.rounds} rounds"
             + (f", {', '.join(args.set)}" if args.set else "") + "); the job took "
             + ", ".join(f"{r['minutes']:.1f}" for r in results) + " minutes (training, its before and after and "
             "its held-out check, on this machine). Change from the base model, mean ± std over seeds "
             f"{args.seeds}:", "",
             "| images | n | PSNR (dB) | SSIM | reward | NIQE (↓) | BRISQUE (↓) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key in ("flagged", "same kind, unflagged", "general"):
        s = [r[key] for r in results]
        lines.append(f"| {key} | {int(s[0]['n'])} | {_ms([x['d_psnr'] for x in s if 'd_psnr' in x], 3)} | "
                     f"{_ms([x['d_ssim'] for x in s if 'd_ssim' in x], 4)} | "
                     f"{_ms([x.get('d_reward', x.get('d_reward_stage1')) for x in s if 'd_reward' in x or 'd_reward_stage1' in x], 3)}"
                     f"{' (vs stage 1)' if any('d_reward_stage1' in x for x in s) else ''} | "
                     f"{_ms([x['d_niqe'] for x in s if 'd_niqe' in x], 3)} | "
                     f"{_ms([x['d_brisque'] for x in s if 'd_brisque' in x], 3)} |")
    same = [r["same kind, unflagged"] for r in results]
    general = [r["general"] for r in results]
    d_psnr = statistics.fmean(x["d_psnr"] for x in same)
    d_rew = [x["d_reward"] for x in same]
    rew_sd = statistics.stdev(d_rew) if len(d_rew) > 1 else float("inf")
    def robustly_lower(vals: list[float]) -> bool:  # better (lower) by more than the seeds' spread
        return statistics.fmean(vals) < 0 and (len(vals) < 2 or -statistics.fmean(vals) > statistics.stdev(vals))

    judge_better = any(robustly_lower([x[f"d_{j}"] for x in same]) for j in JUDGES)
    psnr_ok = d_psnr >= 0.3
    reward_ok = statistics.fmean(d_rew) > 2 * rew_sd and judge_better
    general_ok = statistics.fmean(x["d_psnr"] for x in general) >= -0.2
    verdict = "pays off" if (psnr_ok or reward_ok) and general_ok else "does not pay off yet"
    lines += ["", (f"Target on the unflagged images of the flagged kind: PSNR +0.3 dB "
                   f"({'met' if psnr_ok else 'not met'}: {d_psnr:+.3f}), or the reward up by more than twice its "
                   f"seed std with a judge better by more than its seed std ({'met' if reward_ok else 'not met'}); on the general set no loss "
                   f"beyond 0.2 dB ({'met' if general_ok else 'not met'}). **The loop {verdict}.**"),
              "", f"Command: `.venv/bin/python bench/loop.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


def montage(data: Path, out: Path, per_set: int = 2, zoom: int = 2) -> None:
    """The first job's before and after as one picture: rows of (input, base, new, truth), ``per_set`` images of
    its held-out crops and of its flagged samples, enlarged ``zoom`` times without smoothing."""
    from PIL import Image, ImageDraw

    store = Store(directory=data)
    rows = store.comparisons(store.jobs()[-1].id)
    picked = [r for r in rows if r.subset == "heldout"][:per_set] + [r for r in rows if r.subset == "samples"][:per_set]
    side = 128
    sheet = Image.new("RGB", (4 * side * zoom, len(picked) * side * zoom + 20), "white")
    ImageDraw.Draw(sheet).text((4, 4), "input | base | new | truth   (rows: held-out crops, then flagged samples)",
                               fill="black")
    for i, r in enumerate(picked):
        for j, rel in enumerate((r.lq_path, r.base_path, r.new_path, r.gt_path)):
            if rel is None:
                continue
            im = Image.open(store.path(rel)).convert("RGB").crop((0, 0, side, side))
            sheet.paste(im.resize((side * zoom, side * zoom), Image.Resampling.NEAREST),
                        (j * side * zoom, 20 + i * side * zoom))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(DEFAULT_MODEL), help="the model the job fine-tunes")
    ap.add_argument("--kind", choices=list(KINDS), default=None, help="the kind to flag (default: measured)")
    ap.add_argument("--samples", type=int, default=32, help="samples flagged")
    ap.add_argument("--size", type=int, default=128, help="side of the flagged crops")
    ap.add_argument("--eval-size", type=int, default=192, help="side of the evaluation crops")
    ap.add_argument("--method", default="darl_anchored", help="the Fine-tune tab's method (its default)")
    ap.add_argument("--reward", default="darl_iqa + 20*psnr", help="the Fine-tune tab's reward (its default)")
    ap.add_argument("--run-size", default="full", help="the Fine-tune tab's run size (its default)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--no-gt", action="store_true", help="flag without ground truths (the paper's case)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="RLConfig fields for the job beyond the form's (e.g. lr=3e-5): to try a setting")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=None, help="keep the data folders here (default: temporary)")
    ap.add_argument("--out", type=Path, default=Path("docs/loop"))
    ap.add_argument("--montage-only", action="store_true",
                    help="only draw OUT/crops.png from the first seed's data under --work (after a run)")
    args = ap.parse_args(argv)
    if args.montage_only:
        if args.work is None:
            ap.error("--montage-only needs the --work folder of a run")
        montage(args.work / f"seed{args.seeds[0]}" / "data", args.out / "crops.png")
        return
    base = load_restorer(args.base)
    kind, gains = (args.kind, {}) if args.kind else pick_kind(base, args.size, DEFAULT_STEPS)
    print(f"flagging {kind}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for seed in args.seeds:
            results.append(run_seed(kind, seed, args, root / f"seed{seed}"))
        montage(root / f"seed{args.seeds[0]}" / "data", args.out / "crops.png")
    text = report(kind, gains, results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop.md").write_text(text)
    (args.out / "loop.json").write_text(json.dumps({"kind": kind, "gains": gains, "results": results}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
