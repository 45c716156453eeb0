"""Restore tab: upload, restore with the SFT and the RL model, compare, score, flag as hard."""

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

import gradio as gr
import torch
from gradio.data_classes import FileData
from PIL import Image

from darl_core.data.degrade import PRESETS
from darl_core.rewards.difficulty import difficulty, difficulty_no_reference
from darl_core.data.images import pil_to_tensor, to_rgb
from darl_core.models.loading import ModelLoadError
from darl_core.models.pipeline import DEFAULT_STEPS, DEFAULT_TILE, RestorationPipeline
from darl_core.rewards.registry import RELIABLE_SIDE, MissingWeightsError, get_metric
from storage import DiskFull

from . import fields
from .context import AppContext, UserError, caller, int_arg, png_bytes, user_errors, user_messages
from .upload import ImageUpload

__all__ = ["METRIC_INFO", "RestoreResult", "RestoreStopped", "SCORE_HEADERS", "compare_views", "difference_map",
           "difficulty_text", "estimate_seconds", "zoom_strip",
           "example_images", "flag", "ground_truth_problem", "gt_scale", "gt_size_problem", "large_image_warning", "listen", "render", "restore", "restore_batch",
           "rough_scores", "score", "small_image_warning", "score_table", "stale_ground_truth", "upload_problem"]

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


def score(ctx: AppContext, image_path: str, metrics: str = "niqe,piqe", gt_path: str | None = None
          ) -> dict[str, float | str]:
    """Raw scores of one image (``metrics``: comma-separated pyiqa names)."""
    if not isinstance(metrics, str):
        raise UserError(f"metrics: {str(metrics)[:40]!r} is not a comma-separated list of metric names")
    x = pil_to_tensor(to_rgb(ctx.open_upload(image_path))[0])[None]
    gt = pil_to_tensor(to_rgb(ctx.open_upload(gt_path, "ground truth"))[0])[None] if gt_path else None
    out: dict[str, float | str] = {}
    for n in [m.strip() for m in metrics.split(",") if m.strip()]:
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


