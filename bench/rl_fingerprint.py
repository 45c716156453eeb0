"""Fingerprints of tiny RL runs, to check that a refactoring changed nothing.

Runs the ``tiny_test`` preset on tiny seeded models (pixel full fine-tuning, pixel LoRA, pixel
``memory`` advantages with KL and validation, reward backpropagation with diagnostics, a two-stage model
with the stage-1 anchor, probe, guard, last-step anchor and stochastic last step, Stable Diffusion x4 LoRA) and prints, per run, the
SHA-256 of the exported weights and of metrics.jsonl with its timing fields removed. Run it before
and after a change; identical lines mean bit-identical training. The values depend on the CPU's
floating-point kernels, so compare runs on the same machine only (they are not a test).

    python bench/rl_fingerprint.py > before.txt   # ... change the code ...
    python bench/rl_fingerprint.py | diff before.txt -
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors.torch import load_file

torch.set_num_threads(2)

from darl_core.models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler  # noqa: E402
from darl_core.train.rl import tiny_test, train_rl  # noqa: E402



def _digest(model: Path, run: Path) -> tuple[str, str]:
    h = hashlib.sha256()
    for f in sorted(model.rglob("*.safetensors")):
        for k, v in sorted(load_file(str(f)).items()):
            h.update(k.encode())
            h.update(v.float().numpy().tobytes())
    m = hashlib.sha256()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = {k: v for k, v in json.loads(line).items() if not k.endswith("_s")}  # timings (round_s, ...) vary
        m.update(json.dumps(rec, sort_keys=True).encode())
    return h.hexdigest()[:16], m.hexdigest()[:16]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="darl-fp-"))
    pixel = root / "pixel"
    RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), residual_scale=0.5).save_pretrained(pixel)
    two = root / "two_stage"  # with a stage 1: the stage-1 anchored reward
    RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), 0.5, stage1=build_stage1("tiny", 0)
                        ).save_pretrained(two)
    from darl_core.models.testing import random_sd_upscaler

    sd = root / "sd"
    random_sd_upscaler("tiny", seed=0, workdir=root / "clip").save_pretrained(sd)
    runs = {
        "pixel_full": replace(tiny_test(), base_model=str(pixel)),
        "pixel_lora": replace(tiny_test(), base_model=str(pixel), lora_rank=4, reward="ssim"),
        "pixel_memory_kl_val": replace(tiny_test(), base_model=str(pixel), advantage="memory", beta_kl=0.1,
                                       val_every=1, sampling="hardest", rounds=3),
        "pixel_backprop_diag": replace(tiny_test(), base_model=str(pixel), rl_estimator="backprop", backprop_steps=2,
                                       eta=0.0, diag_every=1, w_anchor="start", rounds=3),
        "two_stage_anchor_probe": replace(tiny_test(), base_model=str(two), reward="psnr", reward_reference="auto",
                                          probe_every=1, guard_psnr=5.0, beta_last=0.1, stochastic_last=True,
                                          keep_rollout_graph=False, sft_per_input=False, reward_last_k=1,
                                          snapshot_every=1, rounds=3, difficulty_every=2),
        "sd_lora": replace(tiny_test(), base_model=str(sd), lora_rank=4, task="sr4", patch=32, num_steps=2),
    }
    for name, cfg in runs.items():
        out = root / name
        model = train_rl(replace(cfg, output=str(out)))
        w, m = _digest(model, out)
        print(f"{name:22s} weights {w} metrics {m}", flush=True)


if __name__ == "__main__":
    main()
