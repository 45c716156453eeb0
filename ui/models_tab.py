"""Models tab: registered checkpoints with lineage and evaluation numbers; promote, delete."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from .context import AppContext, UserError

__all__ = ["HEADERS", "delete", "list_checkpoints", "listen", "promote", "render"]

HEADERS = ["id", "name", "parent", "job", "default", "evaluation", "path"]


def list_checkpoints(ctx: AppContext) -> list[list[Any]]:
    ckpts = ctx.store.checkpoints()
    names = {c.id: c.name for c in ckpts}
    return [[c.id, c.name, names.get(c.parent_id, ""), c.job_id or "", "yes" if c.promoted else "",
             ", ".join(f"{k} {v:.4g}" for k, v in c.evaluation.items()), c.path] for c in ckpts]


def promote(ctx: AppContext, checkpoint_id: int | None) -> str:
    if checkpoint_id is None or int(checkpoint_id) not in {c.id for c in ctx.store.checkpoints()}:
        raise UserError(f"there is no checkpoint #{checkpoint_id}")
    ctx.store.promote(int(checkpoint_id))
    return f"Checkpoint #{int(checkpoint_id)} is now the default RL model."


def delete(ctx: AppContext, checkpoint_id: int | None) -> str:
    """Delete a checkpoint nothing references; its files go too when the app made them (under the data folder)."""
    try:
        path = Path(ctx.store.delete_checkpoint(int(checkpoint_id)))  # type: ignore[arg-type]
    except (KeyError, TypeError):
        raise UserError(f"there is no checkpoint #{checkpoint_id}") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    if path.resolve().is_relative_to(ctx.store.dir.resolve()) and path.is_dir():
        shutil.rmtree(path)
        return f"Checkpoint #{int(checkpoint_id)} deleted, with its files."
    return f"Checkpoint #{int(checkpoint_id)} removed from the registry (files outside the data folder are kept)."


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, label="Checkpoints")
    with gr.Row():
        c["id"] = gr.Number(None, precision=0, label="Checkpoint #")
        c["promote"] = gr.Button("Promote to default")
        c["delete"] = gr.Button("Delete")
        c["refresh"] = gr.Button("Refresh")
    c["msg"] = gr.Markdown()
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any) -> None:
    for trigger in (c["refresh"].click, load_event):
        trigger(lambda: list_checkpoints(ctx), None, c["table"], api_visibility="private")

    def act(fn: Any) -> Any:
        def handler(cid):  # noqa: ANN001
            try:
                return fn(ctx, cid), list_checkpoints(ctx)
            except UserError as e:
                raise gr.Error(str(e)) from None
        return handler

    c["promote"].click(act(promote), c["id"], [c["msg"], c["table"]], api_visibility="private")
    c["delete"].click(act(delete), c["id"], [c["msg"], c["table"]], api_visibility="private")
