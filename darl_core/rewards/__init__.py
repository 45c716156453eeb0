"""IQA rewards and difficulty: the metric registry over pyiqa (oriented so that higher is better),
darl_iqa (our learned no-reference metric), per-sample difficulty and the adaptive weights, and the
reward sanity check.

Names load on first use (``import darl_core.rewards`` stays cheap); modules: ``registry``, ``difficulty``, ``iqa``, ``check``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "Metric": "registry",
    "MissingWeightsError": "registry",
    "FACTS": "registry",
    "MetricFacts": "registry",
    "NORM_RANGES": "registry",
    "RELIABLE_SIDE": "registry",
    "Reward": "registry",
    "ScoreMeta": "registry",
    "create_reward": "registry",
    "get_metric": "registry",
    "list_metrics": "registry",
    "parse_spec": "registry",
    "difficulty": "difficulty",
    "difficulty_no_reference": "difficulty",
    "relative_weights": "difficulty",
    "DEFAULT_DIR": "iqa",
    "IQAConfig": "iqa",
    "TinyIQA": "iqa",
    "apply_family": "iqa",
    "load_iqa": "iqa",
    "train_iqa": "iqa",
    "CHECK_EVERY": "check",
    "DISTORTIONS": "check",
    "distort": "check",
    "is_check_photo": "check",
    "reward_sanity": "check",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
