"""The Gradio app (Gradio only): one module per tab, each with render() and listen()."""

from __future__ import annotations

import gradio as gr

from . import finetune_tab, models_tab, restore_tab, samples_tab
from .context import AppContext, UserError

__all__ = ["AppContext", "UserError", "build_app"]


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="DARL — difficulty-adaptive RL for image restoration") as demo:
        gr.Markdown("# DARL · restore, compare SFT and RL, curate hard samples, fine-tune")
        with gr.Tab("Restore") as restore_t:
            rc = restore_tab.render(ctx)
        with gr.Tab("Hard samples") as samples_t:
            sc = samples_tab.render(ctx)
        with gr.Tab("Fine-tune") as finetune_t:
            fc = finetune_tab.render(ctx)
        with gr.Tab("Models") as models_t:
            mc = models_tab.render(ctx)
        restore_tab.listen(ctx, rc)
        samples_tab.listen(ctx, sc, samples_t.select)
        finetune_tab.listen(ctx, fc)
        models_tab.listen(ctx, mc, models_t.select)

        # Model pickers list every registered checkpoint: refresh them whenever they come into view,
        # so a finished job's model shows up without restarting the server.
        def pickers() -> tuple[dict, dict, dict]:
            choices = ctx.model_choices()
            return (gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices))

        for event in (demo.load, restore_t.select, finetune_t.select):
            event(pickers, None, [rc["sft"], rc["rl"], fc["base"]], api_visibility="private")
    return demo
