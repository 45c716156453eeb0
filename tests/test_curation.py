"""Curation at scale, without a browser: bulk import of pairs, each model's scores in the samples table and the
orders they give, undo, the one-by-one review; the Fine-tune tab's panels, per-size estimates and model labels."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage import Store
from ui import (
    AppContext,
    UserError,
    bulk_import,
    finetune_tab,
    restore_service,
    samples_tab,
)


@pytest.fixture
def ctx(tmp_path: Path) -> AppContext:
    return AppContext(Store(directory=tmp_path / "data"))


def _png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _file(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> str:
    path.write_bytes(_png(seed, size))
    return str(path)


def test_pairs_are_matched_by_folder_or_by_suffix() -> None:
    assert bulk_import.pair_key("lq/a.png") == ("a", "lq")
    assert bulk_import.pair_key("set1/GT/a.jpg") == ("set1/a", "gt")
    assert bulk_import.pair_key("x/lq/sub/b.png") == ("x/sub/b", "lq")
    assert bulk_import.pair_key("c_lq.png") == ("c", "lq") and bulk_import.pair_key("d/c-GT.png") == ("d/c", "gt")
    assert bulk_import.pair_key("plain.png") is None and bulk_import.pair_key("lqx.png") is None


def test_bulk_import_flags_the_pairs_and_names_each_skipped_file_with_why(ctx: AppContext, tmp_path: Path) -> None:
    restore_service.flag(ctx, _file(tmp_path / "old.png", 7), "artifacts")  # already flagged: a duplicate
    z = tmp_path / "pairs.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("lq/a.png", _png(1))
        f.writestr("gt/a.png", _png(2))
        f.writestr("lq/b.png", _png(3))
        f.writestr("gt/b.png", _png(4, (40, 40)))  # the wrong size
        f.writestr("gt/c.png", _png(5))  # no input
        f.writestr("lq/d.png", b"not an image at all")
        f.writestr("e_lq.png", _png(1))  # the same pixels as a
        f.writestr("lq/old.png", _png(7))
        f.writestr("notes.txt", "x")
        f.writestr("f.png", _png(9))  # neither convention
        f.writestr("__MACOSX/lq/._a.png", b"junk")  # the archiver's own: ignored
    loose = _file(tmp_path / "g_lq.png", 11)  # a loose file beside the zip, no ground truth
    report = bulk_import.import_pairs(ctx, [str(z), loose], reason="imported", measure=False)
    assert [(name, gt) for _, name, gt in report.imported] == [("a", True), ("g", False)]
    why = {name: reason for name, reason, _ in report.skipped}
    assert why == {"b": "size mismatch", "gt/c.png": "no pair", "lq/d.png": "unreadable", "e": "duplicate",
                   "old": "duplicate", "notes.txt": "not an image", "f.png": "not named by the convention"}
    msg = report.message()
    assert msg.startswith("**Imported 2** as flagged samples (1 with a ground truth): #2 a, #3 g.")
    assert "- size mismatch (1): b (the ground truth must have the input's size 48x40" in msg
    assert "already flagged as sample #1" in msg and "the same image as a" in msg
    # the flag path's own records: the reason, the ground truth kept with the sample
    rows = {r.sample_id: r for r in ctx.store.flagged()}
    assert rows[2].reason == "imported" and rows[2].gt_path is not None and rows[3].gt_path is None
    # a too large entry is skipped unread (its header's size is over the limit)
    small = AppContext(ctx.store, max_upload_bytes=1000)
    z2 = tmp_path / "big.zip"
    with zipfile.ZipFile(z2, "w") as f:
        f.writestr("h_lq.png", _png(12, (64, 64)))
    assert bulk_import.import_pairs(small, [str(z2)], measure=False).skipped[0][1] == "too large"
    with pytest.raises(UserError, match="choose the files"):
        samples_tab.import_files(ctx, [])


def test_a_measured_import_stores_the_difficulty_and_each_models_scores(ctx: AppContext, tmp_path: Path) -> None:
    lq, gt = _file(tmp_path / "p_lq.png", 1, (64, 64)), _file(tmp_path / "p_gt.png", 2, (64, 64))
    msg = samples_tab.import_files(ctx, [lq, gt], "imported", "blind", measure=True)
    assert "**Imported 1**" in msg and "Nothing was skipped" in msg
    row = ctx.store.flagged()[0]
    assert row.difficulty_kind == "gt" and 0 <= row.difficulty <= 2  # 1 - SSIM of the SFT restoration
    view = samples_tab.flagged_view(ctx)
    sft = view.rows[0][view.headers.index("SSIM ↑ · sft-blind-fast")]
    assert row.difficulty == pytest.approx(1 - sft, abs=1e-3)  # the same restore gave both
    assert "PSNR dB ↑ · darl-blind" in view.headers and "NIQE ↓ · darl-blind" not in view.headers  # 64 px: no NIQE


def test_model_columns_and_orders_by_worst_score_and_disagreement(ctx: AppContext, tmp_path: Path) -> None:
    ids = [ctx.store.flag_upload(_png(s), 48, 40, _png(s + 50), reason=f"r{s}")[0] for s in range(4)]
    # restores recorded by the app (two models) and a job's before and after (its base and its new model)
    scores = {ids[0]: (30.0, 20.0), ids[1]: (25.0, 24.0), ids[2]: (28.0, 18.0)}  # ids[3]: never restored
    for sid, (a, b) in scores.items():
        ctx.store.add_scores(sid, "/m/alpha", psnr=a, ssim=0.9, niqe=5.0)
        ctx.store.add_scores(sid, "/m/beta", psnr=b, ssim=0.8, niqe=6.0)
    job = ctx.store.create_job({"base_model": "/m/alpha"}, [ids[1]])
    ctx.store.set_comparisons(job, [{"subset": "samples", "name": "s", "sample_id": ids[1], "lq_path": "a",
                                     "base_path": "b", "new_path": "c", "gt_path": None,
                                     "metrics": {"psnr_base": 26.0, "psnr_new": 22.5}}])
    view = samples_tab.flagged_view(ctx)
    assert [r[0] for r in view.rows] == ids[::-1]  # newest flag first, as before
    assert view.headers[len(samples_tab.HEADERS):] == ["PSNR dB ↑ · alpha", "SSIM ↑ · alpha", "NIQE ↓ · alpha",
                                                        "PSNR dB ↑ · beta", "SSIM ↑ · beta", "NIQE ↓ · beta",
                                                        f"PSNR dB ↑ · job:{job}"]
    by_id = {r[0]: r for r in view.rows}
    at = view.headers.index
    assert by_id[ids[1]][at("PSNR dB ↑ · alpha")] == 26.0  # the job's numbers are newer than the restore's
    assert by_id[ids[1]][at(f"PSNR dB ↑ · job:{job}")] == 22.5 and by_id[ids[3]][at("PSNR dB ↑ · alpha")] is None
    # worst PSNR (the lowest of any model): 18 (ids[2]), 20 (ids[0]), 22.5 (ids[1]); unmeasured last
    worst = samples_tab.flagged_view(ctx, sort="worst_psnr")
    assert [r[0] for r in worst.rows] == [ids[2], ids[0], ids[1], ids[3]]
    assert worst.headers[len(samples_tab.HEADERS)] == "worst PSNR dB" and worst.rows[0][len(samples_tab.HEADERS)] == 18.0
    # disagreement: the spread between the models, largest first: 10 (ids[0]), 10 (ids[2]) newest first, 3.5
    spread = samples_tab.flagged_view(ctx, sort="spread_psnr")
    assert [r[0] for r in spread.rows] == [ids[2], ids[0], ids[1], ids[3]]
    assert [r[len(samples_tab.HEADERS)] for r in spread.rows] == [10.0, 10.0, 3.5, None]
    assert [r[0] for r in samples_tab.list_flagged(ctx, sort="worst_niqe")[1]][:3] == [ids[2], ids[1], ids[0]]
    with pytest.raises(UserError, match="unknown order"):
        samples_tab.flagged_view(ctx, sort="best")


def test_undo_takes_back_the_last_flag_or_unflag_and_keeps_both_in_the_history(ctx: AppContext,
                                                                                 tmp_path: Path) -> None:
    assert samples_tab.undo(ctx, "ann") == ("Nothing to undo: you have no flag or unflag left that was not undone.",
                                            None)
    a = _file(tmp_path / "a.png", 1)
    restore_service.flag(ctx, a, "artifacts", user="ann", difficulty_value=0.4, difficulty_kind="gt")
    restore_service.flag(ctx, a, "blur left", user="ann")  # her second flag replaces the first
    assert "#2" in restore_service.flag(ctx, a, "noise left", user="bob")  # bob's flag is his own sample (#39)
    samples_tab.unflag(ctx, 1, "ann")
    assert [r.sample_id for r in ctx.store.flagged()] == [2]
    msg, sid = samples_tab.undo(ctx, "ann")  # the unflag: her flag stands again
    assert sid == 1 and msg.startswith("Undone: your unflag of sample #1; it is now flagged by ann")
    assert {(r.sample_id, r.user, r.reason) for r in ctx.store.flagged()} == {(1, "ann", "blur left"),
                                                                             (2, "bob", "noise left")}
    msg, _ = samples_tab.undo(ctx, "ann")  # then her second flag: her first stands again, with its difficulty
    assert "flag of sample #1 (blur left)" in msg
    with ctx.store.session() as s:
        from sqlalchemy import select

        from storage import Flag
        standing = {(f.sample_id, f.user): (f.reason, f.difficulty) for f in s.scalars(
            select(Flag).where(Flag.id.in_(ctx.store._active_flags())))}
    assert standing == {(1, "ann"): ("artifacts", 0.4), (2, "bob"): ("noise left", None)}
    samples_tab.undo(ctx, "ann")  # then her first flag: she no longer flags it; bob's sample is untouched
    assert [r.sample_id for r in ctx.store.flagged()] == [2]
    assert "Nothing to undo" in samples_tab.undo(ctx, "ann")[0]
    assert [e.action for e in ctx.store.events("sample:1")] == ["undo", "undo", "undo"]
    with ctx.store.session() as s:  # nothing was deleted: every event is still there, the undos appended
        assert s.query(Flag).count() == 7  # 3 flags, 1 unflag, 3 events appended by the undos


def test_review_goes_through_the_listed_samples_flagging_and_unflagging(ctx: AppContext, tmp_path: Path) -> None:
    for s in range(3):
        restore_service.flag(ctx, _file(tmp_path / f"{s}.png", s), "imported", difficulty_value=0.1 * s,
                         difficulty_kind="gt")
    queue = [r[0] for r in samples_tab.flagged_view(ctx).rows]
    assert queue == [3, 2, 1]
    lq, gt, text = samples_tab.review_line(ctx, queue, 0)
    assert Path(lq).is_file() and gt is None and text.startswith("**1 of 3: sample #3**") and "flagged by" in text
    assert "F flag" in samples_tab.KEYS_HELP.replace("**", "") and "Z undo" in samples_tab.KEYS_HELP.replace("**", "")
    assert samples_tab.review_flag(ctx, queue, 0, "hallucination") == "Sample #3 flagged (hallucination). Z undoes it."
    row = {r.sample_id: r for r in ctx.store.flagged()}[3]
    assert row.reason == "hallucination" and row.difficulty == pytest.approx(0.2)  # the measured difficulty kept
    assert "unflagged" in samples_tab.review_unflag(ctx, queue, 1)
    assert "**not flagged**" in samples_tab.review_line(ctx, queue, 1)[2]  # still reviewable, said so
    assert "not flagged: nothing to unflag" in samples_tab.review_unflag(ctx, queue, 1)
    assert samples_tab.review_line(ctx, queue, 3)[2].startswith("**Reviewed all 3.**")
    with pytest.raises(UserError, match="Start review"):
        samples_tab.review_flag(ctx, queue, 3, "artifacts")


def test_the_export_line_is_new_each_time_and_says_what_was_exported(ctx: AppContext, tmp_path: Path) -> None:
    restore_service.flag(ctx, _file(tmp_path / "a.png", 1), "artifacts")
    path = samples_tab.export_zip(ctx)
    line = samples_tab.export_message(path)
    assert line.startswith("Exported 1 samples at ") and "hard_samples.zip" in line


def test_each_run_size_states_its_expected_time_for_the_chosen_samples(ctx: AppContext) -> None:
    assert [lbl for lbl, _ in finetune_tab.size_choices(ctx, "darl", 20)] == list(finetune_tab.SIZE_LABELS.values())
    for s in range(4):
        ctx.store.flag_upload(_png(s, (64, 64)), 64, 64, reason="test")
    choices = dict((k, lbl) for lbl, k in finetune_tab.size_choices(ctx, "darl", 20))
    mins, _ = finetune_tab.expected_minutes(ctx, "darl", 20, 4)
    line = finetune_tab.estimate_text(ctx, "darl", 20)  # the line below the form says the same times
    for size, label in choices.items():
        said = label.rsplit("≈ ", 1)[1]
        assert label.startswith(finetune_tab.SIZE_LABELS[size]) and f"{size} ≈ {said}" in line
        assert float(said.split()[0]) == pytest.approx(mins[size], abs=0.5)
    one = dict((k, lbl) for lbl, k in finetune_tab.size_choices(ctx, "darl", 20, "1"))
    assert one["full"] != choices["full"]  # one sample chosen: another time
    assert dict((k, lbl) for lbl, k in finetune_tab.size_choices(ctx, "darl", -1))["full"] == \
        finetune_tab.SIZE_LABELS["full"]


def test_curves_are_one_panel_per_metric_and_labels_are_whole(ctx: AppContext, tiny_model_dir: Path) -> None:
    assert finetune_tab.curve_panels(ctx, None) == {}
    assert "no job chosen" in finetune_tab.curves_title(ctx, None)
    job = ctx.store.create_job({"preset": "darl"}, [])
    assert "no round yet" in finetune_tab.curves_title(ctx, job)
    for step in (1, 2, 3):
        ctx.store.add_metrics(job, step, {"reward": -4.0 + step, "kl": 0.01 * step, "lr": 1e-4})
    panels = finetune_tab.curve_panels(ctx, job)
    assert list(panels) == ["reward", "kl"]  # lr is not a curve; each its own frame, so its own y axis
    assert list(panels["kl"]["value"]) == pytest.approx([0.01, 0.02, 0.03]) and list(panels["reward"]["round"]) == [1, 2, 3]
    assert "one panel per metric" in finetune_tab.curves_title(ctx, job)
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny-finetuned", evaluation={"heldout_psnr": 24.125,
                                                                                      "heldout_ssim": 0.7})
    label = finetune_tab.model_label(ctx, str(tiny_model_dir))
    assert label == "**tiny-finetuned** · heldout_psnr 24.12 · heldout_ssim 0.7"
    assert finetune_tab.model_label(ctx, "/nowhere").endswith("(not one of the app's models)")
