"""darl_core.evaluation.payoff: a job's before and after keeps numbers of different scales apart."""

from pathlib import Path

import pytest
import torch

from darl_core.models.loading import load_restorer
from darl_core.evaluation.payoff import PayoffItem, before_after, payoff_summary


def test_summary_never_averages_measures_of_different_scales() -> None:
    rows = [{"difficulty_base": 0.2, "difficulty_new": 0.1, "reward_base": 10.0, "reward_new": 12.0,
             "psnr_base": 28.0, "psnr_new": 28.5},
            {"difficulty_proxy_base": 0.6, "difficulty_proxy_new": 0.9, "reward_stage1_base": 700.0,
             "reward_stage1_new": 720.0}]
    s = payoff_summary(rows)
    assert s["n"] == 2 and s["n_difficulty"] == 1 and s["d_difficulty"] == pytest.approx(-0.1)
    assert s["better_difficulty"] == 1.0  # lower is better
    assert s["d_difficulty_proxy"] == pytest.approx(0.3) and s["better_difficulty_proxy"] == 0.0
    assert s["d_reward"] == pytest.approx(2.0) and s["d_reward_stage1"] == pytest.approx(20.0)
    assert s["n_psnr"] == 1 and "d_ssim" not in s  # nothing scored, nothing reported


def test_without_a_truth_the_reward_is_keyed_by_its_reference(tmp_path: Path) -> None:
    """A full-reference reward with the stage-1 anchor (no truth) goes under reward_stage1_*; with a truth under
    reward_*; with reference 'gt' and no truth it is not scored at all. PSNR and 1 - SSIM need the truth."""
    from darl_core.models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler

    RestorationPipeline(build_unet("tiny_fast", 0), make_scheduler(), 0.5,
                        stage1=build_stage1("tiny", 0)).save_pretrained(tmp_path / "m")
    base = load_restorer(tmp_path / "m")
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 32, 32, generator=g)
    items = [PayoffItem("with", gt.clamp(0, 1) * 0.9, gt, 1), PayoffItem("without", gt * 0.9, None, 2)]
    rows = before_after(base, base, items, 2, "psnr", tmp_path / "out", reference="auto")
    with_gt, without = rows[0]["metrics"], rows[1]["metrics"]
    assert {"reward_base", "psnr_base", "ssim_base", "difficulty_base"} <= set(with_gt)
    assert "reward_stage1_base" in without and "reward_base" not in without and "psnr_base" not in without
    assert with_gt["reward_base"] == pytest.approx(with_gt["psnr_base"])  # the psnr reward is PSNR
    assert with_gt["reward_new"] == with_gt["reward_base"]  # the same model twice, the same noise: no change
    strict = before_after(base, base, items[1:], 2, "psnr", tmp_path / "out2", reference="gt")
    assert not any(k.startswith("reward") for k in strict[0]["metrics"])
    assert rows[0]["files"]["gt"].is_file() and rows[1]["files"]["gt"] is None
