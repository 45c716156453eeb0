"""Restore tab: upload, restore with the SFT and the RL model, compare, score, flag as hard."""

from __future__ import annotations

import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import FileData
from PIL import Image

from darl_core.degrade import PRESETS
from darl_core.difficulty import difficulty, difficulty_no_reference
from darl_core.images import pil_to_tensor, to_rgb
from darl_core.pipeline import DEFAULT_STEPS
from darl_core.rewards import MissingWeightsError, get_metric

from .context import AppContext, UserError, png_bytes

__all__ = ["RestoreResult", "flag", "listen", "render", "restore", "restore_batch", "score"]

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


def _score_row(label: str, img: torch.Tensor, gt: torch.Tensor | None, names: list[str]) -> list[Any]:
    row: list[Any] = [label]
    for n in names:
        m = get_metric(n)
        try:
            if m.full_reference:
                row.append(round(float(m(img, gt)), 4) if gt is not None else "—")
            else:
                row.append(round(float(m(img)), 4))
        except ValueError as e:
            row.append(f"n/a ({e})")
    return row


def score(ctx: AppContext, image_path: str, metrics: str = "niqe,piqe", gt_path: str | None = None
          ) -> dict[str, float | str]:
    """Raw scores of one image (``metrics``: comma-separated pyiqa names)."""
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


def restore(ctx: AppContext, image_path: str, task: str = "blind", sft_model: str | None = None,
            rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = 256,
            gt_path: str | None = None, progress: Callable[[float, str], None] | None = None) -> RestoreResult:
    """Restore one upload with both models and score input, SFT and RL."""
    if task not in PRESETS:
        raise UserError(f"unknown task {task!r}")
    if not 0 <= int(steps) <= 50:
        raise UserError("steps must be between 0 and 50")
    if int(tile) % 8 or not 64 <= int(tile) <= 1024:
        raise UserError("tile size must be a multiple of 8 between 64 and 1024")
    im = ctx.open_upload(image_path)
    gt_im = ctx.open_upload(gt_path, "ground truth") if gt_path else None
    d_sft, d_rl = ctx.default_models()
    sft_model, rl_model = sft_model or d_sft, rl_model or d_rl
    progress = progress or (lambda f, s: None)
    t0 = time.perf_counter()
    outs = []
    for i, (label, path) in enumerate((("SFT", sft_model), ("RL", rl_model))):
        progress(i / 2, f"restoring with the {label} model")
        try:
            pipe = ctx.pipeline(path)
        except Exception as e:  # ModelLoadError and friends: shown to the user
            raise UserError(f"{label} model: {e}") from None
        if int(steps) == 0 and getattr(pipe, "stage1", None) is None:
            raise UserError(f"{label} model has no stage 1, so 0 steps (stage 1 alone) does not apply: use 1 or more")
        outs.append(pipe(im, num_inference_steps=int(steps), seed=int(seed), tile_size=int(tile))[0])
    seconds = time.perf_counter() - t0
    progress(0.95, "scoring")
    rgb_in = to_rgb(im)[0]
    sft_rgb, rl_rgb = to_rgb(outs[0])[0], to_rgb(outs[1])[0]
    gt = None
    if gt_im is not None:
        gt_rgb = to_rgb(gt_im)[0]
        if gt_rgb.size != sft_rgb.size:
            raise UserError(f"the ground truth is {gt_rgb.size[0]}x{gt_rgb.size[1]} but the restoration is "
                            f"{sft_rgb.size[0]}x{sft_rgb.size[1]}")
        gt = pil_to_tensor(gt_rgb)[None]
    names = list(ctx.metrics) + (["psnr", "ssim"] if gt is not None else [])
    tensors = [pil_to_tensor(x)[None] for x in (rgb_in, sft_rgb, rl_rgb)]
    rows = [_score_row(lbl, t, gt, names) for lbl, t in zip(("input", "SFT", "RL"), tensors)]
    if gt is not None:
        d = float(difficulty(tensors[1], gt))
        text = f"difficulty {d:.3f}: 1 - SSIM of the SFT restoration against your ground truth"
    else:
        try:
            d = float(difficulty_no_reference(tensors[1]))
            text = (f"difficulty {d:.3f} (proxy): 1 - normalised NIQE of the SFT restoration; "
                    f"upload a ground truth for the real measure")
        except ValueError:
            d, text = float("nan"), "difficulty: image too small for the no-reference proxy (NIQE needs 96 px)"
    tmp = Path(tempfile.mkdtemp(prefix="darl-restore-"))
    files = []
    for name, img in (("restored_sft.png", outs[0]), ("restored_rl.png", outs[1])):
        img.save(tmp / name)
        files.append(str(tmp / name))
    progress(1.0, "done")
    return RestoreResult(rgb_in, sft_rgb, rl_rgb, rows, ["image"] + names, d, text, files, seconds)


