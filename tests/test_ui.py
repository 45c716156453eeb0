"""App handlers without a browser, the upload fuzz test, and the app driven by gradio_client."""

from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, record, register_models, register_tiny
from PIL import Image
from sqlalchemy import text

from darl_core.data.images import pil_to_tensor
from darl_core.jobs.worker import run_worker
from darl_core.rewards.difficulty import difficulty, difficulty_no_reference
from storage import Job, Store
from ui import (
    AppContext,
    UserError,
    compare,
    finetune_tab,
    models_tab,
    restore_service,
    samples_tab,
)


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> AppContext:
    # the tiny models the test uses are registered: a restore takes registered (or shipped) models only
    return register_tiny(AppContext(Store(directory=tmp_path / "data")), request)


def _img(path: Path, size: tuple[int, int] = (40, 32), mode: str = "RGB", seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return str(path)


def _count(store: Store, table: str) -> int:
    with store.session() as s:
        return int(s.execute(text(f"SELECT count(*) FROM {table}")).scalar())


def test_restore_scores_and_difficulty(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    lq = _img(tmp_path / "lq.png", (100, 100))
    gt = _img(tmp_path / "gt.png", (100, 100), seed=1)
    m = str(tiny_model_dir)
    r = restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=0, tile=64, gt_path=gt)
    assert r.sft.size == r.rl.size == r.input.size == (100, 100)
    assert r.headers == ["image", "niqe", "piqe", "psnr", "ssim"] and [row[0] for row in r.scores] == ["input", "SFT", "RL"]
    assert isinstance(r.scores[1][3], float) and "1 − SSIM" in r.difficulty_text and 0 <= r.difficulty <= 2
    assert r.difficulty_kind == "gt" and "ground-truth measure" in r.difficulty_text
    # it reuses the table's SSIM of the SFT restoration: the same value as computing it afresh
    want = float(difficulty(pil_to_tensor(r.sft)[None], pil_to_tensor(Image.open(gt).convert("RGB"))[None]))
    assert r.difficulty == pytest.approx(want, abs=1e-6)
    assert "0 = easy … 1 = hard" in r.difficulty_text
    assert all(Path(f).is_file() for f in r.files)
    # every shown row says which way is better and which image is best
    table, note = restore_service.score_table(r.headers, r.scores, r.rough)
    assert r.rough == {"niqe": ["input", "SFT", "RL"]}  # 100 px a side: NIQE's row says it is rough
    assert "*NIQE is rough here: every image is under 192 px a side" in note
    assert [row[:2] for row in table] == [
        ["NIQE (no reference, rough*)", "lower ↓"], ["PIQE (no reference)", "lower ↓"],
        ["PSNR, dB (vs ground truth)", "higher ↑"], ["SSIM (vs ground truth)", "higher ↑"]]
    psnr = table[2]
    assert psnr[5] in ("input", "SFT", "RL") and psnr[2:5][("input", "SFT", "RL").index(psnr[5])] == max(psnr[2:5])
    r2 = restore_service.restore(ctx, lq, "blind", m, m, steps=2, tile=64)
    assert "proxy" in r2.difficulty_text and r2.scores[0][3:] == [] and r2.difficulty_kind == "proxy"
    assert "no-reference proxy" in r2.difficulty_text and "0 = easy … 1 = hard" in r2.difficulty_text
    assert "rough: this restoration is under 192 px a side" in r2.difficulty_text
    # the proxy reuses the table's NIQE of the SFT restoration: the same value as computing it afresh
    assert r2.difficulty == pytest.approx(float(difficulty_no_reference(pil_to_tensor(r2.sft)[None])), abs=1e-6)
    # ... and already at upload, naming the size it must have (the page clears it with this message)
    wrong = _img(tmp_path / "g2.png", (50, 50))
    said = restore_service.ground_truth_problem(ctx, lq, wrong)
    w, h = Image.open(lq).size
    assert said == (f"the ground truth must have the input's size {w}x{h}, or an integer multiple of it for "
                    f"super-resolution (x4: {4 * w}x{4 * h}); got 50x50")
    assert restore_service.ground_truth_problem(ctx, lq, gt) is None and restore_service.ground_truth_problem(ctx, None, wrong) is None
    # a ground truth of the wrong size is refused before a model runs, not after the restorations
    stages = restore_service.restore_stages(ctx, lq, "blind", m, m, steps=2, tile=64,
                                        gt_path=_img(tmp_path / "g2.png", (50, 50)))
    ctx.speed.clear()
    with pytest.raises(UserError, match="ground truth is 50x50 but the restoration will be 100x100"):
        next(stages)
    assert ctx.speed == {}
    # the stages, in order: each restoration (its file written) as soon as it exists, then the scores
    seen = []
    for kind, v in restore_service.restore_stages(ctx, lq, "blind", m, m, steps=2, seed=7, tile=64, gt_path=gt):
        seen.append(kind)
        if kind != "done":
            assert v.label == kind and Path(v.file).is_file() and v.image.size == (100, 100) and v.gt is not None
            assert len(ctx.speed) == 1  # measured as soon as the SFT model finished
    assert seen == ["SFT", "RL", "done"]
    with pytest.raises(UserError, match="SFT model"):
        restore_service.restore(ctx, lq, "blind", str(tmp_path / "nope"), m, steps=2, tile=64)


def test_a_restore_uses_registered_or_shipped_models_only(ctx: AppContext, tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    """Issue #39: the pickers took any server path, and the message told which paths exist. A model folder
    that is not registered is refused with one message whether or not it exists, before anything loads."""
    lq = _img(tmp_path / "lq.png", (64, 64))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)  # a real model folder, not registered
    said = []
    for path in (str(copy), str(tmp_path / "missing"), "/etc", "/etc/passwd"):
        with pytest.raises(UserError) as e:
            restore_service.restore(ctx, lq, "blind", path, str(tiny_model_dir), steps=1, tile=64)
        said.append(str(e.value).replace(repr(path[:80]), "PATH"))
    assert len(set(said)) == 1 and "is not one of this app's models; choose one from the SFT picker" in said[0]
    with pytest.raises(UserError, match="RL model: .* is not one of this app's models"):
        restore_service.restore(ctx, lq, "blind", str(tiny_model_dir), str(copy), steps=1, tile=64)
    assert str(copy.resolve()) not in ctx._models and str(copy) not in ctx._models  # nothing was loaded
    register_models(ctx, copy)  # registered (the Models tab lists it): restored
    r = restore_service.restore(ctx, lq, "blind", str(copy), str(tiny_model_dir), steps=1, tile=64)
    assert r.sft.size == (64, 64)


def test_the_same_request_again_reuses_its_restorations(ctx: AppContext, tmp_path: Path,
                                                       tiny_model_dir: Path) -> None:
    # A ground truth added after a first look, or one model changed: what decides a restoration (model,
    # image, steps, seed, tile) is the same, so it is not computed again, and the page says so.
    lq, m = _img(tmp_path / "lq.png", (100, 100)), str(tiny_model_dir)
    first = restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=3, tile=64)
    assert first.reused == ["RL"]  # the same model and settings on both sides: one restoration, shown twice
    assert restore_service.took(first).startswith("the RL restoration reused (same image, model, steps, seed")
    again = restore_service.restore(ctx, lq, "denoise", m, m, steps=2, seed=3, tile=64,
                                gt_path=_img(tmp_path / "gt.png", (100, 100), seed=1))
    assert again.reused == ["SFT", "RL"] and restore_service.took(again).startswith("both restorations reused")
    assert again.headers[-2:] == ["psnr", "ssim"]  # scored afresh, with the ground truth
    assert restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=4, tile=64).reused == ["RL"]  # new seed
    assert restore_service.restore(ctx, lq, "blind", m, m, steps=1, seed=3, tile=64).reused == ["RL"]  # new steps
    # reuse is invisible: computing it again gives the same pixels
    ctx.max_kept_pixels = 0
    fresh = restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=3, tile=64)
    assert fresh.reused == [] and restore_service.took(fresh).startswith("both restorations took")
    assert np.array_equal(np.asarray(fresh.sft), np.asarray(first.sft))
    # a reloaded model is another restorer: nothing of the old one is reused
    ctx.max_kept_pixels = 32_000_000
    restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=3, tile=64)
    ctx._models.clear()
    assert restore_service.restore(ctx, lq, "blind", m, m, steps=2, seed=3, tile=64).reused == ["RL"]
    # kept restorations are bounded by their pixels, the least recently used dropped first
    ctx.max_kept_pixels = 100 * 100 * 2
    for seed in range(5):
        restore_service.restore(ctx, lq, "blind", m, m, steps=1, seed=seed, tile=64)
    assert len(ctx._kept) == 2 and sum(k[3] for k in ctx._kept) == 3 + 4  # the last two seeds


