"""Training with several processes through accelerate: two CPU processes on the gloo backend."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import free_port

from darl_core.jobs.launch import launch_command
from darl_core.models.loading import load_restorer

HERE = Path(__file__).parent


def _run(cfg: dict, tmp_path: Path, name: str, processes: int) -> dict[str, torch.Tensor]:
    out = tmp_path / name
    conf = tmp_path / f"{name}.json"
    conf.write_text(json.dumps({**cfg, "output": str(out)}))
    if processes == 1:
        cmd = [sys.executable, str(HERE / "mp_train.py"), str(conf)]
    else:
        cmd = launch_command(conf, processes, free_port())
        cmd = cmd[: cmd.index("-m", 3)] + [str(HERE / "mp_train.py"), str(conf)]  # our script, not the CLI
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {r: torch.load(out / f"weights-rank{r}.pt") for r in range(processes)}


@pytest.mark.slow
def test_two_processes_hold_identical_weights_equal_to_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    # Full fine-tuning with the KL reference and the SFT term: the darl loss, 2 rounds, 2 epochs each.
    cfg = {"preset": "tiny_test", "base_model": str(tiny_model_dir), "reward": "psnr", "batch_size": 4,
           "rounds": 2, "pool_size": 8, "beta_kl": 0.05, "val_every": 0, "ckpt_every": 10, "device": "cpu"}
    two = _run(cfg, tmp_path, "two", 2)
    one = _run(cfg, tmp_path, "one", 1)[0]
    init = load_restorer(tiny_model_dir).unet.state_dict()
    # gradients averaged across processes: both hold exactly the same weights after the updates
    assert all(torch.equal(two[0][k], two[1][k]) for k in init)
    assert any(not torch.equal(two[0][k], init[k]) for k in init)  # and they did move
    # each process trained its half of the batch with the noise one process would draw for it, so
    # the run is the single-process one up to float summation order: the same losses and gradient
    # norms, and weights within 1% of the distance they moved (Adam's first steps are about
    # lr * sign(g), so a few near-zero gradient entries can flip; measured 0.28%)
    moved = sum(float(((one[k] - init[k]) ** 2).sum()) for k in init) ** 0.5
    diff = sum(float(((one[k] - two[0][k]) ** 2).sum()) for k in init) ** 0.5
    assert diff < 0.01 * moved, (diff, moved)
    # one writer: the main process's log and model
    recs = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2]
    for a, b in zip(recs, ref):  # rewards gathered from both processes, losses averaged over them
        for key in ("reward", "w_mean", "loss_sft", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
        # group advantages sum to 0 within each group, so the RL loss is what is left of terms of
        # size ~w |A| ~ 0.5 that cancel: compare it on the scale of those terms, not relative to itself
        assert a["loss_rl"] == pytest.approx(b["loss_rl"], abs=1e-5)
    assert load_restorer(tmp_path / "two" / "model").unet.state_dict().keys() == init.keys()
