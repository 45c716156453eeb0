"""The Gradio app (Gradio only): one module per tab, each with render() and listen()."""

from __future__ import annotations

from typing import Any

import gradio as gr

from . import finetune_tab, models_tab, restore_tab, samples_tab
from .context import AppContext, UserError, caller

__all__ = ["CSS", "AppContext", "UserError", "build_app", "picker_values"]

# Passed to ``launch(css=CSS)`` (Gradio 6 takes a page's CSS there only). A gallery lays out as many
# columns as it has images, up to its ``columns``: a single image filled the whole width, cropped by
# the gallery's height. Thumbnails stay thumbnails.
CSS = "#samples-gallery .thumbnail-item, #batch-box .thumbnail-item { max-width: 220px; }"


def picker_values(ctx: AppContext, sft: str | None, rl: str | None, base: str | None, *, page_load: bool = False,
                  promoted: bool = False, gone: str | None = None
                  ) -> tuple[list[tuple[str, str]], str | None, str | None, str | None]:
    """Choices and values of the three model pickers (Restore SFT and RL, Fine-tune base). A page load
    shows the defaults (the promoted checkpoint as the RL model: the page is built once, at start-up),
    so does a promotion for the RL picker; a picker showing a checkpoint that was just deleted (``gone``)
    falls back to its default. Otherwise a picker keeps what the user chose."""
    choices = ctx.model_choices()
    d_sft, d_rl = ctx.default_models()
    if page_load:
        sft, rl = d_sft, d_rl
    if promoted:
        rl = d_rl
    if gone is not None:
        sft, rl = (d_sft if sft == gone else sft), (d_rl if rl == gone else rl)
        base = choices[0][1] if base == gone else base
    return choices, sft, rl, base


def build_app(ctx: AppContext) -> gr.Blocks:
    # Gradio's cache (uploads, files sent to the browser) is emptied of what this app wrote, hourly, once
    # older than ``keep_files_s``; the app's own temporary folders go the same way (AppContext.scratch).
    keep = int(ctx.keep_files_s)
    with gr.Blocks(title="DARL — difficulty-adaptive RL for image restoration",
                   delete_cache=(min(3600, keep), keep)) as demo:
        gr.Markdown("# DARL · restore, compare SFT and RL, curate hard samples, fine-tune")
        with gr.Tabs() as tabs:
            with gr.Tab("Restore", id="restore") as restore_t:
                rc = restore_tab.render(ctx)
            with gr.Tab("Hard samples", id="samples") as samples_t:
                sc = samples_tab.render(ctx)
            with gr.Tab("Fine-tune", id="finetune") as finetune_t:
                fc = finetune_tab.render(ctx)
            with gr.Tab("Models", id="models") as models_t:
                mc = models_tab.render(ctx)
        fc["saved_job"].render()  # browser storage: outside the tabs, so it is read before the page load event
        restore_tab.listen(ctx, rc)
        samples_tab.listen(ctx, sc, samples_t.select)
        finetune_tab.listen(ctx, fc, demo.load, finetune_t.select)
        model_events = models_tab.listen(ctx, mc, models_t.select)

        # "Open in Restore": the sample's input (and ground truth) go to the Restore tab, which comes to the front.
        def open_in_restore(sample: int | None, request: gr.Request) -> tuple[Any, Any, Any]:
            try:
                lq, gt, _ = samples_tab.sample_files(ctx, sample, caller(request))
            except UserError as e:
                raise gr.Error(str(e)) from None
            return lq, gt, gr.Tabs(selected="restore")

        sc["open"].click(open_in_restore, sc["sample"], [rc["image"], rc["gt"], tabs], api_visibility="private").then(
            None, js="() => window.scrollTo({top: 0})")  # the Restore tab from its top, where the image is

        # "Open in Restore" from a job's before and after: the image, and the job's base and new models as the
        # two sides, so the Restore tab shows the same comparison at any steps, with zoom and difference map.
        def open_payoff(job: int | None, comparison: int | None, request: gr.Request) -> tuple[Any, ...]:
            try:
                finetune_tab.require_job_view(ctx, job, caller(request))
                lq, gt, base, new = finetune_tab.payoff_open(ctx, job, comparison)
            except UserError as e:
                raise gr.Error(str(e)) from None
            choices = ctx.model_choices()
            return lq, gt, gr.update(choices=choices, value=base), gr.update(choices=choices, value=new), \
                gr.Tabs(selected="restore")

        fc["payoff_open"].click(open_payoff, [fc["job"], fc["payoff_pick"]],
                                [rc["image"], rc["gt"], rc["sft"], rc["rl"], tabs], api_visibility="private").then(
            None, js="() => window.scrollTo({top: 0})")

        # Model pickers list every registered checkpoint: refresh them whenever they come into view,
        # so a finished job's model shows up without restarting the server; a page load, a promotion
        # and a deletion also set their values.
        pickers = [rc["sft"], rc["rl"], fc["base"]]

        def updates(sft: str | None, rl: str | None, base: str | None, **kw: Any) -> tuple[dict, dict, dict]:
            choices, *values = picker_values(ctx, sft, rl, base, **kw)
            if not kw:  # a tab comes into view: new choices, the user's values untouched
                return gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices)
            return tuple(gr.update(choices=choices, value=v) for v in values)  # type: ignore[return-value]

        demo.load(lambda s, r, b: updates(s, r, b, page_load=True), pickers, pickers, api_visibility="private")
        for event in (restore_t.select, finetune_t.select):
            event(updates, pickers, pickers, api_visibility="private")
        model_events["promoted"].success(lambda s, r, b: updates(s, r, b, promoted=True), pickers, pickers,
                                         api_visibility="private")
        model_events["deleted"].success(lambda s, r, b, gone: updates(s, r, b, gone=gone), [*pickers, mc["deleted"]],
                                        pickers, api_visibility="private")
        # A closed or reloaded page ends its running restore at the next tile (its result has nowhere to go);
        # only the restore's own user's (the guard binds the session's heartbeat to its client).
        def on_unload(request: gr.Request) -> None:
            ctx.stop_session(getattr(request, "session_hash", None) or "", caller(request))

        demo.unload(on_unload)
    return demo
