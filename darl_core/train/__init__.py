"""Training: the RL trainer (docs/method.md), supervised fine-tuning, checkpoints, and the processes of a
multi-GPU run.

Names load on first use (``import darl_core.train`` stays cheap); modules: ``rl``, ``sft``, ``checkpoint``, ``distributed``, ``allocator``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "CPU_SECONDS_PER_UNIT": "rl",
    "PRESETS": "rl",
    "ProbeGuard": "rl",
    "RLConfig": "rl",
    "RewardMemory": "rl",
    "SIZES": "rl",
    "get_rl_preset": "rl",
    "group_advantages": "rl",
    "last_step_anchor": "rl",
    "policy_losses": "rl",
    "ppo_loss": "rl",
    "probe_set": "rl",
    "reference_means": "rl",
    "round_cost": "rl",
    "sample_with_grad": "rl",
    "stage1_images": "rl",
    "train_rl": "rl",
    "SFTConfig": "sft",
    "train_sft": "sft",
    "atomic_dir": "checkpoint",
    "atomic_write_text": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "prune_checkpoints": "checkpoint",
    "save_checkpoint": "checkpoint",
    "Processes": "distributed",
    "resolve_device": "distributed",
    "keep_freed_memory": "allocator",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
