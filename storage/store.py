"""The store's API: everything the app and the job worker read and write.

Images are stored content-addressed on disk under ``{data_dir}/blobs/``
(sha256 of the bytes; written to a temporary file and renamed), rows in the
database. Adding the same image twice, even concurrently, gives one Sample.

Jobs follow a state machine: queued -> running -> succeeded | failed |
cancelled, queued -> cancelled, and running -> queued (re-queued after a
worker died, to resume from its last checkpoint). Terminal states are final;
every transition is a conditional UPDATE, so two processes cannot both make
one. Workers claim jobs with ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL and an atomic conditional ``UPDATE ... RETURNING`` on SQLite.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from .db import StoreUnavailable, data_dir, make_engine, migrate
from .models import (
    COMPARISON_SUBSETS,
    BackgroundRestore,
    DIFFICULTY_KINDS,
    JOB_STATES,
    Checkpoint,
    Comparison,
    Event,
    Flag,
    Job,
    JobState,
    Metric,
    Sample,
    SampleScore,
    utcnow,
)

__all__ = ["DiskFull", "FlaggedRow", "IllegalTransition", "JobLost", "ModelScore", "Store", "TRANSITIONS"]

UNFLAG_ALL = "unflag-all"  # the reason of an unflag event that withdraws every user's flag on the sample

TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "cancelled"},
    "running": {"succeeded", "failed", "cancelled", "queued"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}


class IllegalTransition(ValueError):
    """A job state change the state machine does not allow (or that another process made first)."""


class JobLost(RuntimeError):
    """The worker no longer owns the job (it was re-queued as stale, and perhaps claimed by another
    worker): it must stop and write nothing more for it."""


@dataclass
class FlaggedRow:
    sample_id: int
    lq_path: Path
    gt_path: Path | None
    task: str
    reason: str
    note: str
    user: str
    difficulty: float | None
    flagged_at: datetime
    width: int
    height: int
    difficulty_kind: str | None = None  # "gt", "proxy", or None (unknown: flagged before migration 0004)
    tags: tuple[str, ...] = ()  # the sample's tags, sorted


@dataclass
class ModelScore:
    """One model's newest scores on a sample (``Store.model_scores``)."""
    model: str  # the model folder's path (a job's new model: its checkpoint's path, or "job:N" before it is registered)
    psnr: float | None  # dB against the ground truth; None without one
    ssim: float | None
    niqe: float | None  # no reference, lower is better
    at: datetime
    source: str  # "restore" (restored from the app) or "job:N" (that job's before and after)


def _tag(text: str) -> str:
    """A tag as stored: stripped, lower case; only letters, digits, "-" and "_" (no commas or wildcards)."""
    t = text.strip().lower()
    if not t or len(t) > 32 or not all(c.isalnum() or c in "-_" for c in t):
        raise ValueError(f"tag {text!r}: use 1 to 32 letters, digits, '-' or '_'")
    return t


class DiskFull(OSError):
    """The data directory's disk is full; the message says which and that nothing was stored."""


