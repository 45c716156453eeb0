"""Restore tab: upload, restore with the SFT and the RL model, compare, score, flag as hard (the Gradio
layout and its handlers; the work is ``restore_service``'s, the pictures ``compare``'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import torch
from gradio.data_classes import FileData

from darl_core.data.degrade import PRESETS
from darl_core.models.pipeline import DEFAULT_STEPS, DEFAULT_TILE

from . import background_area, fields
from .background_restores import queued_text, submit_if_long
from .compare import DIFF_GAIN, SHOWN, compare_views, shown_file
from .context import AppContext, caller, user_errors, user_messages
from .bulk_import import record_scores
from .restore_service import (MAX_NOTE, REASONS, SCORE_HEADERS, Restored, RestoreResult, RestoreStopped,
                              example_images, flag_sample, ground_truth_problem, image_key, model_labels, restore,
                              restore_batch,
                              restore_stages, score, score_table, stale_ground_truth, took, upload_problem)
from .upload import ImageUpload

__all__ = ["listen", "render"]


STEPS_HELP = ("**Fidelity ↔ detail.** The restorer runs in two stages: stage 1 (steps = 0) is a regression "
              "network, the most faithful to the input (highest PSNR); each diffusion step after it adds "
              "texture the regression averaged away, at some cost in fidelity. The models' cards "
              "(`models/*/README.md`, docs/quality) give the numbers on photos no model saw.")
TILE_HELP = ("**Tile size.** Large images are restored in tiles of about this size (up to 25 % larger when that "
             "means fewer tiles), a multiple of 8; smaller tiles use less memory, larger ones are a little faster. "
             "**Ground truth** (optional): the clean image, at the input's size or a multiple of it for a "
             "super-resolution model; with it the scores add PSNR and SSIM and the difficulty is measured (1 − SSIM).")


SEED_MAX = 2**32 - 1  # the page's seeds (the API takes up to 2**63 - 1; a browser's numbers are exact to 2**53)


def render(ctx: AppContext) -> dict[str, Any]:
    choices = ctx.model_choices()
    d_sft, d_rl = ctx.default_models()
    c: dict[str, Any] = {}
    # Two columns that fit a 1400x1000 window without scrolling: the uploads, the Restore button and the
    # settings on the left; the comparison sliders and the scores on the right, at the same height, so the
    # results appear where the person who pressed Restore is looking.
    with gr.Row():
        with gr.Column(scale=1, min_width=400):
            with gr.Row():
                c["image"] = ImageUpload(type="filepath", label="Degraded image", sources=["upload", "clipboard"],
                                         elem_id="upload", height=220)
                c["gt"] = ImageUpload(type="filepath", label="Ground truth (optional)", sources=["upload", "clipboard"],
                                      elem_id="gt-upload", height=220)
            with gr.Row():
                c["run"] = gr.Button("Restore", variant="primary", elem_id="restore-btn")
                c["stop"] = gr.Button("Stop", variant="stop", elem_id="stop-btn")
            with gr.Accordion("Models, steps, seed and tile size", open=True, elem_id="settings"):
                # values set again on every page load (ui.build_app): a promoted model is the RL default at once
                with gr.Row():
                    c["sft"] = gr.Dropdown(choices, value=d_sft, label="SFT model", allow_custom_value=True,
                                           elem_id="sft-picker", min_width=160)
                    c["rl"] = gr.Dropdown(choices, value=d_rl, label="RL model", allow_custom_value=True,
                                          elem_id="rl-picker", min_width=160)
                # a picker is narrow: each chosen model's full label (its held-out numbers) is said beside it
                c["model_labels"] = gr.Markdown(model_labels(ctx, d_sft, d_rl), elem_id="model-labels")
                c["rl_note"] = gr.Markdown(ctx.model_note(d_rl), elem_id="rl-note")  # what to know about the RL side
                # Number fields, not sliders: a slider clamps a typed 9999 to its maximum in the browser without a
                # word; these refuse it, saying the range, as soon as the field is left (fields.check_on_leave).
                with gr.Row():
                    c["steps"] = fields.Number(DEFAULT_STEPS, precision=0, minimum=0, maximum=50, step=1,
                                               label="Steps (0–50)", elem_id="steps", min_width=90,
                                               info="0 = stage 1 alone: most faithful")
                    c["seed"] = fields.Number(0, precision=0, minimum=0, maximum=SEED_MAX, label="Seed",
                                              elem_id="seed", min_width=90, info="the same seed, the same result")
                    c["tile"] = fields.Number(DEFAULT_TILE, precision=0, minimum=64, maximum=1024, step=8,
                                              label="Tile size (64–1024)", elem_id="tile", min_width=90,
                                              info="smaller: less memory")
                c["dice"] = gr.Button("Random seed", elem_id="dice", size="sm")
                with gr.Accordion("What do the steps trade? What is a tile?", open=False):
                    gr.Markdown(STEPS_HELP + "\n\n" + TILE_HELP)
                # The models restore any degradation; the task only says which one this image has, recorded with
                # a flag (the Hard-samples filter and a job's training pool read it).
                c["task"] = gr.Dropdown(sorted(PRESETS), value="blind", label="Degradation of this image (saved with "
                                        "a flag)", info="Does not change the restore; the Hard-samples tab filters "
                                        "flags by it.")
            try:
                gr.Examples([[p, None] for p in example_images(ctx.store.dir / "examples")], inputs=[c["image"], c["gt"]],
                            label="Examples: held-out photos degraded by Pillow and JPEG (click one)")
            except FileNotFoundError:  # scikit-image's photos missing: the page works without examples
                pass
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
    c.update(background_area.render(ctx))  # restores of over a minute: state, progress, cancel, download
    return c


def listen(ctx: AppContext, c: dict[str, Any]) -> None:
    # What a restore shows, and what a new image clears: every handler below returns a dict keyed by these
    # components (no positions to keep in step between the outputs list and the values).
    results = [c[k] for k in ("slider", "slider_in", "input_view", "scores", "difficulty_md", "files", "diff",
                              "diff_md", "zoom", "result", "difficulty", "difficulty_kind", "difficulty_for")]

    @user_messages(None, at=c["difficulty_md"], lead="Not restored")
    def on_restore(image, gt, task, sft, rl, steps, seed, tile, progress=gr.Progress(),  # noqa: ANN001, B008
                   request: gr.Request = None) -> Any:
        # Each picture is shown as soon as it exists: input ⟷ SFT while the RL model runs, then SFT ⟷ RL,
        # the difference map and the zoom, then the scores. The page shows files, each encoded once: the
        # restorations are the downloads themselves, the rest fast lossless PNGs (see SHOWN).
        # A restore expected to take over a minute is queued in the background: the queue stays free.
        if (queued := submit_if_long(ctx, image, task, sft, rl, steps, seed or 0, tile, gt, caller(request))):
            yield {c["difficulty_md"]: queued_text(ctx, queued)}
            return
        key = getattr(request, "session_hash", None) or "anonymous"
        stop = ctx.start_session(key, caller(request))
        shown: dict[Any, Any] = {}  # every picture put on the page so far
        try:
            stages = restore_stages(ctx, image, task, sft, rl, steps, seed or 0, tile, gt,
                                    progress=lambda f, s: progress(f, desc=s), stop=stop,
                                    warn=lambda w: gr.Warning(w, duration=20))
            for _, v in stages:
                if isinstance(v, Restored) and v.label == "SFT":
                    first, inp = v, shown_file(v.input, Path(v.file).parent / "input.png")
                    # what the last image left is cleared, not shown beside the new one (the zoom reads the
                    # result state: None until this image's result exists)
                    shown = {c["slider"]: None, c["slider_in"]: (inp, v.file), c["input_view"]: inp,
                             c["files"]: [v.file], c["diff"]: None, c["diff_md"]: "", c["zoom"]: None}
                    yield {**shown, c["scores"]: gr.update(value=None, headers=SCORE_HEADERS), c["difficulty_md"]: "",
                           c["result"]: None}
                elif isinstance(v, Restored):
                    folder = Path(v.file).parent
                    d, caption, z = compare_views(first.input, first.image, v.image, v.gt)
                    shown = {c["slider"]: (first.file, v.file), c["slider_in"]: (inp, first.file),
                             c["input_view"]: inp, c["files"]: [first.file, v.file],
                             c["diff"]: shown_file(d, folder / "difference.png"), c["diff_md"]: caption,
                             c["zoom"]: shown_file(z, folder / "zoom.png")}
                    yield {**shown, c["difficulty_md"]: ""}
                elif isinstance(v, RestoreResult):
                    r = v
        except RestoreStopped as e:  # what the user asked for: said as such; every finished picture stays
            gr.Info(str(e))
            line = ("**Stopped** after the SFT restoration: the RL one was not finished, nothing was scored"
                    if shown else "**Stopped** before any restoration was finished")
            yield {**shown, c["difficulty_md"]: line}
            return
        finally:
            ctx.end_session(key)
        table, note = score_table(r.headers, r.scores, r.rough)
        given = "with your ground truth" if r.gt is not None else "**no ground truth given**: no-reference scores only"
        head, _, rest = r.difficulty_text.partition(" (")  # the number bold, its explanation plain
        text = f"**{head}** ({rest} · {given} · {took(r)}" + (f"\n\n{note}" if note else "")
        # all outputs again: a client of the API reads the last message alone (the files are the same)
        yield {**shown, c["files"]: r.files, c["scores"]: gr.update(value=table, headers=SCORE_HEADERS),
               c["difficulty_md"]: text, c["result"]: r, c["difficulty"]: r.difficulty,
               c["difficulty_kind"]: r.difficulty_kind, c["difficulty_for"]: image_key(r.input)}

    def on_stop(request: gr.Request = None) -> None:
        # the running restore of this page raises RestoreStopped at its next tile
        ctx.stop_session(getattr(request, "session_hash", None) or "anonymous")

    c["stop"].click(on_stop, None, None, queue=False, api_visibility="private")
    c["run"].click(on_restore, [c["image"], c["gt"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"],
                                c["tile"]], results,
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
    def cleared() -> dict[Any, Any]:
        empty: dict[Any, Any] = {x: None for x in results}
        return {**empty, c["scores"]: gr.update(value=None, headers=SCORE_HEADERS), c["difficulty_md"]: "",
                c["diff_md"]: "", c["difficulty"]: float("nan"), c["difficulty_kind"]: "", c["difficulty_for"]: "",
                c["flag_msg"]: ""}

    c["image"].change(cleared, None, [*results, c["flag_msg"]], api_visibility="private", queue=False)
    # The RL side's caveat (a shipped model's note, e.g. that it is not better than SFT) follows the picker.
    c["rl"].change(ctx.model_note, c["rl"], c["rl_note"], api_visibility="private", queue=False)
    for picker in (c["sft"], c["rl"]):
        picker.change(lambda sft, rl: model_labels(ctx, sft, rl), [c["sft"], c["rl"]], c["model_labels"],
                      api_visibility="private", queue=False)
    fields.check_on_leave(c["steps"], c["seed"], c["tile"])  # refused when the field is left, range said

    # A file the loader refuses is said at upload and emptied (not shown as a broken image until Restore).
    # A ground truth belongs to the degraded image it was given with (or, given first, to the next one):
    # replacing or removing that image clears it, said as such, so no flag or score pairs it with another.
    def on_image_upload(path: str | None, gt: str | None, gt_for: str) -> dict[Any, Any]:
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
        out: dict[Any, Any] = {c["gt_for"]: path if gt and not (stale or problem) else ""}
        if problem:
            out[c["image"]] = None
        if stale:
            out[c["gt"]] = None
        return out

    def on_image_clear(gt: str | None, gt_for: str) -> dict[Any, Any]:
        return {c["gt_for"]: "", **({c["gt"]: None} if stale_ground_truth(gt, gt_for, None) else {})}

    def on_gt_upload(gt: str | None, image: str | None) -> dict[Any, Any]:
        problem = upload_problem(ctx, gt, "ground truth")
        if not problem and (size := ground_truth_problem(ctx, image, gt)):  # refused now, not at Restore
            problem = size
        if problem:
            gr.Warning(f"Not usable: {problem}.".replace("..", "."), duration=20)
            return {c["gt"]: None, c["gt_for"]: ""}
        return {c["gt_for"]: image or ""}

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
                 request: gr.Request = None) -> Any:
        key = getattr(request, "session_hash", None) or "anonymous"
        stop = ctx.start_session(key, caller(request))
        try:
            table, gallery, archive = restore_batch(ctx, [getattr(f, "name", f) for f in files or []], task, sft, rl,
                                                    steps, seed or 0, tile, progress=lambda f, s: progress(f, desc=s),
                                                    stop=stop)
            return {c["batch_table"]: table, c["batch_gallery"]: gallery, c["batch_zip"]: archive}
        except RestoreStopped as e:
            gr.Info(str(e))
            return {}
        finally:
            ctx.end_session(key)

    c["run_batch"].click(on_batch, [c["batch"], c["task"], c["sft"], c["rl"], c["steps"], c["seed"], c["tile"]],
                         [c["batch_table"], c["batch_gallery"], c["batch_zip"]], concurrency_limit=1,
                         concurrency_id="models", api_visibility="private")

    @user_messages(1, at=0, lead="Not flagged")
    def on_flag(image, reason, note, gt, task, d, kind, measured_on, r, sft, rl, steps, seed, tile,  # noqa: ANN001
                request: gr.Request) -> Any:
        user = caller(request)
        if gt and not (kind == "gt" and r is not None and r.gt is not None and measured_on == image_key(r.input)
                       and image_key(ctx.open_upload(image)) == measured_on):
            # A flag with a ground truth always stores the measured difficulty: restored now if this image has
            # not been restored with it (kept restorations make a repeat cheap).
            r = restore(ctx, image, task, sft, rl, steps, seed or 0, tile, gt)
            d, kind, measured_on = r.difficulty, r.difficulty_kind, image_key(r.input)
        sid, msg = flag_sample(ctx, image, reason, note, gt, task, user, d, kind, measured_on or "")
        if r is not None and measured_on and measured_on == image_key(r.input):
            # the models' scores of this restore go with the flag (the Hard-samples tab's model columns)
            record_scores(ctx, sid, r, sft, rl, steps, user)
        return msg

    c["flag_btn"].click(on_flag, [c["image"], c["reason"], c["note"], c["gt"], c["task"], c["difficulty"],
                                  c["difficulty_kind"], c["difficulty_for"], c["result"], c["sft"], c["rl"],
                                  c["steps"], c["seed"], c["tile"]],
                        c["flag_msg"], api_name="flag", concurrency_limit=1, concurrency_id="models")

    @user_errors
    def on_score(image: FileData, metrics: str = "niqe,piqe") -> dict[str, Any]:
        return score(ctx, image["path"] if isinstance(image, dict) else image.path, metrics)

    gr.api(on_score, api_name="score")
    background_area.listen(ctx, c)