def restore_batch(ctx: AppContext, image_paths: list[str], task: str = "blind", sft_model: str | None = None,
                  rl_model: str | None = None, steps: int = DEFAULT_STEPS, seed: int = 0, tile: int = 256,
                  progress: Callable[[float, str], None] | None = None
                  ) -> tuple[list[list[Any]], list[tuple[str, str]], str]:
    """Restore several uploads: (table rows, gallery items, zip path). A bad file is reported, not fatal."""
    if not image_paths:
        raise UserError("no images were uploaded")
    progress = progress or (lambda f, s: None)
    out_dir = Path(tempfile.mkdtemp(prefix="darl-batch-"))
    rows: list[list[Any]] = []
    gallery: list[tuple[str, str]] = []
    zpath = out_dir / "restored.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for i, path in enumerate(image_paths):
            name = Path(path).stem
            progress(i / len(image_paths), f"image {i + 1} of {len(image_paths)}")
            try:
                r = restore(ctx, path, task, sft_model, rl_model, steps, seed, tile)
            except UserError as e:
                rows.append([Path(path).name, f"skipped: {e}", "", "", ""])
                continue
            for label, f in zip(("sft", "rl"), r.files):
                z.write(f, f"{name}_{label}.png")
                gallery.append((f, f"{name} · {label.upper()}"))
            niqe = {row[0]: row[1] for row in r.scores}
            rows.append([Path(path).name, "ok", niqe["input"], niqe["SFT"], niqe["RL"]])
    progress(1.0, "done")
    return rows, gallery, str(zpath)


def flag(ctx: AppContext, image_path: str, reason: str, note: str = "", gt_path: str | None = None,
         task: str = "blind", user: str = "anonymous", difficulty_value: float | None = None) -> str:
    """Store the upload as a hard sample and append a flag event; returns a message."""
    if not reason:
        raise UserError("choose a reason for the flag")
    lq = to_rgb(ctx.open_upload(image_path))[0]
    gt = to_rgb(ctx.open_upload(gt_path, "ground truth"))[0] if gt_path else None
    if gt is not None and gt.size != lq.size:
        raise UserError(f"the ground truth must have the input's size {lq.size[0]}x{lq.size[1]} "
                        f"(got {gt.size[0]}x{gt.size[1]})")
    d = None if difficulty_value is None or difficulty_value != difficulty_value else float(difficulty_value)
    # Everything is validated before anything is written: a rejected upload leaves no row.
    sid = ctx.store.add_sample(png_bytes(lq), lq.size[0], lq.size[1], png_bytes(gt) if gt else None,
                               source="upload", task=task)
    ctx.store.flag(sid, user=user, reason=reason, note=note, difficulty=d)
    return f"Flagged as hard sample #{sid} ({reason}{', with ground truth' if gt else ''})."


# ----------------------------------------------------------------------------- Gradio

def _user(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "anonymous") if request is not None else "anonymous"


