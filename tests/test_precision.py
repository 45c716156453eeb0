"""Inference precision (issue: fast on the machines people have): bf16 autocast and channels-last
must not change what a restore gives, and ``auto`` must only pick bf16 where the hardware has it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import darl_core.models.restorer as restorer_mod
from darl_core.evaluation.evaluate import _pairs
from darl_core.models.latent import LatentRestorer
from darl_core.models.loading import DEFAULT_MODEL, load_restorer
from darl_core.models.pipeline import (
    RestorationPipeline,
    build_stage1,
    build_unet,
    make_scheduler,
)
from darl_core.cli.restore import main as restore_main
from darl_core.rewards.registry import get_metric


def _two_stage() -> RestorationPipeline:
    stage1 = build_stage1("tiny", seed=1)
    torch.nn.init.normal_(stage1.conv_out.weight, std=0.05)  # not the identity: stage 1 must compute
    return RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), 0.5, stage1=stage1)


def _psnr_on_heldout(pipe: RestorationPipeline, crop: int, steps: int) -> list[float]:
    psnr = get_metric("psnr")
    out = []
    for i, (_, lq, gt) in enumerate(_pairs(None, "blind", 0)[:3]):
        lq, gt = lq[None, :, :crop, :crop], gt[None, :, :crop, :crop]
        res = pipe.restore_tensor(lq, steps, generator=torch.Generator().manual_seed(i))
        out.append(float(psnr(res, gt)))
    return out


def test_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = _two_stage()
    monkeypatch.setattr(restorer_mod, "cpu_bf16_supported", lambda: False)
    assert pipe.set_precision("auto") == "fp32, channels-last" and not pipe.inference_bf16
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.stage1.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(restorer_mod, "cpu_bf16_supported", lambda: True)
    assert pipe.set_precision("auto") == "bf16 autocast, channels-last" and pipe.inference_bf16
    assert pipe.set_precision("fp32") == "fp32, channels-last" and not pipe.inference_bf16
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        pipe.set_precision("fp16")  # type: ignore[arg-type]


def test_channels_last_fp32_is_the_same_restore() -> None:
    pipe = _two_stage()
    lq = torch.rand(1, 3, 40, 24)
    for steps in (0, 2):
        a = pipe.restore_tensor(lq, steps, generator=torch.Generator().manual_seed(0), tile_size=16,
                                tile_overlap=4)
        pipe.set_precision("fp32")
        b = pipe.restore_tensor(lq, steps, generator=torch.Generator().manual_seed(0), tile_size=16,
                                tile_overlap=4)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        pipe = _two_stage()


def test_bf16_within_005_db_on_the_heldout_set() -> None:
    pipe = _two_stage()
    ref = _psnr_on_heldout(pipe, 64, 2)
    pipe.set_precision("bf16")
    got = _psnr_on_heldout(pipe, 64, 2)
    assert all(abs(a - b) < 0.05 for a, b in zip(ref, got)), (ref, got)


@pytest.mark.slow
def test_shipped_model_bf16_within_005_db() -> None:
    """The shipped two-stage model at the app's default steps (bf16 is emulated, slowly, on CPUs
    without AVX512-BF16, so the crops are small)."""
    pipe = load_restorer(DEFAULT_MODEL)
    ref = _psnr_on_heldout(pipe, 64, 2)
    pipe.set_precision("bf16")
    got = _psnr_on_heldout(pipe, 64, 2)
    assert sum(got) / len(got) == pytest.approx(sum(ref) / len(ref), abs=0.05), (ref, got)
    assert abs(ref[0] - got[0]) > 0 or abs(ref[1] - got[1]) > 0  # bf16 really ran (results differ a little)


def test_latent_family_bf16(tiny_sd_dir) -> None:
    pipe = LatentRestorer.from_pretrained(tiny_sd_dir)
    lq = torch.rand(1, 3, 16, 16)
    a = pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(0))
    assert pipe.set_precision("bf16") == "bf16 autocast, channels-last"
    b = pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (1, 3, 64, 64) and b.dtype == torch.float32
    assert float((a - b).abs().mean()) < 0.02


def test_cli_precision_flag(tmp_path, tiny_model_dir, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    Image.new("RGB", (20, 20), (90, 120, 200)).save(tmp_path / "in.png")
    assert restore_main([str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--model", str(tiny_model_dir),
                         "--precision", "bf16"]) == 0
    assert Image.open(tmp_path / "out.png").size == (20, 20)
    # it says what it did: which model, how many steps, where the result went
    said = capsys.readouterr().out
    assert f"restored 1 image with {Path(tiny_model_dir).resolve()}, 2 steps -> {tmp_path / 'out.png'}" in said, said
    # a broken single input fails before any model is loaded (this model folder does not exist)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    assert restore_main([str(tmp_path / "bad.png"), str(tmp_path / "o3.png"), "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.png'}: ") and "does not exist" not in err, err
    with pytest.raises(SystemExit):
        restore_main([str(tmp_path / "in.png"), str(tmp_path / "o2.png"), "--precision", "half"])


@pytest.mark.slow
def test_short_rl_run_in_bf16_follows_fp32(tmp_path, tiny_model_dir) -> None:
    """Four darl rounds from the same seed with bf16 autocast and in fp32 (emulated bf16 on CPUs
    without it, so the model is tiny): reward, losses, KL and clipping per round follow fp32's.
    Measured: reward within 0.06 dB, losses within 1.1 %, KL within 1.5 %."""
    import json
    from dataclasses import replace

    from darl_core.train.rl import tiny_test, train_rl

    runs = {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}"
        train_rl(replace(tiny_test(), output=str(out), base_model=str(tiny_model_dir), rounds=4, bf16=bf16,
                         ckpt_every=100, diag_every=0))
        runs[bf16] = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert len(runs[False]) == len(runs[True]) == 4
    for a, b in zip(runs[False], runs[True]):
        assert abs(a["reward"] - b["reward"]) < 0.2, (a["reward"], b["reward"])
        assert b["loss_sft"] == pytest.approx(a["loss_sft"], rel=0.05)
        assert b["loss_rl"] == pytest.approx(a["loss_rl"], rel=0.1, abs=1e-3)
        assert b["kl"] == pytest.approx(a["kl"], rel=0.1, abs=1e-4)
        assert abs(a["clip_frac"] - b["clip_frac"]) <= 0.25
    assert any(a["reward"] != b["reward"] for a, b in zip(runs[False], runs[True]))  # bf16 really ran