def test_restore_with_a_latent_restorer_and_two_stage_steps_zero(ctx: AppContext, tmp_path: Path,
                                                                 tiny_sd_dir: Path, tiny_model_dir: Path) -> None:
    # The SD x4 family goes through the app (it has no set_progress_bar_config); output is 4x larger
    lq = _img(tmp_path / "lq.png", (24, 24))
    r = restore_service.restore(ctx, lq, "blind", str(tiny_sd_dir), str(tiny_sd_dir), steps=2, tile=64)
    assert r.sft.size == (96, 96)
    # steps 0 = stage 1 alone: a two-stage model restores, a single-stage one gets a message
    from darl_core.models.pipeline import (
        RestorationPipeline,
        build_stage1,
        build_unet,
        make_scheduler,
    )

    two = tmp_path / "two"
    RestorationPipeline(build_unet("tiny", 0), make_scheduler(), 0.5, stage1=build_stage1("tiny", 0)).save_pretrained(two)
    register_models(ctx, two)
    r0 = restore_service.restore(ctx, lq, "blind", str(two), str(two), steps=0, tile=64)
    assert r0.sft.size == (24, 24)
    with pytest.raises(UserError, match="no stage 1"):
        restore_service.restore(ctx, lq, "blind", str(two), str(tiny_model_dir), steps=0, tile=64)


