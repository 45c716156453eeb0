"""DARL core: restoration inference, IQA rewards, difficulty, the SFT/RL trainers and the job worker.

The public surface; everything else is reachable through its module.
"""

import logging as _logging

# pyiqa imports bitsandbytes, whose CPU backend, on processors with avx512_bf16, tries to fetch an
# optional 4-bit GEMM kernel from the Hugging Face Hub at import time and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community" when it cannot (offline). DARL never runs 4-bit layers,
# so the message says nothing about DARL: silenced at its logger.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

import warnings as _warnings

# ``python -m darl_core.train_sft`` imports this package first, which imports train_sft for the public
# surface below, so runpy warns that it runs a module already imported. The module has no import-time
# state to duplicate (its CLI builds everything inside main()), so the warning is noise to a user.
_warnings.filterwarnings("ignore", message=r"'darl_core\.train_sft' found in sys\.modules", category=RuntimeWarning)

from .degrade import DegradationConfig, degrade, get_preset
from .difficulty import difficulty, difficulty_no_reference, relative_weights
from .latent import LatentRestorer, LDMSRRestorer, SDUpscaleRestorer
from .loading import DEFAULT_MODEL, ModelLoadError, load_pipeline, load_restorer
from .pipeline import DEFAULT_STEPS, DEFAULT_TILE, RestorationPipeline
from .pool import PoolSample, build_pool
from .restorer import Precision, Restorer, cpu_bf16_supported
from .rewards import MissingWeightsError, create_reward, get_metric, list_metrics
from .rl import RLConfig, get_rl_preset, train_rl
from .train_sft import SFTConfig, train_sft

__all__ = ["DEFAULT_MODEL", "DEFAULT_STEPS", "DEFAULT_TILE", "DegradationConfig", "LDMSRRestorer", "LatentRestorer",
           "MissingWeightsError", "ModelLoadError", "PoolSample", "Precision", "RLConfig", "RestorationPipeline",
           "Restorer", "SDUpscaleRestorer", "SFTConfig", "build_pool", "cpu_bf16_supported", "create_reward",
           "degrade", "difficulty", "difficulty_no_reference", "get_metric", "get_preset", "get_rl_preset",
           "list_metrics", "load_pipeline", "load_restorer", "relative_weights", "train_rl", "train_sft"]
