"""Hard-samples tab: the flagged samples with each model's scores, filters and sorting, a sample view,
bulk import of pairs, a one-by-one review with keyboard shortcuts, (bulk) unflag, undo, open in Restore, export."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from darl_core.data.degrade import PRESETS
from darl_core.models.pipeline import DEFAULT_STEPS
from storage import FlaggedRow
from storage.models import utcnow

from . import fields
from .bulk_import import CONVENTION, import_pairs, record_scores
from .context import SHIPPED, AppContext, UserError, caller, user_messages, user_warnings
from .restore_service import REASONS, restore, score_table

__all__ = ["HEADERS", "KEYS", "KINDS", "SORTS", "FlaggedView", "export_zip", "flagged_view", "import_files",
           "list_flagged", "listen", "model_names", "render", "restore_sample", "review_flag", "review_line",
           "review_unflag", "sample_choices", "sample_files", "sample_from_caption", "sample_from_row", "tag_samples",
           "undo", "unflag", "unflag_many"]

# Both measures read 0 (easy) .. 1 (hard): the proxy by construction, 1 - SSIM in practice (above 1 only for a
# negative SSIM, an image unrelated to its truth). The upper bound's default; a bound at or past it filters nothing.
D_MAX = 1.0
# Two difficulties that are not comparable: never one unmarked column, and the bounds apply to one kind.
KINDS = {"gt": "ground truth (1 − SSIM)", "proxy": "no-reference proxy (NIQE)"}
HEADERS = ["sample", "task", "reason", "tags", "difficulty (0 easy … 1 hard)", "difficulty measured by", "user",
           "flagged at", "size", "ground truth", "note"]
# Each model's scores, one column per model and metric: (metric, column title, higher is better, decimals)
SCORE_METRICS = (("psnr", "PSNR dB ↑", True, 2), ("ssim", "SSIM ↑", True, 4), ("niqe", "NIQE ↓", False, 3))
# The table's orders: key -> (what the picker says, metric, "worst" or "spread"); never two metrics mixed in one
SORTS: dict[str, tuple[str, str, str]] = {
    "newest": ("newest flag first", "", ""),
    "worst_psnr": ("worst PSNR first (the lowest of any model)", "psnr", "worst"),
    "worst_ssim": ("worst SSIM first (the lowest of any model)", "ssim", "worst"),
    "worst_niqe": ("worst NIQE first (the highest of any model)", "niqe", "worst"),
    "spread_psnr": ("models disagree most on PSNR first (highest − lowest)", "psnr", "spread"),
    "spread_niqe": ("models disagree most on NIQE first (highest − lowest)", "niqe", "spread"),
}
# The review's keys (the page's listener clicks the button of the key pressed; none while typing in a field)
KEYS = (("F", "flag", "review-flag"), ("U", "unflag", "review-unflag"), ("S, N or →", "skip to the next", "review-skip"),
        ("← or P", "back to the previous", "review-back"), ("Z", "undo the last flag or unflag", "undo-btn"))


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


def model_names(ctx: AppContext) -> dict[str, str]:
    """Short names of the models by their resolved folder: a checkpoint's name, a shipped model's name."""
    names = {str(Path(p).resolve()): label.split(" (")[0] for p, label in SHIPPED.items()}
    for c in ctx.store.checkpoints():
        names.setdefault(str(Path(c.path).resolve()) if not c.path.startswith("job:") else c.path, c.name)
    return names


def _model_key(model: str) -> str:
    return model if model.startswith("job:") else str(Path(model).resolve())


@dataclass
class FlaggedView:
    """What the tab lists: the gallery, the table's headers and rows (``HEADERS``, then the sort's measure when
    sorted by one, then each model's scores), and the models of the score columns, in column order."""
    gallery: list[tuple[str, str]]
    headers: list[str]
    rows: list[list[Any]]
    models: list[str]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.headers) if self.rows else pd.DataFrame(columns=self.headers)