def test_restore_several_images(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    m = str(tiny_model_dir)
    paths = [_img(tmp_path / f"b{i}.png", (100, 96), seed=i) for i in range(2)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rows, gallery, zpath = restore_service.restore_batch(ctx, [*paths, str(bad)], "blind", m, m, steps=2, tile=64)
    assert [r[1] for r in rows] == ["ok; NIQE rough: under 192 px"] * 2 + [rows[2][1]]  # 100x96: too small for NIQE
    assert rows[2][0] == "bad.png" and rows[2][1].startswith("skipped: ") and "bad.png" not in rows[2][1], rows[2]
    assert len(gallery) == 4
    assert sorted(zipfile.ZipFile(zpath).namelist()) == ["b0_rl.png", "b0_sft.png", "b1_rl.png", "b1_sft.png"]
    rows, gallery, zpath = restore_service.restore_batch(ctx, [str(bad)], "blind", m, m, steps=2, tile=64)
    assert rows[0][1].startswith("skipped: ") and gallery == [] and zpath is None  # no empty archive offered


def test_flag_list_unflag_export(ctx: AppContext, tmp_path: Path) -> None:
    a = _img(tmp_path / "a.png")
    msg = restore_service.flag(ctx, a, "artifacts", "halo", _img(tmp_path / "ga.png", seed=3), "denoise", "ann", 0.3, "gt")
    assert "#1" in msg and "ground truth" in msg
    restore_service.flag(ctx, _img(tmp_path / "b.png", seed=5), "blur left", user="bob")
    gallery, table = samples_tab.list_flagged(ctx)
    assert len(gallery) == 2 and {row[2] for row in table} == {"artifacts", "blur left"}
    assert [row[0] for row in samples_tab.list_flagged(ctx, task="denoise")[1]] == [1]
    assert [row[0] for row in samples_tab.list_flagged(ctx, d_min=0.2)[1]] == [1]
    # what the form sends when untouched: no filter at all (the unestimated sample #2 stays)
    assert len(samples_tab.list_flagged(ctx, "", "", 0, 0.0, samples_tab.D_MAX)[1]) == 2
    assert [row[0] for row in samples_tab.list_flagged(ctx, "", "", 0, 0.0, 0.35)[1]] == [1]
    assert samples_tab.D_MAX == 1.0  # the form's default bound is on the 0 .. 1 scale it filters
    assert [row[0] for row in samples_tab.list_flagged(ctx, "", "", 0, 0.0, 0.25)[1]] == []  # 0.3 > 0.25
    # the reason filter: any part of the reason, any case
    assert [row[0] for row in samples_tab.list_flagged(ctx, reason="BLUR")[1]] == [2]
    assert samples_tab.list_flagged(ctx, reason="%")[1] == []  # a LIKE wildcard is a plain character here
    # the export is a 🤗 datasets image folder: unzipped, load_dataset reads it as it is
    z = zipfile.ZipFile(samples_tab.export_zip(ctx))
    assert {"metadata.jsonl", "lq/000001.png", "gt/000001.png", "lq/000002.png"} <= set(z.namelist())
    z.extractall(tmp_path / "export")
    from datasets import load_dataset

    ds = load_dataset("imagefolder", data_dir=str(tmp_path / "export"), split="train",
                      cache_dir=str(tmp_path / "hf-cache"))
    by_id = {r["sample"]: r for r in ds}
    assert set(by_id) == {1, 2} and by_id[1]["note"] == "halo" and by_id[1]["difficulty"] == 0.3
    assert by_id[1]["lq"].size == (40, 32) and by_id[1]["gt"].size == (40, 32) and by_id[2]["gt"] is None
    assert by_id[1]["difficulty_kind"] == "gt" and by_id[2]["reason"] == "blur left" and by_id[1]["tags"] == []
    # a proxy difficulty is never compared with a ground-truth one: bounds apply to one kind at a time
    restore_service.flag(ctx, _img(tmp_path / "c.png", seed=6), "noise left", difficulty_value=0.5, difficulty_kind="proxy")
    gallery, table = samples_tab.list_flagged(ctx)
    assert {row[0]: row[5] for row in table} == {1: "ground truth (1 − SSIM)", 2: "", 3: "no-reference proxy (NIQE)"}
    # tags on several samples at once; the filter and the table show them
    assert "Added hard-case, night to 2 samples" in samples_tab.tag_samples(ctx, [1, 3], "hard-case, Night")
    samples_tab.tag_samples(ctx, [3], "night", remove=True)
    assert [row[0] for row in samples_tab.list_flagged(ctx, tag="night")[1]] == [1]
    assert [row[0] for row in samples_tab.list_flagged(ctx, tag="hard-case")[1]] == [3, 1]
    assert {row[0]: row[3] for row in samples_tab.list_flagged(ctx)[1]}[1] == "hard-case, night"
    for bad in ("a,b%", "x" * 33):
        with pytest.raises(UserError, match="tag"):
            samples_tab.tag_samples(ctx, [1], bad)
    with pytest.raises(UserError, match="tick"):
        samples_tab.tag_samples(ctx, [], "night")
    with pytest.raises(UserError, match="no sample #99"):
        samples_tab.tag_samples(ctx, [1, 99], "night")
    assert [row[0] for row in samples_tab.list_flagged(ctx, tag="night")[1]] == [1]  # all or nothing
    assert [row[0] for row in samples_tab.list_flagged(ctx, d_min=0.2)[1]] == [1]  # ground truth by default
    assert [row[0] for row in samples_tab.list_flagged(ctx, d_min=0.2, kind="proxy")[1]] == [3]
    assert [row[0] for row in samples_tab.list_flagged(ctx, "", "", 0, 0.0, samples_tab.D_MAX, "proxy")[1]] == [3, 2, 1]
    with pytest.raises(UserError, match="difficulty kind"):
        restore_service.flag(ctx, a, "artifacts", difficulty_value=0.2, difficulty_kind="ssim")
    # a clicked tile or row selects its sample; the picker lists what the table shows
    assert samples_tab.sample_from_caption(gallery[0][1]) == table[0][0] == samples_tab.sample_from_row(table[0])
    assert samples_tab.sample_choices(table)[0] == ("#3 noise left", 3) and samples_tab.sample_from_caption("x") is None
    # the sample view: its files and a line about it; "Open in Restore" hands over the same files
    lq, gt, text = samples_tab.sample_files(ctx, 1)
    assert Image.open(lq).size == (40, 32) and gt is not None and "#1" in text and "halo" in text
    assert samples_tab.sample_files(ctx, 2)[1] is None
    sft, rl, verdict = samples_tab.restore_sample(ctx, 1, steps=1)  # the shipped pair
    assert sft.size == rl.size == (40, 32) and "PSNR" in verdict and "best" in verdict
    samples_tab.unflag_many(ctx, [3, 1], "ann")
    assert [row[0] for row in samples_tab.list_flagged(ctx)[1]] == [2]
    with pytest.raises(UserError, match="not flagged"):
        samples_tab.unflag_many(ctx, [1, 2])  # nothing unflagged when one of them is not flagged
    assert [row[0] for row in samples_tab.list_flagged(ctx)[1]] == [2]
    with pytest.raises(UserError, match="tick"):
        samples_tab.unflag_many(ctx, [])
    with pytest.raises(UserError, match="not flagged"):
        samples_tab.sample_files(ctx, 1)
    with pytest.raises(UserError):
        samples_tab.unflag(ctx, 99)
    with pytest.raises(UserError, match="reason"):
        restore_service.flag(ctx, a, "")


def test_jobs_and_models(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    # the base model must be one of the app's models: a request naming any folder is refused
    with pytest.raises(UserError, match="base model: '/etc' is not one of the app's models"):
        finetune_tab.launch_job(ctx, "/etc", "niqe", "darl", 2)
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    with pytest.raises(UserError, match="no flagged samples"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2)
    for i in range(2):
        restore_service.flag(ctx, _img(tmp_path / f"s{i}.png", seed=i), "artifacts", gt_path=_img(tmp_path / f"g{i}.png", seed=9 + i))
    with pytest.raises(UserError, match="parse"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe piqe", "darl", 2)
    with pytest.raises(UserError, match="not flagged"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "7")
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 2, "1,2", "ann", size="paper")
    assert finetune_tab.job_status(ctx, job)["state"] == "queued"
    assert "waiting for a worker to take it" in finetune_tab.status_text(finetune_tab.job_status(ctx, job))
    with_k = finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 2, "", "ann", hardest_k=3)
    assert ctx.store.job(with_k).config["extra_hardest_k"] == 3
    with pytest.raises(UserError, match="processes"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 2, processes=0)
    # a job's size is bounded: rounds, and processes up to this machine's devices
    with pytest.raises(UserError, match="rounds must be between 1 and 5000, got 100000"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 100_000)
    with pytest.raises(UserError, match=f"processes must be between 1 and {ctx.max_processes}, got 64"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 2, processes=64)
    multi = finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "tiny_test", 2, "1", processes=2)
    # the quick run size: the method's preset with smaller settings, labelled in the jobs table
    quick = finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "1", size="quick")
    assert ctx.store.job(quick).config["probe_every"] == 0 and ctx.store.job(quick).config["num_steps"] == 2
    assert [r for r in finetune_tab.list_jobs(ctx) if r[0] == quick][0][3] == "darl (quick)"
    with pytest.raises(UserError, match="run size"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, size="huge")
    # a queued job says what it waits for: the jobs ahead of it, and a running one that is stopping
    assert finetune_tab.job_status(ctx, with_k)["waiting_for"] == f"waiting for 1 queued job before it (#{job})"
    assert ctx.store.claim_job("w0").id == job
    with ctx.store.session() as s:  # a cancel the running worker has not acted on yet
        s.get(Job, job).cancel_requested = True
    assert f"job #{job}, which is stopping (cancel requested)" in finetune_tab.status_text(
        finetune_tab.job_status(ctx, quick))
    with ctx.store.session() as s:  # undo the claim and the cancel: the job is run below
        j = s.get(Job, job)
        j.state, j.worker, j.cancel_requested, j.started_at = "queued", None, False, None
    ctx.store.request_cancel(quick)
    # while a job runs: its time per round and the time left; before its first round, no guess
    running = {"job": 9, "state": "running", "progress": 0.25, "error": None, "seconds_per_round": 12.0,
               "seconds_left": 180.0}
    assert "25%** · 12.0 s a round · about 3 min left" in finetune_tab.status_text(running)
    assert "checking the model on held-out photos" in finetune_tab.status_text({**running, "seconds_left": 0.0})
    assert "time left: after the first round" in finetune_tab.status_text(
        {**running, "seconds_per_round": None, "seconds_left": None})
    # one flagged sample, two processes: the batch is rounded up to a multiple of the process count
    assert ctx.store.job(multi).processes == 2 and ctx.store.job(multi).config["batch_size"] == 2
    ctx.store.request_cancel(multi)
    ctx.store.request_cancel(with_k)
    assert ctx.store.job(job).sample_ids == [1, 2]
    run_worker(ctx.store, "w", once=True)
    st = finetune_tab.job_status(ctx, job)
    assert st["state"] == "succeeded" and st["progress"] == 1.0, st["error"]
    round_s = sorted(v for _, n, v in ctx.store.metrics(job) if n == "round_s")
    assert st["seconds_per_round"] == round_s[len(round_s) // 2] > 0 and st["seconds_left"] is None
    assert f"{st['seconds_per_round']:.1f} s a round" in finetune_tab.status_text(st)
    curves = finetune_tab.job_curves(ctx, job)
    assert set(curves["metric"]) >= {"reward", "kl", "grad_norm_rl", "pool_w_mean"} and curves["round"].max() == 2
    # the picture to watch: the job's first input and its restoration after the last round
    lq, out, caption = finetune_tab.job_sample(ctx, job)
    assert Image.open(lq).size == Image.open(out).size and out.endswith("round_00002.png") and "round 2" in caption
    assert finetune_tab.job_sample(ctx, quick)[:2] == (None, None)  # cancelled before its first round
    # several jobs on one plot: one curve per job, a placeholder when none is chosen
    frame = finetune_tab.compare_frame(ctx, [job, quick], "reward")
    assert set(frame["metric"]) == {f"job #{job} · tiny_test · psnr"} and list(frame["round"]) == [1, 2]
    assert list(finetune_tab.compare_frame(ctx, [])["metric"]) == [finetune_tab.COMPARE_PLACEHOLDER]
    assert finetune_tab.compare_colors(frame) == {f"job #{job} · tiny_test · psnr": finetune_tab.PALETTE[0]}
    with pytest.raises(UserError, match="unknown curve"):
        finetune_tab.compare_frame(ctx, [job], "loss")
    # its before and after: a summary per set, a row per image (both samples have a truth: PSNR shown), the
    # gallery's base and new pictures, and "open in Restore" with the job's base and new models as the sides
    md, table, gallery, choices = finetune_tab.payoff_view(ctx, job)
    assert "did it pay off" in md and "the job's own samples**, 2:" in md and "held-out crops" in md
    assert [r[:2] for r in table[:2]] == [["samples", "sample 1"], ["samples", "sample 2"]] and len(table) == 10
    assert all("→" in r[3] for r in table) and all(r[2] != "—" for r in table)  # psnr reward: scored on every image
    assert len(gallery) == 20 and gallery[0][1] == "sample 1 · base" and gallery[1][1].startswith("sample 1 · new ")
    assert gallery[1][1].endswith(" dB")  # the new side's caption: its PSNR change
    # a click on a picture (two tiles per image) chooses that image for "Open in Restore"
    assert finetune_tab.payoff_pick_from_gallery(ctx, job, 3) == choices[1][1]
    assert finetune_tab.payoff_pick_from_gallery(ctx, job, 99) is None
    assert Image.open(gallery[0][0]).size == Image.open(gallery[1][0]).size
    lq, gt, base, new = finetune_tab.payoff_open(ctx, job, choices[0][1])
    assert Image.open(lq).size == Image.open(gt).size and base == str(tiny_model_dir)
    assert new == next(c.path for c in ctx.store.checkpoints() if c.job_id == job)
    assert "appears here when it finishes" in finetune_tab.payoff_view(ctx, with_k)[0] or \
        "did not finish" in finetune_tab.payoff_view(ctx, with_k)[0]
    assert "did not finish training" in finetune_tab.payoff_view(ctx, quick)[0]  # cancelled: nothing invented
    with pytest.raises(UserError, match="no such image"):
        finetune_tab.payoff_open(ctx, job, 10_000)
    with pytest.raises(UserError, match="has no before and after to open"):
        finetune_tab.payoff_open(ctx, quick, None)
    with pytest.raises(UserError, match="Image picker"):
        finetune_tab.payoff_open(ctx, job, None)
    assert "Choose a job above" in finetune_tab.payoff_view(ctx, None)[0]
    # the finished model was checked on held-out photos degraded by Pillow/JPEG, and registered with it
    ev = [c for c in ctx.store.checkpoints() if c.job_id == job][0].evaluation
    assert {"heldout_psnr", "heldout_ssim", "heldout_input_psnr"} <= set(ev) and 0 < ev["heldout_ssim"] <= 1
    rows = models_tab.list_checkpoints(ctx)
    child = [r for r in rows if r[3] == job][0]
    assert any(label.startswith(f"job-{job}") for label, _ in ctx.model_choices())
    with pytest.raises(UserError, match="descendants"):
        models_tab.delete(ctx, child[0] - 1 if child[2] else None, confirmed=True)
    models_tab.promote(ctx, child[0])
    assert ctx.default_models()[1] == child[6]
    with pytest.raises(UserError, match="default"):
        models_tab.delete(ctx, child[0], confirmed=True)
    with pytest.raises(UserError, match="already succeeded"):
        finetune_tab.cancel_job(ctx, job)
    # a checkpoint an unfinished job starts from is referenced; once free, its files go with it
    models_tab.promote(ctx, child[0] - 1)
    pending = finetune_tab.launch_job(ctx, child[6], "psnr", "tiny_test", 2)
    with pytest.raises(UserError, match="unfinished"):
        models_tab.delete_preview(ctx, child[0])
    ctx.store.request_cancel(pending)
    # deleting asks first: the preview says what goes; without the confirmation nothing is deleted
    assert f"Delete checkpoint #{child[0]}" in models_tab.delete_preview(ctx, child[0])
    with pytest.raises(UserError, match="confirmation"):
        models_tab.delete(ctx, child[0])
    assert Path(child[6]).exists()
    assert "with its files" in models_tab.delete(ctx, child[0], confirmed=True)
    assert not Path(child[6]).exists()
    assert child[6] not in {p for _, p in ctx.model_choices()}


# ----------------------------------------------------------------------------- fuzz

def _valid(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    rng = np.random.default_rng(size[0] * 31 + size[1])
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        im = Image.fromarray((rng.integers(0, 65535, (size[1], size[0]))).astype(np.uint16))
    elif mode == "F":
        im = Image.fromarray(rng.random((size[1], size[0])).astype(np.float32))
    elif mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def test_fuzz_1000_malformed_uploads(tmp_path: Path) -> None:
    ctx = AppContext(Store(directory=tmp_path / "data"), max_upload_bytes=200_000, max_pixels=1_000_000)
    rng = random.Random(1234)
    formats = [("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp"), ("GIF", ".gif")]
    modes = {"PNG": ["1", "L", "P", "LA", "RGBA", "RGB", "I;16"], "JPEG": ["L", "RGB", "CMYK"], "BMP": ["1", "L", "P", "RGB"],
             "TIFF": ["L", "RGB", "CMYK", "I;16", "F"], "WEBP": ["RGB", "RGBA"], "GIF": ["L", "P"]}
    bomb = io.BytesIO()
    Image.new("L", (1500, 1500)).save(bomb, "PNG")  # 2.25 MP in a few kB: over max_pixels
    accepted = rejected = 0
    for i in range(1000):
        fmt, suffix = rng.choice(formats)
        kind = rng.choice(["valid", "truncated", "garbage", "flipped", "bomb", "oversized", "empty", "suffix"])
        data = _valid(rng.choice(modes[fmt]), (rng.randint(1, 64), rng.randint(1, 64)), fmt)
        if kind == "truncated":
            data = data[: rng.randint(0, len(data) - 1)]
        elif kind == "garbage":
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2000)))
        elif kind == "flipped":
            b = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            data = bytes(b)
        elif kind == "bomb":
            data, suffix = bomb.getvalue(), ".png"
        elif kind == "oversized":
            data = data + b"\0" * 250_000
        elif kind == "empty":
            data = b""
        elif kind == "suffix":
            suffix = rng.choice([".txt", ".exe", ".svg", ""])
        path = tmp_path / f"f{i}{suffix}"
        path.write_bytes(data)
        before = _count(ctx.store, "samples"), _count(ctx.store, "flags")
        try:
            msg = restore_service.flag(ctx, str(path), "artifacts")
            accepted += 1
            assert msg.startswith("Flagged")
            assert _count(ctx.store, "flags") == before[1] + 1
        except UserError as e:  # the only exception a user may see
            rejected += 1
            assert path.name in str(e) and len(str(e)) > len(path.name) + 5
            assert (_count(ctx.store, "samples"), _count(ctx.store, "flags")) == before
    assert accepted > 100 and rejected > 300, (accepted, rejected)
    record("uploads", tried=1000, refused_with_message=rejected, crashes=0, rows_wrongly_stored=0)


