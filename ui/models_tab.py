"""Models tab: registered checkpoints with lineage and evaluation numbers; promote, delete (confirmed);
the log of who changed what."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from .context import SHIPPED, AppContext, UserError, caller, user_messages

__all__ = ["EVENT_HEADERS", "HEADERS", "checkpoint_choices", "checkpoint_from_row", "delete", "delete_preview",
           "list_checkpoints", "list_events", "listen", "promote", "render"]

HEADERS = ["id", "name", "parent", "job", "default", "evaluation", "path"]
EVENT_HEADERS = ["when (UTC)", "user", "change", "what", "detail"]


def list_events(ctx: AppContext, limit: int = 100) -> list[list[Any]]:
    """The audit log, newest first: tags, cancellations, promotions and deletions with their users (flags
    and jobs carry their users themselves, in the Hard samples and Fine-tune tabs)."""
    return [[e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.user, e.action, e.target.replace(":", " #"), e.detail]
            for e in ctx.store.events(limit=limit)]


def _default_sides(ctx: AppContext) -> Callable[[str], str]:
    """path -> which side of the Restore tab it is the default of: "SFT", "RL", "SFT and RL" or ""."""
    def key(p: str) -> str:
        return str(Path(p).resolve())
    sides = [(side, key(p)) for side, p in zip(("SFT", "RL"), ctx.default_models())]
    return lambda path: " and ".join(side for side, p in sides if p == key(path))


def list_checkpoints(ctx: AppContext) -> list[list[Any]]:
    """The table's rows; "default" says which side of the Restore tab a model is the default of (the RL
    side: the promoted checkpoint, else the shipped RL model)."""
    ckpts = ctx.store.checkpoints()
    names = {c.id: c.name for c in ckpts}
    side = _default_sides(ctx)
    return [[c.id, c.name, names.get(c.parent_id, ""), c.job_id or "",
             side(c.path) + (" (promoted)" if c.promoted else ""),
             ", ".join(f"{k} {v:.4g}" for k, v in c.evaluation.items()), c.path] for c in ckpts]


def checkpoint_choices(ctx: AppContext) -> list[tuple[str, int]]:
    """(label, id) of the registered checkpoints, for the checkpoint picker."""
    side = _default_sides(ctx)
    return [(f"#{c.id} {c.name}{f' (default {s})' if (s := side(c.path)) else ''}", c.id)
            for c in ctx.store.checkpoints()]


def checkpoint_from_row(row: list[Any] | None) -> int | None:
    """The checkpoint id of a clicked row of the table (its first cell)."""
    try:
        return int(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def _checkpoint_id(checkpoint_id: Any) -> int:
    if checkpoint_id is None or checkpoint_id == "":
        raise UserError("choose a checkpoint (click its row)")
    try:
        return int(checkpoint_id)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"checkpoint: {str(checkpoint_id)[:40]!r} is not a checkpoint number") from None


def promote(ctx: AppContext, checkpoint_id: int | None, user: str = "anonymous") -> str:
    """Make a checkpoint the default RL model (its owner or an admin, when users log in)."""
    cid = _checkpoint_id(checkpoint_id)
    if cid not in {c.id for c in ctx.store.checkpoints()}:
        raise UserError(f"there is no checkpoint #{cid}")
    ctx.require_owner(user, f"checkpoint:{cid}", f"checkpoint #{cid}")
    ctx.store.promote(cid, user)
    path = ctx.store.checkpoint(cid).path
    if path == ctx.default_models()[0]:
        return (f"Checkpoint #{cid} is now the default RL model. It is also the SFT model, so the Restore tab "
                f"compares it with itself (no difference): promote an RL checkpoint to compare the two.")
    return (f"Checkpoint #{int(checkpoint_id)} is now the default RL model: the Restore tab's RL picker "
            f"shows it, also on new page loads.")


def _deletable(ctx: AppContext, checkpoint_id: int | None, user: str) -> tuple[int, str, str]:
    """(id, name, path) of a checkpoint ``user`` may delete now; UserError saying why not otherwise."""
    if checkpoint_id is None:
        raise UserError("choose a checkpoint to delete (click its row)")
    cid = _checkpoint_id(checkpoint_id)
    try:
        c = ctx.store.checkpoint(cid)
        blocker = ctx.store.deletion_blocker(cid)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"there is no checkpoint #{checkpoint_id}") from None
    if c.path in SHIPPED:
        raise UserError(f"{c.name} ships with the app ({c.path}) and is registered again at every start, so it "
                        f"cannot be deleted; promote another checkpoint to change the default")
    ctx.require_owner(user, f"checkpoint:{cid}", f"checkpoint #{cid}")
    if blocker:
        raise UserError(blocker)
    return cid, c.name, c.path


def _owned(ctx: AppContext, path: str) -> bool:
    p = Path(path)
    return p.resolve().is_relative_to(ctx.store.dir.resolve()) and p.is_dir()


def delete_preview(ctx: AppContext, checkpoint_id: int | None, user: str = "anonymous") -> str:
    """The question asked before a delete: what goes (row, files). UserError if it cannot be deleted."""
    cid, name, path = _deletable(ctx, checkpoint_id, user)
    files = ("its folder goes too" if _owned(ctx, path) else
             "its files are outside the data folder and are kept")
    return (f"**Delete checkpoint #{cid} {name}?** It leaves the registry and every model picker; {files} "
            f"(`{path}`). This cannot be undone.")


def delete(ctx: AppContext, checkpoint_id: int | None, confirmed: bool = False, user: str = "anonymous") -> str:
    """Delete a checkpoint nothing references, once confirmed (its owner or an admin, when users log in);
    its files go too when the app made them (under the data folder). Shipped models cannot be deleted."""
    cid, _, path = _deletable(ctx, checkpoint_id, user)
    if not confirmed:
        raise UserError(f"deleting checkpoint #{cid} needs a confirmation")
    try:
        ctx.store.delete_checkpoint(cid, user)
    except KeyError:
        raise UserError(f"there is no checkpoint #{cid}") from None
    except ValueError as e:  # referenced since the preview
        raise UserError(str(e)) from None
    if _owned(ctx, path):
        shutil.rmtree(path)
        return f"Checkpoint #{cid} deleted, with its files."
    return f"Checkpoint #{cid} removed from the registry (files outside the data folder are kept)."


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, label="Checkpoints (click a row to choose it)",
                              elem_id="models-table")
    gr.Markdown("*evaluation*: the shipped models' cards, all on the independent evaluation set (50 crops of "
                "17 photos no model trained on, Pillow/JPEG degradations) at 2 steps; a fine-tuned model's "
                "`heldout_*`: 8 crops of the 4 held-out photos, degraded the same way, at its job's steps. "
                "**The shipped RL model `darl-blind` is not better than SFT** (27.61 dB against `sft-blind-fast`'s "
                "28.66 and the input's 28.06): no RL fine-tune of the default SFT model has passed the bar for "
                "shipping yet (docs/results.md, section 2f).",
                elem_id="models-eval-note")
    with gr.Row():
        c["id"] = gr.Dropdown([], value=None, label="Checkpoint", elem_id="ckpt-id")
        c["promote"] = gr.Button("Promote to default RL", elem_id="promote-btn")
        c["delete"] = gr.Button("Delete…", elem_id="delete-btn")
        c["refresh"] = gr.Button("Refresh")
    with gr.Group(visible=False) as c["confirm_box"]:
        c["confirm_text"] = gr.Markdown(elem_id="delete-question")
        with gr.Row():
            c["confirm"] = gr.Button("Yes, delete it", variant="stop", elem_id="delete-yes")
            c["keep"] = gr.Button("No, keep it", elem_id="delete-no")
    c["pending"] = gr.State(None)  # the checkpoint the open question is about
    c["deleted"] = gr.State(None)  # path of the checkpoint just deleted (the pickers drop it)
    c["msg"] = gr.Markdown(elem_id="models-msg")
    with gr.Accordion("Who changed what (newest first)", open=False):
        c["events"] = gr.Dataframe(headers=EVENT_HEADERS, interactive=False, elem_id="events-table")
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any) -> dict[str, Any]:
    """Wire the tab; returns the events that change the models ("promoted", "deleted") for the app to
    refresh the model pickers of the other tabs after them."""
    def refreshed(cid: int | None = None) -> tuple[list[list[Any]], dict[str, Any]]:
        return list_checkpoints(ctx), gr.update(choices=checkpoint_choices(ctx), value=cid)

    for trigger in (c["refresh"].click, load_event):
        trigger(lambda cid: (*refreshed(cid), list_events(ctx)), c["id"], [c["table"], c["id"], c["events"]],
                api_visibility="private")

    def on_row(evt: gr.SelectData) -> dict[str, Any]:
        return gr.update(choices=checkpoint_choices(ctx), value=checkpoint_from_row(evt.row_value))

    c["table"].select(on_row, None, c["id"], api_visibility="private")

    @user_messages(3, at=0, lead="Not promoted")
    def on_promote(cid, request: gr.Request) -> Any:  # noqa: ANN001
        return promote(ctx, cid, caller(request)), *refreshed(cid)

    promoted = c["promote"].click(on_promote, c["id"], [c["msg"], c["table"], c["id"]], api_visibility="private")
    promoted.success(lambda: list_events(ctx), None, c["events"], api_visibility="private")

    @user_messages(4, at=0, lead="Cannot delete")
    def on_ask(cid, request: gr.Request) -> Any:  # noqa: ANN001
        return delete_preview(ctx, cid, caller(request)), gr.update(visible=True), cid, ""

    c["delete"].click(on_ask, c["id"], [c["confirm_text"], c["confirm_box"], c["pending"], c["msg"]],
                      api_visibility="private")
    c["keep"].click(lambda: (gr.update(visible=False), None, "Nothing deleted."), None,
                    [c["confirm_box"], c["pending"], c["msg"]], api_visibility="private")

    @user_messages(6, at=0, lead="Not deleted")
    def on_confirm(cid, request: gr.Request) -> Any:  # noqa: ANN001
        try:
            path = ctx.store.checkpoint(int(cid)).path if cid is not None else None
        except (KeyError, TypeError, ValueError, OverflowError):
            path = None
        msg = delete(ctx, cid, confirmed=True, user=caller(request))
        return msg, gr.update(visible=False), None, path, *refreshed(None)

    deleted = c["confirm"].click(on_confirm, c["pending"],
                                 [c["msg"], c["confirm_box"], c["pending"], c["deleted"], c["table"], c["id"]],
                                 api_visibility="private")
    deleted.success(lambda: list_events(ctx), None, c["events"], api_visibility="private")
    return {"promoted": promoted, "deleted": deleted}
