"""Evaluation: the independent evaluation set (degraded by Pillow and numpy, not by our code), the
evaluation table of restorers, and a fine-tune's before and after.

Names load on first use (``import darl_core.evaluation`` stays cheap); modules: ``evalset``, ``evaluate``, ``payoff``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "OUTSIDE": "evalset",
    "PillowRecipe": "evalset",
    "RANDOM": "evalset",
    "eval_photos": "evalset",
    "flat_hf_ratio": "evalset",
    "independent_pairs": "evalset",
    "pillow_degrade": "evalset",
    "evaluate": "evaluate",
    "heldout_check": "evaluate",
    "HELDOUT_CROPS": "payoff",
    "PayoffItem": "payoff",
    "SUMMARY_TERMS": "payoff",
    "before_after": "payoff",
    "heldout_evaluation": "payoff",
    "heldout_items": "payoff",
    "payoff_summary": "payoff",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