class Store:
    """One store = one database + one data directory."""

    def __init__(self, url: str | None = None, directory: Path | None = None, auto_migrate: bool = True) -> None:
        self.dir = Path(directory) if directory is not None else data_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(url or _default_url(self.dir))
        if auto_migrate:
            migrate(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self._session.begin() as s:
                yield s
        except OperationalError as e:
            raise StoreUnavailable(f"database {self.engine.url.render_as_string(hide_password=True)}: "
                                   f"{e.orig}") from e

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # ------------------------------------------------------------------ blobs
    def put_blob(self, data: bytes, suffix: str = ".png") -> str:
        """Store bytes content-addressed; returns the path relative to the data directory."""
        return self._put_blob(data, suffix)[0]

    def _put_blob(self, data: bytes, suffix: str = ".png") -> tuple[str, bool]:
        """(path relative to the data directory, whether this call created the file). A failed write
        leaves no temporary file; a full disk is a ``DiskFull`` that says so."""
        digest = hashlib.sha256(data).hexdigest()
        rel = Path("blobs") / digest[:2] / f"{digest}{suffix}"
        path = self.dir / rel
        if path.exists():
            return str(rel), False
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # same filesystem: atomic
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise DiskFull(f"the disk holding {self.dir} is full: nothing was stored") from e
            raise
        return str(rel), True

    def sweep_temporary(self, older_than_s: float = 3600.0) -> int:
        """Remove the temporary files of blob writes that never finished (a process killed mid-write, a
        machine that lost power) once older than ``older_than_s``, so a write in progress elsewhere is
        left alone; returns how many went. The app runs it at every start."""
        cutoff = datetime.now().timestamp() - older_than_s
        gone = 0
        for tmp in (self.dir / "blobs").glob("*/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    gone += 1
            except OSError:
                pass  # already gone
        return gone

    def _drop_unreferenced(self, rels: list[str]) -> None:
        """Remove blobs this call created when no sample refers to them (its transaction failed)."""
        try:
            with self.session() as s:
                used = set(s.scalars(select(Sample.lq_path).where(Sample.lq_path.in_(rels))))
                used |= set(s.scalars(select(Sample.gt_path).where(Sample.gt_path.in_(rels))))
        except StoreUnavailable:
            return  # cannot tell: keeping a file is safer than losing one a row refers to
        for rel in rels:
            if rel not in used:
                self.path(rel).unlink(missing_ok=True)

    def path(self, rel: str) -> Path:
        return self.dir / rel

    # ------------------------------------------------------------------ samples and flags
    def add_sample(self, lq_png: bytes, width: int, height: int, gt_png: bytes | None = None,
                   source: str = "upload", task: str = "blind") -> int:
        """Id of the Sample for these LQ bytes, created if new (idempotent, concurrency-safe)."""
        return self.flag_upload(lq_png, width, height, gt_png, source, task, flag=False)[0]

    def flag_upload(self, lq_png: bytes, width: int, height: int, gt_png: bytes | None = None,
                    source: str = "upload", task: str = "blind", user: str = "anonymous", reason: str = "",
                    note: str = "", difficulty: float | None = None, difficulty_kind: str | None = None,
                    flag: bool = True) -> tuple[int, int | None]:
        """``user``'s Sample for these LQ bytes (created if new; a ground truth given later is kept) and, with
        ``flag``, a flag event on it, in one transaction: (sample id, flag id). Another user's flag of the
        same bytes is their own sample: its tags and ground truth never touch this one. Nothing is stored
        when it fails, not even the image files this call wrote."""
        if difficulty_kind is not None and difficulty_kind not in DIFFICULTY_KINDS:
            raise ValueError(f"difficulty_kind must be one of {DIFFICULTY_KINDS}, got {difficulty_kind!r}")
        digest = hashlib.sha256(lq_png).hexdigest()
        created: list[str] = []
        try:
            lq_rel, new = self._put_blob(lq_png)
            created += [lq_rel] if new else []
            gt_rel = None
            if gt_png is not None:
                gt_rel, new = self._put_blob(gt_png)
                created += [gt_rel] if new else []
            ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(Sample)
            values = {"content_hash": digest, "owner": user, "lq_path": lq_rel, "gt_path": gt_rel, "width": width,
                      "height": height, "source": source, "task": task, "created_at": utcnow()}
            with self.session() as s:
                s.execute(ins.values(**values).on_conflict_do_nothing(index_elements=["content_hash", "owner"]))
                sample = s.scalars(select(Sample).where(Sample.content_hash == digest, Sample.owner == user)).one()
                if gt_rel is not None and sample.gt_path is None:
                    sample.gt_path = gt_rel  # a ground truth given later is kept
                flag_id = None
                if flag:
                    f = Flag(sample_id=sample.id, flagged=True, user=user, reason=reason, note=note,
                             difficulty=difficulty, difficulty_kind=difficulty_kind if difficulty is not None else None,
                             created_at=utcnow())
                    s.add(f)
                    s.flush()
                    flag_id = f.id
                return sample.id, flag_id
        except BaseException:
            if created:
                self._drop_unreferenced(created)
            raise

    def find_sample(self, lq_png: bytes) -> int | None:
        """The id of the Sample with exactly these LQ bytes (as ``flag_upload`` stores them), or None."""
        digest = hashlib.sha256(lq_png).hexdigest()
        with self.session() as s:
            return s.scalar(select(Sample.id).where(Sample.content_hash == digest))

    def sample(self, sample_id: int) -> Sample:
        with self.session() as s:
            obj = s.get(Sample, sample_id)
            if obj is None:
                raise KeyError(f"no sample {sample_id}")
            return obj

    def flag(self, sample_id: int, user: str = "anonymous", reason: str = "", note: str = "",
             difficulty: float | None = None, flagged: bool = True, difficulty_kind: str | None = None) -> int:
        """Append a flag (or, with ``flagged=False``, an unflag) event; returns its id. ``difficulty_kind``
        says what ``difficulty`` measures: "gt" (against a ground truth) or "proxy" (no reference)."""
        if difficulty_kind is not None and difficulty_kind not in DIFFICULTY_KINDS:
            raise ValueError(f"difficulty_kind must be one of {DIFFICULTY_KINDS}, got {difficulty_kind!r}")
        if difficulty is None:
            difficulty_kind = None
        with self.session() as s:
            if s.get(Sample, sample_id) is None:
                raise KeyError(f"no sample {sample_id}")
            f = Flag(sample_id=sample_id, flagged=flagged, user=user, reason=reason, note=note,
                     difficulty=difficulty, difficulty_kind=difficulty_kind, created_at=utcnow())
            s.add(f)
            s.flush()
            return f.id

    def last_difficulty(self, sample_id: int) -> tuple[float | None, str | None]:
        """(difficulty, kind) of the newest flag event on the sample that carries one, or (None, None)."""
        with self.session() as s:
            row = s.execute(select(Flag.difficulty, Flag.difficulty_kind).where(
                Flag.sample_id == sample_id, Flag.flagged.is_(True), Flag.difficulty.is_not(None))
                .order_by(Flag.id.desc()).limit(1)).first()
        return (row[0], row[1]) if row else (None, None)

    def unflag(self, sample_id: int, user: str = "anonymous", everyone: bool = False) -> int:
        """Withdraw ``user``'s flag on a sample (another user's flag on the same image stands), or with
        ``everyone`` (an admin, or the one user of an app without login) every flag on it."""
        return self.flag(sample_id, user, reason=UNFLAG_ALL if everyone else "unflag", flagged=False)

    @staticmethod
    def _active_flags() -> Any:
        """Ids of the flag events that stand: a flag not followed, on its sample, by a later event of the same
        user (their unflag, or a newer flag that replaces it) or by an unflag of everyone."""
        later = aliased(Flag)
        superseded = (select(later.id).where(later.sample_id == Flag.sample_id, later.id > Flag.id,
                                             or_(later.user == Flag.user,
                                                 and_(later.flagged.is_(False), later.reason == UNFLAG_ALL)))
                      .exists())
        return select(Flag.id).where(Flag.flagged.is_(True), ~superseded)

    def flagged(self, task: str | None = None, reason: str | None = None, since: datetime | None = None,
                min_difficulty: float | None = None, max_difficulty: float | None = None,
                difficulty_kind: str | None = None, tag: str | None = None, user: str | None = None
                ) -> list[FlaggedRow]:
        """Flagged samples (a user's flag stands until that user, or an admin for everyone, withdraws it),
        each with its newest standing flag, newest first, with optional filters: ``reason``
        keeps flags whose reason contains it (any case). With ``difficulty_kind``, only flags whose
        difficulty is of that kind ("gt" or "proxy"): the difficulty bounds then compare like with like.
        ``tag``: only samples carrying it. ``user``: only the samples on which that user's flag stands (what a
        user who is not an admin may see, with login)."""
        newest = select(func.max(Flag.id)).where(Flag.id.in_(self._active_flags())).group_by(Flag.sample_id)
        q = (select(Flag, Sample).join(Sample, Sample.id == Flag.sample_id)
             .where(Flag.id.in_(newest.scalar_subquery())).order_by(Flag.id.desc()))
        if task:
            q = q.where(Sample.task == task)
        if reason:
            pattern = reason.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(Flag.reason.ilike(f"%{pattern}%", escape="\\"))
        if since:
            q = q.where(Flag.created_at >= since)
        if min_difficulty is not None:
            q = q.where(Flag.difficulty >= min_difficulty)
        if max_difficulty is not None:
            q = q.where(Flag.difficulty <= max_difficulty)
        if difficulty_kind is not None:
            q = q.where(Flag.difficulty_kind == difficulty_kind)
        if tag:
            q = q.where(Sample.tags.like(f"%,{_tag(tag)},%"))
        if user is not None:
            q = q.where(Sample.id.in_(select(Flag.sample_id).where(Flag.user == user, Flag.id.in_(self._active_flags()))))
        with self.session() as s:
            return [FlaggedRow(sm.id, self.path(sm.lq_path), self.path(sm.gt_path) if sm.gt_path else None,
                               sm.task, f.reason, f.note, f.user, f.difficulty, f.created_at, sm.width, sm.height,
                               f.difficulty_kind, tuple(t for t in (sm.tags or "").split(",") if t))
                    for f, sm in s.execute(q).all()]

    # ------------------------------------------------------------------ undo
    def undo_last(self, user: str) -> tuple[Flag, list[Flag]] | None:
        """Undo ``user``'s newest flag or unflag event that no undo has undone yet (each undo goes one further
        back): a flag is withdrawn (or the user's earlier flag on the sample stands again), an unflag brings back
        the flags it withdrew. Only appends events, each naming the event it undoes (``Flag.undoes``), plus an
        "undo" audit event. Returns (the undone event, the events appended), or None when there is nothing."""
        with self.session() as s:
            done = select(Flag.undoes).where(Flag.undoes.is_not(None))
            last = s.scalars(select(Flag).where(Flag.user == user, Flag.undoes.is_(None), Flag.id.not_in(done))
                             .order_by(Flag.id.desc()).limit(1)).first()
            if last is None:
                return None
            # the flags standing on the sample just before ``last``
            before = [f for f in s.scalars(select(Flag).where(Flag.sample_id == last.sample_id, Flag.id < last.id)
                                           .order_by(Flag.id))]
            standing: dict[str, Flag] = {}
            for f in before:
                if f.flagged:
                    standing[f.user] = f
                elif f.reason == UNFLAG_ALL:
                    standing.clear()
                else:
                    standing.pop(f.user, None)
            now = utcnow()
            if last.flagged:
                prior = standing.get(last.user)
                again = [prior] if prior is not None else []
                new = [Flag(sample_id=last.sample_id, flagged=False, user=last.user, reason="unflag", note="",
                            undoes=last.id, created_at=now)] if prior is None else []
            else:
                again = list(standing.values()) if last.reason == UNFLAG_ALL else \
                    [f for u, f in standing.items() if u == last.user]
                new = []
            new += [Flag(sample_id=f.sample_id, flagged=True, user=f.user, reason=f.reason, note=f.note,
                         difficulty=f.difficulty, difficulty_kind=f.difficulty_kind, undoes=last.id, created_at=now)
                    for f in again]
            if not new:  # an unflag that withdrew nothing: its undo is an event too, so the next undo goes further
                new = [Flag(sample_id=last.sample_id, flagged=False, user=last.user, reason="unflag", note="",
                            undoes=last.id, created_at=now)]
            s.add_all(new)
            s.add(Event(user=user, action="undo", target=f"sample:{last.sample_id}",
                        detail=f"{'flag' if last.flagged else 'unflag'} event #{last.id}", created_at=now))
            s.flush()
            return last, new

    # ------------------------------------------------------------------ each model's scores
    def add_scores(self, sample_id: int, model: str, psnr: float | None = None, ssim: float | None = None,
                   niqe: float | None = None, steps: int | None = None, user: str = "anonymous") -> None:
        """Record one model's scores on a sample (the newest per model is the one shown)."""
        with self.session() as s:
            if s.get(Sample, sample_id) is None:
                raise KeyError(f"no sample {sample_id}")
            s.add(SampleScore(sample_id=sample_id, model=str(model), psnr=psnr, ssim=ssim, niqe=niqe, steps=steps,
                              user=user, created_at=utcnow()))

    def model_scores(self, sample_ids: Sequence[int] | None = None) -> dict[int, dict[str, ModelScore]]:
        """sample id -> model -> its newest scores on that sample: restores recorded with ``add_scores``, and
        every finished job's before and after (its base model and its new one, from ``comparisons``)."""
        out: dict[int, dict[str, ModelScore]] = {}

        def keep(sid: int, score: ModelScore) -> None:
            old = out.setdefault(sid, {}).get(score.model)
            if old is None or score.at >= old.at:
                out[sid][score.model] = score

        with self.session() as s:
            q = select(SampleScore)
            c = select(Comparison, Job).join(Job, Job.id == Comparison.job_id).where(
                Comparison.subset == "samples", Comparison.sample_id.is_not(None))
            if sample_ids is not None:
                q = q.where(SampleScore.sample_id.in_(list(sample_ids)))
                c = c.where(Comparison.sample_id.in_(list(sample_ids)))
            for r in s.scalars(q.order_by(SampleScore.id)):
                keep(r.sample_id, ModelScore(r.model, r.psnr, r.ssim, r.niqe, r.created_at, "restore"))
            rows = s.execute(c.order_by(Comparison.id)).all()
            made = dict(s.execute(select(Checkpoint.job_id, Checkpoint.path).where(
                Checkpoint.job_id.in_({j.id for _, j in rows}))).all()) if rows else {}
            for cmp, job in rows:
                m = cmp.metrics or {}
                sides = (("base", job.config.get("base_model")), ("new", made.get(job.id, f"job:{job.id}")))
                for side, model in sides:
                    values = [m.get(f"{k}_{side}") for k in ("psnr", "ssim", "niqe")]
                    if model and any(v is not None for v in values):
                        keep(cmp.sample_id, ModelScore(str(model), *values, cmp.created_at, f"job:{job.id}"))
        return out

    # ------------------------------------------------------------------ tags
    def tag(self, sample_ids: Sequence[int], add: Sequence[str] = (), remove: Sequence[str] = (),
            user: str = "anonymous") -> None:
        """Add and remove tags on samples, all in one transaction with its audit events (a KeyError names a
        missing sample). A tag is lower-case letters, digits, "-" and "_" (at most 32); ValueError otherwise."""
        add_, remove_ = [_tag(t) for t in add], [_tag(t) for t in remove]
        with self.session() as s:
            for sid in sample_ids:
                sm = s.get(Sample, int(sid))
                if sm is None:
                    raise KeyError(sid)
                tags = (set(t for t in (sm.tags or "").split(",") if t) | set(add_)) - set(remove_)
                joined = ",".join(sorted(tags))
                if len(joined) + 2 > 512:
                    raise ValueError(f"sample #{sid} would have too many tags (512 characters at most)")
                sm.tags = f",{joined}," if tags else ""
                for action, names in (("tag", add_), ("untag", remove_)):
                    if names:
                        s.add(Event(user=user, action=action, target=f"sample:{sm.id}", detail=",".join(names),
                                    created_at=utcnow()))

    # ------------------------------------------------------------------ owners and the audit log

    def owners(self, target: str) -> set[str]:
        """Who may change ``target`` besides an admin: for "sample:N" every user whose flag on it stands, for "job:N" the user who launched it, for "restore:N" the user
        who asked for that background restore, for "checkpoint:N"
        the user of the job that made it (nobody for shipped or registered-by-hand models). KeyError if
        there is no such thing."""
        kind, _, num = target.partition(":")
        with self.session() as s:
            if kind == "sample":
                if s.get(Sample, int(num)) is None:
                    raise KeyError(f"no sample {num}")
                return set(s.scalars(select(Flag.user).where(Flag.sample_id == int(num),
                                                             Flag.id.in_(self._active_flags()))))
            if kind == "job":
                job = s.get(Job, int(num))
                if job is None:
                    raise KeyError(f"no job {num}")
                return {job.user}
            if kind == "restore":
                r = s.get(BackgroundRestore, int(num))
                if r is None:
                    raise KeyError(f"no background restore {num}")
                return {r.user}
            if kind == "checkpoint":
                c = s.get(Checkpoint, int(num))
                if c is None:
                    raise KeyError(f"no checkpoint {num}")
                job = s.get(Job, c.job_id) if c.job_id is not None else None
                return {job.user} if job is not None else set()
            raise ValueError(f"unknown kind of target {target!r}")

    def events(self, target: str | None = None, limit: int = 200) -> list[Event]:
        """Audit events, newest first, optionally of one target ("job:3")."""
        with self.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if target is not None:
                q = q.where(Event.target == target)
            return list(s.scalars(q))

    # ------------------------------------------------------------------ jobs
    def create_job(self, config: dict[str, Any], sample_ids: list[int], user: str = "anonymous",
                   processes: int = 1) -> int:
        """Queue a fine-tune job; ``processes`` > 1 trains it with that many processes (GPUs)."""
        if processes < 1:
            raise ValueError(f"a job needs at least one process, got {processes}")
        with self.session() as s:
            job = Job(state="queued", config=config, sample_ids=list(sample_ids), user=user, progress=0.0,
                      cancel_requested=False, log="", attempts=0, created_at=utcnow(), processes=processes)
            s.add(job)
            s.flush()
            return job.id

    def job(self, job_id: int) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")
            return job

    def jobs(self, limit: int = 100) -> list[Job]:
        with self.session() as s:
            return list(s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)))

    def active_jobs(self, user: str) -> list[Job]:
        """``user``'s jobs that are queued or running, oldest first (the per-user cap counts them)."""
        with self.session() as s:
            return list(s.scalars(select(Job).where(Job.user == user, Job.state.in_(("queued", "running")))
                                  .order_by(Job.id)))

    def claim_job(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job and mark it running for ``worker``."""
        now = utcnow()
        with self.session() as s:
            if self.dialect == "postgresql":
                job_id = s.scalar(select(Job.id).where(Job.state == "queued").order_by(Job.id)
                                  .limit(1).with_for_update(skip_locked=True))
                if job_id is None:
                    return None
            else:
                job_id = s.scalar(select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1))
                if job_id is None:
                    return None
            res = s.execute(update(Job).where(Job.id == job_id, Job.state == "queued")
                            .values(state="running", worker=worker, heartbeat=now, started_at=now,
                                    attempts=Job.attempts + 1).returning(Job.id))
            if res.scalar() is None:
                return None
            return s.get(Job, job_id)

    def transition(self, job_id: int, new: JobState, error: str | None = None, worker: str | None = None) -> None:
        """Move a job to ``new``; raises IllegalTransition if its current state does not allow it
        (or, with ``worker``, if that worker does not own the job any more)."""
        if new not in JOB_STATES:
            raise IllegalTransition(f"unknown job state {new!r}")
        allowed_from = [s for s, targets in TRANSITIONS.items() if new in targets]
        values: dict[str, Any] = {"state": new}
        if new in ("succeeded", "failed", "cancelled"):
            values["finished_at"] = utcnow()
        if new == "succeeded":
            values["progress"] = 1.0
        if new == "queued":
            values["worker"] = None
        if error is not None:
            values["error"] = error
        cond = [Job.id == job_id, Job.state.in_(allowed_from)]
        if worker is not None:
            cond.append(Job.worker == worker)
        with self.session() as s:
            res = s.execute(update(Job).where(*cond).values(**values))
            if res.rowcount != 1:
                cur = s.execute(select(Job.state, Job.worker).where(Job.id == job_id)).first()
                owner = f" (owned by {cur[1]}, not {worker})" if cur is not None and worker and cur[1] != worker else ""
                raise IllegalTransition(f"job {job_id}: {cur[0] if cur else None} -> {new} is not allowed{owner}")

    def heartbeat(self, job_id: int, progress: float | None = None, log_line: str | None = None,
                  worker: str | None = None) -> bool:
        """Record liveness (and progress); returns True when a cancel was requested. With ``worker``,
        only the job's owner may beat: anyone else (a worker whose job was re-queued) gets JobLost."""
        values: dict[str, Any] = {"heartbeat": utcnow()}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        cond = [Job.id == job_id, Job.state == "running"]
        if worker is not None:
            cond.append(Job.worker == worker)
        with self.session() as s:
            if log_line:
                values["log"] = Job.log + log_line + "\n"
            res = s.execute(update(Job).where(*cond).values(**values))
            if worker is not None and res.rowcount != 1:
                raise JobLost(f"job {job_id} is no longer owned by {worker}")
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def request_cancel(self, job_id: int, user: str = "anonymous") -> None:
        """Queued jobs are cancelled at once; running ones stop at their next round (recorded with ``user``)."""
        with self.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            s.add(Event(user=user, action="cancel", target=f"job:{job_id}", detail="", created_at=utcnow()))
        try:
            self.transition(job_id, "cancelled")
        except IllegalTransition:
            pass  # running: the worker sees the flag; terminal: nothing to do

    def recover_stale(self, timeout_s: float, requeue: bool) -> list[int]:
        """Jobs marked running whose heartbeat is older than ``timeout_s``: re-queued or failed."""
        # One conditional UPDATE: a job is taken back only if it is *still* stale when the row is
        # written, so a job another worker has just claimed (fresh heartbeat) is never re-queued again,
        # and two workers recovering at once re-queue it once.
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        values: dict[str, Any] = ({"state": "queued", "worker": None} if requeue else
                                  {"state": "failed", "finished_at": utcnow(),
                                   "error": "worker stopped responding (stale heartbeat)"})
        with self.session() as s:
            res = s.execute(update(Job).where(Job.state == "running", Job.heartbeat < cutoff)
                            .values(**values).returning(Job.id))
            return sorted(res.scalars())

    def recover_worker(self, worker: str, requeue: bool = True) -> list[int]:
        """The running jobs of ``worker``, known dead (its process exited), re-queued (or failed) at once,
        whatever their heartbeat's age."""
        values: dict[str, Any] = ({"state": "queued", "worker": None} if requeue else
                                  {"state": "failed", "finished_at": utcnow(), "error": "its worker died"})
        with self.session() as s:
            res = s.execute(update(Job).where(Job.state == "running", Job.worker == worker)
                            .values(**values).returning(Job.id))
            return sorted(res.scalars())

    def add_metrics(self, job_id: int, step: int, values: dict[str, float]) -> None:
        """Record a step's metrics; a step logged again (redone after a resume) replaces the old values."""
        with self.session() as s:
            s.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step == step))
            s.add_all(Metric(job_id=job_id, step=step, name=k, value=float(v)) for k, v in values.items())

    def metrics(self, job_id: int) -> list[tuple[int, str, float]]:
        with self.session() as s:
            return [(m.step, m.name, m.value) for m in
                    s.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step, Metric.id))]

    # ------------------------------------------------------------------ before and after
    def set_comparisons(self, job_id: int, rows: Sequence[dict[str, Any]]) -> None:
        """Record a finished job's before and after (``Comparison`` fields per row; image paths relative to
        the data directory). A job compared again (resumed and finished anew) replaces its old rows."""
        for r in rows:
            if r.get("subset") not in COMPARISON_SUBSETS:
                raise ValueError(f"comparison subset {r.get('subset')!r}: one of {COMPARISON_SUBSETS}")
        with self.session() as s:
            s.execute(delete(Comparison).where(Comparison.job_id == job_id))
            s.add_all(Comparison(job_id=job_id, **{k: v for k, v in r.items() if k != "job_id"}) for r in rows)

    def comparisons(self, job_id: int) -> list[Comparison]:
        """A job's before-and-after rows, its samples first, in the order they were recorded."""
        with self.session() as s:
            rows = list(s.scalars(select(Comparison).where(Comparison.job_id == job_id).order_by(Comparison.id)))
        return sorted(rows, key=lambda r: COMPARISON_SUBSETS.index(r.subset))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ checkpoints
    def register_checkpoint(self, path: str, name: str, parent_id: int | None = None, job_id: int | None = None,
                            evaluation: dict[str, float] | None = None) -> int:
        with self.session() as s:
            existing = s.scalar(select(Checkpoint).where(Checkpoint.path == path))
            if existing is not None:
                existing.evaluation = evaluation or existing.evaluation
                return existing.id
            c = Checkpoint(path=path, name=name, parent_id=parent_id, job_id=job_id, evaluation=evaluation or {},
                           promoted=False, created_at=utcnow())
            s.add(c)
            s.flush()
            return c.id

    def checkpoints(self) -> list[Checkpoint]:
        with self.session() as s:
            return list(s.scalars(select(Checkpoint).order_by(Checkpoint.id)))

    def promote(self, checkpoint_id: int, user: str = "anonymous") -> None:
        """Make one checkpoint the app's default RL model (recorded with ``user``)."""
        with self.session() as s:
            s.execute(update(Checkpoint).values(promoted=Checkpoint.id == checkpoint_id))
            s.add(Event(user=user, action="promote", target=f"checkpoint:{checkpoint_id}", detail="",
                        created_at=utcnow()))

    @staticmethod
    def _deletion_blocker(s: Session, c: Checkpoint) -> str | None:
        if c.promoted:
            return f"checkpoint {c.name} is the promoted default; promote another first"
        if s.scalar(select(func.count()).where(Checkpoint.parent_id == c.id)):
            return f"checkpoint {c.name} has descendants and cannot be deleted"
        active = s.scalars(select(Job).where(Job.state.in_(("queued", "running")))).all()
        users = [j.id for j in active if j.config.get("base_model") == c.path]
        if users:
            return f"checkpoint {c.name} is the base of unfinished job(s) {users}"
        return None

    def checkpoint(self, checkpoint_id: int) -> Checkpoint:
        with self.session() as s:
            c = s.get(Checkpoint, checkpoint_id)
            if c is None:
                raise KeyError(f"no checkpoint {checkpoint_id}")
            return c

    def deletion_blocker(self, checkpoint_id: int) -> str | None:
        """Why the checkpoint cannot be deleted now (promoted, has descendants, base of an unfinished
        job), or None; KeyError if there is no such checkpoint."""
        with self.session() as s:
            c = s.get(Checkpoint, checkpoint_id)
            if c is None:
                raise KeyError(f"no checkpoint {checkpoint_id}")
            return self._deletion_blocker(s, c)

    def delete_checkpoint(self, checkpoint_id: int, user: str = "anonymous") -> str:
        """Delete a checkpoint row that is not promoted, has no descendants and is no unfinished job's base;
        returns its path. Its id is never given to another checkpoint (AUTOINCREMENT on SQLite)."""
        with self.session() as s:
            c = s.get(Checkpoint, checkpoint_id)
            if c is None:
                raise KeyError(f"no checkpoint {checkpoint_id}")
            blocker = self._deletion_blocker(s, c)
            if blocker:
                raise ValueError(blocker)
            s.delete(c)
            s.add(Event(user=user, action="delete", target=f"checkpoint:{checkpoint_id}", detail=f"{c.name} {c.path}",
                        created_at=utcnow()))
            return c.path

    # ------------------------------------------------------------------ background restores
    # A restore too long for the interactive queue (ui/background_restores.py): queued, claimed by the app's
    # runner, its progress and cancel flag through ``restore_beat``, and finished with its files or an error.
    # Its states and their moves are a job's (TRANSITIONS).
    def create_restore(self, request: dict[str, Any], user: str = "anonymous") -> int:
        with self.session() as s:
            r = BackgroundRestore(user=user, state="queued", request=dict(request), progress=0.0, message="",
                                  cancel_requested=False, files=[], created_at=utcnow())
            s.add(r)
            s.flush()
            return r.id

    def background_restore(self, restore_id: int) -> BackgroundRestore:
        with self.session() as s:
            r = s.get(BackgroundRestore, restore_id)
            if r is None:
                raise KeyError(f"no background restore {restore_id}")
            return r

    def background_restores(self, user: str | None = None, limit: int = 50) -> list[BackgroundRestore]:
        """The newest background restores first: ``user``'s, or everyone's (None)."""
        with self.session() as s:
            q = select(BackgroundRestore).order_by(BackgroundRestore.id.desc()).limit(limit)
            if user is not None:
                q = q.where(BackgroundRestore.user == user)
            return list(s.scalars(q))

    def active_restores(self, user: str) -> list[BackgroundRestore]:
        """``user``'s background restores that are queued or running (the per-user cap counts them)."""
        with self.session() as s:
            return list(s.scalars(select(BackgroundRestore).where(
                BackgroundRestore.user == user, BackgroundRestore.state.in_(("queued", "running")))
                .order_by(BackgroundRestore.id)))

    def claim_restore(self, runner: str) -> BackgroundRestore | None:
        """Atomically take the oldest queued background restore and mark it running for ``runner``."""
        now = utcnow()
        with self.session() as s:
            q = select(BackgroundRestore.id).where(BackgroundRestore.state == "queued").order_by(
                BackgroundRestore.id).limit(1)
            rid = s.scalar(q.with_for_update(skip_locked=True) if self.dialect == "postgresql" else q)
            if rid is None:
                return None
            res = s.execute(update(BackgroundRestore).where(BackgroundRestore.id == rid,
                                                            BackgroundRestore.state == "queued")
                            .values(state="running", runner=runner, heartbeat=now, started_at=now, progress=0.0)
                            .returning(BackgroundRestore.id))
            if res.scalar() is None:
                return None
            return s.get(BackgroundRestore, rid)

    def restore_beat(self, restore_id: int, runner: str, progress: float | None = None,
                     message: str | None = None) -> bool:
        """Record a running background restore's liveness (and progress); True when its cancel was asked
        for, or when it is no longer ``runner``'s (taken back as stale): either way, stop."""
        values: dict[str, Any] = {"heartbeat": utcnow()}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, float(progress)))
        if message is not None:
            values["message"] = message[:500]
        with self.session() as s:
            res = s.execute(update(BackgroundRestore).where(
                BackgroundRestore.id == restore_id, BackgroundRestore.state == "running",
                BackgroundRestore.runner == runner).values(**values))
            if res.rowcount != 1:
                return True
            return bool(s.scalar(select(BackgroundRestore.cancel_requested).where(BackgroundRestore.id == restore_id)))

    def finish_restore(self, restore_id: int, runner: str, state: JobState, files: Sequence[str] = (),
                       error: str | None = None) -> bool:
        """End ``runner``'s running background restore as ``state`` (succeeded with its ``files``, failed with
        its ``error``, cancelled); False when it was not theirs any more (nothing written)."""
        if state not in ("succeeded", "failed", "cancelled"):
            raise IllegalTransition(f"a background restore ends succeeded, failed or cancelled, not {state!r}")
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(), "files": list(files), "error": error}
        if state == "succeeded":
            values.update(progress=1.0, message="done")
        with self.session() as s:
            res = s.execute(update(BackgroundRestore).where(
                BackgroundRestore.id == restore_id, BackgroundRestore.state == "running",
                BackgroundRestore.runner == runner).values(**values))
            return res.rowcount == 1

    def cancel_restore(self, restore_id: int, user: str = "anonymous") -> str:
        """Cancel a background restore: a queued one at once, a running one at its next tile (its runner sees
        the flag). Returns the state it was in; recorded in the audit log with ``user``."""
        with self.session() as s:
            r = s.get(BackgroundRestore, restore_id)
            if r is None:
                raise KeyError(f"no background restore {restore_id}")
            was = r.state
            s.execute(update(BackgroundRestore).where(BackgroundRestore.id == restore_id)
                      .values(cancel_requested=True))
            s.execute(update(BackgroundRestore).where(BackgroundRestore.id == restore_id,
                                                      BackgroundRestore.state == "queued")
                      .values(state="cancelled", finished_at=utcnow()))
            s.add(Event(user=user, action="cancel", target=f"restore:{restore_id}", detail="", created_at=utcnow()))
            return was

    def recover_restores(self, timeout_s: float) -> list[int]:
        """Running background restores whose heartbeat is older than ``timeout_s`` (their app stopped):
        queued again, to start over (a restore has no checkpoint to resume from)."""
        cutoff = utcnow() - timedelta(seconds=timeout_s)
        with self.session() as s:
            res = s.execute(update(BackgroundRestore).where(BackgroundRestore.state == "running",
                                                            BackgroundRestore.heartbeat < cutoff)
                            .values(state="queued", runner=None, progress=0.0,
                                    message="queued again: the app stopped while it ran")
                            .returning(BackgroundRestore.id))
            return sorted(res.scalars())

    def ping(self) -> None:
        with self.session() as s:
            s.execute(text("SELECT 1"))


def _default_url(directory: Path) -> str | None:
    return None if os.environ.get("DARL_DATABASE_URL") else f"sqlite:///{directory / 'darl.db'}"