def network_scale(pipe: Any) -> int:
    """How much larger than the input a restorer's network runs: its output scale for a pixel-space
    model (it diffuses at the output's size), 1 for a latent one (its latents have the input's size)."""
    return int(getattr(pipe, "output_scale", 1)) if isinstance(pipe, RestorationPipeline) else 1


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
                        steps: int, threshold_s: float = 60.0) -> str | None:
    """A warning with the expected time and what to do, for restores of a ``size`` (width, height)
    image expected to take over ``threshold_s``."""
    if not (sft_model and rl_model):  # restore() passes both; a store query only for a caller that did not
        d_sft, d_rl = ctx.default_models()
        sft_model, rl_model = sft_model or d_sft, rl_model or d_rl
    t = estimate_seconds(ctx, [sft_model, rl_model], size, steps)
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
    for kind, value in restore_stages(ctx, image_path, task, sft_model, rl_model, steps, seed, tile, gt_path,
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


def restore_stages(ctx: AppContext, image_path: str, task: str = "blind", sft_model: str | None = None,
                   rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = DEFAULT_TILE,
                   gt_path: str | None = None, progress: Callable[[float, str], None] | None = None,
                   stop: threading.Event | None = None, warn: Callable[[str], None] | None = None
                   ) -> Iterator[tuple[str, Restored | RestoreResult]]:
    """``restore`` as it goes, for a page that shows each picture when it exists: yields ("SFT",
    Restored) when the SFT restoration is done (the RL model runs next), ("RL", Restored), then
    ("done", RestoreResult) with the scores. Every check that can refuse the request runs before the
    first model does."""
    if not isinstance(task, str) or task not in PRESETS:
        raise UserError(f"task: unknown task {str(task)[:40]!r}; one of {', '.join(PRESETS)}")
    steps, seed = int_arg("steps", steps, 0, 50), int_arg("seed", seed, 0, 2**63 - 1)
    tile = int_arg("tile size", tile, 64, 1024)
    if tile % 8:
        raise UserError(f"tile size must be a multiple of 8 between 64 and 1024, got {tile}")
    im = ctx.open_upload(image_path)
    check_budget(ctx, im.size, steps, tile)  # the least it can cost, before any model is loaded
    gt_im = ctx.open_upload(gt_path, "ground truth") if gt_path else None
    d_sft, d_rl = ctx.default_models()
    sft_model, rl_model = sft_model or d_sft, rl_model or d_rl
    warnings = [large_image_warning(ctx, im.size, sft_model, rl_model, steps), uniform_warning(im),
                small_image_warning(im, ctx.metrics)]
    for warning in warnings:
        if warning and warn is not None:
            warn(warning)
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
    scales = tuple(network_scale(p) for p in pipes)
    check_budget(ctx, im.size, steps, tile, scales)  # what it will cost
    gt = None
    if gt_im is not None:  # refused now, not after minutes of restoring
        gt_rgb = to_rgb(gt_im)[0]
        k = int(getattr(pipes[0], "output_scale", 1))  # of the output (a latent x4 model's network runs at x1)
        want = (im.size[0] * k, im.size[1] * k)
        if gt_rgb.size != want:
            raise UserError(f"the ground truth is {gt_rgb.size[0]}x{gt_rgb.size[1]} but the restoration will be "
                            f"{want[0]}x{want[1]}")
        gt = pil_to_tensor(gt_rgb)[None]
    gt_shown = to_rgb(gt_im)[0] if gt_im is not None else None
    rgb_in = to_rgb(im)[0]
    tmp = Path(ctx.scratch("darl-restore-"))
    pixels = image_key(rgb_in) if ctx.max_kept_pixels > 0 else ""
    t0 = time.perf_counter()
    done: list[Restored] = []
    for i, ((label, path), pipe) in enumerate(zip((("SFT", sft_model), ("RL", rl_model)), pipes)):
        progress(i / 2 * 0.95, f"restoring with the {label} model")

        def on_tile(f: float, text: str, i: int = i, label: str = label) -> None:
            if stop is not None and stop.is_set():
                raise RestoreStopped("stopped: the restore was ended with the Stop button")
            done = (i + f) / 2
            el = time.perf_counter() - t0
            eta = f", about {el / done - el:.0f} s left" if done > 0.02 else ""
            progress(done * 0.95, f"{label} model: {text}{eta}")
        key = (id(pipe), pixels, int(steps), int(seed), int(tile))  # what decides the output (not the task)
        out = ctx.kept(key, pipe) if pixels else None
        reused = out is not None
        if out is None:
            t1 = time.perf_counter()
            out = pipe(im, num_inference_steps=int(steps), seed=int(seed), tile_size=int(tile), callback=on_tile)[0]
            passes = _passes(pipe.has_stage1, int(steps))
            ctx.speed[path] = (time.perf_counter() - t1) / max(passes, 1) / (im.size[0] * im.size[1] / 1e6)
            if pixels:
                ctx.keep(key, pipe, out)
        file = tmp / f"restored_{label.lower()}.png"
        out.save(file)  # the download, as the model made it
        done.append(Restored(label, to_rgb(out)[0], reused, str(file), rgb_in, gt_shown))
        yield label, done[-1]
    seconds = time.perf_counter() - t0
    progress(0.95, "scoring")
    sft_rgb, rl_rgb = done[0].image, done[1].image
    if gt is not None and tuple(gt.shape[-2:]) != sft_rgb.size[::-1]:  # the models made another size than said
        raise UserError(f"the ground truth is {gt.shape[-1]}x{gt.shape[-2]} but the restoration is "
                        f"{sft_rgb.size[0]}x{sft_rgb.size[1]}")
    names = list(ctx.metrics) + (["psnr", "ssim"] if gt is not None else [])
    tensors = [pil_to_tensor(x)[None] for x in (rgb_in, sft_rgb, rl_rgb)]
    sft_raw: dict[str, float] = {}
    rows = [_score_row(lbl, t, gt, names, sft_raw if lbl == "SFT" else None)
            for lbl, t in zip(("input", "SFT", "RL"), tensors)]
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


# ----------------------------------------------------------------------------- comparing

MAX_BATCH = 32  # images one batch restore takes
DIFF_GAIN = 4.0  # the difference map shows |SFT - RL| times this (small differences become visible)
# What the page shows is lossless. Gradio's default, WebP at quality 80, took away about a third of a
# 256x256 restoration's finest texture (the speckle being compared) and added an error as large as the
# SFT-RL difference itself (both about 36 dB), so the page could show RL smoother than SFT when it is not.
SHOWN = "png"


def shown_file(img: Image.Image, path: Path) -> str:
    """``img`` saved losslessly at ``path`` for the page to show: PNG at the fastest compression
    (encoding is part of every restore's wait; the downloads keep the default, smaller PNGs)."""
    img.save(path, "PNG", compress_level=1)
    return str(path)


def difference_map(a: Image.Image, b: Image.Image, gain: float = DIFF_GAIN) -> tuple[Image.Image, float]:
    """|a - b| averaged over the colour channels, times ``gain``, as a grey image (black: identical),
    and the mean absolute difference in 8-bit levels."""
    if a.size != b.size:
        raise UserError(f"cannot compare a {a.size[0]}x{a.size[1]} image with a {b.size[0]}x{b.size[1]} one")
    d = (pil_to_tensor(to_rgb(a)[0]) - pil_to_tensor(to_rgb(b)[0])).abs().mean(dim=0) * 255
    grey = (d * gain).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(grey, mode="L").convert("RGB"), float(d.mean())


def zoom_strip(images: list[tuple[str, Image.Image]], center: tuple[int, int] | None = None, side: int = 128,
               scale: int = 3) -> Image.Image:
    """The same ``side`` x ``side`` region of every image, side by side with its name below, each pixel
    drawn as ``scale`` x ``scale`` (nearest: no smoothing hides what the models did). ``center`` is in
    the pixels of the largest image (default: its centre); smaller images (the input of a x4 model)
    show the same region of the scene, enlarged to the same size."""
    from PIL import ImageDraw, ImageFont

    big = max((im.size for _, im in images), key=lambda wh: wh[0] * wh[1])
    side = min(side, *big)  # a small image is shown whole
    cx, cy = center if center is not None else (big[0] // 2, big[1] // 2)
    half = side // 2
    cx, cy = min(max(int(cx), half), max(big[0] - half, half)), min(max(int(cy), half), max(big[1] - half, half))
    tiles = []
    font = ImageFont.load_default(size=20)
    bar = 30  # a white band below each panel with its name, centred (Gradio draws its label and buttons on top)
    for name, im in images:
        f = im.size[0] / big[0]  # this image's pixels per pixel of the largest one
        box = (round((cx - half) * f), round((cy - half) * f), round((cx + half) * f), round((cy + half) * f))
        crop = to_rgb(im)[0].crop(box).resize((side * scale, side * scale), Image.NEAREST)
        tile = Image.new("RGB", (side * scale, side * scale + bar), "white")
        tile.paste(crop, (0, 0))
        text = name if f == 1 else f"{name} (x{1 / f:g}, nearest)"
        ImageDraw.Draw(tile).text((side * scale // 2, side * scale + bar // 2), text, fill="black", font=font,
                                  anchor="mm")
        tiles.append(tile)
    strip = Image.new("RGB", (sum(t.size[0] for t in tiles) + 6 * (len(tiles) - 1), tiles[0].size[1]), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.size[0] + 6
    return strip


def compare_views(inp: Image.Image, sft: Image.Image, rl: Image.Image, gt: Image.Image | None = None,
                  center: tuple[int, int] | None = None) -> tuple[Image.Image, str, Image.Image]:
    """The difference map of SFT against RL with its caption, and the zoom strip of input, SFT, RL and
    the ground truth (when given) around ``center`` (in output pixels)."""
    diff, mad = difference_map(sft, rl)
    caption = (f"|SFT − RL| × {DIFF_GAIN:g}: black where both models agree; mean difference {mad:.2f} of 255 "
               f"levels")
    views = [("input", inp), ("SFT", sft), ("RL", rl)] + ([("ground truth", gt)] if gt else [])
    return diff, caption, zoom_strip(views, center)


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
    """Store the upload as a hard sample and append a flag event; returns a message. ``difficulty_kind``
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
    return f"Flagged as hard sample #{sid} ({reason}, {'with' if gt else 'no'} ground truth)."


# ----------------------------------------------------------------------------- Gradio

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


STEPS_HELP = ("**Fidelity ↔ detail.** The restorer runs in two stages: stage 1 (steps = 0) is a regression "
              "network, the most faithful to the input (highest PSNR); each diffusion step after it adds "
              "texture the regression averaged away, at some cost in fidelity. The models' cards "
              "(`models/*/README.md`, docs/quality) give the numbers on photos no model saw.")


def render(ctx: AppContext) -> dict[str, Any]:
    choices = ctx.model_choices()
    d_sft, d_rl = ctx.default_models()
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            c["image"] = ImageUpload(type="filepath", label="Degraded image", sources=["upload", "clipboard"],
                                  elem_id="upload")
            c["gt"] = ImageUpload(type="filepath", label="Ground truth (optional: PSNR, SSIM and the measured difficulty)",
                               sources=["upload", "clipboard"], elem_id="gt-upload")
            try:
                gr.Examples([[p, None] for p in example_images(ctx.store.dir / "examples")], inputs=[c["image"], c["gt"]],
                            label="Examples: held-out photos degraded by Pillow and JPEG (click one)")
            except FileNotFoundError:  # scikit-image's photos missing: the page works without examples
                pass
            # The models restore any degradation; the task only says which one this image has, recorded with
            # a flag (the Hard-samples filter and a job's training pool read it).
            c["task"] = gr.Dropdown(sorted(PRESETS), value="blind", label="Degradation of this image (saved with a flag)",
                                    info="Does not change the restore; the Hard-samples tab filters flags by it.")
            # values set again on every page load (ui.build_app): a promoted model is the RL default at once
            c["sft"] = gr.Dropdown(choices, value=d_sft, label="SFT model", allow_custom_value=True,
                                   elem_id="sft-picker")
            c["rl"] = gr.Dropdown(choices, value=d_rl, label="RL model", allow_custom_value=True,
                                  elem_id="rl-picker")
            c["rl_note"] = gr.Markdown(ctx.model_note(d_rl), elem_id="rl-note")  # what to know about the RL side
            c["steps"] = fields.Slider(0, 50, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps",
                                   info="0 = stage 1 alone (most faithful, two-stage models); more steps add detail "
                                        "and cost fidelity")
            with gr.Accordion("What do the steps trade?", open=False):
                gr.Markdown(STEPS_HELP)
            with gr.Row():
                c["seed"] = fields.Number(0, precision=0, label="Seed", elem_id="seed", scale=3)
                c["dice"] = gr.Button("Random seed", elem_id="dice", scale=1)
                c["tile"] = fields.Slider(64, 1024, value=DEFAULT_TILE, step=8, label="Tile size", scale=3,
                                      elem_id="tile", info="Large images are restored in tiles of about this "
                                      "size (up to 25 % larger when that means fewer tiles); smaller uses less memory.")
            with gr.Row():
                c["run"] = gr.Button("Restore", variant="primary", elem_id="restore-btn")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            with gr.Accordion("Flag as hard", open=True, elem_id="flag-box"):
                c["reason"] = gr.Dropdown(REASONS, value="artifacts", label="Reason")
                c["note"] = gr.Textbox(label=f"Note (at most {MAX_NOTE} characters)")
                c["flag_btn"] = gr.Button("Flag as hard", elem_id="flag-btn")
                c["flag_msg"] = gr.Markdown(elem_id="flag-msg")
        with gr.Column(scale=2):
            with gr.Row(equal_height=True):
                # Fixed heights: the page does not jump when the results arrive.
                c["slider_in"] = gr.ImageSlider(label="input (left) ⟷ SFT (right)", type="pil", height=380,
                                                format=SHOWN, elem_id="slider-input")
                c["slider"] = gr.ImageSlider(label="SFT (left) ⟷ RL (right)", type="pil", height=380,
                                             format=SHOWN, elem_id="slider")
            c["scores"] = gr.Dataframe(headers=SCORE_HEADERS, label="IQA scores: each row says which way is better; "
                                       "the last column names the best image", interactive=False, elem_id="scores")
            c["difficulty_md"] = gr.Markdown(elem_id="difficulty")
            with gr.Row():  # no fixed height here: Gradio 6.31 drops clicks on an image given a height
                c["input_view"] = gr.Image(label="Input: click a point to zoom there", type="pil", interactive=False,
                                           format=SHOWN, elem_id="input-view")
                c["diff"] = gr.Image(label=f"|SFT − RL| × {DIFF_GAIN:g} (black: the models agree)", type="pil",
                                     interactive=False, format=SHOWN, elem_id="diff-map")
            c["diff_md"] = gr.Markdown(elem_id="diff-caption")
            c["zoom"] = gr.Image(label="Zoom: the same region of every image, each pixel drawn 3x3 (no smoothing)",
                                 type="pil", interactive=False, format=SHOWN, elem_id="zoom")
            c["files"] = gr.File(label="Downloads", file_count="multiple")
            c["difficulty"] = gr.State(float("nan"))
            c["difficulty_kind"] = gr.State("")  # what c["difficulty"] measures: "gt" or "proxy"
            c["difficulty_for"] = gr.State("")  # image_key of the input it was measured on
            c["result"] = gr.State(None)  # the last RestoreResult of this session (the zoom reads it)
            c["gt_for"] = gr.State("")  # the degraded upload the ground truth was given with ("": none yet)
    # The page's full width: a batch's messages and scores do not fit the narrow settings column.
    with gr.Accordion("Several images (same models, steps, seed and tile size as above)", open=False,
                      elem_id="batch-box"):
        with gr.Row():
            with gr.Column(scale=1):
                c["batch"] = gr.File(file_count="multiple", file_types=["image"], label="Images")
                c["run_batch"] = gr.Button("Restore all", elem_id="batch-btn")
                c["batch_zip"] = gr.File(label="Batch download")
            with gr.Column(scale=3):
                c["batch_table"] = gr.Dataframe(headers=["file", "status", "NIQE input", "NIQE SFT", "NIQE RL"],
                                                interactive=False, label="Batch results", wrap=True,
                                                column_widths=["18%", "46%", "12%", "12%", "12%"],
                                                elem_id="batch-table")
                c["batch_gallery"] = gr.Gallery(label="Batch restorations", columns=4, height=220, format=SHOWN,
                                                 object_fit="contain")  # whole images, not cropped tiles
    return c


def listen(ctx: AppContext, c: dict[str, Any]) -> None:
    @user_messages(13, at=4, lead="Not restored")
    def on_restore(image, gt, task, sft, rl, steps, seed, tile, progress=gr.Progress(),  # noqa: ANN001, B008
                   request: gr.Request = None):
        # Each picture is shown as soon as it exists: input ⟷ SFT while the RL model runs, then SFT ⟷ RL,
        # the difference map and the zoom, then the scores. The page shows files, each encoded once: the
        # restorations are the downloads themselves, the rest fast lossless PNGs (see SHOWN).
        key = getattr(request, "session_hash", None) or "anonymous"
        stop = ctx.start_session(key, caller(request))
        skip = gr.skip()
        try:
            stages = restore_stages(ctx, image, task, sft, rl, steps, seed or 0, tile, gt,
                                    progress=lambda f, s: progress(f, desc=s), stop=stop,
                                    warn=lambda w: gr.Warning(w, duration=20))
            shown = None  # the label of the last restoration put on the page (SFT comes first, then RL)
            for _, v in stages:
                if isinstance(v, Restored):
                    shown = v.label
                if isinstance(v, Restored) and v.label == "SFT":
                    first, inp = v, shown_file(v.input, Path(v.file).parent / "input.png")
                    # what the last image left is cleared, not shown beside the new one (the zoom reads
                    # the result state: None until this image's result exists)
                    yield (None, (inp, v.file), inp, gr.update(value=None, headers=SCORE_HEADERS), "", [v.file],
                           None, "", None, None, skip, skip, skip)
                elif isinstance(v, Restored):
                    folder = Path(v.file).parent
                    d, caption, z = compare_views(first.input, first.image, v.image, v.gt)
                    diff, zoom = shown_file(d, folder / "difference.png"), shown_file(z, folder / "zoom.png")
                    pictures = ((first.file, v.file), (inp, first.file), inp)
                    yield (*pictures, skip, "", [first.file, v.file], diff, caption, zoom, skip, skip, skip, skip)
                elif isinstance(v, RestoreResult):
                    r = v
        except RestoreStopped as e:  # what the user asked for: said as such, what was shown so far left shown
            gr.Info(str(e))
            line = "**Stopped** after the SFT restoration: the RL one was not finished, nothing was scored"
            yield tuple(line if i == 4 and shown == "SFT" else skip for i in range(13))
            return
        finally:
            ctx.end_session(key)
        table, note = score_table(r.headers, r.scores, r.rough)
        given = "with your ground truth" if r.gt is not None else "**no ground truth given**: no-reference scores only"
        head, _, rest = r.difficulty_text.partition(" (")  # the number bold, its explanation plain
        text = f"**{head}** ({rest} · {given} · {took(r)}" + (f"\n\n{note}" if note else "")
        # all outputs again: a client of the API reads the last message alone (the files are the same)
        yield (*pictures, gr.update(value=table, headers=SCORE_HEADERS), text, r.files, diff, caption, zoom, r,
               r.difficulty, r.difficulty_kind, image_key(r.input))

    def on_stop(request: gr.Request = None) -> None:  # noqa: ANN001
        # the running restore of this page raises RestoreStopped at its next tile
        ctx.stop_session(getattr(request, "session_hash", None) or "anonymous")

    c["stop"].click(on_stop, None, None, queue=False, api_visibility="private")
    c["run"].click(on_restore, [c["image"], c["gt"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"],
                                c["tile"]],
                   [c["slider"], c["slider_in"], c["input_view"], c["scores"], c["difficulty_md"], c["files"],
                    c["diff"], c["diff_md"], c["zoom"], c["result"], c["difficulty"], c["difficulty_kind"],
                    c["difficulty_for"]],
                   api_name="restore", concurrency_limit=1, concurrency_id="models",
                   # one progress bar, on the score table (what arrives last): Gradio's default covers every
                   # output until the end and would hide each picture shown as soon as it exists
                   show_progress_on=[c["scores"]])

    def on_zoom(r: RestoreResult | None, evt: gr.SelectData) -> Any:
        if r is None:
            gr.Info("The zoom follows a click once a restore has finished")
            return gr.update()
        x, y = evt.index  # a point of the input view, in its pixels: the outputs are output_scale larger
        k = r.sft.size[0] / r.input.size[0]
        return compare_views(r.input, r.sft, r.rl, r.gt, (round(x * k), round(y * k)))[2]

    c["input_view"].select(on_zoom, c["result"], c["zoom"], api_visibility="private")

    # A new image makes the shown results, their difficulty and (for an upload) the ground truth stale:
    # cleared, so a flag never carries another image's difficulty or ground truth.
    results = [c["slider"], c["slider_in"], c["input_view"], c["scores"], c["difficulty_md"], c["files"], c["diff"],
               c["diff_md"], c["zoom"], c["result"], c["difficulty"], c["difficulty_kind"], c["difficulty_for"],
               c["flag_msg"]]

    def cleared() -> tuple[Any, ...]:
        return (None, None, None, gr.update(value=None, headers=SCORE_HEADERS), "", None, None, "", None, None,
                float("nan"), "", "", "")

    c["image"].change(cleared, None, results, api_visibility="private", queue=False)
    # The RL side's caveat (a shipped model's note, e.g. that it is not better than SFT) follows the picker.
    c["rl"].change(ctx.model_note, c["rl"], c["rl_note"], api_visibility="private", queue=False)

    # A file the loader refuses is said at upload and emptied (not shown as a broken image until Restore).
    # A ground truth belongs to the degraded image it was given with (or, given first, to the next one):
    # replacing or removing that image clears it, said as such, so no flag or score pairs it with another.
    def on_image_upload(path: str | None, gt: str | None, gt_for: str) -> tuple[Any, Any, str]:
        problem = upload_problem(ctx, path, "image")
        stale = stale_ground_truth(gt, gt_for, path)
        if problem:
            gr.Warning(f"Not usable: {problem}", duration=20)
        if stale:
            gr.Info("The ground truth was cleared: it was given with the previous image. Upload the one that "
                    "belongs to this image.", duration=15)
        elif not problem and (size := ground_truth_problem(ctx, path, gt)):  # given first, for this image
            gr.Warning(f"The ground truth was cleared: {size}. Upload one of that size.", duration=20)
            stale = True
        return (None if problem else gr.skip(), None if stale else gr.skip(),
                path if gt and not (stale or problem) else "")

    def on_image_clear(gt: str | None, gt_for: str) -> tuple[Any, str]:
        return (None if stale_ground_truth(gt, gt_for, None) else gr.skip()), ""

    def on_gt_upload(gt: str | None, image: str | None) -> tuple[Any, str]:
        problem = upload_problem(ctx, gt, "ground truth")
        if problem:
            gr.Warning(f"Not usable: {problem}", duration=20)
            return None, ""
        if size := ground_truth_problem(ctx, image, gt):  # refused now, not at Restore
            gr.Warning(f"Not usable: {size}.", duration=20)
            return None, ""
        return gr.skip(), image or ""

    def on_batch_upload(files: list[Any] | None) -> None:  # said now; the batch itself skips them, with the reason
        bad = [p for f in files or [] if (p := upload_problem(ctx, getattr(f, "name", f)))]
        if bad:
            gr.Warning(f"{len(bad)} of {len(files)} files will be skipped: " + "; ".join(bad[:3])
                       + (" …" if len(bad) > 3 else ""), duration=20)

    c["image"].upload(on_image_upload, [c["image"], c["gt"], c["gt_for"]], [c["image"], c["gt"], c["gt_for"]],
                      api_visibility="private")
    c["image"].clear(on_image_clear, [c["gt"], c["gt_for"]], [c["gt"], c["gt_for"]], api_visibility="private")
    c["gt"].upload(on_gt_upload, [c["gt"], c["image"]], [c["gt"], c["gt_for"]], api_visibility="private")
    c["gt"].clear(lambda: "", None, c["gt_for"], api_visibility="private", queue=False)
    c["batch"].upload(on_batch_upload, c["batch"], None, api_visibility="private")
    c["dice"].click(lambda: int(torch.randint(0, 2**31 - 1, (1,))), None, c["seed"], api_visibility="private")

    @user_errors
    def on_batch(files, task, sft, rl, steps, seed, tile, progress=gr.Progress(),  # noqa: ANN001, B008
                 request: gr.Request = None):
        key = getattr(request, "session_hash", None) or "anonymous"
        stop = ctx.start_session(key, caller(request))
        try:
            return restore_batch(ctx, [getattr(f, "name", f) for f in files or []], task, sft, rl, steps,
                                 seed or 0, tile, progress=lambda f, s: progress(f, desc=s), stop=stop)
        except RestoreStopped as e:
            gr.Info(str(e))
            return gr.skip(), gr.skip(), gr.skip()
        finally:
            ctx.end_session(key)

    c["run_batch"].click(on_batch, [c["batch"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"], c["tile"]],
                         [c["batch_table"], c["batch_gallery"], c["batch_zip"]], concurrency_limit=1,
                         concurrency_id="models", api_visibility="private")

    @user_messages(1, at=0, lead="Not flagged")
    def on_flag(image, reason, note, gt, task, d, kind, measured_on, request: gr.Request):  # noqa: ANN001
        return flag(ctx, image, reason, note, gt, task, caller(request), d, kind, measured_on or "")

    c["flag_btn"].click(on_flag, [c["image"], c["reason"], c["note"], c["gt"], c["task"], c["difficulty"],
                                  c["difficulty_kind"], c["difficulty_for"]],
                        c["flag_msg"], api_name="flag")

    @user_errors
    def on_score(image: FileData, metrics: str = "niqe,piqe") -> dict[str, Any]:
        return score(ctx, image["path"] if isinstance(image, dict) else image.path, metrics)

    gr.api(on_score, api_name="score")
