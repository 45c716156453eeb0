"""Bulk import of input / ground-truth pairs as flagged samples (the Hard-samples tab's "Import").

Naming convention (case does not matter; any image type the app reads):

    lq/NAME.png  with  gt/NAME.png        two folders, the same file names (the tab's own export is so)
    NAME_lq.png  with  NAME_gt.png        one folder (also what a browser's folder upload keeps)

An input without its ground truth is imported without one; a ground truth without its input is skipped.
Every pair goes through the Restore tab's flag (``restore_service.flag_sample``): the same checks, the same message.
With ``measure``, each input is first restored by the default SFT and RL models, as the Restore tab
does: its difficulty (1 − SSIM against the truth, or the labelled no-reference proxy without one) is
stored with the flag, and each model's PSNR, SSIM and NIQE with the sample (``record_scores``).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from darl_core.data.images import IMAGE_SUFFIXES, to_rgb

from .context import AppContext, UserError, png_bytes
from .restore_service import RestoreResult, flag_sample, gt_size_problem, image_key, restore, work

__all__ = ["CONVENTION", "MAX_IMPORT", "ImportReport", "import_pairs", "pair_key", "record_scores"]

MAX_IMPORT = 500  # files one import reads (a zip's entries included)
CONVENTION = "lq/NAME + gt/NAME, or NAME_lq + NAME_gt"
_SUFFIX = re.compile(r"^(?P<name>.+?)[_-](?P<role>lq|gt)$", re.IGNORECASE)
# what a skipped file is skipped for, in the order the message lists them
WHY = ("unreadable", "too large", "size mismatch", "no pair", "duplicate", "not an image", "not named by the convention",
       "over the work budget", "refused")


def pair_key(name: str) -> tuple[str, str] | None:
    """(pair name, "lq" or "gt") of a file by the naming convention, or None when it follows neither form:
    ``lq/x.png`` -> ("x", "lq"), ``set/gt/x.png`` -> ("set/x", "gt"), ``x_lq.png`` -> ("x", "lq")."""
    p = PurePosixPath(name.replace("\\", "/"))
    parts = [s for s in p.parts[:-1] if s not in ("", ".")]
    stem = p.stem
    for i in range(len(parts) - 1, -1, -1):  # the nearest folder named lq or gt
        if parts[i].lower() in ("lq", "gt"):
            rest = parts[:i] + parts[i + 1:] + [stem]
            return "/".join(rest), parts[i].lower()
    m = _SUFFIX.match(stem)
    if m:
        return "/".join(parts + [m.group("name")]), m.group("role").lower()
    return None


@dataclass
class ImportReport:
    imported: list[tuple[int, str, bool]] = field(default_factory=list)  # (sample id, pair name, with ground truth)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (file or pair name, why (of WHY), detail)

    def message(self) -> str:
        """One message: what was imported (the sample numbers) and what was skipped, grouped by why."""
        if self.imported:
            with_gt = sum(1 for _, _, g in self.imported if g)
            names = ", ".join(f"#{sid} {name}" for sid, name, _ in self.imported[:20])
            more = f" and {len(self.imported) - 20} more" if len(self.imported) > 20 else ""
            head = (f"**Imported {len(self.imported)}** as flagged samples ({with_gt} with a ground truth): "
                    f"{names}{more}.")
        else:
            head = "**Imported nothing.**"
        if not self.skipped:
            return head + " Nothing was skipped."
        lines = [head + "\n", f"**Skipped {len(self.skipped)}:**"]
        for why in WHY:
            items = [(n, d) for n, w, d in self.skipped if w == why]
            if items:
                shown = "; ".join(f"{n}{f' ({d})' if d else ''}" for n, d in items[:10])
                lines.append(f"- {why} ({len(items)}): {shown}" + (" …" if len(items) > 10 else ""))
        return "\n".join(lines)


def _read_zip(ctx: AppContext, path: Path, out: Path, entries: list[tuple[str, Path]],
              report: ImportReport) -> None:
    """The zip's image entries, each written to ``out`` under a name of our own (never the entry's path), and
    their names in the zip; an entry over the upload limit is skipped unread."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        report.skipped.append((path.name, "unreadable", f"not a zip file: {e}"))
        return
    with z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir() or name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("."):
                continue  # folders and the archiver's own files
            if len(entries) >= MAX_IMPORT:
                report.skipped.append((name, "refused", f"one import reads at most {MAX_IMPORT} files"))
                continue
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                if name.lower() != "metadata.jsonl":  # the export's own table: not an image, expected
                    report.skipped.append((name, "not an image", ""))
                continue
            if info.file_size > ctx.max_upload_bytes:
                report.skipped.append((name, "too large", f"{info.file_size / 2**20:.1f} MiB; the limit is "
                                                          f"{ctx.max_upload_bytes / 2**20:.0f} MiB"))
                continue
            target = out / f"{len(entries):05d}{PurePosixPath(name).suffix.lower()}"
            with z.open(info) as src:
                data = src.read(ctx.max_upload_bytes + 1)  # the header's size may lie
            if len(data) > ctx.max_upload_bytes:
                report.skipped.append((name, "too large", f"the limit is {ctx.max_upload_bytes / 2**20:.0f} MiB"))
                continue
            target.write_bytes(data)
            entries.append((name, target))