def _sort_value(scores: dict[str, Any], metric: str, how: str) -> float | None:
    """The measure a sample is sorted by: its models' worst ``metric`` or its spread (None: not measured,
    or a spread of fewer than two models)."""
    values = [getattr(sc, metric) for sc in scores.values() if getattr(sc, metric) is not None]
    if not values or (how == "spread" and len(values) < 2):
        return None
    if how == "spread":
        return max(values) - min(values)
    higher = next(h for m, _, h, _ in SCORE_METRICS if m == metric)
    return min(values) if higher else max(values)


def flagged_view(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
                 d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt",
                 tag: str | None = None, sort: str | None = "newest", user: str = "anonymous") -> FlaggedView:
    """The flagged samples matching the filters (``list_flagged``), with a column per model and metric of each
    model that restored them (``Store.model_scores``), in the order ``sort`` (a key of ``SORTS``): samples
    without the measure come last, newest first."""
    sort = sort or "newest"
    if sort not in SORTS:
        raise UserError(f"unknown order {sort!r}: one of {', '.join(SORTS)}")
    rows = _rows(ctx, task, reason, days, d_min, d_max, kind, tag, user)
    raw = ctx.store.model_scores([r.sample_id for r in rows])
    scores: dict[int, dict[str, Any]] = {}
    for sid, by_model in raw.items():  # one entry per model folder however its path was spelled
        merged: dict[str, Any] = {}
        for model, sc in by_model.items():
            key = _model_key(model)
            if key not in merged or sc.at >= merged[key].at:
                merged[key] = sc
        scores[sid] = merged
    _, metric, how = SORTS[sort]
    if metric:
        measure = {r.sample_id: _sort_value(scores.get(r.sample_id, {}), metric, how) for r in rows}
        higher = next(h for m, _, h, _ in SCORE_METRICS if m == metric)
        worst_first = -1 if (how == "spread" or not higher) else 1  # the largest spread / the highest NIQE first
        rows = sorted(rows, key=lambda r: (measure[r.sample_id] is None,
                                           worst_first * (measure[r.sample_id] or 0.0)))  # stable: newest first
    names = model_names(ctx)
    models = sorted({m for sid in scores for m in scores[sid]}, key=lambda m: names.get(m, m))
    columns = [(m, metric_, title, dec) for m in models for metric_, title, _, dec in SCORE_METRICS
               if any(getattr(scores.get(r.sample_id, {}).get(m), metric_, None) is not None for r in rows)]
    headers = list(HEADERS)
    if metric:
        label = next(t for m, t, _, _ in SCORE_METRICS if m == metric).rsplit(" ", 1)[0]
        headers.append(f"{'worst' if how == 'worst' else 'spread of'} {label}")
    headers += [f"{title} · {names.get(m, Path(m).name)}" for m, _, title, _ in columns]
    gallery = [(str(r.lq_path), f"#{r.sample_id} {r.reason}") for r in rows]
    table = []
    for r in rows:
        row = [r.sample_id, r.task, r.reason, ", ".join(r.tags), None if r.difficulty is None else round(r.difficulty, 4),
               "" if r.difficulty is None else KINDS.get(r.difficulty_kind or "", "not recorded"), r.user,
               r.flagged_at.strftime("%Y-%m-%d %H:%M"), f"{r.width}x{r.height}", "yes" if r.gt_path else "no", r.note]
        if metric:
            v = measure[r.sample_id]
            row.append(None if v is None else round(v, next(d for m, _, _, d in SCORE_METRICS if m == metric)))
        for m, metric_, _, dec in columns:
            v = getattr(scores.get(r.sample_id, {}).get(m), metric_, None)
            row.append(None if v is None else round(v, dec))
        table.append(row)
    return FlaggedView(gallery, headers, table, models)


