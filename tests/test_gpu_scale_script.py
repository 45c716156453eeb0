"""bench/gpu_scale.py is run on lent GPU machines only; here its tiny CPU mode checks that it works."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_scale_runs_end_to_end_at_tiny_size(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_scale.py"), "--size", "tiny", "--device", "cpu",
                           "--steps", "3", "--lq", "24", "--repeats", "1", "--rounds", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res_file,) = tmp_path.glob("gpu_scale-*.json")
    res = json.loads(res_file.read_text())
    assert res["out"] == 96 and res["steps"] == 3 and res["batch"] == 4
    assert res["restore_median_s"] > 0 and res["rl_iteration_median_s"] > 0 and res["bare_unet_s"] > 0
    assert res["rl_ratio"] == pytest.approx(res["rl_iteration_median_s"] / res["bare_unet_s"])
    # The VAE work the bare compute leaves out: 2 reward decodes (darl scores the last 2 steps) and one SFT
    # encode per epoch, timed alone and taken out of the ratio.
    assert res["vae_decodes"] == 2 and res["vae_decode_s"] > 0 and res["vae_encode_s"] > 0
    assert res["vae_in_iteration_s"] == pytest.approx(2 * res["vae_decode_s"] + res["epochs"] * res["vae_encode_s"])
    assert res["rl_ratio_without_vae"] == pytest.approx(
        (res["rl_iteration_median_s"] - res["vae_in_iteration_s"]) / res["bare_unet_s"])
    assert 0 < res["rl_rollout_median_s"] and 0 < res["rl_update_median_s"]
    assert res["rl_rollout_median_s"] + res["rl_update_median_s"] <= res["rl_iteration_median_s"] + 0.01
    md = res_file.with_suffix(".md").read_text()
    assert "| ratio |" in md and "| ratio without that VAE work |" in md
    assert "| <= 1.3 |" not in md  # a CPU run at other shapes is not held to the GPU targets
    assert res["command"].endswith("--out " + str(tmp_path)) and f"`{res['command']}`" in md  # how to rerun it
