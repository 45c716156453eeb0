"""The Restore tab's "Background restores" area (Gradio only): the user's restores that run in the background
(``background_restores``), their state and progress, refreshed every few seconds, with cancel and download."""

from __future__ import annotations

from typing import Any

import gradio as gr

from . import background_restores as bg
from .context import AppContext, caller, user_messages

__all__ = ["listen", "render"]


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Accordion("Background restores (restores expected to take over a minute run here, so the page stays "
                      "free)", open=True, elem_id="background-box"):
        c["bg_table"] = gr.Dataframe(headers=bg.HEADERS, interactive=False, wrap=True, elem_id="background-table",
                                     column_widths=["6%", "11%", "10%", "11%", "7%", "16%", "39%"],
                                     label="Yours, newest first")
        with gr.Row():
            c["bg_pick"] = gr.Dropdown([], value=None, label="Background restore", elem_id="background-pick", scale=3)
            c["bg_cancel"] = gr.Button("Cancel it", elem_id="background-cancel", scale=1)
            c["bg_get"] = gr.Button("Download its result", elem_id="background-get", scale=1)
        c["bg_msg"] = gr.Markdown(elem_id="background-msg")
        c["bg_files"] = gr.File(label="Result (SFT and RL restorations)", file_count="multiple",
                                elem_id="background-files")
    c["bg_timer"] = gr.Timer(3.0)
    return c


def listen(ctx: AppContext, c: dict[str, Any]) -> None:
    def refreshed(picked: Any, request: gr.Request = None) -> tuple[Any, Any]:
        user = caller(request)
        ids = [i for _, i in bg.choices(ctx, user)]
        return bg.rows(ctx, user), gr.update(choices=bg.choices(ctx, user), value=picked if picked in ids else None)

    c["bg_timer"].tick(refreshed, c["bg_pick"], [c["bg_table"], c["bg_pick"]], api_visibility="private",
                       show_progress="hidden", queue=False)

    @user_messages(1, at=0, lead="Not cancelled")
    def on_cancel(picked: Any, request: gr.Request = None) -> Any:
        return bg.cancel(ctx, picked, caller(request))

    c["bg_cancel"].click(on_cancel, c["bg_pick"], c["bg_msg"], api_visibility="private", queue=False)

    @user_messages(2, at=0, lead="No result")
    def on_get(picked: Any, request: gr.Request = None) -> Any:
        return "", bg.result_files(ctx, picked, caller(request))

    c["bg_get"].click(on_get, c["bg_pick"], [c["bg_msg"], c["bg_files"]], api_visibility="private")
