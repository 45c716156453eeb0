"""bench/train_restorer_gpu.sh runs on lent GPU machines only; its tiny CPU mode checks it end to end."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from darl_core.models.loading import load_restorer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_restorer_script_trains_both_stages_in_tiny_cpu_mode(tmp_path: Path, tiny_model_dir: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "pkg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / "pkg" / f"p{i}.jpg")
    (photos / "index.json").write_text(json.dumps([{"file": f"pkg/p{i}.jpg", "split": "train"} for i in range(3)]))
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "DEVICE": "cpu", "TINY": "1", "S1_MINUTES": "0.05",
           "S2_MINUTES": "0.05", "INIT": str(tiny_model_dir), "DARL_PHOTOS_DIR": str(photos), "EXPORT_FP16": "false",
           "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "train_restorer_gpu.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "restorer.tar").is_file() and "stage 2 done" in (out / "stage2.log").read_text()
    # the log keeps its first line: runpy's "found in sys.modules" warning was there until silenced
    assert "RuntimeWarning" not in (out / "stage1.log").read_text()
    model = load_restorer(work / "s2" / "model")
    assert model.stage1 is not None and list(model.stage1.config.block_out_channels) == [8, 16]
    for stage in (1, 2):
        recs = [json.loads(x) for x in (out / f"stage{stage}_metrics.jsonl").read_text().splitlines()]
        assert recs and "input_psnr" in recs[0]
