"""Shared fixtures: tiny seeded models, as diffusers' own tests build them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(2)

from helpers import free_port  # noqa: E402

from darl_core.models.pipeline import RestorationPipeline  # noqa: E402
from darl_core.models.testing import tiny_pixel_pipeline  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny_pipe() -> RestorationPipeline:
    return tiny_pixel_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pipeline saved in diffusers format (what the RL tests start from)."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pixel_pipeline(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random StableDiffusionUpscalePipeline (channels 32/32/64), saved in diffusers format."""
    from darl_core.models.testing import random_sd_upscaler

    root = tmp_path_factory.mktemp("tiny_sd")
    random_sd_upscaler("tiny", seed=0, workdir=root / "clip").save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LDMSuperResolutionPipeline (VQ-VAE x4, UNet2DModel on [x_t, LQ]), saved."""
    from darl_core.models.testing import random_ldm_sr

    path = tmp_path_factory.mktemp("tiny_ldm") / "model"
    random_ldm_sr(seed=0).save_pretrained(path)
    return path


PG_BIN = Path("/usr/lib/postgresql/15/bin")



@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """Start a PostgreSQL cluster in a temporary folder (as the postgres user when we are root)."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 is not installed (apt-get install postgresql-15); .ci/run installs it")
    root = Path(tempfile.mkdtemp(prefix="darl-pg-"))
    data, port = root / "data", free_port()
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if run_as:
        shutil.chown(root, "postgres")
    subprocess.run(run_as + [str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=100",
                             "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Each run's reliability figures start from zero (helpers.record adds to them)."""
    from helpers import FIGURES

    FIGURES.unlink(missing_ok=True)
