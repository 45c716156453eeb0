import json
from dataclasses import replace

import torch

from darl_core.checkpoint import latest_checkpoint
from darl_core.loading import load_restorer
from darl_core.train_sft import main, tiny_test, train_sft


def test_tiny_sft_run_checkpoints_and_exports(tmp_path) -> None:
    cfg = replace(tiny_test(), output=str(tmp_path / "run"))
    model = train_sft(cfg)
    assert list(load_restorer(model).unet.config.block_out_channels) == [8, 16]
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and ckpt.name == "checkpoint-0000004"
    assert (ckpt / "pipeline" / "model_index.json").is_file()
    assert not list((tmp_path / "run").glob(".tmp-*"))
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert "input_psnr" in recs[0] and any("val_psnr" in r for r in recs)


def test_resume_continues_from_the_last_checkpoint(tmp_path) -> None:
    out = tmp_path / "run"
    main(["--preset", "tiny_test", "--output", str(out), "--steps", "2"])
    first = torch.load(latest_checkpoint(out) / "train_state.pt", weights_only=False)
    main(["--preset", "tiny_test", "--output", str(out), "--steps", "4", "--resume"])
    state = torch.load(latest_checkpoint(out) / "train_state.pt", weights_only=False)
    assert first["step"] == 2 and state["step"] == 4
    assert any(not torch.equal(first["unet"][k], state["unet"][k]) for k in state["unet"])


def test_stop_callback_stops_with_a_checkpoint(tmp_path) -> None:
    seen: list[int] = []
    cfg = replace(tiny_test(), output=str(tmp_path / "run"), steps=10, ckpt_every=100, val_every=0)
    train_sft(cfg, callbacks={"on_step": lambda r: seen.append(r["step"]), "should_stop": lambda: len(seen) >= 3})
    assert seen == [1, 2, 3]
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-0000003"
