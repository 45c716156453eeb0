"""The worker killed with SIGKILL at 6 random points of its training: nothing partial survives, nothing stays running,
and three workers started at once after the last kill resume the job exactly once.

Two standby workers poll the queue while one trains, so the next claimant has finished its imports
when the job is re-queued (a worker start is ~6 s of imports; the test would spend most of its time
there) and the spare workers race to claim the same re-queued job, as several workers of a team would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import record
from test_worker import _png

from darl_core.train.checkpoint import latest_checkpoint
from darl_core.models.loading import load_restorer
from storage import Store
from storage.db import migrate

ROOT = Path(__file__).resolve().parent.parent
KILLS = 6  # kill points per database (each one: a claim, a round trained, 0-1 s more, SIGKILL, a re-queue)
ROUNDS = 60  # the job's length: 6 kills leave it unfinished, and finishing it is a few seconds of rounds


def _start_worker(data: Path, url: str | None, worker_id: str | None = None, once: bool = False,
                  stale_after: float = 3600) -> subprocess.Popen[bytes]:
    """A worker that runs one job and exits (``once``), or a standby worker that keeps polling."""
    env = dict(os.environ, DARL_DATA_DIR=str(data), PYTHONPATH=str(ROOT))
    if url:
        env["DARL_DATABASE_URL"] = url
    mode = (["--worker-id", worker_id] if worker_id else []) + (["--once"] if once else ["--poll", "0.2"])
    return subprocess.Popen([sys.executable, "-m", "darl_core.jobs.worker", "--stale-after", str(stale_after), *mode],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def _check_consistent(store: Store, job_dir: Path) -> None:
    ckpt = latest_checkpoint(job_dir)
    if ckpt is not None:  # the last complete checkpoint always loads, weights and training state
        load_restorer(ckpt / "pipeline")
        assert "unet" in torch.load(ckpt / "train_state.pt", weights_only=False)
    for c in store.checkpoints():  # a registered checkpoint is always complete
        assert (Path(c.path) / "model_index.json").is_file(), c.path
        load_restorer(c.path)


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_sigkill_at_6_random_points(db: str, request: pytest.FixtureRequest, tmp_path: Path,
                                     tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    url = None
    if db == "postgresql":
        url = request.getfixturevalue("pg_url")
        migrate(Store(url, data).engine, "base")  # a clean schema
    store = Store(url, data)
    ids = [store.add_sample(_png(i), 40, 40, gt_png=_png(50 + i)) for i in range(3)]
    job = store.create_job({"preset": "tiny_test", "base_model": str(tiny_model_dir), "rounds": ROUNDS,
                            "ckpt_every": 1}, ids)
    job_dir = data / "jobs" / str(job)
    rng = random.Random(20261126)
    standby: dict[str, subprocess.Popen[bytes]] = {}
    started = 0
    kills = 0
    try:
        while kills < KILLS:
            while len(standby) < 2:  # keep two spare workers importing / polling
                started += 1
                standby[f"standby-{started}"] = _start_worker(data, url, f"standby-{started}")
            # Wait until a worker has claimed the job, then kill that one at a random moment of its training.
            deadline = time.time() + 120
            while time.time() < deadline and (j := store.job(job)).state == "queued":
                time.sleep(0.05)
            if j.state != "running":
                break  # finished (or failed) before the kill
            proc = standby.pop(j.worker)
            # Kill during training, not during the worker's set-up: once it has written a checkpoint of
            # its own, at a random moment of the next round (its rollout, update or checkpoint write).
            ckpt = latest_checkpoint(job_dir)
            done = int(ckpt.name.split("-")[1]) if ckpt else 0
            while time.time() < deadline and proc.poll() is None and (
                    (c := latest_checkpoint(job_dir)) is None or int(c.name.split("-")[1]) <= done):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            assert store.job(job).state == "running"  # what a dead worker leaves behind ...
            _check_consistent(store, job_dir)
            if kills < KILLS:  # (the last one is left for the three workers below to find)
                assert store.recover_stale(timeout_s=-1, requeue=True) == [job]  # ... which the next start re-queues
                assert store.job(job).state == "queued"
    finally:
        for p in standby.values():
            p.kill()
            p.wait()
    assert kills == KILLS, f"the job ended ({store.job(job).state}) after {kills} kills; make it longer"
    # Now three workers start at once, as after a machine restart. Each re-queues jobs whose heartbeat is
    # older than 5 s at its start (the dead worker's job, not the one another of them has just claimed) and
    # claims: the job resumes exactly once, from its last checkpoint, not from scratch.
    done_before = int(latest_checkpoint(job_dir).name.split("-")[1])
    assert KILLS <= done_before < ROUNDS
    time.sleep(5.5)
    trio = [_start_worker(data, url, f"restart-{i}", once=True, stale_after=5) for i in range(3)]
    assert [p.wait(timeout=300) for p in trio] == [0, 0, 0]
    j = store.job(job)
    assert j.state == "succeeded" and j.attempts == KILLS + 1, (j.attempts, j.error)  # one resume, not two
    assert j.worker.startswith("restart-")
    lines = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["round"] for r in lines if "w_mean" in r]
    assert sorted(rounds) == sorted(set(rounds)) and max(rounds) == ROUNDS  # each round logged once
    assert sum(c.job_id == job for c in store.checkpoints()) == 1  # registered once
    record("faults", sigkills=KILLS, workers_started_together=3, jobs=1, jobs_recovered=1,
           runs_duplicated=j.attempts - (KILLS + 1), round_lines_duplicated=len(rounds) - len(set(rounds)),
           registrations_duplicated=sum(c.job_id == job for c in store.checkpoints()) - 1)
    # the job ran to its last round, then its resume checkpoints were deleted (the exported model stays)
    assert max(rounds) == ROUNDS and latest_checkpoint(job_dir) is None and not list(job_dir.glob("checkpoint-*"))
    assert (job_dir / "model" / "model_index.json").is_file()
    _check_consistent(store, job_dir)
    assert any(c.job_id == job for c in store.checkpoints())


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_hands_its_job_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    # The app stops its worker with SIGTERM; the job used to stay "running" until a later start found its
    # heartbeat stale. Now it is queued again at once, for the next worker to resume from its checkpoint.
    data = tmp_path / "data"
    store = Store(None, data)
    ids = [store.add_sample(_png(i), 40, 40, gt_png=_png(50 + i)) for i in range(2)]
    job = store.create_job({"preset": "tiny_test", "base_model": str(tiny_model_dir), "rounds": 6,
                            "ckpt_every": 1}, ids)
    proc = _start_worker(data, None, "w-term", once=True)
    deadline = time.time() + 120
    while time.time() < deadline and latest_checkpoint(data / "jobs" / str(job)) is None:
        time.sleep(0.05)
    assert store.job(job).state == "running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    j = store.job(job)
    assert j.state == "queued" and j.worker is None and "worker stopped" in j.log
    # (resuming a queued job from its checkpoint: test_sigkill_at_6_random_points)
