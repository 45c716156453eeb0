"""A quick check of distilled denoisers on the training validation crops (not the evaluation set).

For each model: PSNR and ``flat_hf`` (bench/quality.py: the high-frequency energy of the output in the
flattest 10 % of the ground truth's blocks, over the ground truth's own; speckle in flat areas) at
each step count, mean over seeds; then, for the first model (the teacher) and each other one, where
the difference comes from: the student at the first step and the teacher at the last, and the other
way round (2 steps). On 2026-11-28 this showed the fast student's speckle comes from its last step:
teacher 2.12, student 3.24, student-then-teacher 2.02, teacher-then-student 3.33.

The crops are ``darl_core.data.clean.validation_set`` (192-px crops of the training photos, degraded with
the ``realistic`` preset at a seed training never draws): a check to steer training by, so that the
independent evaluation set (bench/quality.py) stays a test.

    .venv/bin/python bench/distill_check.py models/sft-blind models/sft-blind-fast runs/s2distill_e/model

``--last-timesteps 499 299 249`` adds, for every model, 2-step sampling from t = 999 to each of these
instead of the schedule's 499 (with NIQE): whether a later last step, where less noise is left to
remove, takes a student's speckle away without the teacher's help.

``--flip-last`` adds, for every model, 2-step sampling whose last denoiser output is the mean over
flipped copies of the input (identity and horizontal; and all four of identity, horizontal, vertical,
both), with NIQE: whether the speckle is the network's non-equivariant error, which averaging cancels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from darl_core.evaluation.evalset import flat_hf_ratio

from darl_core.data.clean import validation_set
from darl_core.models.loading import load_restorer
from darl_core.models.restorer import Noise, Restorer
from darl_core.rewards.registry import get_metric
from darl_core.models.sampler import _x0_eps


FLIPS_2 = ((), (-1,))  # identity, horizontal flip (dims of a flip)
FLIPS_4 = ((), (-1,), (-2,), (-1, -2))


@torch.no_grad()
def mixed(teacher: Restorer, nets: tuple[torch.nn.Module, ...], lq: torch.Tensor, seed: int,
          timesteps: tuple[int, ...] | None = None,
          flips: tuple[tuple[tuple[int, ...], ...], ...] | None = None) -> torch.Tensor:
    """len(nets)-step deterministic DDIM with ``nets[j]`` as the denoiser of step j (same stage 1), at
    the scheduler's timesteps for that many steps or at ``timesteps`` (e.g. (999, 299): a later last step);
    ``flips[j]`` makes step j's output the mean over those flips of the input (each flipped back)."""
    noise = Noise(torch.Generator().manual_seed(seed))
    cond, x, (h, w) = teacher._start(lq, noise)
    cond = cond.float()
    if timesteps is None:
        sched = type(teacher.scheduler).from_config(teacher.scheduler.config)
        sched.set_timesteps(len(nets))
        timesteps = tuple(int(t) for t in sched.timesteps)
    abar = teacher.scheduler.alphas_cumprod
    for j, (net, t) in enumerate(zip(nets, timesteps)):
        outs = [teacher.predict(x.flip(d), t, cond.flip(d), 256, 32, unet=net).float().flip(d)
                for d in (flips[j] if flips else ((),))]
        out = sum(outs) / len(outs)
        x0, eps = _x0_eps(teacher.scheduler, out, x.float(), float(abar[t]))
        a_next = float(abar[timesteps[j + 1]]) if j + 1 < len(timesteps) else 1.0  # the schedule ends at abar = 1
        x = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps
    return teacher.to_image(x, cond)[..., :h, :w].float().clamp(0, 1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders; the first is the teacher")
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--last-timesteps", type=int, nargs="*", default=[],
                    help="also 2-step sampling from 999 to each of these instead of 499, for every model")
    ap.add_argument("--flip-last", action="store_true",
                    help="also 2 steps with the last output averaged over 2 and 4 flips, for every model")
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
    niqe = get_metric("niqe")
    for t2 in args.last_timesteps:
        for path, pipe in zip(args.models, pipes):
            outs = [mixed(pipe, (pipe.unet, pipe.unet), lq, seed, (999, t2)) for seed in args.seeds]
            rec = score(outs) | {"niqe": sum(float(niqe(o).mean()) for o in outs) / len(outs)}
            res[f"{path} @2 (999, {t2})"] = rec
            print(f"{path} 2 steps 999 -> {t2}: PSNR {rec['psnr']:.2f}  flat_hf {rec['flat_hf']:.2f}  "
                  f"NIQE {rec['niqe']:.3f}", flush=True)
    for name, fl in (("2 flips", FLIPS_2), ("4 flips", FLIPS_4)) if args.flip_last else ():
        for path, pipe in zip(args.models, pipes):
            outs = [mixed(pipe, (pipe.unet, pipe.unet), lq, seed, flips=(((),), fl)) for seed in args.seeds]
            rec = score(outs) | {"niqe": sum(float(niqe(o).mean()) for o in outs) / len(outs)}
            res[f"{path} @2 last step {name}"] = rec
            print(f"{path} 2 steps, last step averaged over {name}: PSNR {rec['psnr']:.2f}  "
                  f"flat_hf {rec['flat_hf']:.2f}  NIQE {rec['niqe']:.3f}", flush=True)
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
