"""SQL store of the DARL app (SQLAlchemy only): samples, flags, jobs, checkpoints, metrics."""

from .db import StoreUnavailable, data_dir, database_url, make_engine, migrate
from .models import COMPARISON_SUBSETS, BackgroundRestore, DIFFICULTY_KINDS, JOB_STATES, Checkpoint, Comparison, ComparisonSubset, Event, Flag, Job, JobState, Metric, Sample, SampleScore
from .store import TRANSITIONS, DiskFull, FlaggedRow, IllegalTransition, JobLost, ModelScore, Store

__all__ = ["BackgroundRestore", "COMPARISON_SUBSETS", "Checkpoint", "Comparison", "ComparisonSubset", "DIFFICULTY_KINDS", "DiskFull", "Event", "Flag", "FlaggedRow", "IllegalTransition", "JOB_STATES",
           "Job", "JobLost", "JobState", "Metric", "ModelScore", "Sample", "SampleScore", "Store", "StoreUnavailable", "TRANSITIONS", "data_dir",
           "database_url", "make_engine", "migrate"]
