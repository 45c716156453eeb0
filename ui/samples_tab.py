"""Hard-samples tab: the flagged samples, filters, preview, unflag, export as a zip."""

from __future__ import annotations

import csv
import io
import re
import tempfile
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import gradio as gr

from darl_core.degrade import PRESETS
from storage import FlaggedRow
from storage.models import utcnow

from .context import AppContext, UserError

__all__ = ["HEADERS", "KINDS", "export_zip", "list_flagged", "listen", "render", "sample_choices",
           "sample_from_caption", "sample_from_row", "unflag"]

D_MAX = 2.0  # difficulty (1 - SSIM) lies in [0, 2]; a bound at or past it filters nothing
# Two difficulties that are not comparable: never one unmarked column, and the bounds apply to one kind.
KINDS = {"gt": "ground truth (1 − SSIM)", "proxy": "no-reference proxy (NIQE)"}
HEADERS = ["sample", "task", "reason", "difficulty (0 easy … 1 hard)", "difficulty measured by", "user",
           "flagged at", "size", "ground truth", "note"]


def _rows(ctx: AppContext, task: str | None, reason: str | None, days: float | None,
          d_min: float | None, d_max: float | None, kind: str | None = "gt") -> list[FlaggedRow]:
    # Neutral values mean "no filter": days <= 0, d_min <= 0, d_max >= D_MAX (a form always sends numbers).
    # Bounds compare like with like: only samples whose difficulty is of ``kind`` can pass them.
    since = utcnow() - timedelta(days=float(days)) if days and days > 0 else None
    lo = d_min if d_min is not None and d_min > 0 else None
    hi = d_max if d_max is not None and d_max < D_MAX else None
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown difficulty kind {kind!r}: {' or '.join(KINDS)}")
    bounded = lo is not None or hi is not None
    return ctx.store.flagged(task or None, reason or None, since, lo, hi, (kind or "gt") if bounded else None)


def list_flagged(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
                 d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt"
                 ) -> tuple[list[tuple[str, str]], list[list[Any]]]:
    """(gallery items, table rows) of the currently flagged samples matching the filters; difficulty
    bounds keep only samples whose difficulty is of ``kind`` ("gt" or "proxy")."""
    rows = _rows(ctx, task, reason, days, d_min, d_max, kind)
    gallery = [(str(r.lq_path), f"#{r.sample_id} {r.reason}") for r in rows]
    table = [[r.sample_id, r.task, r.reason, None if r.difficulty is None else round(r.difficulty, 4),
              "" if r.difficulty is None else KINDS.get(r.difficulty_kind or "", "not recorded"), r.user,
              r.flagged_at.strftime("%Y-%m-%d %H:%M"), f"{r.width}x{r.height}", "yes" if r.gt_path else "no",
              r.note] for r in rows]
    return gallery, table


def sample_choices(table: list[list[Any]]) -> list[tuple[str, int]]:
    """(label, id) for the sample picker, from the table rows shown."""
    return [(f"#{row[0]} {row[2]}", int(row[0])) for row in table]


def sample_from_row(row: list[Any] | None) -> int | None:
    """The sample id of a clicked table row (its first cell)."""
    try:
        return int(row[0]) if row else None
    except (TypeError, ValueError):
        return None


def sample_from_caption(caption: str | None) -> int | None:
    """The sample id of a clicked gallery tile, from its caption "#12 reason"."""
    m = re.match(r"#(\d+)\b", caption or "")
    return int(m.group(1)) if m else None


def unflag(ctx: AppContext, sample_id: int | None, user: str = "anonymous") -> str:
    if sample_id is None:
        raise UserError("choose a sample to unflag")
    try:
        ctx.store.unflag(int(sample_id), user)
    except KeyError:
        raise UserError(f"there is no sample #{sample_id}") from None
    return f"Sample #{int(sample_id)} unflagged (the history keeps both events)."


