import json
from dataclasses import replace

import torch

from darl_core.train.checkpoint import latest_checkpoint
from darl_core.models.loading import load_restorer
from darl_core.cli.train_sft import main
from darl_core.train.sft import tiny_test, train_sft


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


def test_schedule_timesteps_train_only_where_few_step_sampling_looks(tmp_path) -> None:
    from dataclasses import replace

    import torch

    from darl_core.models.pipeline import make_scheduler
    from darl_core.models.restorer import schedule_timesteps
    from darl_core.models.testing import tiny_pixel_pipeline
    from darl_core.train.sft import tiny_test, train_sft

    sched = make_scheduler()
    ts = schedule_timesteps(sched)
    visited = set()
    for n in (1, 2, 4, 10):
        sched.set_timesteps(n)
        visited |= {int(t) for t in sched.timesteps}
    assert ts.tolist() == sorted(visited) and {999, 499, 249} <= visited and len(ts) < 20
    pipe = tiny_pixel_pipeline()
    seen = []
    orig = pipe.predict
    pipe.predict = lambda x, t, c, **kw: (seen.append(t.clone()), orig(x, t, c, **kw))[1]
    lq, hq = torch.rand(16, 3, 16, 16), torch.rand(16, 3, 16, 16)
    pipe.sft_loss(lq, hq, torch.Generator().manual_seed(0), timesteps=ts)
    assert set(seen[-1].tolist()) <= set(ts.tolist()) and len(set(seen[-1].tolist())) > 3
    pipe.sft_loss(lq, hq, torch.Generator().manual_seed(0))
    assert not set(seen[-1].tolist()) <= set(ts.tolist())  # the default: all 1000
    train_sft(replace(tiny_test(), output=str(tmp_path / "run"), train_timesteps="schedule", steps=2))
    try:
        train_sft(replace(tiny_test(), output=str(tmp_path / "bad"), train_timesteps="some"))
    except ValueError as e:
        assert "train_timesteps" in str(e)
    else:
        raise AssertionError("an unknown train_timesteps must be refused")