def list_flagged(ctx: AppContext, task: str | None = None, reason: str | None = None, days: float | None = None,
                 d_min: float | None = None, d_max: float | None = None, kind: str | None = "gt",
                 tag: str | None = None, sort: str | None = "newest", user: str = "anonymous"
                 ) -> tuple[list[tuple[str, str]], list[list[Any]]]:
    """(gallery items, table rows) of the currently flagged samples matching the filters; difficulty
    bounds keep only samples whose difficulty is of ``kind`` ("gt" or "proxy"); ``tag`` keeps the
    samples that carry it; ``sort``: see ``flagged_view``, which also gives the table's headers. With
    login, a user who is not an admin sees their own samples only."""
    view = flagged_view(ctx, task, reason, days, d_min, d_max, kind, tag, sort, user)
    return view.gallery, view.rows


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
    scores' verdict), for the side-by-side view (the owner rule of ``sample_files``). Each model's scores
    are kept with the sample (the table's columns)."""
    lq, gt, _ = sample_files(ctx, sample_id, user)
    sft, rl = ctx.default_models()
    r = restore(ctx, lq, sft_model=sft, rl_model=rl, gt_path=gt, steps=steps)
    record_scores(ctx, int(sample_id), r, sft, rl, steps, user)
    table, _ = score_table(r.headers, r.scores)
    best = "; ".join(f"{row[0]}: best {row[-1]}" for row in table)
    return r.sft, r.rl, f"{steps} steps · {best}"


def import_files(ctx: AppContext, files: list[Any] | None, reason: str = "imported", task: str = "blind",
                 measure: bool = True, user: str = "anonymous") -> str:
    """Import the uploaded zips and images as flagged pairs (``bulk_import``); one message saying what was
    imported and what was skipped, and why."""
    paths = [str(getattr(f, "name", f)) for f in files or [] if f]
    if not isinstance(task, str) or task not in PRESETS:
        raise UserError(f"task: unknown task {str(task)[:40]!r}; one of {', '.join(PRESETS)}")
    return import_pairs(ctx, paths, reason, task, bool(measure), user).message()


def undo(ctx: AppContext, user: str = "anonymous") -> tuple[str, int | None]:
    """Undo ``user``'s last flag or unflag (each undo goes one further back; ``Store.undo_last``): a message
    saying what was undone and where the sample stands now, and the sample's id (None: nothing to undo)."""
    done = ctx.store.undo_last(user)
    if done is None:
        return "Nothing to undo: you have no flag or unflag left that was not undone.", None
    last, _ = done
    sid = last.sample_id
    owners = sorted(ctx.store.owners(f"sample:{sid}"))
    now = f"flagged by {', '.join(owners)}" if owners else "not flagged"
    what = f"flag of sample #{sid} ({last.reason})" if last.flagged else f"unflag of sample #{sid}"
    return f"Undone: your {what}; it is now {now} (the history keeps both events).", sid


def review_line(ctx: AppContext, queue: list[int] | None, pos: int | None) -> tuple[str | None, str | None, str]:
    """The review's current sample: (input file, ground-truth file or None, a line saying which of how many it
    is and whether it is flagged now); a line saying the review is over past the last one."""
    queue = [int(i) for i in queue or []]
    if not queue:
        return None, None, "Press **Start review** to go through the listed samples one by one, in the table's order."
    pos = int(pos or 0)
    if pos >= len(queue):
        return None, None, f"**Reviewed all {len(queue)}.** Press Start review again to go through the list as it is now."
    sid = queue[pos]
    try:
        sm = ctx.store.sample(sid)
    except KeyError:
        return None, None, f"{pos + 1} of {len(queue)}: sample #{sid} is gone; press S for the next."
    owners = sorted(ctx.store.owners(f"sample:{sid}"))
    state = f"flagged by {', '.join(owners)}" if owners else "**not flagged**"
    d, kind = ctx.store.last_difficulty(sid)
    dtext = "" if d is None else f" · difficulty {d:.3f} ({KINDS.get(kind or '', 'kind not recorded')})"
    text = (f"**{pos + 1} of {len(queue)}: sample #{sid}** · {sm.width}x{sm.height} · task {sm.task} · {state}{dtext}"
            + ("" if sm.gt_path else " · no ground truth"))
    return str(ctx.store.path(sm.lq_path)), str(ctx.store.path(sm.gt_path)) if sm.gt_path else None, text


def _current(queue: list[int] | None, pos: int | None) -> int:
    queue = list(queue or [])
    pos = int(pos or 0)
    if not queue or pos >= len(queue):
        raise UserError("no sample under review: press Start review first")
    return int(queue[pos])


def review_flag(ctx: AppContext, queue: list[int] | None, pos: int | None, reason: str,
                user: str = "anonymous") -> str:
    """Flag the sample under review as hard with ``reason`` (the user's flag; the sample's newest measured
    difficulty goes with it). The page then moves on."""
    sid = _current(queue, pos)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 64:
        raise UserError("choose a reason for the flag (text of at most 64 characters)")
    d, kind = ctx.store.last_difficulty(sid)
    try:
        ctx.store.flag(sid, user, reason.strip(), difficulty=d, difficulty_kind=kind)
    except KeyError:
        raise UserError(f"there is no sample #{sid}") from None
    return f"Sample #{sid} flagged ({reason.strip()}). Z undoes it."


def review_unflag(ctx: AppContext, queue: list[int] | None, pos: int | None, user: str = "anonymous") -> str:
    """Unflag the sample under review (as ``unflag``); one not flagged now is said so and left alone."""
    sid = _current(queue, pos)
    if not ctx.store.owners(f"sample:{sid}"):
        return f"Sample #{sid} is not flagged: nothing to unflag."
    return unflag(ctx, sid, user).replace("(the history keeps every event)", "(Z undoes it)")


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


def export_message(path: str) -> str:
    """The line beside a fresh export: how many samples, how large, when (so an old line is not taken for it)."""
    with zipfile.ZipFile(path) as z:
        n = sum(1 for name in z.namelist() if name.startswith("lq/"))
    size = Path(path).stat().st_size
    return (f"Exported {n} samples at {utcnow():%H:%M:%S} UTC: {Path(path).name}, {size / 1024:.0f} KiB "
            f"(lq/, gt/, metadata.jsonl). Download it beside the button.")


KEYS_JS = """() => {
  if (window.__darlReviewKeys) return;
  window.__darlReviewKeys = true;
  const map = {f: 'review-flag', u: 'review-unflag', s: 'review-skip', n: 'review-skip', ArrowRight: 'review-skip',
               p: 'review-back', ArrowLeft: 'review-back', z: 'undo-btn'};
  document.addEventListener('keydown', (e) => {
    const panel = document.getElementById('review-text');
    if (!panel || panel.offsetParent === null) return;  // the review is not on the screen
    const t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName)))) return;
    const id = map[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    const button = id && document.getElementById(id);
    if (!button || button.disabled) return;
    e.preventDefault();
    button.click();
  });
}"""

KEYS_HELP = ("**Keys** (while the review is on the screen, not while typing in a field): "
             + " · ".join(f"**{k}** {what}" for k, what, _ in KEYS)
             + ". Flag and unflag move on to the next sample.")


def render(ctx: AppContext) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row():
        c["task"] = gr.Dropdown([""] + sorted(PRESETS), value="", label="Task")
        c["reason"] = gr.Dropdown([""] + REASONS, value="", allow_custom_value=True, elem_id="reason-filter",
                                  label="Reason contains", info="any case; type your own words and press Enter")
        c["days"] = fields.Number(0, minimum=0, label="Flagged in the last N days (0: all)")
        c["d_min"] = fields.Number(0.0, minimum=0, maximum=D_MAX, step=0.05,
                                   label="Difficulty ≥ (0 easy .. 1 hard; 0: no bound)")
        c["d_max"] = fields.Number(D_MAX, minimum=0, maximum=D_MAX, step=0.05,
                                   label="Difficulty ≤ (0 easy .. 1 hard; 1: no bound)")
        c["kind"] = gr.Radio([(v, k) for k, v in KINDS.items()], value="gt", label="Difficulty bounds compare",
                             info="the two measures differ: bounds keep only samples measured this way")
        c["tag"] = gr.Textbox(label="Tag", info="samples with this tag (Enter)", elem_id="tag-filter")
        c["sort"] = gr.Dropdown([(label, k) for k, (label, _, _) in SORTS.items()], value="newest", label="Order",
                                elem_id="sort-by", info="by each model's scores (the columns on the right)")
        c["refresh"] = gr.Button("Refresh")
    with gr.Accordion(f"Import pairs: a zip, or a folder ({CONVENTION})", open=False, elem_id="import-box"):
        gr.Markdown("Pairs are matched by name: **lq/NAME** with **gt/NAME** (two folders, as this tab's export "
                    "writes them: zip them), or **NAME_lq** with **NAME_gt** in one folder. An input without its "
                    "ground truth comes without one; a ground truth without its input, an unreadable or too large "
                    "file, a ground truth of the wrong size and an image already flagged are skipped, each named "
                    "with why. Each pair is flagged as the Restore tab flags it.")
        with gr.Row():
            c["import_files"] = gr.File(file_count="multiple", file_types=[".zip", "image"], label="Zip(s) or images",
                                        elem_id="import-files")
            c["import_dir"] = gr.File(file_count="directory", label="Or a folder (files named NAME_lq / NAME_gt)",
                                      elem_id="import-dir")
        with gr.Row():
            c["import_reason"] = gr.Dropdown(["imported"] + REASONS, value="imported", allow_custom_value=True,
                                             label="Reason of the flags")
            c["import_task"] = gr.Dropdown(sorted(PRESETS), value="blind", label="Degradation")
            c["import_measure"] = gr.Checkbox(True, label="Measure: restore each with the default SFT and RL models "
                                              "(difficulty, and each model's PSNR, SSIM, NIQE; slower)")
            c["import_btn"] = gr.Button("Import", variant="primary", elem_id="import-btn")
        c["import_msg"] = gr.Markdown(elem_id="import-msg")
    c["gallery"] = gr.Gallery(label="Flagged samples (click one to view it)", columns=6, height=260,
                              allow_preview=False, object_fit="contain", format="png", elem_id="samples-gallery")
    c["table"] = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="samples-table", show_search="search",
                              label="Flagged samples, with each model's scores on the right (click a row to view "
                                    "it; click a header to sort)")
    with gr.Row():
        c["sample"] = gr.Dropdown([], value=None, label="Sample (click a tile or a row)", elem_id="sample-id")
        c["unflag"] = gr.Button("Unflag")
        c["undo"] = gr.Button("Undo my last flag or unflag (Z)", elem_id="undo-btn")
        c["open"] = gr.Button("Open in Restore", elem_id="open-in-restore")
        with gr.Column(min_width=240):
            c["export"] = gr.Button("Export (zip, Hugging Face datasets format)", elem_id="export-btn")
            c["zip"] = gr.File(label="Export", visible=False, elem_id="export-file")  # shown once there is one
    c["msg"] = gr.Markdown(elem_id="samples-msg")
    with gr.Accordion("Review one by one (keys: F flag, U unflag, S skip, ← back, Z undo)", open=True,
                      elem_id="review-box"):
        gr.Markdown(KEYS_HELP, elem_id="review-keys")
        with gr.Row():
            c["review_start"] = gr.Button("Start review of the listed samples", elem_id="review-start")
            c["review_reason"] = gr.Dropdown(REASONS, value="artifacts", allow_custom_value=True,
                                             label="Reason of a flag (F)")
        c["review_md"] = gr.Markdown(review_line(ctx, None, 0)[2], elem_id="review-text")
        with gr.Row(equal_height=True):
            c["review_lq"] = gr.Image(label="input", type="filepath", interactive=False, height=220, format="png",
                                      elem_id="review-lq")
            c["review_gt"] = gr.Image(label="ground truth", type="filepath", interactive=False, height=220,
                                      format="png", elem_id="review-gt")
        with gr.Row():
            c["review_flag"] = gr.Button("Flag (F)", elem_id="review-flag")
            c["review_unflag"] = gr.Button("Unflag (U)", elem_id="review-unflag")
            c["review_skip"] = gr.Button("Skip to the next (S)", elem_id="review-skip")
            c["review_back"] = gr.Button("Back (←)", elem_id="review-back")
        c["review_queue"] = gr.State([])
        c["review_pos"] = gr.State(0)
    with gr.Accordion("Sample view: input, SFT, RL and ground truth side by side", open=True):
        c["view_md"] = gr.Markdown(elem_id="sample-view-text")
        with gr.Row(equal_height=True):
            c["view_lq"] = gr.Image(label="input (flagged)", type="filepath", interactive=False, height=240,
                                    format="png", elem_id="view-lq")
            # lossless, as on the Restore tab (compare.SHOWN says why)
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
    return c


