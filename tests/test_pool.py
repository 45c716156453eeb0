"""darl_core.data.pool: a run's pool from flagged samples, lq/gt folders or synthetic degradations."""

import json
from pathlib import Path

import pytest
import torch

from darl_core.data.images import tensor_to_pil
from darl_core.data.pool import build_pool
from darl_core.train.rl_config import RLConfig


def _png(path: Path, h: int, w: int, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))).save(path)
    return str(path)


def test_flagged_samples_keep_their_ids_and_aligned_crops(tmp_path: Path) -> None:
    items = [{"id": 7, "lq": _png(tmp_path / "a.png", 40, 48, 0), "gt": _png(tmp_path / "a_gt.png", 40, 48, 1)},
             {"id": 9, "lq": _png(tmp_path / "b.png", 20, 20, 2)}]  # no truth, smaller than the crop
    (tmp_path / "s.json").write_text(json.dumps(items))
    pool = build_pool(RLConfig(samples_file=str(tmp_path / "s.json"), patch=32))
    assert [s.id for s in pool] == ["7", "9"] and pool[1].gt is None
    assert pool[0].lq.shape == pool[0].gt.shape == pool[1].lq.shape == (3, 32, 32)
    # the crops are aligned: the same window of the input and of its truth (centred: rows 4..36, cols 8..40)
    from darl_core.data.images import load_rgb, pil_to_tensor

    torch.testing.assert_close(pool[0].gt, pil_to_tensor(load_rgb(items[0]["gt"]))[:, 4:36, 8:40])
    torch.testing.assert_close(pool[0].lq, pil_to_tensor(load_rgb(items[0]["lq"]))[:, 4:36, 8:40])


def test_pairs_folder_needs_every_truth_and_x4_sizes(tmp_path: Path) -> None:
    for name, seed in (("x.png", 0), ("y.png", 1)):
        _png(tmp_path / "lq" / name, 16, 16, seed)
        _png(tmp_path / "gt" / name, 64, 64, seed + 10)
    pool = build_pool(RLConfig(pairs_folder=str(tmp_path), patch=32), scale=4)
    assert [s.id for s in pool] == ["x.png", "y.png"] and pool[0].lq.shape == (3, 8, 8) and pool[0].gt.shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"GT \(64, 64\) is not 1x LQ \(16, 16\)"):
        build_pool(RLConfig(pairs_folder=str(tmp_path), patch=16), scale=1)
    (tmp_path / "gt" / "y.png").unlink()
    with pytest.raises(ValueError, match="y.png has no ground truth"):
        build_pool(RLConfig(pairs_folder=str(tmp_path), patch=32), scale=4)


def test_a_synthetic_pool_is_the_same_for_the_same_seed() -> None:
    cfg = RLConfig(pool_size=3, patch=32, seed=5)
    a, b = build_pool(cfg), build_pool(cfg)
    assert [s.id for s in a] == ["syn-0000", "syn-0001", "syn-0002"]
    assert all(torch.equal(x.lq, y.lq) and torch.equal(x.gt, y.gt) for x, y in zip(a, b))
    assert not torch.equal(build_pool(RLConfig(pool_size=3, patch=32, seed=6))[0].gt, a[0].gt)