# ----------------------------------------------------------------------------- the app over HTTP


def test_every_image_the_app_shows_is_lossless(tmp_path: Path) -> None:
    # An image passed to Gradio as a picture is encoded in the component's format, WebP at quality 80 by
    # default: lossy, and the texture a user compares would be the codec's (see compare.SHOWN).
    import gradio as gr

    from ui import build_app
    from ui.upload import ImageUpload

    demo = build_app(AppContext(Store(directory=tmp_path / "data")))
    shown = [b for b in demo.blocks.values() if isinstance(b, gr.Image | gr.ImageSlider | gr.Gallery)
             and not isinstance(b, ImageUpload)]  # an upload reaches the handler as its own file
    assert len(shown) >= 10
    assert [b.label for b in shown if b.format != "png"] == []


@pytest.mark.slow
def test_app_driven_by_gradio_client(tmp_path: Path, tiny_model_dir: Path) -> None:
    from gradio_client import Client, handle_file

    from ui import build_app

    ctx = AppContext(Store(directory=tmp_path / "data"))
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")  # a job's base must be one of the app's models
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        lq = _img(tmp_path / "lq.png", (64, 64))
        m = str(tiny_model_dir)
        job = client.submit(handle_file(lq), None, "blind", m, m, 2, 0, 64, api_name="/restore")
        out = job.result()
        # Each picture as soon as it exists: input ⟷ SFT first (SFT ⟷ RL cleared), then SFT ⟷ RL, then the scores.
        stages = job.outputs()
        assert len(stages) == 3, stages
        assert stages[0][0] is None and len(stages[0][1]) == 2 and stages[0][8] is None  # the last zoom cleared too
        assert [Path(f).name for f in stages[0][5]] == ["restored_sft.png"]  # the SFT download is there already
        assert len(stages[1][0]) == 2 and Path(stages[1][8]).name == "zoom.png" and stages[1][4] == ""  # no scores yet
        assert "difficulty" in stages[2][4] and tuple(stages[2]) == tuple(out)
        slider, slider_in, _, scores, note, files, diff, caption, zoom = out  # gr.State outputs stay in the session
        assert len(slider) == 2 and len(slider_in) == 2 and "difficulty" in note and len(files) == 2
        assert "no ground truth given" in note and "mean difference" in caption
        # What the page shows is lossless: the SFT and RL images are the downloads, pixel for pixel, and the
        # input is the upload (Gradio's default WebP changed them by about 36 dB PSNR).
        pairs = ((slider[0], files[0]), (slider[1], files[1]), (slider_in[0], lq), (slider_in[1], files[0]))
        for shown, exact in pairs:
            assert Path(shown).suffix == ".png"
            assert np.array_equal(np.asarray(Image.open(shown).convert("RGB")),
                                  np.asarray(Image.open(exact).convert("RGB")))
        assert Path(diff).suffix == ".png" and Path(zoom).suffix == ".png"
        msg = client.predict(handle_file(lq), "artifacts", "via api", handle_file(lq), "blind", api_name="/flag")
        assert "Flagged as hard sample #1" in msg
        scored = client.predict(handle_file(_img(tmp_path / "big.png", (128, 128))), "piqe", api_name="/score")
        assert isinstance(scored["piqe"], float)
        text_msg, job, _ = client.predict(m, "niqe", "darl", 1, "", 0, 1, "quick", api_name="/launch_job")
        assert f"Job #{int(job)} queued" in text_msg
        run_worker(ctx.store, "w", once=True)  # the worker process of `make run`, here in-process
        st = client.predict(int(job), api_name="/job_status")
        assert st["state"] == "succeeded" and st["progress"] == 1.0
    finally:
        demo.close()


