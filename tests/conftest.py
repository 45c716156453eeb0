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

from darl_core.pipeline import RestorationPipeline, build_unet, make_scheduler  # noqa: E402
from helpers import free_port  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random StableDiffusionUpscalePipeline (channels 32/32/64), saved in diffusers format."""
    from darl_core.latent import random_sd_upscaler

    root = tmp_path_factory.mktemp("tiny_sd")
    random_sd_upscaler("tiny", seed=0, workdir=root / "clip").save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def tiny_ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LDMSuperResolutionPipeline (VQ-VAE x4, UNet2DModel on [x_t, LQ]), saved."""
    from diffusers import DDIMScheduler, LDMSuperResolutionPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    vq = VQModel(block_out_channels=(16, 16, 32), in_channels=3, out_channels=3, latent_channels=3,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                 layers_per_block=1, norm_num_groups=8, num_vq_embeddings=64)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                          clip_sample=False)
    path = tmp_path_factory.mktemp("tiny_ldm") / "model"
    LDMSuperResolutionPipeline(vqvae=vq, unet=unet, scheduler=sched).save_pretrained(path)
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
