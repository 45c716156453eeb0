"""DARL core: restoration inference, IQA rewards, difficulty, the SFT/RL trainers and the job worker.

The public surface; everything else is reachable through its subpackage:

- ``darl_core.models``: restorers (our pixel pipeline, latent diffusers families), LoRA, the sampler, loading;
- ``darl_core.rewards``: IQA metrics and rewards, darl_iqa, difficulty and the adaptive weights;
- ``darl_core.data``: images, degradations, training photos, the RL pool;
- ``darl_core.evaluation``: the independent evaluation set, evaluation tables, a job's before and after;
- ``darl_core.train``: the RL and SFT trainers, checkpoints, several processes;
- ``darl_core.jobs``: the background worker;
- ``darl_core.cli``: the ``darl`` command.

Names import their module on first use, so ``import darl_core`` is cheap (``_lazy.py``).
"""

import logging as _logging

from ._lazy import install_moved_finder, lazy_exports

# pyiqa imports bitsandbytes, whose CPU backend, on processors with avx512_bf16, tries to fetch an
# optional 4-bit GEMM kernel from the Hugging Face Hub at import time and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community" when it cannot (offline). DARL never runs 4-bit layers,
# so the message says nothing about DARL: silenced at its logger.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
install_moved_finder()  # 0.3's flat module names (darl_core.rl, ...) keep importing until 0.5

_EXPORTS = {
    "DEFAULT_MODEL": "models.loading", "ModelLoadError": "models.loading", "load_pipeline": "models.loading",
    "load_restorer": "models.loading", "DEFAULT_STEPS": "models.pipeline", "DEFAULT_TILE": "models.pipeline",
    "RestorationPipeline": "models.pipeline", "LatentRestorer": "models.latent", "LDMSRRestorer": "models.latent",
    "SDUpscaleRestorer": "models.latent", "Precision": "models.restorer", "Restorer": "models.restorer",
    "cpu_bf16_supported": "models.restorer",
    "MissingWeightsError": "rewards.registry", "create_reward": "rewards.registry", "get_metric": "rewards.registry",
    "list_metrics": "rewards.registry", "difficulty": "rewards.difficulty",
    "difficulty_no_reference": "rewards.difficulty", "relative_weights": "rewards.difficulty",
    "DegradationConfig": "data.degrade", "degrade": "data.degrade", "get_preset": "data.degrade",
    "PoolSample": "data.pool", "build_pool": "data.pool",
    "RLConfig": "train.rl", "get_rl_preset": "train.rl", "train_rl": "train.rl",
    "SFTConfig": "train.sft", "train_sft": "train.sft",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
