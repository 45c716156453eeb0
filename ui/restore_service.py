"""The Restore tab's service: restore with the SFT and the RL model, score, estimate the work, check
uploads and ground truths, flag as hard. Plain functions of an ``AppContext`` (no Gradio): the tab,
the Hard-samples tab, bulk import and the benchmarks call them, and tests call them without a browser."""

from __future__ import annotations

import hashlib
import math
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from darl_core.data.degrade import PRESETS
from darl_core.rewards.difficulty import difficulty, difficulty_no_reference
from darl_core.data.images import pil_to_tensor, to_rgb
from darl_core.models.loading import ModelLoadError
from darl_core.models.pipeline import DEFAULT_STEPS, DEFAULT_TILE
from darl_core.rewards.registry import RELIABLE_SIDE, MissingWeightsError, get_metric
from storage import DiskFull

from .context import AppContext, UserError, int_arg, png_bytes

__all__ = ["DEFAULT_SCORE_SPEED", "DEFAULT_SPEED", "MAX_BATCH", "MAX_NOTE", "METRIC_INFO", "REASONS", "Restored", "RestoreResult", "RestoreStopped",
           "SCORE_HEADERS", "check_budget", "difficulty_text", "left_text", "progress_at", "score_seconds", "estimate_seconds", "example_images", "flag", "flag_sample",
           "ground_truth_problem", "gt_scale", "request_numbers", "gt_size_problem", "image_key", "large_image_warning", "model_labels",
           "restore", "restore_batch", "restore_stages", "rough_scores", "score", "score_table", "small_image_warning",
           "stale_ground_truth", "took", "uniform_warning", "upload_problem", "work"]


MAX_NOTE = 2000  # characters of a flag's note
REASONS = ["artifacts", "over-smoothed", "hallucination", "colour shift", "noise left", "blur left", "other"]


@dataclass
class RestoreResult:
    input: Image.Image  # the upload as the models saw it (RGB)
    sft: Image.Image  # SFT restoration
    rl: Image.Image  # RL restoration
    scores: list[list[Any]]  # rows: image, then one value per metric
    headers: list[str]  # column names of ``scores``
    difficulty: float  # the estimate shown
    difficulty_text: str  # one-line explanation
    files: list[str]  # downloadable PNGs (SFT, RL)
    seconds: float  # wall time of both restorations
    difficulty_kind: str = ""  # "gt" (1 - SSIM against the ground truth), "proxy" (no reference), "" (none)
    gt: Image.Image | None = None  # the ground truth used for the scores (RGB), if one was given
    rough: dict[str, list[str]] = field(default_factory=dict)  # metric -> images too small for it (``rough_scores``)
    reused: list[str] = field(default_factory=list)  # "SFT"/"RL": taken from an earlier identical request (AppContext.kept)


# How to read each score: (name shown, higher is better, what it compares with)
METRIC_INFO: dict[str, tuple[str, bool, str]] = {
    "niqe": ("NIQE", False, "no reference"), "piqe": ("PIQE", False, "no reference"),
    "psnr": ("PSNR, dB", True, "vs ground truth"), "ssim": ("SSIM", True, "vs ground truth")}
SCORE_HEADERS = ["metric", "better", "input", "SFT", "RL", "best"]
IMAGES = ("input", "SFT", "RL")


def _metric_info(name: str) -> tuple[str, bool, str]:
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    m = get_metric(name)
    return name.upper(), not m.lower_better, "vs ground truth" if m.full_reference else "no reference"


def rough_scores(sizes: dict[str, tuple[int, int]], metrics: list[str]) -> dict[str, list[str]]:
    """metric -> the images (of ``sizes``: name -> (width, height)) smaller than it needs to mean
    something (``RELIABLE_SIDE``: NIQE's statistics need 192 px a side); metrics with none are left out."""
    out = {m: [k for k, wh in sizes.items() if min(wh) < RELIABLE_SIDE.get(m, 0)] for m in metrics}
    return {m: names for m, names in out.items() if names}


