"""Background jobs: the worker that claims queued fine-tune jobs from the store, and the launch of a job's
training processes..

Names load on first use (``import darl_core.jobs`` stays cheap); modules: ``worker``, ``launch``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "compare_job": "worker",
    "job_config": "worker",
    "run_job": "worker",
    "run_worker": "worker",
    "summary_line": "worker",
    "launch_command": "launch",
    "train_in_processes": "launch",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
