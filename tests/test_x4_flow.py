"""x4 super-resolution ground truths go through restore, flag and the training pool alike:
the ground truth is the clean image at the restorer's *output* size (4x the upload)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import register_models
import torch
from PIL import Image

from darl_core.data.pool import build_pool
from darl_core.train.rl import RLConfig
from storage import Store
from ui import AppContext, UserError
from ui.restore_service import flag, gt_scale, restore


def _img(path: Path, size: tuple[int, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def test_gt_scale() -> None:
    assert gt_scale((40, 30), (40, 30)) == 1
    assert gt_scale((40, 30), (160, 120)) == 4
    assert gt_scale((40, 30), (160, 121)) is None  # not the same factor on both sides
    assert gt_scale((40, 30), (60, 45)) is None  # not an integer factor
    assert gt_scale((40, 30), (20, 15)) is None  # smaller than the input


def test_x4_gt_restores_flags_and_trains(tmp_path: Path, tiny_sd_dir: Path) -> None:
    ctx = AppContext(Store(directory=tmp_path / "data"))
    register_models(ctx, tiny_sd_dir)  # a restore takes registered (or shipped) models only
    lq, gt = _img(tmp_path / "lq.png", (24, 24)), _img(tmp_path / "gt.png", (96, 96), seed=1)
    r = restore(ctx, lq, sft_model=str(tiny_sd_dir), rl_model=str(tiny_sd_dir), steps=1, tile=64, gt_path=gt)
    assert {row[0] for row in r.scores} >= {"input", "SFT", "RL"}  # scored against the x4 ground truth
    msg = flag(ctx, lq, "artifacts", gt_path=gt)
    assert "with ground truth" in msg
    with pytest.raises(UserError, match="integer multiple"):
        flag(ctx, lq, "artifacts", gt_path=_img(tmp_path / "bad.png", (50, 50)))
    row = ctx.store.flagged()[0]
    items = [{"id": row.sample_id, "lq": str(row.lq_path), "gt": str(row.gt_path)}]
    (tmp_path / "samples.json").write_text(json.dumps(items))
    pool = build_pool(RLConfig(samples_file=str(tmp_path / "samples.json"), patch=32), scale=4)
    assert pool[0].lq.shape == (3, 8, 8) and pool[0].gt.shape == (3, 32, 32)
    # the crops are aligned: the GT crop is the same region of the 4x image
    full = torch.from_numpy(np.array(Image.open(gt))).permute(2, 0, 1).float() / 255
    found = [(y, x) for y in range(0, 65, 4) for x in range(0, 65, 4)
             if torch.allclose(full[:, y:y + 32, x:x + 32], pool[0].gt, atol=1e-6)]
    assert found