def export_zip(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
               d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt") -> str:
    """A zip of the matching samples: lq/, gt/ and metadata.csv; returns its path."""
    rows = _rows(ctx, task, reason, days, d_min, d_max, kind)
    if not rows:
        raise UserError("no flagged samples match the filters")
    out = Path(tempfile.mkdtemp(prefix="darl-export-")) / "hard_samples.zip"
    meta = io.StringIO()
    wr = csv.writer(meta)
    wr.writerow(["sample", "lq", "gt", "task", "reason", "difficulty", "difficulty_kind", "user", "flagged_at", "note"])
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for r in rows:
            lq = f"lq/{r.sample_id:06d}.png"
            z.write(r.lq_path, lq)
            gt = ""
            if r.gt_path:
                gt = f"gt/{r.sample_id:06d}.png"
                z.write(r.gt_path, gt)
            wr.writerow([r.sample_id, lq, gt, r.task, r.reason, r.difficulty, r.difficulty_kind or "", r.user,
                         r.flagged_at.isoformat(), r.note])
        z.writestr("metadata.csv", meta.getvalue())
    return str(out)


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["task"] = gr.Dropdown([""] + sorted(PRESETS), value="", label="Task")
        c["reason"] = gr.Textbox(label="Reason")
        c["days"] = gr.Number(0, label="Flagged in the last N days (0: all)")
        c["d_min"] = gr.Number(0.0, label="Difficulty ≥")
        c["d_max"] = gr.Number(D_MAX, label="Difficulty ≤")
        c["kind"] = gr.Radio([(v, k) for k, v in KINDS.items()], value="gt", label="Difficulty bounds compare",
                             info="the two measures differ: bounds keep only samples measured this way")
        c["refresh"] = gr.Button("Refresh")
    c["gallery"] = gr.Gallery(label="Flagged samples (click one to choose it)", columns=6, height=260,
                              elem_id="samples-gallery")
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, label="Flagged samples", elem_id="samples-table")
    with gr.Row():
        c["sample"] = gr.Dropdown([], value=None, label="Sample (click a tile or a row)", elem_id="sample-id")
        c["unflag"] = gr.Button("Unflag")
        c["export"] = gr.Button("Export as zip")
    c["msg"] = gr.Markdown()
    c["zip"] = gr.File(label="Export")
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any) -> None:
    filters = [c["task"], c["reason"], c["days"], c["d_min"], c["d_max"], c["kind"]]

    def listing(*f: Any) -> tuple[Any, Any, dict[str, Any]]:
        try:
            gallery, table = list_flagged(ctx, *f)
        except UserError as e:
            raise gr.Error(str(e)) from None
        return gallery, table, gr.update(choices=sample_choices(table))

    for trigger in (c["refresh"].click, c["reason"].submit, load_event):
        trigger(listing, filters, [c["gallery"], c["table"], c["sample"]], api_visibility="private")

    def on_row(evt: gr.SelectData) -> int | None:
        return sample_from_row(evt.row_value)

    def on_tile(table: Any, evt: gr.SelectData) -> int | None:
        sid = sample_from_caption(evt.value.get("caption") if isinstance(evt.value, dict) else None)
        if sid is None and isinstance(evt.index, int) and table is not None and evt.index < len(table):
            sid = sample_from_row(list(table.iloc[evt.index]))  # the gallery lists the table's rows in order
        return sid

    c["table"].select(on_row, None, c["sample"], api_visibility="private")
    c["gallery"].select(on_tile, c["table"], c["sample"], api_visibility="private")

    def on_unflag(sample, *f: Any, request: gr.Request = None):  # noqa: ANN001
        try:
            msg = unflag(ctx, sample, getattr(request, "username", None) or "anonymous")
        except UserError as e:
            raise gr.Error(str(e)) from None
        gallery, table = list_flagged(ctx, *f)
        return msg, gallery, table, gr.update(choices=sample_choices(table), value=None)

    c["unflag"].click(on_unflag, [c["sample"], *filters], [c["msg"], c["gallery"], c["table"], c["sample"]],
                      api_visibility="private")

    def on_export(*f: Any) -> str:
        try:
            return export_zip(ctx, *f)
        except UserError as e:
            raise gr.Error(str(e)) from None

    c["export"].click(on_export, filters, c["zip"], api_visibility="private")
