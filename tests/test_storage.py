"""Store tests, on SQLite always and on a throwaway PostgreSQL 15 cluster started here."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import free_port
from sqlalchemy import text

from storage import TRANSITIONS, IllegalTransition, Store
from storage.db import migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def store_args(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str | None, Path]:
    if request.param == "sqlite":
        return None, tmp_path
    url = request.getfixturevalue("pg_url")
    s = Store(url, tmp_path)  # a clean schema for each test
    migrate(s.engine, "base")
    s.engine.dispose()
    return url, tmp_path


def _store(args: tuple[str | None, Path]) -> Store:
    return Store(args[0], args[1])


def _flag_many(args: tuple[str | None, Path], sample_id: int, n: int) -> int:
    store = _store(args)
    for i in range(n):
        store.flag(sample_id, user=f"p{os.getpid()}", reason="test", note=str(i))
    store.engine.dispose()
    return n


def _add_same(args: tuple[str | None, Path], data: bytes) -> int:
    store = _store(args)
    sid = store.add_sample(data, 4, 4)
    store.engine.dispose()
    return sid


def _work(args: tuple[str | None, Path], name: str) -> list[int]:
    store = _store(args)
    done = []
    while (job := store.claim_job(name)) is not None:
        time.sleep(0.01)
        store.transition(job.id, "succeeded")
        done.append(job.id)
    store.engine.dispose()
    return done


def test_concurrent_flags_8_processes_x_500(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    sid = store.add_sample(b"sample", 4, 4)
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        counts = pool.starmap(_flag_many, [(store_args, sid, 500)] * 8)  # any error would raise here
    assert sum(counts) == 4000
    with store.session() as s:
        assert s.execute(text("SELECT count(*) FROM flags")).scalar() == 4000


def test_same_image_100_times_concurrently_is_one_sample(store_args: tuple[str | None, Path]) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(8) as pool:
        ids = pool.starmap(_add_same, [(store_args, b"the same png bytes")] * 100)
    assert len(set(ids)) == 1
    with _store(store_args).session() as s:
        assert s.execute(text("SELECT count(*) FROM samples")).scalar() == 1


def test_two_workers_ten_jobs_each_runs_once(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    jobs = [store.create_job({"rounds": 1}, []) for _ in range(10)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        a, b = pool.starmap(_work, [(store_args, "w1"), (store_args, "w2")])
    assert sorted(a + b) == jobs and not set(a) & set(b)
    assert all(store.job(j).state == "succeeded" and store.job(j).attempts == 1 for j in jobs)


def test_state_machine(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    for start, targets in TRANSITIONS.items():
        for new in ("queued", "running", "succeeded", "failed", "cancelled"):
            j = store.create_job({}, [])
            path = {"queued": [], "running": ["running"], "succeeded": ["running", "succeeded"],
                    "failed": ["running", "failed"], "cancelled": ["cancelled"]}[start]
            for step in path:
                store.transition(j, step)
            if new in targets:
                store.transition(j, new)
                assert store.job(j).state == new
            else:
                with pytest.raises(IllegalTransition):
                    store.transition(j, new)
                assert store.job(j).state == start


def test_flags_history_filters_and_cancel(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    a = store.add_sample(b"a", 4, 4, gt_png=b"ga", task="denoise")
    b = store.add_sample(b"b", 4, 4)
    store.flag(a, "ann", "noise", difficulty=0.4)
    store.flag(b, "bob", "blur", difficulty=0.1)
    assert {r.sample_id for r in store.flagged()} == {a, b}
    assert [r.sample_id for r in store.flagged(task="denoise")] == [a]
    assert [r.sample_id for r in store.flagged(min_difficulty=0.2)] == [a]
    store.unflag(a, "ann")
    assert [r.sample_id for r in store.flagged()] == [b]
    store.flag(a, "ann", "noise again")
    assert {r.sample_id for r in store.flagged()} == {a, b}
    with store.session() as s:
        assert s.execute(text("SELECT count(*) FROM flags WHERE sample_id = :a"), {"a": a}).scalar() == 3
    assert store.flagged(task="denoise")[0].gt_path.read_bytes() == b"ga"
    j = store.create_job({}, [a])
    store.request_cancel(j)
    assert store.job(j).state == "cancelled"


def test_metrics_of_a_redone_step_replace_the_old_ones(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    j = store.create_job({}, [])
    store.add_metrics(j, 1, {"reward": 1.0, "kl": 0.1})
    store.add_metrics(j, 2, {"reward": 2.0})
    store.add_metrics(j, 2, {"reward": 5.0})  # step 2 redone after a resume
    assert store.metrics(j) == [(1, "reward", 1.0), (1, "kl", 0.1), (2, "reward", 5.0)]


def test_migrations_down_and_up_with_data(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    sid = store.add_sample(b"keep me", 4, 4)
    store.flag(sid, "ann", "r")
    j = store.create_job({"rounds": 3}, [sid])
    parent = store.register_checkpoint("/m/parent", "parent")
    child = store.register_checkpoint("/m/child", "child", parent_id=parent, job_id=j)
    # head -> 0001: drops flags.difficulty_kind, rebuilds checkpoints without AUTOINCREMENT, drops
    # jobs.processes; every row stays
    migrate(store.engine, "0001")
    with store.session() as s:
        assert s.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
        assert s.execute(text("SELECT id, parent_id, job_id FROM checkpoints ORDER BY id")).all() == [
            (parent, None, None), (child, parent, j)]
    migrate(store.engine, "head")
    assert store.job(j).processes == 1 and store.job(j).config == {"rounds": 3}
    assert [r.sample_id for r in store.flagged()] == [sid]
    assert [(c.id, c.parent_id, c.job_id) for c in store.checkpoints()] == [(parent, None, None), (child, parent, j)]


def test_a_second_users_flag_of_the_same_bytes_is_their_own_sample(store_args: tuple[str | None, Path]) -> None:
    """Issue #39, finding 5: bob's flag of ann's image made him a co-owner of her sample, and his ground truth
    and tags landed on it. Now each user's flag of the bytes is their own sample; migration 0009 gives the
    samples of an older database their first flagger as owner, and its downgrade merges them back."""
    store = _store(store_args)
    ann, _ = store.flag_upload(b"same bytes", 4, 4, b"ann's truth", user="ann", reason="blur")
    store.tag([ann], add=["mine"], user="ann")
    bob, _ = store.flag_upload(b"same bytes", 4, 4, b"bob's truth", user="bob", reason="noise")
    assert bob != ann and store.owners(f"sample:{ann}") == {"ann"} and store.owners(f"sample:{bob}") == {"bob"}
    assert store.path(store.sample(ann).gt_path).read_bytes() == b"ann's truth"
    assert store.path(store.sample(bob).gt_path).read_bytes() == b"bob's truth" and store.sample(bob).tags == ""
    assert store.flag_upload(b"same bytes", 4, 4, user="ann")[0] == ann  # her own again: the same sample
    assert [r.sample_id for r in store.flagged(user="ann")] == [ann]
    assert [r.sample_id for r in store.flagged(user="bob")] == [bob] and len(store.flagged()) == 2
    # an older database (0008: one sample per image, shared): down merges, up gives the first flagger
    migrate(store.engine, "-3")  # (0011, 0010 and 0009 down)
    with store.session() as s:
        assert s.execute(text("SELECT id FROM samples")).scalars().all() == [ann]
        assert s.execute(text("SELECT DISTINCT sample_id FROM flags")).scalars().all() == [ann]
    migrate(store.engine, "head")
    assert store.sample(ann).owner == "ann" and store.owners(f"sample:{ann}") == {"ann", "bob"}  # shared as it was
    carl = store.flag_upload(b"same bytes", 4, 4, user="carl")[0]
    assert carl != ann and store.sample(carl).owner == "carl"  # a new user: their own


def test_checkpoint_ids_are_never_reused_also_in_a_database_made_by_the_old_schema(
        store_args: tuple[str | None, Path]) -> None:
    # Deleting the newest checkpoint used to hand its id to the next one on SQLite ("the next trained
    # model got id #2 again"). Migration 0003 rebuilds the table with AUTOINCREMENT, keeping the rows.
    store = Store(*store_args, auto_migrate=False)
    migrate(store.engine, "0002")  # the schema as the app shipped it before
    sqlite = store.dialect == "sqlite"
    a = store.register_checkpoint("/m/a", "a")
    b = store.register_checkpoint("/m/b", "b", parent_id=a, evaluation={"psnr": 25.0})
    c = store.register_checkpoint("/m/c", "c", parent_id=b)
    with store.session() as s:  # as the old app deleted (no audit log before migration 0007)
        s.execute(text("DELETE FROM checkpoints WHERE id = :i"), {"i": c})
    again = store.register_checkpoint("/m/c2", "c2", parent_id=b)
    if sqlite:
        assert again == c  # the old schema's bug, reproduced
    with store.session() as s:  # a sample and a flag as the old schema wrote them (no tags, no difficulty kind)
        s.execute(text("INSERT INTO samples (content_hash, lq_path, width, height, source, task, created_at) "
                       "VALUES ('old', 'blobs/old.png', 4, 4, 'upload', 'blind', :now)"),
                  {"now": datetime.now(timezone.utc)})
        sid = s.execute(text("SELECT id FROM samples WHERE content_hash = 'old'")).scalar_one()
        s.execute(text("INSERT INTO flags (sample_id, flagged, \"user\", reason, note, difficulty, created_at) "
                       "VALUES (:s, :t, 'ann', 'artifacts', '', 0.25, :now)"),
                  {"s": sid, "t": True, "now": datetime.now(timezone.utc)})
    migrate(store.engine, "head")
    assert [(x.id, x.name, x.parent_id) for x in store.checkpoints()] == [(a, "a", None), (b, "b", a), (again, "c2", b)]
    assert store.checkpoints()[1].evaluation == {"psnr": 25.0}
    row = store.flagged()[0]
    assert (row.sample_id, row.difficulty, row.difficulty_kind, row.tags) == (sid, 0.25, None, ())
    store.tag([sid], add=["kept"])  # migration 0006: the old sample can carry tags
    assert store.flagged(tag="kept")[0].sample_id == sid
    store.delete_checkpoint(again, "ann")
    assert [(e.user, e.action, e.target) for e in store.events()] == [
        ("ann", "delete", f"checkpoint:{again}"), ("anonymous", "tag", f"sample:{sid}")]  # migration 0007
    newer = store.register_checkpoint("/m/d", "d", parent_id=b)
    assert newer > again  # the deleted id is not handed out again
    with pytest.raises(ValueError, match="descendants"):
        store.delete_checkpoint(b)
    assert store.deletion_blocker(b) is not None and store.deletion_blocker(newer) is None
    with store.session() as s:  # foreign keys are enforced again after the migration
        with pytest.raises(Exception):  # noqa: B017
            s.execute(text("UPDATE checkpoints SET parent_id = 999 WHERE id = :i"), {"i": newer})


def test_difficulty_kinds_are_kept_apart(store_args: tuple[str | None, Path]) -> None:
    store = _store(store_args)
    g, p, n = (store.add_sample(bytes([i]), 4, 4) for i in range(3))
    store.flag(g, difficulty=0.4, difficulty_kind="gt")
    store.flag(p, difficulty=0.3, difficulty_kind="proxy")
    store.flag(n)
    assert {(r.sample_id, r.difficulty_kind) for r in store.flagged()} == {(g, "gt"), (p, "proxy"), (n, None)}
    assert [r.sample_id for r in store.flagged(difficulty_kind="gt")] == [g]
    assert [r.sample_id for r in store.flagged(min_difficulty=0.2, difficulty_kind="proxy")] == [p]
    assert [r.sample_id for r in store.flagged(max_difficulty=0.35, difficulty_kind="gt")] == []
    with pytest.raises(ValueError, match="difficulty_kind"):
        store.flag(g, difficulty=0.1, difficulty_kind="ssim")


def test_database_down_is_a_clear_error(tmp_path: Path) -> None:
    from storage import StoreUnavailable

    with pytest.raises(StoreUnavailable, match="unreachable"):
        Store(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", tmp_path)


def test_a_stale_job_is_taken_back_once_and_its_old_owner_is_locked_out(store_args: tuple[str | None, Path]) -> None:
    # The race of two workers starting together after a crash: both see job 1 stale; before, each
    # re-queued it (the second after the first had claimed it again) and both trained it.
    from storage import JobLost

    store = Store(*store_args)
    job = store.create_job({"rounds": 1}, [])
    assert store.claim_job("w1").worker == "w1"
    with store.session() as s:  # w1 dies: its heartbeat gets old
        s.execute(text("UPDATE jobs SET heartbeat = :t WHERE id = :i"),
                  {"t": datetime.now(timezone.utc) - timedelta(seconds=600), "i": job})
    assert store.recover_stale(120, requeue=True) == [job]
    assert store.claim_job("w2").worker == "w2"
    # a third worker recovering now finds nothing stale: w2's claim stands
    assert store.recover_stale(120, requeue=True) == [] and store.job(job).worker == "w2"
    assert store.job(job).attempts == 2
    # the old owner (had it survived) can neither beat nor finish the job; the owner can
    with pytest.raises(JobLost):
        store.heartbeat(job, progress=0.5, worker="w1")
    with pytest.raises(IllegalTransition, match="owned by w2"):
        store.transition(job, "succeeded", worker="w1")
    assert store.heartbeat(job, progress=0.5, worker="w2") is False
    store.transition(job, "succeeded", worker="w2")
    assert store.job(job).state == "succeeded"


def test_migrations_can_be_inspected_and_applied_from_the_command_line(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from storage.__main__ import main

    url = f"sqlite:///{tmp_path / 'darl.db'}"
    assert main(["current", "--url", url]) == 0  # --url before or after the command
    assert "at base (empty); newest 0011 (run `python -m storage migrate`)" in capsys.readouterr().out
    assert main(["--url", url, "migrate"]) == 0 and "base -> 0011" in capsys.readouterr().out
    assert main(["--url", url, "history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln[:7] for ln in lines[:11]] == ["* 0001 ", "* 0002 ", "* 0003 ", "* 0004 ", "* 0005 ", "* 0006 ", "* 0007 ",
                                            "* 0008 ", "* 0009 ", "* 0010 ", "* 0011 "]
    assert "Drop the ``scores`` table" in lines[4]
    assert main(["migrate", "-3", "--url", url]) == 2  # a downgrade drops data: it asks first
    assert "add --yes" in capsys.readouterr().err
    assert main(["migrate", "-3", "--url", url, "--yes"]) == 0 and "0011 -> 0008" in capsys.readouterr().out
    assert main(["--url", url, "migrate", "zzz"]) == 2 and "unknown revision 'zzz'" in capsys.readouterr().err
    main(["--url", url, "history"])
    assert capsys.readouterr().out.splitlines()[8].startswith("  0009")  # no longer applied
    assert main(["--url", "postgresql+psycopg://nobody@127.0.0.1:1/darl", "current"]) == 1
    assert "is unreachable" in capsys.readouterr().err


def test_a_flag_and_its_sample_are_one_transaction_and_a_failure_leaves_no_file(
        store_args: tuple[str | None, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import storage.store as st

    store = Store(*store_args)
    kept = store.add_sample(b"kept-lq", 4, 4)  # an existing sample: its file must survive a failure
    blobs = lambda: sorted(p.name for p in (store.dir / "blobs").rglob("*") if p.is_file())  # noqa: E731
    before = blobs()

    class Crash(RuntimeError):
        pass

    def crash(**kw: object) -> None:  # the process "dies" between the sample and its flag
        raise Crash

    monkeypatch.setattr(st, "Flag", crash)
    with pytest.raises(Crash):
        store.flag_upload(b"new-lq", 4, 4, b"new-gt", reason="artifacts")
    with pytest.raises(Crash):
        store.flag_upload(b"kept-lq", 4, 4, reason="artifacts")
    monkeypatch.undo()
    with store.session() as s:
        assert s.execute(text("SELECT count(*) FROM samples")).scalar() == 1  # no sample without its flag
    assert blobs() == before and store.sample(kept).lq_path  # the new files went; the kept one stayed
    sid, fid = store.flag_upload(b"new-lq", 4, 4, b"new-gt", reason="artifacts", difficulty=0.3,
                                 difficulty_kind="gt")
    row = store.flagged()[0]
    assert (row.sample_id, row.reason, row.difficulty_kind) == (sid, "artifacts", "gt") and fid is not None


def test_a_full_disk_says_so_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from storage import DiskFull

    store = Store(directory=tmp_path)

    def full(fd: int, mode: str) -> object:
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("storage.store.os.fdopen", full)
    with pytest.raises(DiskFull, match="is full: nothing was stored"):
        store.flag_upload(b"lq", 4, 4, reason="artifacts")
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "blobs").rglob(".tmp-*")]
    assert store.flagged() == []


def test_unfinished_blob_writes_are_swept_when_old(tmp_path: Path) -> None:
    store = Store(directory=tmp_path)
    rel = store.put_blob(b"kept")
    (store.dir / rel).parent.joinpath(".tmp-killed").write_bytes(b"half")  # what a kill mid-write leaves
    (store.dir / rel).parent.joinpath(".tmp-writing").write_bytes(b"now")  # a write in progress elsewhere
    old = time.time() - 7200
    os.utime((store.dir / rel).parent / ".tmp-killed", (old, old))
    assert store.sweep_temporary() == 1
    assert sorted(p.name for p in (store.dir / rel).parent.iterdir()) == [".tmp-writing", Path(rel).name]
