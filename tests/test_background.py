"""Background restores (issue #39): a restore expected to take over a minute leaves the interactive queue,
runs in the app's background runner, and only its owner (or an admin) sees, cancels or downloads it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import register_tiny
from PIL import Image

from storage import Store
from ui import AppContext, UserError, restore_service
from ui import background_restores as bg

SLOW = 5000.0  # s per megapixel per network pass: a 256x256 restore at 2 steps "takes" ~22 min, a 32x32 one ~20 s


def _img(path: Path, size: tuple[int, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _hold_at_progress(store: Store, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(reached, release): the runner's first progress report past its start blocks until ``release`` is set,
    so a test sees a background restore that is running, halfway through a model, for as long as it needs."""
    reached, release = threading.Event(), threading.Event()
    beat = store.restore_beat

    def held(restore_id: int, runner: str, progress: float | None = None, message: str | None = None) -> bool:
        said = beat(restore_id, runner, progress, message)
        if progress is not None and progress > 0 and not reached.is_set():
            reached.set()
            assert release.wait(120), "the test never released the background restore"
        return said
    monkeypatch.setattr(store, "restore_beat", held)
    return reached, release


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest, tiny_model_dir: Path) -> AppContext:
    c = register_tiny(AppContext(Store(directory=tmp_path / "data"), auth=True, admins=frozenset({"root"}),
                                 max_user_restores=1), request)
    c.speed[str(tiny_model_dir)] = SLOW
    return c


def test_a_small_restore_is_served_while_a_large_one_runs_in_the_background(
        ctx: AppContext, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = str(tiny_model_dir)
    big, small = _img(tmp_path / "big.png", (256, 256)), _img(tmp_path / "small.png", (32, 32), seed=1)
    assert bg.submit_if_long(ctx, small, "blind", m, m, steps=2, tile=64, user="ann") is None  # ~20 s: interactive
    rid = bg.submit_if_long(ctx, big, "blind", m, m, steps=2, tile=64, user="ann")
    assert rid is not None and ctx.store.background_restore(rid).state == "queued"
    minutes = round(restore_service.estimate_seconds(ctx, [m, m], (256, 256), 2) / 60)
    assert minutes > 1 and (f"Queued as background restore #1**: this 256x256 image at 2 steps is expected to take "
                            f"about {minutes} min") in bg.queued_text(ctx, rid)
    reached, release = _hold_at_progress(ctx.store, monkeypatch)
    runner = bg.BackgroundRunner(ctx, poll_s=0.05, beat_s=0.2).start()
    try:
        assert reached.wait(60), "the background restore never started"
        running = ctx.store.background_restore(rid)
        assert running.state == "running" and 0 < running.progress < 1 and " model: step " in running.message
        # the interactive path while the large one is running (held halfway through its SFT model)
        t0 = time.perf_counter()
        r = restore_service.restore(ctx, small, "blind", m, m, steps=2, tile=64)
        served_s = time.perf_counter() - t0
        assert r.sft.size == (32, 32) and ctx.store.background_restore(rid).state == "running"
        assert served_s < 30, served_s
        release.set()
        _wait(lambda: ctx.store.background_restore(rid).state == "succeeded", 120, "the background restore")
    finally:
        release.set()
        runner.stop()
    files = bg.result_files(ctx, rid, "ann")
    assert [Path(f).name for f in files] == ["restored_sft.png", "restored_rl.png"]
    # the same pixels as the same request restored interactively (its own models, the same seed)
    same = restore_service.restore(ctx, big, "blind", m, m, steps=2, tile=64)
    assert np.array_equal(np.asarray(Image.open(files[0]).convert("RGB")), np.asarray(same.sft))
    assert bg.rows(ctx, "ann")[0][:5] == [rid, "succeeded", "100 %", "256x256", 2]
    print(f"small restore served in {served_s:.2f} s while the background one ran")


def test_only_the_owner_or_an_admin_sees_cancels_and_downloads_a_background_restore(
        ctx: AppContext, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = str(tiny_model_dir)
    big = _img(tmp_path / "big.png", (256, 256))
    a = bg.submit_if_long(ctx, big, "blind", m, m, steps=2, tile=64, user="ann")
    with pytest.raises(UserError, match=r"you have 1 background restores queued or running \(#1\); at most 1 per "
                                        r"user: wait for one to finish or cancel one"):
        bg.submit_if_long(ctx, big, "blind", m, m, steps=2, tile=64, user="ann")
    assert bg.submit_if_long(ctx, big, "blind", m, m, steps=2, tile=64, user="root") is not None  # admins: no cap
    assert bg.rows(ctx, "bob") == [] and bg.choices(ctx, "bob") == []  # not his: not even listed
    assert [r[0] for r in bg.rows(ctx, "ann")] == [a] and len(bg.rows(ctx, "root")) == 2
    for act in (bg.cancel, bg.result_files):
        with pytest.raises(UserError, match="background restore #1 belongs to ann: only they or an admin"):
            act(ctx, a, "bob")
    with pytest.raises(UserError, match="background restore #1 is queued; only a finished one has a result"):
        bg.result_files(ctx, a, "ann")
    assert bg.cancel(ctx, a, "ann") == "Background restore #1 cancelled."
    assert ctx.store.background_restore(a).state == "cancelled"
    with pytest.raises(UserError, match="is cancelled already: nothing to cancel"):
        bg.cancel(ctx, a, "ann")
    ctx.store.cancel_restore(2, "root")  # the admin's own: out of the way
    # her cap is free again; a running one is stopped at its next tile, here by an admin
    b = bg.submit_if_long(ctx, big, "blind", m, m, steps=2, tile=64, user="ann")
    reached, release = _hold_at_progress(ctx.store, monkeypatch)
    runner = bg.BackgroundRunner(ctx, poll_s=0.05, beat_s=0.2).start()
    try:
        assert reached.wait(60)
        assert bg.cancel(ctx, b, "root") == f"Background restore #{b} stops at its next tile."
        release.set()
        _wait(lambda: ctx.store.background_restore(b).state == "cancelled", 60, "the cancel")
    finally:
        release.set()
        runner.stop()
    assert [(e.user, e.action, e.target) for e in ctx.store.events(f"restore:{b}")] == [("root", "cancel", f"restore:{b}")]


def test_a_background_restore_whose_app_stopped_is_queued_again_and_a_failure_is_said(
        ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    m = str(tiny_model_dir)
    rid = bg.submit_if_long(ctx, _img(tmp_path / "big.png", (256, 256)), "blind", m, m, steps=2, tile=64, user="ann")
    assert ctx.store.claim_restore("dead-app").id == rid  # an app that stopped while it ran
    assert ctx.store.recover_restores(60.0) == []  # its beat is fresh: left alone
    time.sleep(0.05)
    assert ctx.store.recover_restores(0.01) == [rid] and ctx.store.background_restore(rid).state == "queued"
    assert not ctx.store.finish_restore(rid, "dead-app", "succeeded")  # the old runner writes nothing now
    # the model was deleted from the registry before it ran: failed, with the reason, shown in the table
    with ctx.store.session() as s:
        from storage import Checkpoint
        s.query(Checkpoint).filter(Checkpoint.path == m).delete()
    runner = bg.BackgroundRunner(ctx)
    assert runner.run(ctx.store.claim_restore(runner.id)) == "failed"
    assert "SFT model: " in bg.rows(ctx, "ann")[0][6] and "is not one of this app's models" in bg.rows(ctx, "ann")[0][6]
    with pytest.raises(UserError, match="is failed: SFT model"):
        bg.result_files(ctx, rid, "ann")
