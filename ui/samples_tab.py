"""Hard-samples tab: the flagged samples, filters, a sample view, (bulk) unflag, open in Restore, export."""

from __future__ import annotations

import json
import re
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import gradio as gr

from darl_core.degrade import PRESETS
from darl_core.pipeline import DEFAULT_STEPS
from storage import FlaggedRow
from storage.models import utcnow

from . import fields
from .context import AppContext, UserError, caller, user_warnings
from .restore_tab import REASONS, restore, score_table

__all__ = ["HEADERS", "KINDS", "export_zip", "list_flagged", "listen", "render", "restore_sample", "sample_choices",
           "sample_files", "sample_from_caption", "sample_from_row", "tag_samples", "unflag", "unflag_many"]

# Both measures read 0 (easy) .. 1 (hard): the proxy by construction, 1 - SSIM in practice (above 1 only for a
# negative SSIM, an image unrelated to its truth). The upper bound's default; a bound at or past it filters nothing.
D_MAX = 1.0
# Two difficulties that are not comparable: never one unmarked column, and the bounds apply to one kind.
KINDS = {"gt": "ground truth (1 − SSIM)", "proxy": "no-reference proxy (NIQE)"}
HEADERS = ["sample", "task", "reason", "tags", "difficulty (0 easy … 1 hard)", "difficulty measured by", "user",
           "flagged at", "size", "ground truth", "note"]


def _rows(ctx: AppContext, task: str | None, reason: str | None, days: float | None,
          d_min: float | None, d_max: float | None, kind: str | None = "gt", tag: str | None = None,
          user: str = "anonymous") -> list[FlaggedRow]:
    # Neutral values mean "no filter": days <= 0, d_min <= 0, d_max >= D_MAX (a form always sends numbers).
    # Bounds compare like with like: only samples whose difficulty is of ``kind`` can pass them.
    since = utcnow() - timedelta(days=float(days)) if days and days > 0 else None
    lo = d_min if d_min is not None and d_min > 0 else None
    hi = d_max if d_max is not None and d_max < D_MAX else None
    if kind is not None and kind not in KINDS:
        raise UserError(f"unknown difficulty kind {kind!r}: {' or '.join(KINDS)}")
    bounded = lo is not None or hi is not None
    try:
        return ctx.store.flagged(task or None, reason or None, since, lo, hi, (kind or "gt") if bounded else None,
                                 (tag or "").strip() or None, user=ctx.sees(user))
    except ValueError as e:  # a malformed tag
        raise UserError(str(e)) from None


def list_flagged(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
                 d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt",
                 tag: str | None = None, user: str = "anonymous") -> tuple[list[tuple[str, str]], list[list[Any]]]:
    """(gallery items, table rows) of the currently flagged samples matching the filters; difficulty
    bounds keep only samples whose difficulty is of ``kind`` ("gt" or "proxy"); ``tag`` keeps the
    samples that carry it. With login, a user who is not an admin sees their own samples only."""
    rows = _rows(ctx, task, reason, days, d_min, d_max, kind, tag, user)
    gallery = [(str(r.lq_path), f"#{r.sample_id} {r.reason}") for r in rows]
    table = [[r.sample_id, r.task, r.reason, ", ".join(r.tags), None if r.difficulty is None else round(r.difficulty, 4),
              "" if r.difficulty is None else KINDS.get(r.difficulty_kind or "", "not recorded"), r.user,
              r.flagged_at.strftime("%Y-%m-%d %H:%M"), f"{r.width}x{r.height}", "yes" if r.gt_path else "no",
              r.note] for r in rows]
    return gallery, table


def sample_choices(table: list[list[Any]]) -> list[tuple[str, int]]:
    """(label, id) for the sample picker, from the table rows shown."""
    return [(f"#{row[0]} {row[2]}", int(row[0])) for row in table]


def _ids(sample_ids: Any) -> list[int]:
    """Sorted distinct sample ids from the ticked list; UserError naming a bad one."""
    try:
        return sorted({int(i) for i in sample_ids or []})
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"samples: {str(sample_ids)[:60]!r} is not a list of sample numbers") from None


def tag_samples(ctx: AppContext, sample_ids: list[int] | None, text: str, remove: bool = False,
                user: str = "anonymous") -> str:
    """Add (or remove) the comma-separated tags ``text`` on the ticked samples (each its owner's or an
    admin's, when users log in)."""
    ids = _ids(sample_ids)
    if not ids:
        raise UserError("tick the samples to tag first")
    for i in ids:
        ctx.require_owner(user, f"sample:{i}", f"sample #{i}")
    tags = [t for t in (text or "").split(",") if t.strip()]
    if not tags:
        raise UserError("type one or more tags, separated by commas")
    try:
        ctx.store.tag(ids, remove=tags, user=user) if remove else ctx.store.tag(ids, add=tags, user=user)
    except ValueError as e:
        raise UserError(str(e)) from None
    except KeyError as e:
        raise UserError(f"there is no sample #{e.args[0]}") from None
    words = ", ".join(t.strip().lower() for t in tags)
    return f"{'Removed' if remove else 'Added'} {words} {'from' if remove else 'to'} {len(ids)} samples."


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


