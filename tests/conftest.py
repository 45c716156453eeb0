"""Shared fixtures: tiny seeded models, as diffusers' own tests build them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(2)

from darl_core.pipeline import RestorationPipeline, build_unet, make_scheduler  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny_pipe() -> RestorationPipeline:
    return RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), residual_scale=0.5)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline saved in diffusers format (what the RL tests start from)."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), residual_scale=0.5).save_pretrained(path)
    return path
