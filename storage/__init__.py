"""SQL store of the DARL app (SQLAlchemy only): samples, flags, jobs, checkpoints, metrics."""

from .db import StoreUnavailable, data_dir, database_url, make_engine, migrate
from .models import DIFFICULTY_KINDS, JOB_STATES, Checkpoint, Event, Flag, Job, JobState, Metric, Sample
from .store import TRANSITIONS, DiskFull, FlaggedRow, IllegalTransition, JobLost, Store

__all__ = ["Checkpoint", "DIFFICULTY_KINDS", "DiskFull", "Event", "Flag", "FlaggedRow", "IllegalTransition", "JOB_STATES",
           "Job", "JobLost", "JobState", "Metric", "Sample", "Store", "StoreUnavailable", "TRANSITIONS", "data_dir",
           "database_url", "make_engine", "migrate"]
