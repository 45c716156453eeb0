"""A quick check of distilled denoisers on the training validation crops (not the evaluation set).

For each model: PSNR and ``flat_hf`` (bench/quality.py: the high-frequency energy of the output in the
flattest 10 % of the ground truth's blocks, over the ground truth's own; speckle in flat areas) at
each step count, mean over seeds; then, for the first model (the teacher) and each other one, where
the difference comes from: the student at the first step and the teacher at the last, and the other
way round (2 steps). On 2026-11-28 this showed the fast student's speckle comes from its last step:
teacher 2.12, student 3.24, student-then-teacher 2.02, teacher-then-student 3.33.

The crops are ``darl_core.data.validation_set`` (192-px crops of the training photos, degraded with
the ``realistic`` preset at a seed training never draws): a check to steer training by, so that the
independent evaluation set (bench/quality.py) stays a test.

    .venv/bin/python bench/distill_check.py models/sft-blind models/sft-blind-fast runs/s2distill_e/model
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import flat_hf_ratio  # noqa: E402

from darl_core.data import validation_set  # noqa: E402
from darl_core.loading import load_restorer  # noqa: E402
from darl_core.restorer import Noise, Restorer  # noqa: E402
from darl_core.rewards import get_metric  # noqa: E402
from darl_core.sampler import ddim_step  # noqa: E402


@torch.no_grad()
def mixed(teacher: Restorer, nets: tuple[torch.nn.Module, ...], lq: torch.Tensor, seed: int) -> torch.Tensor:
    """len(nets)-step deterministic sampling with ``nets[j]`` as the denoiser of step j (same stage 1)."""
    noise = Noise(torch.Generator().manual_seed(seed))
    cond, x, (h, w) = teacher._start(lq, noise)
    cond = cond.float()
    sched = type(teacher.scheduler).from_config(teacher.scheduler.config)
    sched.set_timesteps(len(nets))
    for net, t in zip(nets, sched.timesteps):
        out = teacher.predict(x, int(t), cond, 256, 32, unet=net).float()
        x = ddim_step(sched, out, int(t), x.float(), eta=0.0).prev_sample
    return teacher.to_image(x, cond)[..., :h, :w].float().clamp(0, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders; the first is the teacher")
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    psnr = get_metric("psnr")
    lq, hq = validation_set("realistic", args.crops)
    lq, hq = lq.to(args.device), hq.to(args.device)

    def score(outs: list[torch.Tensor]) -> dict[str, float]:
        """PSNR and flat_hf of one output batch per seed, each a mean over crops, then over seeds."""
        p = [float(psnr(o, hq).mean()) for o in outs]
        f = [sum(flat_hf_ratio(o[i].cpu(), hq[i].cpu()) for i in range(len(hq))) / len(hq) for o in outs]
        return {"psnr": sum(p) / len(p), "flat_hf": sum(f) / len(f)}

    pipes = [load_restorer(p, device=args.device) for p in args.models]
    for p in pipes:
        p.set_precision("auto")
    res: dict[str, dict[str, float]] = {}
    for path, pipe in zip(args.models, pipes):
        for s in args.steps:
            rec = score([pipe.restore_tensor(lq, s, generator=torch.Generator().manual_seed(seed)).clamp(0, 1)
                         for seed in args.seeds])
            res[f"{path} @{s}"] = rec
            print(f"{path} {s} steps: PSNR {rec['psnr']:.2f}  flat_hf {rec['flat_hf']:.2f}", flush=True)
    teacher = pipes[0]
    for path, pipe in zip(args.models[1:], pipes[1:]):
        for name, nets in (("student then teacher", (pipe.unet, teacher.unet)),
                           ("teacher then student", (teacher.unet, pipe.unet))):
            rec = score([mixed(teacher, nets, lq, seed) for seed in args.seeds])
            res[f"{path} {name}"] = rec
            print(f"{path} 2 steps, {name}: PSNR {rec['psnr']:.2f}  flat_hf {rec['flat_hf']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