def score_table(headers: list[str], rows: list[list[Any]], rough: dict[str, list[str]] | None = None
                ) -> tuple[list[list[Any]], str]:
    """The IQA scores as the page shows them: one row per metric with which way is better, the input,
    SFT and RL values and which image scores best (ties joined with "="); plus a note when the
    no-reference metrics disagree on SFT against RL, and one saying which images are too small for a
    metric in ``rough`` (``rough_scores``; its row is marked "rough*"); empty when there is neither."""
    table: list[list[Any]] = []
    prefers: dict[str, str] = {}
    notes: list[str] = []
    rough = rough or {}
    for j, name in enumerate(headers[1:], start=1):
        label, higher, ref = _metric_info(name)
        if name in rough:  # short: a long label widens the first column and pushes "best" off the table
            ref += ", rough*"
            who = "every image" if len(rough[name]) == len(IMAGES) else "the " + " and ".join(rough[name])
            notes.append(f"*{label} is rough here: {who} is under {RELIABLE_SIDE[name]} px a side, where its "
                         f"statistics are unreliable.")
        values = {row[0]: row[j] for row in rows}
        nums = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and v == v}
        best = "—"
        if nums:
            top = max(nums.values()) if higher else min(nums.values())
            best = " = ".join(k for k in IMAGES if nums.get(k) == top)
        if ref == "no reference" and "SFT" in nums and "RL" in nums and nums["SFT"] != nums["RL"]:
            prefers[label] = "RL" if (nums["RL"] > nums["SFT"]) == higher else "SFT"
        table.append([f"{label} ({ref})", "higher ↑" if higher else "lower ↓",
                      *[values.get(k, "—") for k in IMAGES], best])
    if len(set(prefers.values())) > 1:
        who = ", ".join(f"{m} prefers {v}" for m, v in prefers.items())
        notes.insert(0, f"The no-reference metrics disagree ({who}): NIQE scores how natural the image statistics "
                        f"look, PIQE penalises blocky or noisy patches, and neither knows the true image"
                        + ("; PSNR and SSIM above compare with your ground truth." if "psnr" in headers else
                           "; upload a ground truth for PSNR and SSIM."))
    return table, " ".join(notes)


def difficulty_text(d: float, kind: str, rough: bool = False) -> str:
    """One line saying what the difficulty estimate is, on which scale, and how it was measured;
    ``rough``: the proxy's NIQE was measured on a restoration too small for it."""
    if kind == "gt":
        return (f"difficulty {d:.3f} (0 = easy … 1 = hard), ground-truth measure: 1 − SSIM of the SFT "
                f"restoration against your ground truth")
    if kind == "proxy":
        return (f"difficulty {d:.3f} (0 = easy … 1 = hard), no-reference proxy: 1 − normalised NIQE of the "
                f"SFT restoration"
                + (f" (rough: this restoration is under {RELIABLE_SIDE['niqe']} px a side, where NIQE is "
                   f"unreliable, so the number may say more about the size than the image)" if rough else "")
                + "; upload a ground truth for the ground-truth measure (1 − SSIM)")
    return ("difficulty: image too small for the no-reference proxy (NIQE needs 96 px); upload a ground truth "
            "for the ground-truth measure (1 − SSIM)")


def _score_row(label: str, img: torch.Tensor, gt: torch.Tensor | None, names: list[str],
               raw: dict[str, float] | None = None) -> list[Any]:
    """One table row; the unrounded scores also go into ``raw`` (by metric name) when given."""
    row: list[Any] = [label]
    for n in names:
        m = get_metric(n)
        try:
            if m.full_reference and gt is None:
                row.append("—")
                continue
            value = float(m(img, gt)) if m.full_reference else float(m(img))
            row.append(round(value, 4))
            if raw is not None:
                raw[n] = value
        except ValueError as e:
            row.append(f"n/a ({e})")
    return row


MAX_SCORE_METRICS = 8  # metric names one score request may ask for (each scores the whole image)


def score(ctx: AppContext, image_path: str, metrics: str = "niqe,piqe", gt_path: str | None = None
          ) -> dict[str, float | str]:
    """Raw scores of one image (``metrics``: comma-separated pyiqa names, each scored once, at most
    ``MAX_SCORE_METRICS``)."""
    if not isinstance(metrics, str):
        raise UserError(f"metrics: {str(metrics)[:40]!r} is not a comma-separated list of metric names")
    names = list(dict.fromkeys(m.strip().lower() for m in metrics.split(",") if m.strip()))  # each once
    if len(names) > MAX_SCORE_METRICS:
        raise UserError(f"metrics: {len(names)} names; at most {MAX_SCORE_METRICS} in one request")
    x = pil_to_tensor(to_rgb(ctx.open_upload(image_path))[0])[None]
    gt = pil_to_tensor(to_rgb(ctx.open_upload(gt_path, "ground truth"))[0])[None] if gt_path else None
    out: dict[str, float | str] = {}
    for n in names:
        try:
            m = get_metric(n)
            if m.full_reference and gt is None:
                out[n] = "needs a ground truth"
            else:
                out[n] = float(m(x, gt if m.full_reference else None))
        except (MissingWeightsError, ValueError) as e:
            out[n] = f"error: {e}"
    return out