def sample_files(ctx: AppContext, sample_id: int | None, user: str = "anonymous") -> tuple[str, str | None, str]:
    """The LQ and ground-truth files of a sample (None: no ground truth) and a line describing it; with
    login, of the user's own samples only (an admin: any)."""
    if sample_id is None:
        raise UserError("choose a sample: click a tile or a row")
    rows = {r.sample_id: r for r in ctx.store.flagged(user=ctx.sees(user))}
    if int(sample_id) not in rows:
        if ctx.sees(user) is not None and any(r.sample_id == int(sample_id) for r in ctx.store.flagged()):
            raise UserError(f"sample #{sample_id} belongs to another user: only they or an admin (DARL_ADMINS) "
                            f"may see it (you are logged in as {user})")
        raise UserError(f"sample #{sample_id} is not flagged")
    r = rows[int(sample_id)]
    d = "not measured" if r.difficulty is None else f"{r.difficulty:.3f} ({KINDS.get(r.difficulty_kind or '', 'kind not recorded')})"
    text = (f"**#{r.sample_id}** · {r.width}x{r.height} · task {r.task} · {r.reason} · difficulty {d} · "
            f"flagged by {r.user} {r.flagged_at:%Y-%m-%d %H:%M}" + (f" · note: {r.note}" if r.note else ""))
    return str(r.lq_path), str(r.gt_path) if r.gt_path else None, text


def restore_sample(ctx: AppContext, sample_id: int | None, steps: int = DEFAULT_STEPS,
                   user: str = "anonymous") -> tuple[Any, Any, str]:
    """The sample restored by the default SFT and RL models: (SFT image, RL image, a line with the
    scores' verdict), for the side-by-side view (the owner rule of ``sample_files``)."""
    lq, gt, _ = sample_files(ctx, sample_id, user)
    r = restore(ctx, lq, gt_path=gt, steps=steps)
    table, _ = score_table(r.headers, r.scores)
    best = "; ".join(f"{row[0]}: best {row[-1]}" for row in table)
    return r.sft, r.rl, f"{steps} steps · {best}"


def _withdraw(ctx: AppContext, sid: int, user: str) -> str:
    """Withdraw ``user``'s flag on a sample (an admin's, or anyone's without login: every flag on it);
    returns "" or, when other users' flags stand, a note saying whose."""
    everyone = not ctx.auth or user in ctx.admins
    ctx.store.unflag(sid, user, everyone=everyone)
    others = ctx.store.owners(f"sample:{sid}")
    return f" (it stays flagged by {', '.join(sorted(others))})" if others else ""


def unflag_many(ctx: AppContext, sample_ids: list[int] | None, user: str = "anonymous") -> str:
    """Unflag several samples at once (the ones ticked; each its owner's or an admin's, when users log
    in: a user withdraws their own flag, an admin every flag); each gets its own unflag event."""
    ids = _ids(sample_ids)
    if not ids:
        raise UserError("tick the samples to unflag first")
    flagged = {r.sample_id for r in ctx.store.flagged()}
    missing = [i for i in ids if i not in flagged]
    if missing:
        raise UserError(f"samples {missing} are not flagged (refresh the list)")
    for i in ids:
        ctx.require_owner(user, f"sample:{i}", f"sample #{i}")
    notes = "".join(f"; #{i}{n}" for i in ids if (n := _withdraw(ctx, i, user)))
    return (f"{len(ids)} samples unflagged: {', '.join(f'#{i}' for i in ids)} (the history keeps every "
            f"event){notes}.")


def unflag(ctx: AppContext, sample_id: int | None, user: str = "anonymous") -> str:
    """Unflag a sample: a user withdraws their own flag (another user's flag on the same image stands),
    an admin (or the one user of an app without login) every flag."""
    if sample_id is None:
        raise UserError("choose a sample to unflag")
    sid = _ids([sample_id])[0]
    ctx.require_owner(user, f"sample:{sid}", f"sample #{sid}")
    try:
        note = _withdraw(ctx, sid, user)
    except KeyError:
        raise UserError(f"there is no sample #{sid}") from None
    return f"Sample #{sid} unflagged{note} (the history keeps every event)."