@pytest.mark.slow
def test_login_records_the_user_on_flags(tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    from ui import build_app

    ctx = AppContext(Store(directory=tmp_path / "data"))
    demo = build_app(ctx)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=[("ann", "s3cret")])
    try:
        with pytest.raises(Exception):  # noqa: B017
            Client(f"http://127.0.0.1:{port}/", verbose=False, auth=("ann", "wrong"))
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, auth=("ann", "s3cret"))
        img = _img(tmp_path / "x.png")
        client.predict(handle_file(img), "artifacts", "", None, "blind", api_name="/flag")
        assert ctx.store.flagged()[0].user == "ann"
    finally:
        demo.close()


def test_shipped_chains_register_parent_first_whatever_the_listing_order(ctx: AppContext, tmp_path,
                                                                        monkeypatch) -> None:
    import app
    from darl_core.models.loading import ShippedModel

    chain = (ShippedModel("c", tmp_path / "c", "c", parent="b"), ShippedModel("b", tmp_path / "b", "b", parent="a"),
             ShippedModel("a", tmp_path / "a", "a"))
    monkeypatch.setattr(app, "SHIPPED_MODELS", chain)
    app.register_shipped(ctx.store)
    rows = {c.name: c for c in ctx.store.checkpoints()}
    assert rows["c"].parent_id == rows["b"].id and rows["b"].parent_id == rows["a"].id and rows["a"].parent_id is None
    monkeypatch.setattr(app, "SHIPPED_MODELS", (ShippedModel("d", tmp_path / "d", "d", parent="nowhere"),))
    with pytest.raises(ValueError, match="parent is not shipped.*'d'"):
        app.register_shipped(ctx.store)


def test_shipped_models_are_registered_with_their_lineage_and_card_numbers(ctx: AppContext) -> None:
    import app

    app.register_shipped(ctx.store)
    app.register_shipped(ctx.store)  # idempotent: every start registers them again
    rows = {c.name: c for c in ctx.store.checkpoints()}
    assert set(rows) == {"sft-blind", "sft-blind-v1", "darl-blind", "sft-blind-fast"}
    assert rows["darl-blind"].parent_id == rows["sft-blind-v1"].id and rows["sft-blind"].parent_id is None
    assert rows["sft-blind-fast"].parent_id == rows["sft-blind"].id
    one_set = ("independent evaluation set (50 crops of 17 evaluation photos, Pillow/numpy/libjpeg degradations, "
               "seeds 0 and 1), 2 steps")
    for name in rows:  # the numbers come from each model card's evaluation.json, all on one set and setting
        card = json.loads((Path(rows[name].path) / "evaluation.json").read_text())
        assert rows[name].evaluation == pytest.approx(card["metrics"]) and card["metrics"]["psnr"] > 20
        assert card["set"].startswith(one_set) and set(card["metrics"]) == {"psnr", "ssim", "niqe", "piqe"}, name


# ----------------------------------------------------------------------------- selections, pickers, plot


def test_the_training_plot_always_gets_a_drawable_frame(ctx: AppContext) -> None:
    import gradio as gr

    plot = gr.LinePlot(x="round", y="value", color="metric")
    # Gradio's LinePlot fixes its column types and legend when it first draws: an empty frame made
    # "metric" a number (legend "-Infinity/Infinity") and the plot never drew the curves after it.
    assert plot.postprocess(finetune_tab.job_curves(ctx, None)).datatypes == {
        "round": "quantitative", "value": "quantitative", "metric": "nominal"}
    frame = finetune_tab.plot_frame(ctx, None)
    assert len(frame) == 1 and frame["metric"][0] == "no job chosen"
    assert plot.postprocess(frame).datatypes["metric"] == "nominal"
    job = ctx.store.create_job({"preset": "darl"}, [])
    assert list(finetune_tab.plot_frame(ctx, job)["metric"]) == [f"job #{job}: no round yet"]
    for step in (1, 2, 3):
        ctx.store.add_metrics(job, step, {"reward": -4.0 + step, "kl": 0.01 * step, "lr": 1e-4})
    frame = finetune_tab.plot_frame(ctx, job)
    assert len(frame) == 6 and set(frame["metric"]) == {"reward", "kl"} and list(frame["round"][:2]) == [1, 1]
    colors = finetune_tab.curve_colors(frame)
    assert list(colors) == ["reward", "kl"] and colors["reward"] == finetune_tab.PALETTE[0]
    assert finetune_tab.curve_colors(finetune_tab.plot_frame(ctx, None)) == {
        finetune_tab.plot_frame(ctx, None)["metric"][0]: finetune_tab.PLACEHOLDER_COLOR}