class RestoreStopped(UserError):
    """The user stopped a restore (the Stop button); the computation ended at the next tile."""


DEFAULT_SPEED = 10.0  # s per megapixel per network pass before a model was measured (the shipped denoiser: ~11 on 2 cores)
SCORES = "(scores)"  # the scoring's entry in ctx.speed (beside each model's)
SCORE_MIN_PIXELS = 96 * 96  # inputs smaller than this do not measure the scoring's speed
DEFAULT_SCORE_SPEED = 4.0  # s per megapixel of one image scored by NIQE and PIQE before it was measured (~4 on 2 cores)


def _passes(has_stage1: bool, steps: int) -> int:
    """Network passes of a restore: one per step, plus stage 1 where the model has one."""
    return int(steps) + (1 if has_stage1 or int(steps) == 0 else 0)


def estimate_seconds(ctx: AppContext, paths: list[str], size: tuple[int, int], steps: int) -> float:
    """Expected wall time of restoring a ``size`` image with each model in ``paths`` (stage 1, where a
    model has one, counts as one pass), from the speed measured on earlier restores in this app (a
    default before the first)."""
    mpx = size[0] * size[1] / 1e6
    return sum(ctx.speed.get(p, DEFAULT_SPEED) * mpx * _passes((Path(p) / "stage1").is_dir(), steps)
               for p in paths)


def score_seconds(ctx: AppContext, size: tuple[int, int], out_scale: int = 1) -> float:
    """Expected wall time of scoring the input and both restorations (``out_scale`` times its sides) of a
    ``size`` image, from the scoring speed measured on earlier restores (a default before the first)."""
    mpx = size[0] * size[1] / 1e6
    return (ctx.score_speed or DEFAULT_SCORE_SPEED) * mpx * (1 + 2 * out_scale**2)


def progress_at(parts: list[float], part: int, f: float, elapsed: float) -> tuple[float, float | None]:
    """Where a restore stands: (fraction done, seconds left; None before there is anything to go on).

    ``parts``: the expected seconds of each part (SFT model, RL model, scores) from the speeds measured
    on earlier restores, 0 for a part with nothing to do (a reused restoration): their shares of the
    work. ``part`` runs now, ``f`` of it done, ``elapsed`` seconds since the restore began. The time left
    is the work left at this restore's own measured throughput (work done / ``elapsed``), so a machine
    slowed by a concurrent job slows the estimate alike, and it counts every part still to come, not
    only the one running."""
    total = sum(parts)
    if total <= 0:
        return 1.0, None
    done = sum(parts[:part]) + min(max(f, 0.0), 1.0) * parts[part]
    if done < 0.02 * total or elapsed <= 0:
        return done / total, None
    return done / total, elapsed / done * (total - done)


def left_text(seconds: float | None) -> str:
    """The time left as the progress bar says it ("" when not known yet)."""
    if seconds is None:
        return ""
    return f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {seconds:.0f} s left"


def work(size: tuple[int, int], steps: int, tile: int, scales: tuple[int, ...] = (1, 1),
         overlap: int = 32) -> tuple[float, int]:
    """(megapixel-passes, tile evaluations) a restore of a ``size`` image costs with one model per entry
    of ``scales`` (how much larger than the input each one's network runs: 4 for a pixel-space x4 model,
    1 for a latent one), ``steps`` steps plus stage 1, and tiles of ``tile`` pixels overlapping by
    ``overlap``: the pixels every network pass computes, the overlaps counted, and how many tiles."""
    from darl_core.models.tiling import tile_layout

    mpp, tiles = 0.0, 0
    for s in scales:
        w, h = size[0] * s, size[1] * s
        (xs, tw), (ys, th) = (tile_layout(side, tile, min(overlap, tile - 1), 8) for side in (w, h))
        n = len(xs) * len(ys)
        mpp += n * tw * th * _passes(True, steps) / 1e6
        tiles += n * _passes(True, steps)
    return mpp, tiles