def export_zip(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
               d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt",
               tag: str | None = None, user: str = "anonymous") -> str:
    """A zip of the matching samples (with login, the user's own; an admin's: everyone's) that Hugging Face ``datasets`` reads as it is: ``lq/``, ``gt/``
    and ``metadata.jsonl`` (one row a sample: ``lq_file_name`` and ``gt_file_name`` become the image
    columns ``lq`` and ``gt``, then task, reason, difficulty, ...). Unzipped,
    ``load_dataset("imagefolder", data_dir=...)`` loads it. Returns the zip's path."""
    rows = _rows(ctx, task, reason, days, d_min, d_max, kind, tag, user)
    if not rows:
        raise UserError("no flagged samples match the filters")
    out = Path(ctx.scratch("darl-export-")) / "hard_samples.zip"
    lines = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for r in rows:
            lq = f"lq/{r.sample_id:06d}.png"
            z.write(r.lq_path, lq)
            gt = None
            if r.gt_path:
                gt = f"gt/{r.sample_id:06d}.png"
                z.write(r.gt_path, gt)
            lines.append(json.dumps({"lq_file_name": lq, "gt_file_name": gt, "sample": r.sample_id, "task": r.task,
                                     "reason": r.reason, "tags": list(r.tags), "difficulty": r.difficulty,
                                     "difficulty_kind": r.difficulty_kind or "", "user": r.user,
                                     "flagged_at": r.flagged_at.isoformat(), "note": r.note or ""}))
        z.writestr("metadata.jsonl", "\n".join(lines) + "\n")
    return str(out)


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["task"] = gr.Dropdown([""] + sorted(PRESETS), value="", label="Task")
        c["reason"] = gr.Dropdown([""] + REASONS, value="", allow_custom_value=True, elem_id="reason-filter",
                                  label="Reason contains", info="any case; type your own words and press Enter")
        c["days"] = fields.Number(0, label="Flagged in the last N days (0: all)")
        c["d_min"] = fields.Number(0.0, label="Difficulty ≥")
        c["d_max"] = fields.Number(D_MAX, label="Difficulty ≤ (0 easy .. 1 hard; 1: no bound)")
        c["kind"] = gr.Radio([(v, k) for k, v in KINDS.items()], value="gt", label="Difficulty bounds compare",
                             info="the two measures differ: bounds keep only samples measured this way")
        c["tag"] = gr.Textbox(label="Tag", info="samples with this tag (Enter)", elem_id="tag-filter")
        c["refresh"] = gr.Button("Refresh")
    c["gallery"] = gr.Gallery(label="Flagged samples (click one to view it)", columns=6, height=260,
                              allow_preview=False, object_fit="contain", format="png", elem_id="samples-gallery")
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="samples-table", show_search="search",
                              label="Flagged samples (click a row to view it; click a header to sort)")
    with gr.Row():
        c["sample"] = gr.Dropdown([], value=None, label="Sample (click a tile or a row)", elem_id="sample-id")
        c["unflag"] = gr.Button("Unflag")
        c["open"] = gr.Button("Open in Restore", elem_id="open-in-restore")
        c["export"] = gr.Button("Export (zip, Hugging Face datasets format)")
    c["msg"] = gr.Markdown(elem_id="samples-msg")
    with gr.Accordion("Sample view: input, SFT, RL and ground truth side by side", open=True):
        c["view_md"] = gr.Markdown(elem_id="sample-view-text")
        with gr.Row(equal_height=True):
            c["view_lq"] = gr.Image(label="input (flagged)", type="filepath", interactive=False, height=240,
                                    format="png", elem_id="view-lq")
            # lossless, as on the Restore tab (restore_tab.SHOWN says why)
            c["view_sft"] = gr.Image(label="SFT", type="pil", interactive=False, height=240, format="png",
                                     elem_id="view-sft")
            c["view_rl"] = gr.Image(label="RL", type="pil", interactive=False, height=240, format="png",
                                    elem_id="view-rl")
            c["view_gt"] = gr.Image(label="ground truth", type="filepath", interactive=False, height=240,
                                    format="png", elem_id="view-gt")
        c["view_restore"] = gr.Button("Restore this sample with the default SFT and RL models", elem_id="view-restore")
    with gr.Accordion("Several at once", open=False):
        c["selected"] = gr.CheckboxGroup([], label="Tick samples (a click on a tile ticks it too)",
                                         show_select_all=True, elem_id="bulk-select")
        with gr.Row():
            c["tags"] = gr.Textbox(label="Tags (comma-separated: letters, digits, - and _)", elem_id="tags-text")
            c["tag_add"] = gr.Button("Add to the ticked", elem_id="tag-add")
            c["tag_remove"] = gr.Button("Remove from the ticked")
        c["unflag_many"] = gr.Button("Unflag the ticked samples", elem_id="unflag-many")
    c["zip"] = gr.File(label="Export", visible=False)  # shown once there is something to download
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any) -> None:
    filters = [c["task"], c["reason"], c["days"], c["d_min"], c["d_max"], c["kind"], c["tag"]]

    @user_warnings(4)
    def listing(request: gr.Request, *f: Any) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        gallery, table = list_flagged(ctx, *f, user=caller(request))
        choices = sample_choices(table)
        return gallery, table, gr.update(choices=choices), gr.update(choices=choices, value=[])

    listed = [c["gallery"], c["table"], c["sample"], c["selected"]]
    for trigger in (c["refresh"].click, c["reason"].change, c["task"].change, c["kind"].change, load_event):
        trigger(listing, filters, listed, api_visibility="private")
    for box in (c["days"], c["d_min"], c["d_max"], c["tag"]):
        box.submit(listing, filters, listed, api_visibility="private")

    def on_row(evt: gr.SelectData) -> int | None:
        return sample_from_row(evt.row_value)

    def on_tile(table: Any, ticked: list[int] | None, evt: gr.SelectData) -> tuple[int | None, list[int]]:
        sid = sample_from_caption(evt.value.get("caption") if isinstance(evt.value, dict) else None)
        if sid is None and isinstance(evt.index, int) and table is not None and evt.index < len(table):
            sid = sample_from_row(list(table.iloc[evt.index]))  # the gallery lists the table's rows in order
        ticked = list(ticked or [])
        if sid is not None and sid not in ticked:
            ticked.append(sid)
        return sid, ticked

    c["table"].select(on_row, None, c["sample"], api_visibility="private")
    c["gallery"].select(on_tile, [c["table"], c["selected"]], [c["sample"], c["selected"]], api_visibility="private")

    def on_pick(sample: int | None, request: gr.Request) -> tuple[Any, Any, Any, Any, str]:
        if sample is None:
            return None, None, None, None, ""
        try:
            lq, gt, text = sample_files(ctx, sample, caller(request))
        except UserError as e:
            return None, None, None, None, str(e)
        return lq, None, None, gt, text + ("" if gt else " · no ground truth")

    c["sample"].change(on_pick, c["sample"], [c["view_lq"], c["view_sft"], c["view_rl"], c["view_gt"], c["view_md"]],
                       api_visibility="private")

    @user_warnings(3)
    def on_view_restore(sample, request: gr.Request, progress=gr.Progress()):  # noqa: ANN001, B008
        progress(0, desc="restoring with both models")
        sft, rl, verdict = restore_sample(ctx, sample, user=caller(request))
        return sft, rl, verdict

    c["view_restore"].click(on_view_restore, c["sample"], [c["view_sft"], c["view_rl"], c["msg"]],
                            concurrency_limit=1, concurrency_id="models", api_visibility="private")

    def after_unflag(msg: str, f: tuple[Any, ...], user: str) -> tuple[Any, ...]:
        """The message, then the lists again: the unflagged samples gone, nothing chosen or ticked."""
        gallery, table = list_flagged(ctx, *f, user=user)
        choices = sample_choices(table)
        return msg, gallery, table, gr.update(choices=choices, value=None), gr.update(choices=choices, value=[])

    @user_warnings(5)
    def on_unflag(sample, request: gr.Request, *f: Any):  # noqa: ANN001
        return after_unflag(unflag(ctx, sample, caller(request)), f, caller(request))

    c["unflag"].click(on_unflag, [c["sample"], *filters], [c["msg"], *listed], api_visibility="private")

    @user_warnings(5)
    def on_unflag_many(ticked, request: gr.Request, *f: Any):  # noqa: ANN001
        return after_unflag(unflag_many(ctx, ticked, caller(request)), f, caller(request))

    c["unflag_many"].click(on_unflag_many, [c["selected"], *filters], [c["msg"], *listed], api_visibility="private")

    def tagging(remove: bool) -> Any:
        @user_warnings(3)
        def on_tag(ticked, text, request: gr.Request, *f: Any):  # noqa: ANN001
            msg = tag_samples(ctx, ticked, text, remove, caller(request))
            gallery, table = list_flagged(ctx, *f, user=caller(request))
            return msg, gallery, table
        return on_tag

    for button, remove in ((c["tag_add"], False), (c["tag_remove"], True)):
        button.click(tagging(remove), [c["selected"], c["tags"], *filters], [c["msg"], c["gallery"], c["table"]],
                     api_visibility="private")

    @user_warnings(1)
    def on_export(request: gr.Request, *f: Any) -> dict[str, Any]:
        return gr.update(value=export_zip(ctx, *f, user=caller(request)), visible=True)

    c["export"].click(on_export, filters, c["zip"], api_visibility="private")