def test_job_selection_survives_and_starts_sensibly(ctx: AppContext) -> None:
    assert finetune_tab.initial_job(ctx, None) is None and finetune_tab.job_choices(ctx) == []
    a = ctx.store.create_job({"preset": "darl"}, [])
    b = ctx.store.create_job({"preset": "sft"}, [])
    assert finetune_tab.initial_job(ctx, None) == b  # first visit: the newest job, never "#0"
    assert finetune_tab.initial_job(ctx, a) == a  # this browser's choice, after a reload
    assert finetune_tab.initial_job(ctx, 99) == b  # a job this browser chose that no longer exists
    assert finetune_tab.initial_job(ctx, "junk") == b  # type: ignore[arg-type]
    assert finetune_tab.job_choices(ctx) == [(f"#{b} · sft", b), (f"#{a} · darl", a)]
    assert finetune_tab.job_from_row([str(a), "queued", "0%"]) == a and finetune_tab.job_from_row([]) is None
    assert models_tab.checkpoint_from_row([7, "x"]) == 7 and models_tab.checkpoint_from_row(None) is None


def test_pickers_follow_promotion_and_deletion(ctx: AppContext, tiny_model_dir: Path) -> None:
    import shutil

    import app
    from ui import picker_values
    from ui.context import SHIPPED, SHIPPED_RL

    app.register_shipped(ctx.store)
    mine = ctx.store.dir / "models" / "mine"
    shutil.copytree(tiny_model_dir, mine)
    cid = ctx.store.register_checkpoint(str(mine), "mine", evaluation={"psnr": 25.0})
    sft, rl = ctx.default_models()
    assert rl == str(SHIPPED_RL)
    before = {r[1]: r[4] for r in models_tab.list_checkpoints(ctx)}
    assert (before["sft-blind"], before["darl-blind"], before["mine"], before["sft-blind-fast"]) == ("", "RL", "", "SFT")
    choices, *_ = picker_values(ctx, sft, rl, sft)
    assert [p for _, p in choices][:len(SHIPPED)] == list(SHIPPED) and str(mine) in {p for _, p in choices}
    models_tab.promote(ctx, cid)
    # a fresh page load shows the promoted model as the RL default; so does the open page after promoting
    assert picker_values(ctx, sft, str(SHIPPED_RL), sft, page_load=True)[2] == str(mine)
    assert picker_values(ctx, sft, "/custom", sft, promoted=True)[2] == str(mine)
    assert picker_values(ctx, sft, "/custom", sft)[2] == "/custom"  # otherwise the user's choice stays
    assert any(label.startswith("mine (default RL)") for label, _ in ctx.model_choices())
    # the Models table says which side each default is for: the default SFT model, the promoted RL one
    side = {r[1]: r[4] for r in models_tab.list_checkpoints(ctx)}
    assert side["mine"] == "RL (promoted)" and side["sft-blind-fast"] == "SFT" and side["darl-blind"] == ""
    assert (f"#{cid} mine (default RL)", cid) in models_tab.checkpoint_choices(ctx)
    # shipped models cannot be deleted (they are registered again at every start)
    shipped_rl = next(c.id for c in ctx.store.checkpoints() if c.path == str(SHIPPED_RL))
    with pytest.raises(UserError, match="ships with the app"):
        models_tab.delete_preview(ctx, shipped_rl)
    with pytest.raises(UserError, match="ships with the app"):
        models_tab.delete(ctx, shipped_rl, confirmed=True)
    with pytest.raises(UserError, match="choose a checkpoint"):
        models_tab.delete_preview(ctx, None)
    with pytest.raises(UserError, match="no checkpoint #99"):
        models_tab.delete_preview(ctx, 99)
    models_tab.promote(ctx, shipped_rl)
    assert {r[1]: r[4] for r in models_tab.list_checkpoints(ctx)}["darl-blind"] == "RL (promoted)"
    models_tab.delete(ctx, cid, confirmed=True)
    choices, s2, r2, b2 = picker_values(ctx, str(mine), str(mine), str(mine), gone=str(mine))
    assert str(mine) not in {p for _, p in choices} and (s2, r2, b2) == (sft, str(SHIPPED_RL), choices[0][1])
    # the deleted id is never handed out again
    again = ctx.store.register_checkpoint(str(ctx.store.dir / "models" / "next"), "next")
    assert again > cid and [c for c in models_tab.checkpoint_choices(ctx) if c[1] == cid] == []


def test_score_table_says_which_images_are_too_small_for_a_metric() -> None:
    # an x4 model: the 64-px input is too small for NIQE, its 256-px restorations are not
    rough = restore_service.rough_scores({"input": (64, 64), "SFT": (256, 256), "RL": (256, 256)}, ["niqe", "piqe"])
    assert rough == {"niqe": ["input"]}
    table, note = restore_service.score_table(["image", "niqe", "piqe"], [["input", 9.0, 50.0], ["SFT", 5.0, 30.0],
                                                                     ["RL", 4.0, 35.0]], rough)
    assert [row[0] for row in table] == ["NIQE (no reference, rough*)", "PIQE (no reference)"]
    assert note == "*NIQE is rough here: the input is under 192 px a side, where its statistics are unreliable."
    assert restore_service.rough_scores({"input": (192, 400), "SFT": (192, 400)}, ["niqe"]) == {}
    assert "rough" not in restore_service.difficulty_text(0.4, "proxy")
    assert "rough" not in restore_service.difficulty_text(0.4, "gt", rough=True)  # the ground-truth measure needs no NIQE


def test_an_upload_the_loader_refuses_is_said_at_upload(ctx: AppContext, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert "broken.png" in restore_service.upload_problem(ctx, str(bad))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(_img(tmp_path / "whole.png", (64, 64))).read_bytes()[:200])
    said = restore_service.upload_problem(ctx, str(truncated), "ground truth")
    assert said == "cut.png: the image file is damaged or truncated"  # not "truncated ... (image file is truncated)"
    assert restore_service.upload_problem(ctx, _img(tmp_path / "ok.png")) is None
    assert restore_service.upload_problem(ctx, None) is None  # a cleared component: nothing to say


def test_a_ground_truth_given_first_waits_for_its_image_and_one_given_with_an_image_leaves_with_it() -> None:
    stale = restore_service.stale_ground_truth
    assert not stale("gt.png", "", "a.png")  # given before any degraded image: it belongs to the next one
    assert not stale("gt.png", "a.png", "a.png")  # the same file again
    assert stale("gt.png", "a.png", "b.png") and stale("gt.png", "a.png", None)  # its image replaced / removed
    assert not stale(None, "a.png", "b.png")  # nothing to clear


def test_score_table_marks_direction_best_and_disagreement() -> None:
    headers = ["image", "niqe", "piqe", "psnr"]
    rows = [["input", 6.0, 40.0, 20.0], ["SFT", 5.0, 30.0, 24.0], ["RL", 4.0, 35.0, 24.0]]
    table, note = restore_service.score_table(headers, rows)
    assert table[0] == ["NIQE (no reference)", "lower ↓", 6.0, 5.0, 4.0, "RL"]
    assert table[1][-1] == "SFT"
    assert table[2] == ["PSNR, dB (vs ground truth)", "higher ↑", 20.0, 24.0, 24.0, "SFT = RL"]
    assert "NIQE prefers RL" in note and "PIQE prefers SFT" in note
    agree, note2 = restore_service.score_table(headers[:2], [["input", 6.0], ["SFT", 5.0], ["RL", "n/a (too small)"]])
    assert agree[0][-1] == "SFT" and note2 == ""