def _mpp(x: float) -> str:
    """Megapixel-passes as a message shows them: whole numbers, or two significant digits below 10."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.2g}"


def check_budget(ctx: AppContext, size: tuple[int, int], steps: int, tile: int,
                 scales: tuple[int, ...] = (1, 1)) -> None:
    """UserError when a restore would cost more than the app allows one request (``AppContext.max_work``
    megapixel-passes, ``max_tile_passes`` tiles): one request cannot hold the models for hours."""
    mpp, tiles = work(size, steps, tile, scales)
    if mpp > ctx.max_work or tiles > ctx.max_tile_passes:
        raise UserError(f"this {size[0]}x{size[1]} image at {steps} steps with tiles of {tile} is {mpp:,.0f} "
                        f"megapixel-passes in {tiles:,} tiles; one request may do at most {ctx.max_work:,.0f} "
                        f"in {ctx.max_tile_passes:,} tiles. Use fewer steps, a larger tile or a crop.")


def large_image_warning(ctx: AppContext, size: tuple[int, int], sft_model: str | None, rl_model: str | None,
                        steps: int, threshold_s: float = 60.0, out_scale: int = 1) -> str | None:
    """A warning with the expected time (both models and the scores, ``out_scale``: the restorations'
    size over the input's) and what to do, for restores of a ``size`` (width, height) image expected to
    take over ``threshold_s``."""
    if not (sft_model and rl_model):  # restore() passes both; a store query only for a caller that did not
        d_sft, d_rl = ctx.default_models()
        sft_model, rl_model = sft_model or d_sft, rl_model or d_rl
    t = estimate_seconds(ctx, [sft_model, rl_model], size, steps) + score_seconds(ctx, size, out_scale)
    if t <= threshold_s:
        return None
    hint = "fewer steps (0 = stage 1 alone, the fastest)" if int(steps) > 0 else "a smaller crop of the image"
    return (f"This {size[0]}x{size[1]} image will take about {t / 60:.0f} min with both models at {steps} "
            f"steps on this machine; the Stop button ends it at any time. For a quicker look: {hint}; "
            f"tile size {DEFAULT_TILE} (measured fastest here) keeps memory bounded.")


def uniform_warning(im: Image.Image) -> str | None:
    """A warning for an image with (almost) no variation: no-reference scores are undefined on it."""
    small = to_rgb(im)[0]
    small.thumbnail((256, 256))
    if float(pil_to_tensor(small).std()) * 255 < 0.5:
        return ("This image is (almost) uniform: NIQE is undefined on it (n/a in the input's row); the "
                "restorations are still made, and the difficulty proxy is measured on the SFT restoration.")
    return None


def small_image_warning(im: Image.Image, metrics: tuple[str, ...]) -> str | None:
    """A warning when the upload is smaller than a score-table metric needs to mean something (NIQE's
    natural-scene statistics: 192 px a side), so its numbers are not read as a verdict."""
    weak = [m for m in metrics if min(im.size) < RELIABLE_SIDE.get(m, 0)]
    if not weak:
        return None
    need = max(RELIABLE_SIDE[m] for m in weak)
    return (f"This image is {im.size[0]}x{im.size[1]}: {', '.join(m.upper() for m in weak)} is unreliable below "
            f"{need} px a side, so read its scores here as rough; PIQE and, with a ground truth, PSNR and SSIM "
            f"are not affected. Upload at least {need}x{need} px for a trustworthy NIQE.")


def upload_problem(ctx: AppContext, path: str | None, what: str = "image") -> str | None:
    """Why an upload cannot be restored (``AppContext.open_upload``'s message), or None when it can: the
    page says so at upload, instead of showing a broken image until Restore is pressed."""
    if not path:
        return None
    try:
        ctx.open_upload(path, what)
    except UserError as e:
        return str(e)
    return None


def stale_ground_truth(gt: str | None, gt_for: str, new_image: str | None) -> bool:
    """Whether the ground truth ``gt`` must be cleared when ``new_image`` replaces the degraded image
    (None: removes it). ``gt_for`` is the degraded upload it was given with, "" when it was given before
    any: then it belongs to the next image, and uploading one keeps it."""
    return bool(gt) and bool(gt_for) and gt_for != new_image


def restore(ctx: AppContext, image_path: str, task: str = "blind", sft_model: str | None = None,
            rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = DEFAULT_TILE,
            gt_path: str | None = None, progress: Callable[[float, str], None] | None = None,
            stop: threading.Event | None = None, warn: Callable[[str], None] | None = None) -> RestoreResult:
    """Restore one upload with both models and score input, SFT and RL.

    ``progress(fraction, text)`` gets every tile of every step with an ETA; setting ``stop`` ends the
    work at the next tile with ``RestoreStopped``; ``warn`` gets the large-image warning (expected
    time, what to do) before a long restore starts. ``restore_stages`` is the same, step by step.
    """
    for kind, value in restore_stages(ctx, image_path, task, sft_model, rl_model, steps, seed, tile, gt_path,  # noqa: B007
                                      progress, stop, warn):
        if isinstance(value, RestoreResult):
            return value
    raise AssertionError("restore_stages ended without its result")


@dataclass
class Restored:
    """One model's restoration, as soon as it exists (``restore_stages``)."""
    label: str  # "SFT" or "RL"
    image: Image.Image  # the restoration (RGB)
    reused: bool  # taken from an earlier identical request, not restored again
    file: str  # the same as a PNG: the download, and what the page shows
    input: Image.Image  # the upload as the models saw it (RGB)
    gt: Image.Image | None = None  # the ground truth (RGB), if one was given


def request_numbers(task: Any, steps: Any, seed: Any, tile: Any) -> tuple[int, int, int]:
    """A restore request's task and numbers checked (a refusal names the value and the range); returns
    (steps, seed, tile). The interactive restore and a background one refuse the same things."""
    if not isinstance(task, str) or task not in PRESETS:
        raise UserError(f"task: unknown task {str(task)[:40]!r}; one of {', '.join(PRESETS)}")
    steps, seed = int_arg("steps", steps, 0, 50), int_arg("seed", seed, 0, 2**63 - 1)
    tile = int_arg("tile size", tile, 64, 1024)
    if tile % 8:
        raise UserError(f"tile size must be a multiple of 8 between 64 and 1024, got {tile}")
    return steps, seed, tile


def restore_stages(ctx: AppContext, image_path: str, task: str = "blind", sft_model: str | None = None,
                   rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = DEFAULT_TILE,
                   gt_path: str | None = None, progress: Callable[[float, str], None] | None = None,
                   stop: threading.Event | None = None, warn: Callable[[str], None] | None = None
                   ) -> Iterator[tuple[str, Restored | RestoreResult]]:
    """``restore`` as it goes, for a page that shows each picture when it exists: yields ("SFT",
    Restored) when the SFT restoration is done (the RL model runs next), ("RL", Restored), then
    ("done", RestoreResult) with the scores. Every check that can refuse the request runs before the
    first model does."""
    steps, seed, tile = request_numbers(task, steps, seed, tile)
    im = ctx.open_upload(image_path)
    check_budget(ctx, im.size, steps, tile)  # the least it can cost, before any model is loaded
    gt_im = ctx.open_upload(gt_path, "ground truth") if gt_path else None
    d_sft, d_rl = ctx.default_models()
    sft_model, rl_model = ctx.check_model("SFT", sft_model or d_sft), ctx.check_model("RL", rl_model or d_rl)
    progress = progress or (lambda f, s: None)
    pipes = []
    for label, path in (("SFT", sft_model), ("RL", rl_model)):
        try:
            pipe = ctx.pipeline(path)
        except ModelLoadError as e:
            raise UserError(f"{label} model: {e}") from None
        if int(steps) == 0 and not pipe.has_stage1:
            raise UserError(f"{label} model has no stage 1, so 0 steps (stage 1 alone) does not apply: use 1 or more")
        pipes.append(pipe)
    warnings = [large_image_warning(ctx, im.size, sft_model, rl_model, steps, out_scale=pipes[0].output_scale),
                uniform_warning(im), small_image_warning(im, ctx.metrics)]
    for warning in warnings:
        if warning and warn is not None:
            warn(warning)
    scales = tuple(p.network_scale for p in pipes)
    check_budget(ctx, im.size, steps, tile, scales)  # what it will cost
    gt = None
    if gt_im is not None:  # refused now, not after minutes of restoring
        gt_rgb = to_rgb(gt_im)[0]
        k = pipes[0].output_scale  # of the output (a latent x4 model's network runs at x1: network_scale)
        want = (im.size[0] * k, im.size[1] * k)
        if gt_rgb.size != want:
            raise UserError(f"the ground truth is {gt_rgb.size[0]}x{gt_rgb.size[1]} but the restoration will be "
                            f"{want[0]}x{want[1]}")
        gt = pil_to_tensor(gt_rgb)[None]
    gt_shown = to_rgb(gt_im)[0] if gt_im is not None else None
    rgb_in = to_rgb(im)[0]
    tmp = Path(ctx.scratch("darl-restore-"))
    pixels = image_key(rgb_in) if ctx.max_kept_pixels > 0 else ""
    keys = [(id(pipe), pixels, int(steps), int(seed), int(tile)) for pipe in pipes]  # what decides an output
    kept = [ctx.kept(key, pipe) if pixels else None for key, pipe in zip(keys, pipes)]
    # The progress bar's fraction and time left are of the whole restore: each part (SFT, RL, scores)
    # weighs what it is expected to take by earlier speeds (nothing for a reused restoration), and the
    # time left is the rest at the throughput this restore has measured so far (progress_at).
    parts = [0.0 if k is not None else estimate_seconds(ctx, [path], im.size, steps)
             for k, path in zip(kept, (sft_model, rl_model))] + [score_seconds(ctx, im.size, pipes[0].output_scale)]
    t0 = time.perf_counter()

    def report(part: int, f: float, text: str) -> None:
        fraction, left = progress_at(parts, part, f, time.perf_counter() - t0)
        progress(fraction, text + left_text(left))

    done: list[Restored] = []
    for i, ((label, path), pipe) in enumerate(zip((("SFT", sft_model), ("RL", rl_model)), pipes)):
        report(i, 0.0, f"restoring with the {label} model")

        def on_tile(f: float, text: str, i: int = i, label: str = label) -> None:
            if stop is not None and stop.is_set():
                raise RestoreStopped("stopped: the restore was ended with the Stop button")
            report(i, f, f"{label} model: {text}")
        key, out = keys[i], kept[i]
        if out is None and pixels:  # the SFT side may have just made it (the same model and settings on both)
            out = ctx.kept(key, pipe)
        reused = out is not None
        if out is None:
            t1 = time.perf_counter()
            out = pipe(im, num_inference_steps=int(steps), seed=int(seed), tile_size=int(tile), callback=on_tile)[0]
            passes = _passes(pipe.has_stage1, int(steps))
            ctx.speed.record(path, time.perf_counter() - t1, im.size[0] * im.size[1], passes)
            if pixels:
                ctx.keep(key, pipe, out)
        file = tmp / f"restored_{label.lower()}.png"
        out.save(file)  # the download, as the model made it
        done.append(Restored(label, to_rgb(out)[0], reused, str(file), rgb_in, gt_shown))
        yield label, done[-1]
    seconds = time.perf_counter() - t0
    report(2, 0.0, "scoring")
    sft_rgb, rl_rgb = done[0].image, done[1].image
    if gt is not None and tuple(gt.shape[-2:]) != sft_rgb.size[::-1]:  # the models made another size than said
        raise UserError(f"the ground truth is {gt.shape[-1]}x{gt.shape[-2]} but the restoration is "
                        f"{sft_rgb.size[0]}x{sft_rgb.size[1]}")
    names = list(ctx.metrics) + (["psnr", "ssim"] if gt is not None else [])
    tensors = [pil_to_tensor(x)[None] for x in (rgb_in, sft_rgb, rl_rgb)]
    sft_raw: dict[str, float] = {}
    rows = []
    t_score, scored, to_score = time.perf_counter(), 0.0, sum(t.shape[-1] * t.shape[-2] / 1e6 for t in tensors)
    for lbl, t in zip(IMAGES, tensors):
        rows.append(_score_row(lbl, t, gt, names, sft_raw if lbl == "SFT" else None))
        scored += t.shape[-1] * t.shape[-2] / 1e6
        report(2, scored / to_score, f"scored the {lbl}" + (" image" if lbl == "input" else " restoration"))
    if rgb_in.size[0] * rgb_in.size[1] >= SCORE_MIN_PIXELS:  # for the next restore's estimates: as the models'
        # speed (ui/speed.py), a small image is mostly the metrics' fixed cost, so it is not measured, and the
        # speed is the median of recent measurements
        ctx.speed.record(SCORES, time.perf_counter() - t_score, round(scored * 1e6), 1)
        ctx.score_speed = ctx.speed[SCORES]
    if gt is not None:
        # 1 - SSIM of the SFT restoration: already scored for the table when SSIM is a table metric
        d, kind = (1 - sft_raw["ssim"] if "ssim" in sft_raw else float(difficulty(tensors[1], gt))), "gt"
    else:
        try:
            # the proxy is NIQE of the SFT restoration: already scored when NIQE is a table metric
            known = torch.tensor([sft_raw["niqe"]]) if "niqe" in sft_raw else None
            d, kind = float(difficulty_no_reference(tensors[1], raw=known)), "proxy"
        except ValueError:
            d, kind = float("nan"), ""
    rough = rough_scores(dict(zip(IMAGES, (rgb_in.size, sft_rgb.size, rl_rgb.size))), names)
    text = difficulty_text(d, kind, rough=kind == "proxy" and "SFT" in rough.get("niqe", []))
    progress(1.0, "done")
    yield "done", RestoreResult(rgb_in, sft_rgb, rl_rgb, rows, ["image"] + names, d, text, [r.file for r in done],
                                seconds, kind, gt_shown, rough, [r.label for r in done if r.reused])


MAX_BATCH = 32  # images one batch restore takes


def restore_batch(ctx: AppContext, image_paths: list[str], task: str = "blind", sft_model: str | None = None,
                  rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = DEFAULT_TILE,
                  progress: Callable[[float, str], None] | None = None, stop: threading.Event | None = None
                  ) -> tuple[list[list[Any]], list[tuple[str, str]], str | None]:
    """Restore several uploads: (table rows, gallery items, zip path; None when no image was restored, so
    no empty archive is offered). A bad file is reported, not fatal; the whole batch shares one request's
    work budget (``check_budget``), and ``stop`` ends it."""
    if not image_paths:
        raise UserError("no images were uploaded")
    if len(image_paths) > MAX_BATCH:
        raise UserError(f"{len(image_paths)} images: a batch takes at most {MAX_BATCH}")
    spent = 0.0
    progress = progress or (lambda f, s: None)
    out_dir = Path(ctx.scratch("darl-batch-"))
    rows: list[list[Any]] = []
    gallery: list[tuple[str, str]] = []
    zpath = out_dir / "restored.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for i, path in enumerate(image_paths):
            name = Path(path).stem
            progress(i / len(image_paths), f"image {i + 1} of {len(image_paths)}")
            try:
                size = ctx.open_upload(path).size
                cost = work(size, int_arg("steps", steps, 0, 50), int_arg("tile size", tile, 64, 1024))[0]
                if spent + cost > ctx.max_work:
                    raise UserError(f"over the batch's work budget ({_mpp(ctx.max_work)} megapixel-passes; this "
                                    f"image adds {_mpp(cost)} to {_mpp(spent)}); restore it on its own")
                r = restore(ctx, path, task, sft_model, rl_model, steps, seed, tile, stop=stop)
                spent += cost
            except RestoreStopped:
                raise
            except UserError as e:
                said = str(e).removeprefix(f"{Path(path).name}: ")  # the row names the file already
                rows.append([Path(path).name, f"skipped: {said}", "", "", ""])
                continue
            for label, f in zip(("sft", "rl"), r.files):
                z.write(f, f"{name}_{label}.png")
                gallery.append((f, f"{name} · {label.upper()}"))
            niqe = {row[0]: row[1] for row in r.scores}
            first = r.headers[1]  # the batch table shows the first metric (NIQE by default)
            status = f"ok; {first.upper()} rough: under {RELIABLE_SIDE[first]} px" if first in r.rough else "ok"
            rows.append([Path(path).name, status, niqe["input"], niqe["SFT"], niqe["RL"]])
    progress(1.0, "done")
    return rows, gallery, str(zpath) if gallery else None


def gt_scale(lq_size: tuple[int, int], gt_size: tuple[int, int]) -> int | None:
    """The factor k (1..8) with GT = k x LQ on both sides, else None: the ground truth is the clean image
    at the restorer's output size (1 for restoration, 4 for x4 super-resolution)."""
    k = gt_size[0] // lq_size[0] if lq_size[0] else 0
    return k if 1 <= k <= 8 and gt_size == (k * lq_size[0], k * lq_size[1]) else None


def gt_size_problem(lq_size: tuple[int, int], gt_size: tuple[int, int]) -> str | None:
    """Why a ground truth of ``gt_size`` cannot go with an input of ``lq_size`` (naming the size it must have),
    or None when it can (``gt_scale``)."""
    if gt_scale(lq_size, gt_size) is not None:
        return None
    w, h = lq_size
    return (f"the ground truth must have the input's size {w}x{h}, or an integer multiple of it for "
            f"super-resolution (x4: {4 * w}x{4 * h}); got {gt_size[0]}x{gt_size[1]}")


def ground_truth_problem(ctx: AppContext, image: str | None, gt: str | None) -> str | None:
    """At upload: why ``gt`` cannot be the ground truth of the uploaded ``image`` (its size), or None (also
    when either is missing or unreadable: those are said by ``upload_problem``)."""
    if not image or not gt:
        return None
    try:
        return gt_size_problem(ctx.open_upload(image).size, ctx.open_upload(gt, "ground truth").size)
    except UserError:
        return None


def model_labels(ctx: AppContext, sft: str | None, rl: str | None) -> str:
    """The chosen models' full labels (name and held-out numbers, ``AppContext.model_choices``), one line
    each: a picker shows only as much of a label as its width allows."""
    labels = {path: label for label, path in ctx.model_choices()}
    return "  \n".join(f"**{side}:** {labels.get(str(path), str(path)) if path else '(default)'}"
                       for side, path in (("SFT", sft), ("RL", rl)))


def took(r: RestoreResult) -> str:
    """How long the restorations took, and which were reused from an earlier identical request."""
    if not r.reused:
        return f"both restorations took {r.seconds:.1f} s"
    same = "same image, model, steps, seed and tile size as before"
    if len(r.reused) == 2:
        return f"both restorations reused ({same})"
    other = "RL" if r.reused == ["SFT"] else "SFT"
    return f"the {r.reused[0]} restoration reused ({same}), the {other} one took {r.seconds:.1f} s"


def image_key(im: Image.Image) -> str:
    """A fingerprint of an image's RGB pixels (which image a difficulty was measured on)."""
    rgb = to_rgb(im)[0]
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()[:32]


def flag(ctx: AppContext, image_path: str, reason: str, note: str = "", gt_path: str | None = None,
         task: str = "blind", user: str = "anonymous", difficulty_value: float | None = None,
         difficulty_kind: str | None = None, measured_on: str | None = None) -> str:
    """``flag_sample``'s message alone (the app's ``flag`` API answers with it)."""
    return flag_sample(ctx, image_path, reason, note, gt_path, task, user, difficulty_value, difficulty_kind,
                       measured_on)[1]


def flag_sample(ctx: AppContext, image_path: str, reason: str, note: str = "", gt_path: str | None = None,
                task: str = "blind", user: str = "anonymous", difficulty_value: float | None = None,
                difficulty_kind: str | None = None, measured_on: str | None = None) -> tuple[int, str]:
    """Store the upload as a hard sample and append a flag event; returns its id and a message. ``difficulty_kind``
    says what ``difficulty_value`` measures: "gt" (1 - SSIM against a ground truth) or "proxy";
    ``measured_on`` (an ``image_key``), when given, is the image it was measured on: the difficulty of
    another image (restored earlier in the session) is not stored with this one."""
    if not reason:
        raise UserError("choose a reason for the flag")
    if not isinstance(reason, str) or len(reason) > 64:
        raise UserError(f"reason: {str(reason)[:40]!r} is not a reason (text of at most 64 characters)")
    note = note or ""
    if not isinstance(note, str):
        raise UserError("note: must be text")
    if len(note) > MAX_NOTE:
        raise UserError(f"the note is {len(note)} characters long; at most {MAX_NOTE}")
    if not isinstance(task, str) or task not in PRESETS:
        raise UserError(f"task: unknown task {str(task)[:40]!r}; one of {', '.join(PRESETS)}")
    lq = to_rgb(ctx.open_upload(image_path))[0]
    gt = to_rgb(ctx.open_upload(gt_path, "ground truth"))[0] if gt_path else None
    if gt is not None and (problem := gt_size_problem(lq.size, gt.size)):
        raise UserError(problem)
    try:
        d = None if difficulty_value is None else float(difficulty_value)
    except (TypeError, ValueError):
        raise UserError(f"difficulty: {str(difficulty_value)[:40]!r} is not a number") from None
    d = None if d is None or not math.isfinite(d) else d
    if measured_on is not None and measured_on != image_key(lq):
        d = None  # measured on another image
    kind = difficulty_kind or None
    if d is not None and kind not in (None, "gt", "proxy"):
        raise UserError(f"unknown difficulty kind {difficulty_kind!r}: gt or proxy")
    # Everything is validated before anything is written: a rejected upload leaves no row, and the
    # sample and its flag are written in one transaction (a crash between them cannot leave half).
    try:
        sid, _ = ctx.store.flag_upload(png_bytes(lq), lq.size[0], lq.size[1], png_bytes(gt) if gt else None,
                                       source="upload", task=task, user=user, reason=reason, note=note,
                                       difficulty=d, difficulty_kind=kind)
    except DiskFull as e:
        raise UserError(f"{e}; tell the operator of this server") from None
    return sid, f"Flagged as hard sample #{sid} ({reason}, {'with' if gt else 'no'} ground truth)."



EXAMPLES = ("chelsea.png", "coffee.png", "rocket.jpg")  # held-out photos of scikit-image's data (no model trained on them)


def example_images(folder: Path) -> list[str]:
    """Degraded 256 px crops of held-out photos, for the clickable examples: made at start-up by
    Pillow and the JPEG codec (``evalset.OUTSIDE``: blur 1.2, bicubic x2, noise 8, JPEG 50), not by
    our training degradations. The photos come with scikit-image (BSD-3-Clause; see its data/README)."""
    import numpy as np

    from darl_core.data.clean import builtin_image
    from darl_core.evaluation.evalset import OUTSIDE, pillow_degrade

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(EXAMPLES):
        path = folder / f"example_{Path(name).stem}.png"
        if not path.is_file():
            im = builtin_image(name)
            w, h = im.size
            crop = im.crop(((w - 256) // 2, (h - 256) // 2, (w + 256) // 2, (h + 256) // 2))
            pillow_degrade(crop, OUTSIDE, np.random.default_rng(i))[0].save(path)
        paths.append(str(path))
    return paths