def _entries(ctx: AppContext, paths: list[str], report: ImportReport) -> list[tuple[str, Path]]:
    """(name by which the pair is matched, file) of every image uploaded, zips opened."""
    out = Path(ctx.scratch("darl-import-"))
    entries: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.suffix.lower() == ".zip":
            _read_zip(ctx, p, out, entries, report)
        elif len(entries) >= MAX_IMPORT:
            report.skipped.append((p.name, "refused", f"one import reads at most {MAX_IMPORT} files"))
        else:
            entries.append((p.name, p))
    return entries


def _opened(ctx: AppContext, name: str, path: Path, what: str, report: ImportReport) -> Any:
    """The decoded image, or None after recording why it was skipped (too large, unreadable, not an image)."""
    try:
        return to_rgb(ctx.open_upload(path, what))[0]
    except UserError as e:
        said = str(e).removeprefix(f"{path.name}: ")
        why = ("too large" if "limit" in said else "not an image" if "unsupported file type" in said
               else "unreadable")
        report.skipped.append((name, why, said))
        return None


def record_scores(ctx: AppContext, sample_id: int, r: RestoreResult, sft: str, rl: str, steps: int | None,
                  user: str = "anonymous") -> None:
    """Store each model's PSNR, SSIM (with a ground truth) and NIQE from a restore's score rows."""
    for label, model in (("SFT", sft), ("RL", rl)):
        row = next((row for row in r.scores if row[0] == label), None)
        if row is None:
            continue
        values = {name: row[j] for j, name in enumerate(r.headers) if j}

        def num(key: str) -> float | None:
            v = values.get(key)  # noqa: B023
            return float(v) if isinstance(v, (int, float)) and v == v else None
        ctx.store.add_scores(sample_id, model, num("psnr"), num("ssim"), num("niqe"), steps, user)


def import_pairs(ctx: AppContext, paths: list[str] | None, reason: str = "imported", task: str = "blind",
                 measure: bool = True, user: str = "anonymous", steps: int | None = None) -> ImportReport:
    """Flag every input / ground-truth pair of the uploaded files and zips (``CONVENTION``) in one step.
    Each is checked and stored by ``restore_service.flag_sample``; a pair that cannot be is skipped with the reason
    (unreadable, too large, size mismatch, no pair, duplicate, ...), never the whole import."""
    from darl_core.models.pipeline import DEFAULT_STEPS, DEFAULT_TILE

    if not paths:
        raise UserError("choose the files to import: a zip, or the images themselves (" + CONVENTION + ")")
    if not isinstance(reason, str) or not reason.strip():
        raise UserError("choose a reason for the imported flags")
    steps = DEFAULT_STEPS if steps is None else int(steps)
    report = ImportReport()
    pairs: dict[str, dict[str, tuple[str, Path]]] = {}
    for name, path in _entries(ctx, [str(p) for p in paths], report):
        key = pair_key(name)
        if key is None:
            report.skipped.append((name, "not named by the convention", CONVENTION))
            continue
        slot = pairs.setdefault(key[0], {})
        if key[1] in slot:
            report.skipped.append((name, "duplicate", f"a second {key[1]} named {key[0]} (kept {slot[key[1]][0]})"))
            continue
        slot[key[1]] = (name, path)
    flagged = {r.sample_id for r in ctx.store.flagged()}
    seen: dict[str, str] = {}  # image_key -> pair name, within this import
    spent = 0.0
    sft, rl = ctx.default_models()
    for key in sorted(pairs):
        slot = pairs[key]
        if "lq" not in slot:
            report.skipped.append((slot["gt"][0], "no pair", f"no input named {key} (lq/{key} or {key}_lq)"))
            continue
        lq = _opened(ctx, slot["lq"][0], slot["lq"][1], "image", report)
        gt = _opened(ctx, slot["gt"][0], slot["gt"][1], "ground truth", report) if "gt" in slot else None
        if lq is None or ("gt" in slot and gt is None):
            continue
        if gt is not None and (problem := gt_size_problem(lq.size, gt.size)):
            report.skipped.append((key, "size mismatch", problem))
            continue
        k = image_key(lq)
        if k in seen:
            report.skipped.append((key, "duplicate", f"the same image as {seen[k]}"))
            continue
        seen[k] = key
        existing = ctx.store.find_sample(png_bytes(lq))
        if existing in flagged:
            report.skipped.append((key, "duplicate", f"already flagged as sample #{existing}"))
            continue
        d = kind = on = r = None
        if measure:
            cost = work(lq.size, steps, DEFAULT_TILE)[0]
            if spent + cost > ctx.max_work:
                report.skipped.append((key, "over the work budget", "import it with measuring off, or on its own"))
                continue
            try:
                r = restore(ctx, str(slot["lq"][1]), task, sft, rl, steps, gt_path=str(slot["gt"][1]) if gt else None)
            except UserError as e:
                report.skipped.append((key, "refused", str(e)))
                continue
            spent += cost
            d, kind, on = r.difficulty, r.difficulty_kind or None, image_key(r.input)
        try:
            sid, _ = flag_sample(ctx, str(slot["lq"][1]), reason, "", str(slot["gt"][1]) if gt else None, task, user,
                                 d, kind, on)
        except UserError as e:
            report.skipped.append((key, "refused", str(e)))
            continue
        if r is not None:
            record_scores(ctx, sid, r, sft, rl, steps, user)
        report.imported.append((sid, key, gt is not None))
    return report