def test_restore_reports_tiles_with_eta_and_stops_when_told(ctx: AppContext, tmp_path: Path,
                                                            tiny_model_dir: Path) -> None:
    import threading

    lq = _img(tmp_path / "lq.png", (120, 100))
    ctx.max_kept_pixels = 0  # both sides restored, not the second reused (the same model on both here)
    seen: list[tuple[float, str]] = []
    restore_service.restore(ctx, lq, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=2, tile=64,
                        progress=lambda f, s: seen.append((f, s)))
    tiles = [s for _, s in seen if "tile" in s]
    # 120x100 in 64-px tiles overlapping 32 (3 x 3), stretched by up to 25 %: 2 x 2 tiles of 76 x 66
    assert any(s.startswith("SFT model: step 1/2, tile 1/4") for s in tiles)
    assert any(s.startswith("RL model: step 2/2, tile 4/4") for s in tiles)
    assert any("s left" in s for s in tiles)
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and max(fr) <= 1.0
    assert str(tiny_model_dir) in ctx.speed and ctx.speed[str(tiny_model_dir)] > 0  # measured for estimates
    assert ctx.score_speed is not None and ctx.score_speed > 0  # and the scoring's speed
    # the bar is of the whole restore: with the speeds known, the SFT model's last tile is its share of
    # both models and the scores, not half (nor all) of the bar
    seen.clear()
    ctx.speed[str(tiny_model_dir)], ctx.score_speed = 1.0, 0.5
    parts = [restore_service.estimate_seconds(ctx, [str(tiny_model_dir)], (120, 100), 2)] * 2 + [
        restore_service.score_seconds(ctx, (120, 100))]
    restore_service.restore(ctx, lq, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=2, tile=64,
                            progress=lambda f, s: seen.append((f, s)))
    last_sft = [f for f, s in seen if s.startswith("SFT model: step 2/2, tile 4/4")]
    assert last_sft == [pytest.approx(parts[0] / sum(parts))]
    assert [f for f, s in seen if s.startswith("scored the RL")] == [pytest.approx(1.0)]

    stop = threading.Event()
    calls = []

    def press_stop_at_third_tile(f: float, s: str) -> None:
        calls.append(s)
        if len(calls) == 3:
            stop.set()
    with pytest.raises(restore_service.RestoreStopped, match="Stop button"):
        restore_service.restore(ctx, lq, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=2,
                            tile=64, progress=press_stop_at_third_tile, stop=stop)
    assert len(calls) == 3  # no tile ran after the flag was seen


def test_time_left_counts_every_part_at_this_restores_throughput() -> None:
    at = restore_service.progress_at
    # SFT 10 s, RL 10 s, scores 5 s expected; half the SFT done in 10 s: twice as slow as expected
    assert at([10, 10, 5], 0, 0.5, 10.0) == (pytest.approx(0.2), pytest.approx(40.0))
    assert at([10, 10, 5], 0, 0.5, 2.5) == (pytest.approx(0.2), pytest.approx(10.0))  # faster: less left
    # the RL model done: what is left is the scores alone; a reused SFT restoration weighs nothing
    assert at([10, 10, 5], 2, 0.0, 20.0) == (pytest.approx(0.8), pytest.approx(5.0))
    assert at([0, 10, 5], 1, 0.5, 5.0) == (pytest.approx(1 / 3), pytest.approx(10.0))
    assert at([10, 10, 5], 0, 0.01, 1.0)[1] is None  # nothing to go on yet
    assert restore_service.left_text(None) == "" and restore_service.left_text(40) == ", about 40 s left"
    assert restore_service.left_text(600) == ", about 10 min left"


def test_job_time_left_follows_its_recent_rounds() -> None:
    left = finetune_tab.rounds_left_seconds
    assert left([9.0, 4.0, 4.0, 4.0], 5, 0.0) == pytest.approx(20.0)  # the warm-up round left out
    assert left([9.0, 4.0, 4.0, 4.0], 5, 1.5) == pytest.approx(18.5)  # the round under way counts
    assert left([4.0, 4.0, 4.0, 8.0, 8.0, 8.0], 2, 0.0) == pytest.approx(16.0)  # the machine got busy
    assert left([4.0, 4.0, 4.0, 4.0], 1, 30.0) == pytest.approx(1.0)  # a slow round: not done before it is
    assert left([4.0], 3, 0.0) == pytest.approx(12.0) and left([4.0, 4.0], 0, 0.0) == 0.0


def test_large_image_warning_names_the_time_and_what_to_do(ctx: AppContext, tmp_path: Path) -> None:
    small, big = (64, 64), (1600, 1200)
    assert restore_service.large_image_warning(ctx, small, None, None, 2) is None
    w = restore_service.large_image_warning(ctx, big, None, None, 2)
    assert w is not None and "1600x1200" in w and "min" in w and "Stop" in w and "steps" in w
    # the estimate follows what this app measured
    d_sft, d_rl = ctx.default_models()
    ctx.speed[d_sft] = ctx.speed[d_rl] = 0.01
    assert restore_service.large_image_warning(ctx, big, None, None, 2) is None
    # a pass per step, plus stage 1 for the two-stage model only (the shipped RL model is single-stage)
    ctx.speed[d_sft] = ctx.speed[d_rl] = 1.0
    assert restore_service.estimate_seconds(ctx, [d_sft], (1000, 1000), 2) == pytest.approx(3.0)
    assert restore_service.estimate_seconds(ctx, [d_rl], (1000, 1000), 2) == pytest.approx(2.0)
    # restore() hands the warning over before it starts (one decode of the upload)
    warned: list[str] = []
    ctx.speed[d_sft] = ctx.speed[d_rl] = 1e4
    restore_service.restore(ctx, _img(tmp_path / "s.png", (64, 64)), steps=1, warn=warned.append,
                        sft_model=d_sft, rl_model=d_sft)
    assert len([w for w in warned if "will take about" in w and "64x64" in w]) == 1
    assert len(warned) == 2 and "NIQE is unreliable below 192 px" in warned[1]  # 64 px: too small for NIQE


def test_a_tiny_restore_does_not_poison_every_users_time_estimate(ctx: AppContext, tmp_path: Path,
                                                                  tiny_model_dir: Path) -> None:
    """Issue #39: one 1x1 restore set the measured speed to its fixed cost over one pixel, and every user's
    next estimate said "about 98 min" for a restore of seconds. Restores under 64x64 are not measured, and
    the speed is the median of recent measurements (ui/speed.py)."""
    m = str(tiny_model_dir)
    restore_service.restore(ctx, _img(tmp_path / "a.png", (96, 96)), "blind", m, m, steps=2, tile=64)
    measured = ctx.speed[m]
    seconds = restore_service.estimate_seconds(ctx, [m, m], (96, 96), 2)
    for side in (16, 40, 63):  # mostly fixed cost: not measured (the tiny model takes no 1x1)
        restore_service.restore(ctx, _img(tmp_path / f"t{side}.png", (side, side)), "blind", m, m, steps=2, tile=64)
        assert ctx.speed[m] == measured
    assert restore_service.estimate_seconds(ctx, [m, m], (96, 96), 2) == seconds
    # one slow restore among ordinary ones (the machine busy elsewhere) moves the median by one rank only
    from ui.speed import SpeedMeter

    meter = SpeedMeter()
    for s in (2.0, 2.2, 60.0, 1.8):
        meter.record("x", s, 1_000_000, 1)
    assert meter["x"] == pytest.approx(2.1)  # the median of 1.8, 2.0, 2.2 and 60
    assert not meter.record("x", 50.0, 1, 1) and meter["x"] == pytest.approx(2.1)  # a 1-pixel one: ignored
    meter["x"] = 5.0  # set directly (an operator's or a test's number): that is the speed
    assert meter == {"x": 5.0} and meter.record("x", 1.0, 1_000_000, 1) and meter["x"] == 1.0


# ----------------------------------------------------------------------------- comparing restorations