def render(ctx: AppContext) -> dict[str, Any]:
    choices = ctx.model_choices()
    d_sft, d_rl = ctx.default_models()
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            c["image"] = gr.Image(type="filepath", label="Degraded image", sources=["upload", "clipboard"],
                                  elem_id="upload")
            c["gt"] = gr.Image(type="filepath", label="Ground truth (optional)", sources=["upload", "clipboard"])
            c["task"] = gr.Dropdown(sorted(PRESETS), value="blind", label="Task preset")
            c["sft"] = gr.Dropdown(choices, value=d_sft, label="SFT model", allow_custom_value=True)
            c["rl"] = gr.Dropdown(choices, value=d_rl, label="RL model", allow_custom_value=True)
            with gr.Row():
                c["steps"] = gr.Slider(0, 50, value=DEFAULT_STEPS, step=1, label="Steps",
                                         info="0 = stage 1 alone (most faithful, two-stage models); more steps add detail and cost fidelity")
                c["seed"] = gr.Number(0, precision=0, label="Seed")
                c["tile"] = gr.Slider(64, 1024, value=256, step=8, label="Tile size")
            c["run"] = gr.Button("Restore", variant="primary", elem_id="restore-btn")
            with gr.Accordion("Several images", open=False):
                c["batch"] = gr.File(file_count="multiple", file_types=["image"], label="Images")
                c["run_batch"] = gr.Button("Restore all")
        with gr.Column(scale=2):
            c["slider"] = gr.ImageSlider(label="SFT ⟷ RL", type="pil", elem_id="slider")
            c["input_view"] = gr.Image(label="Input", type="pil", interactive=False)
            c["scores"] = gr.Dataframe(label="IQA scores (NIQE, PIQE: lower is better)", interactive=False)
            c["difficulty_md"] = gr.Markdown(elem_id="difficulty")
            c["files"] = gr.File(label="Downloads", file_count="multiple")
            c["difficulty"] = gr.State(float("nan"))
            c["batch_table"] = gr.Dataframe(headers=["file", "status", "NIQE input", "NIQE SFT", "NIQE RL"],
                                            interactive=False, label="Batch results", visible=True)
            c["batch_gallery"] = gr.Gallery(label="Batch restorations", columns=6, height=220)
            c["batch_zip"] = gr.File(label="Batch download")
            with gr.Accordion("Flag as hard", open=False, elem_id="flag-box"):
                c["reason"] = gr.Dropdown(REASONS, value="artifacts", label="Reason")
                c["note"] = gr.Textbox(label="Note")
                c["flag_btn"] = gr.Button("Flag as hard", elem_id="flag-btn")
                c["flag_msg"] = gr.Markdown(elem_id="flag-msg")
    return c


def listen(ctx: AppContext, c: dict[str, Any]) -> None:
    def on_restore(image, gt, task, sft, rl, steps, seed, tile, progress=gr.Progress()):  # noqa: ANN001, B008
        try:
            r = restore(ctx, image, task, sft, rl, int(steps), int(seed or 0), int(tile), gt,
                        progress=lambda f, s: progress(f, desc=s))
        except UserError as e:
            raise gr.Error(str(e)) from None
        return ((r.sft, r.rl), r.input, gr.update(value=r.scores, headers=r.headers),
                f"**{r.difficulty_text}** · both restorations took {r.seconds:.1f} s", r.files, r.difficulty)

    c["run"].click(on_restore, [c["image"], c["gt"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"],
                                c["tile"]],
                   [c["slider"], c["input_view"], c["scores"], c["difficulty_md"], c["files"], c["difficulty"]],
                   api_name="restore", concurrency_limit=1, concurrency_id="models")

    def on_batch(files, task, sft, rl, steps, seed, tile, progress=gr.Progress()):  # noqa: ANN001, B008
        try:
            return restore_batch(ctx, [getattr(f, "name", f) for f in files or []], task, sft, rl, int(steps),
                                 int(seed or 0), int(tile), progress=lambda f, s: progress(f, desc=s))
        except UserError as e:
            raise gr.Error(str(e)) from None

    c["run_batch"].click(on_batch, [c["batch"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"], c["tile"]],
                         [c["batch_table"], c["batch_gallery"], c["batch_zip"]], concurrency_limit=1,
                         concurrency_id="models", api_visibility="private")

    def on_flag(image, reason, note, gt, task, d, request: gr.Request):  # noqa: ANN001
        try:
            return flag(ctx, image, reason, note, gt, task, _user(request), d)
        except UserError as e:
            raise gr.Error(str(e)) from None

    c["flag_btn"].click(on_flag, [c["image"], c["reason"], c["note"], c["gt"], c["task"], c["difficulty"]],
                        c["flag_msg"], api_name="flag")

    def on_score(image: FileData, metrics: str = "niqe,piqe") -> dict[str, Any]:
        try:
            return score(ctx, image["path"] if isinstance(image, dict) else image.path, metrics)
        except UserError as e:
            raise gr.Error(str(e)) from None

    gr.api(on_score, api_name="score")
