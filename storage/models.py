"""SQLAlchemy 2 typed models of the app's store.

Sample      an uploaded / flagged image, LQ and optional GT blob: one per content hash and owner (a second
            user's flag of the same bytes is that user's own sample, with its own tags and ground truth)
Flag        append-only flag history; unflagging is a new event (``flagged = False``); the difficulty
            estimate shown when flagged and its kind (ground truth or no-reference proxy)
Job         an RL fine-tune job: config, state, progress, heartbeat, frozen sample list
Checkpoint  a model folder, its parent, the job that made it, evaluation numbers, promoted (ids never reused)
Metric      a (job, step, name, value) training metric
Event       the audit log: who changed what (tag, cancel, promote, delete; flags record their user themselves)
Comparison  a finished job's before and after: one image restored by its base model and by its new model
SampleScore one model's scores on a sample (PSNR, SSIM with a ground truth; NIQE), newest per model shown
BackgroundRestore  a restore too long for the interactive queue: its request, state, progress and result files
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["BackgroundRestore", "Base", "COMPARISON_SUBSETS", "Checkpoint", "Comparison", "ComparisonSubset", "DIFFICULTY_KINDS", "Event", "Flag", "JOB_STATES", "Job", "JobState", "Metric", "Sample", "SampleScore", "utcnow"]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
ComparisonSubset = Literal["samples", "heldout"]  # a job's own samples, or its held-out check crops
COMPARISON_SUBSETS: tuple[ComparisonSubset, ...] = ("samples", "heldout")
DIFFICULTY_KINDS = ("gt", "proxy")  # Flag.difficulty_kind: against a ground truth, or the no-reference proxy


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("content_hash", "owner", name="uq_samples_content_owner"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the LQ bytes
    # whose record this is (the user who flagged it; "anonymous" without login); before migration 0009 one
    # sample per image was shared by everyone who flagged it: those keep their first flagger as owner
    owner: Mapped[str] = mapped_column(String(128), default="anonymous", server_default="anonymous")
    lq_path: Mapped[str] = mapped_column(String(512))  # relative to the data directory
    gt_path: Mapped[str | None] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(64), default="upload")
    task: Mapped[str] = mapped_column(String(32), default="blind")
    tags: Mapped[str] = mapped_column(String(512), default="", server_default="")  # ",tag1,tag2," (or "")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    flags: Mapped[list[Flag]] = relationship(back_populates="sample", order_by="Flag.id")


class Flag(Base):
    __tablename__ = "flags"
    __table_args__ = (Index("ix_flags_sample", "sample_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    flagged: Mapped[bool] = mapped_column(Boolean, default=True)  # False: an unflag event
    user: Mapped[str] = mapped_column(String(128), default="anonymous")
    reason: Mapped[str] = mapped_column(String(64), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    difficulty: Mapped[float | None] = mapped_column(Float)  # estimate shown when flagged
    # what ``difficulty`` measures: "gt" (1 - SSIM against the ground truth, 0 easy .. 2) or "proxy"
    # (1 - normalised NIQE, no reference, 0 easy .. 1 hard); None for flags older than migration 0004
    difficulty_kind: Mapped[str | None] = mapped_column(String(16))
    undoes: Mapped[int | None] = mapped_column(Integer)  # appended by an undo: the id of the event it undoes (0010)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    sample: Mapped[Sample] = relationship(back_populates="flags")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state", "state", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # a JobState
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # RLConfig fields
    sample_ids: Mapped[list[Any]] = mapped_column(JSON)  # frozen training pool (Sample ids)
    user: Mapped[str] = mapped_column(String(128), default="anonymous")
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    worker: Mapped[str | None] = mapped_column(String(128))
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    processes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # training processes


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    # Checkpoints are deleted: on SQLite, AUTOINCREMENT keeps a deleted id from being handed out again
    # (migration 0003), so "checkpoint #4" always means one model.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="RESTRICT"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job", "job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_target", "target", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(128))  # who made the change ("anonymous" without login)
    action: Mapped[str] = mapped_column(String(32))  # "tag", "untag", "cancel", "promote", "delete"
    target: Mapped[str] = mapped_column(String(64))  # what changed: "sample:3", "job:1", "checkpoint:4"
    detail: Mapped[str] = mapped_column(Text, default="")  # e.g. the tags, the deleted checkpoint's path
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Comparison(Base):
    __tablename__ = "comparisons"
    __table_args__ = (Index("ix_comparisons_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    subset: Mapped[str] = mapped_column(String(16))  # a ComparisonSubset
    name: Mapped[str] = mapped_column(String(128))  # "sample 12", or the held-out crop's name
    sample_id: Mapped[int | None] = mapped_column(ForeignKey("samples.id", ondelete="SET NULL"))
    # image files, relative to the data directory: the input, both restorations, the ground truth if any
    lq_path: Mapped[str] = mapped_column(String(512))
    base_path: Mapped[str] = mapped_column(String(512))
    new_path: Mapped[str] = mapped_column(String(512))
    gt_path: Mapped[str | None] = mapped_column(String(512))
    # numbers before and after: reward_base/new, psnr_*, ssim_* (with a ground truth), difficulty_*
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SampleScore(Base):
    __tablename__ = "sample_scores"
    __table_args__ = (Index("ix_sample_scores_sample", "sample_id", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(512))  # the model folder's path, as the pickers and checkpoints name it
    psnr: Mapped[float | None] = mapped_column(Float)  # dB against the ground truth (None without one)
    ssim: Mapped[float | None] = mapped_column(Float)  # against the ground truth (None without one)
    niqe: Mapped[float | None] = mapped_column(Float)  # no reference, lower is better
    steps: Mapped[int | None] = mapped_column(Integer)  # the restore's diffusion steps
    user: Mapped[str] = mapped_column(String(128), default="anonymous")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BackgroundRestore(Base):
    """A restore expected to take over a minute: run by the app's background runner (ui/background_restores.py),
    not in the interactive queue. States are a job's: queued, running, succeeded, failed, cancelled (0011)."""
    __tablename__ = "background_restores"
    __table_args__ = (Index("ix_background_restores_state", "state", "id"),
                      Index("ix_background_restores_user", "user", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user: Mapped[str] = mapped_column(String(128), default="anonymous")  # who asked (only they or an admin see it)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # a JobState
    # what to restore: folder (relative to the data directory) holding input.png and gt.png, task, sft, rl,
    # steps, seed, tile, width, height, estimate_s (the expected seconds when it was queued)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str] = mapped_column(Text, default="")  # the newest progress line
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    files: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the result's files, relative to the data directory
    runner: Mapped[str | None] = mapped_column(String(128))
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