def listen(ctx: AppContext, c: dict[str, Any], load_event: Any) -> None:
    filters = [c["task"], c["reason"], c["days"], c["d_min"], c["d_max"], c["kind"], c["tag"], c["sort"]]

    def lists(f: tuple[Any, ...], value: Any = None, user: str = "anonymous"
              ) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        """The gallery, the table, the sample picker and the ticks, listed again (nothing chosen or ticked)."""
        view = flagged_view(ctx, *f, user=user)
        choices = sample_choices(view.rows)
        return (view.gallery, view.frame(), gr.update(choices=choices, value=value),
                gr.update(choices=choices, value=[]))

    @user_warnings(4)
    def listing(request: gr.Request, *f: Any) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        gallery, table, picker, ticks = lists(f, user=caller(request))
        return gallery, table, gr.update(choices=picker["choices"]), ticks

    listed = [c["gallery"], c["table"], c["sample"], c["selected"]]
    for trigger in (c["refresh"].click, c["reason"].change, c["task"].change, c["kind"].change, c["sort"].change,
                    load_event):
        trigger(listing, filters, listed, api_visibility="private")
    for box in (c["days"], c["d_min"], c["d_max"], c["tag"]):
        box.submit(listing, filters, listed, api_visibility="private")
    load_event(None, None, None, js=KEYS_JS)  # the review's keys, installed once per page

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
    def on_view_restore(sample, request: gr.Request, progress=gr.Progress()) -> Any:  # noqa: ANN001, B008
        progress(0, desc="restoring with both models")
        sft, rl, verdict = restore_sample(ctx, sample, user=caller(request))
        return sft, rl, verdict

    c["view_restore"].click(on_view_restore, c["sample"], [c["view_sft"], c["view_rl"], c["msg"]],
                            concurrency_limit=1, concurrency_id="models", api_visibility="private")

    @user_warnings(5)
    def on_unflag(sample, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
        return unflag(ctx, sample, caller(request)), *lists(f, user=caller(request))

    c["unflag"].click(on_unflag, [c["sample"], *filters], [c["msg"], *listed], api_visibility="private")

    @user_warnings(5)
    def on_unflag_many(ticked, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
        return unflag_many(ctx, ticked, caller(request)), *lists(f, user=caller(request))

    c["unflag_many"].click(on_unflag_many, [c["selected"], *filters], [c["msg"], *listed], api_visibility="private")

    def tagging(remove: bool) -> Any:
        @user_warnings(3)
        def on_tag(ticked, text, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
            msg = tag_samples(ctx, ticked, text, remove, caller(request))
            view = flagged_view(ctx, *f, user=caller(request))
            return msg, view.gallery, view.frame()
        return on_tag

    for button, remove in ((c["tag_add"], False), (c["tag_remove"], True)):
        button.click(tagging(remove), [c["selected"], c["tags"], *filters], [c["msg"], c["gallery"], c["table"]],
                     api_visibility="private")

    # The export's file appears beside its button, with a line of its own (not an older message)
    @user_messages(2, at=1, lead="Not exported")
    def on_export(request: gr.Request, *f: Any) -> tuple[dict[str, Any], str]:
        path = export_zip(ctx, *f[:7], user=caller(request))
        return gr.update(value=path, visible=True), export_message(path)

    c["export"].click(on_export, filters, [c["zip"], c["msg"]], api_visibility="private")

    # Bulk import: one message; the lists show the new samples at once
    @user_messages(5, at=0, lead="Not imported")
    def on_import(files, folder, reason, task, measure, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
        msg = import_files(ctx, list(files or []) + list(folder or []), reason, task, measure, caller(request))
        return msg, *lists(f, user=caller(request))

    c["import_btn"].click(on_import, [c["import_files"], c["import_dir"], c["import_reason"], c["import_task"],
                                      c["import_measure"], *filters], [c["import_msg"], *listed],
                          concurrency_limit=1, concurrency_id="models", api_visibility="private")

    # The review: the listed samples one by one; flag and unflag move on; undo goes back to its sample
    review_out = [c["review_lq"], c["review_gt"], c["review_md"]]

    def shown(queue: list[int], pos: int) -> tuple[Any, ...]:
        return (queue, pos, *review_line(ctx, queue, pos))

    def on_start(request: gr.Request, *f: Any) -> tuple[Any, ...]:
        return shown([r[0] for r in flagged_view(ctx, *f, user=caller(request)).rows], 0)

    def on_step(delta: int) -> Any:
        def step(queue: list[int], pos: int) -> tuple[Any, ...]:
            return shown(queue, max(0, min(len(queue or []), int(pos or 0) + delta)))
        return step

    state = [c["review_queue"], c["review_pos"]]
    c["review_start"].click(on_start, filters, [*state, *review_out], api_visibility="private")
    c["review_skip"].click(on_step(1), state, [*state, *review_out], api_visibility="private")
    c["review_back"].click(on_step(-1), state, [*state, *review_out], api_visibility="private")

    def acting(act: Any) -> Any:
        @user_messages(9, at=0, lead="Not done")
        def on_act(queue, pos, reason, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
            msg = act(queue, pos, reason, caller(request))
            view = flagged_view(ctx, *f, user=caller(request))
            return (msg, view.gallery, view.frame(), gr.update(choices=sample_choices(view.rows)),
                    *shown(queue, min(len(queue), int(pos or 0) + 1)))
        return on_act

    acts = ((c["review_flag"], lambda q, p, reason, user: review_flag(ctx, q, p, reason, user)),
            (c["review_unflag"], lambda q, p, reason, user: review_unflag(ctx, q, p, user)))
    for button, act in acts:
        button.click(acting(act), [*state, c["review_reason"], *filters],
                     [c["msg"], c["gallery"], c["table"], c["sample"], *state, *review_out], api_visibility="private")

    @user_messages(9, at=0, lead="Not undone")
    def on_undo(queue, pos, request: gr.Request, *f: Any) -> Any:  # noqa: ANN001
        msg, sid = undo(ctx, caller(request))
        queue = list(queue or [])
        pos = queue.index(sid) if sid in queue else pos
        view = flagged_view(ctx, *f, user=caller(request))
        return (msg, view.gallery, view.frame(), gr.update(choices=sample_choices(view.rows)), *shown(queue, pos))

    c["undo"].click(on_undo, [*state, *filters], [c["msg"], c["gallery"], c["table"], c["sample"], *state, *review_out],
                    api_visibility="private")