def test_difference_map_and_zoom_show_what_differs(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    a = Image.new("RGB", (64, 48), (100, 100, 100))
    b = a.copy()
    b.putpixel((10, 20), (110, 100, 100))  # one pixel differs by 10 levels in one channel
    diff, mad = compare.difference_map(a, b)
    assert diff.size == (64, 48) and mad == pytest.approx(10 / 3 / (64 * 48))
    px = np.asarray(diff)
    assert px[20, 10, 0] == round(10 / 3 * compare.DIFF_GAIN) and px.sum() == 3 * px[20, 10, 0]
    with pytest.raises(UserError, match="cannot compare"):
        compare.difference_map(a, Image.new("RGB", (32, 32)))
    # the zoom shows the same region of each image at 1:1, a x4 input enlarged to match (nearest)
    out = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8))
    small = out.resize((60, 50), Image.NEAREST)
    strip = compare.zoom_strip([("input", small), ("SFT", out)], center=(120, 100), side=64, scale=1)
    assert strip.size == (64 * 2 + 6, 64 + 30)
    sft_tile = np.asarray(strip)[:64, 70:]
    assert np.array_equal(sft_tile, np.asarray(out)[68:132, 88:152])  # centred on (120, 100), 1:1
    # a centre near the border moves inside the image rather than padding
    edge = compare.zoom_strip([("SFT", out)], center=(0, 0), side=64, scale=1)
    assert np.array_equal(np.asarray(edge)[:64], np.asarray(out)[:64, :64])
    # from a restore: both views, with the ground truth when one was given
    lq = _img(tmp_path / "lq.png", (64, 64))
    r = restore_service.restore(ctx, lq, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=1,
                            gt_path=_img(tmp_path / "gt.png", (64, 64), seed=1))
    d, caption, zoom = compare.compare_views(r.input, r.sft, r.rl, r.gt)
    assert np.asarray(d).max() == 0 and "mean difference 0.00" in caption  # the same model twice: no difference
    assert zoom.size == (4 * 64 * 3 + 3 * 6, 64 * 3 + 30)  # input, SFT, RL, ground truth: each whole (64 px)


def test_examples_are_held_out_photos_degraded_by_pillow(tmp_path: Path) -> None:
    from darl_core.data.clean import TRAIN_IMAGES

    paths = restore_service.example_images(tmp_path / "ex")
    assert len(paths) == 3 and not set(restore_service.EXAMPLES) & set(TRAIN_IMAGES)
    for p in paths:
        im = Image.open(p)
        assert im.size == (256, 256)
    assert restore_service.example_images(tmp_path / "ex") == paths  # made once, then reused


def test_flag_says_whether_a_ground_truth_came_and_limits_the_note(ctx: AppContext, tmp_path: Path) -> None:
    lq = _img(tmp_path / "lq.png")
    assert "no ground truth" in restore_service.flag(ctx, lq, "artifacts")
    with pytest.raises(UserError, match="at most 2000"):
        restore_service.flag(ctx, lq, "artifacts", note="x" * 2001)
    assert len(ctx.store.flagged()) == 1  # the refused flag wrote nothing
    from storage import DiskFull

    def full(*a: object, **k: object) -> None:
        raise DiskFull(f"the disk holding {ctx.store.dir} is full: nothing was stored")

    ctx.store.flag_upload = full  # type: ignore[method-assign]
    with pytest.raises(UserError, match="is full: nothing was stored; tell the operator"):
        restore_service.flag(ctx, _img(tmp_path / "other.png", seed=8), "artifacts")


def test_the_model_cache_is_keyed_by_the_resolved_folder_and_bounded(tmp_path: Path, tiny_model_dir: Path,
                                                                     tiny_ldm_dir: Path) -> None:
    import os
    import shutil

    ctx = AppContext(Store(directory=tmp_path / "data"), max_models=2)
    spellings = [str(tiny_model_dir), str(tiny_model_dir) + "/", str(tiny_model_dir / ".." / tiny_model_dir.name),
                 os.path.relpath(tiny_model_dir)]
    first = ctx.pipeline(spellings[0])
    assert all(ctx.pipeline(s) is first for s in spellings) and len(ctx._models) == 1  # one copy, not four
    other = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, other)
    ctx.pipeline(str(other))
    ctx.pipeline(spellings[0])  # used again: now the most recent
    ctx.pipeline(str(tiny_ldm_dir))  # a third model: the least recently used (the copy) goes
    assert list(ctx._models) == [str(tiny_model_dir.resolve()), str(tiny_ldm_dir.resolve())]


def test_rl_side_says_when_it_is_not_better_than_sft() -> None:
    """The shipped RL model carries its caveat wherever it is chosen; other models carry none."""
    from ui.context import SHIPPED_RL, AppContext

    note = AppContext.model_note(str(SHIPPED_RL))
    assert "not better than SFT" in note and "28.06" in note
    assert AppContext.model_note(str(SHIPPED_RL.parent / "sft-blind-fast")) == ""
    assert AppContext.model_note(None) == ""


def test_launch_form_states_each_sizes_expected_time(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Before any job ran here the estimate comes from the project's CPU benchmark and says so; once a job
    has timed rounds on this machine, from those. It grows with the rounds, and full costs more than quick."""
    assert "flag samples first" in finetune_tab.estimate_text(ctx, "darl", 20)
    png = (tmp_path / "a.png")
    _img(png, (64, 64))
    for seed in range(3):
        _img(png, (64, 64), seed=seed)
        ctx.store.flag_upload(png.read_bytes(), 64, 64, reason="test")
    text = finetune_tab.estimate_text(ctx, "darl", 20)
    assert text.startswith("Expected time for 20 rounds on 3 samples: quick ≈") and "benchmark" in text
    mins, _ = finetune_tab.expected_minutes(ctx, "darl", 20, 3)
    assert mins["quick"] < mins["full"] < mins["paper"]
    end = finetune_tab.finish_minutes(ctx, 3)  # the job's end: (3 samples + 8 held-out crops) x the prior per image
    assert end == pytest.approx(11 * finetune_tab.FINISH_SECONDS_PER_IMAGE / 60)
    assert finetune_tab.expected_minutes(ctx, "darl", 40, 3)[0]["full"] - end == pytest.approx(2 * (mins["full"] - end))
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "darl_iqa", "darl", 20, size="full")
    for rnd, secs in ((1, 9.0), (2, 4.0), (3, 4.0), (4, 4.0)):  # the first round warms up
        ctx.store.add_metrics(job, rnd, {"round_s": secs})
    mins2, source = finetune_tab.expected_minutes(ctx, "darl", 20, 3)
    assert source == f"timed on this machine by job #{job}"
    assert mins2["full"] == pytest.approx(20 * 4.0 / 60 + end)  # the same setting: the job's own round time
    # once a job has finished here, its end is timed too: wall time minus its rounds, per compared image
    from datetime import timedelta

    assert ctx.store.claim_job("w").id == job
    ctx.store.transition(job, "succeeded", worker="w")
    with ctx.store.session() as s:
        j = s.get(Job, job)
        j.finished_at = j.started_at + timedelta(seconds=21.0 + 22.0)  # 21 s of rounds, then 22 s for 11 images
    assert finetune_tab.finish_minutes(ctx, 3) == pytest.approx(22.0 / 60)
    assert "rounds must be" in finetune_tab.estimate_text(ctx, "darl", -1)


def test_a_job_the_trainer_would_refuse_is_refused_at_launch(ctx: AppContext, tmp_path: Path,
                                                             tiny_model_dir: Path) -> None:
    """Issue #37: the trainer's config checks run when the job is launched, naming the values, so a bad job
    never reaches the queue (reward backpropagation needs a differentiable reward; NIQE is not)."""
    _img(tmp_path / "a.png", (64, 64))
    ctx.store.flag_upload((tmp_path / "a.png").read_bytes(), 64, 64, reason="test")
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    with pytest.raises(UserError, match=r"darl_anchored cannot train this: rl_estimator 'backprop' needs a "
                                        r"differentiable reward; \['niqe'\] are not"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl_anchored", 5)
    assert ctx.store.jobs() == []  # nothing queued
