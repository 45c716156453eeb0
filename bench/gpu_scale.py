"""The Stable Diffusion x4 upscaler at real size on a GPU: restore time, one LoRA RL iteration, memory.

    python bench/gpu_scale.py                          # on a GPU machine; writes bench/results/gpu_scale-<card>.{json,md}
    python bench/gpu_scale.py --size tiny --device cpu --steps 3 --lq 24 --out /tmp/x   # smoke run on a CPU

Random weights at the size of stabilityai/stable-diffusion-x4-upscaler's UNet
and VAE (``latent.random_sd_upscaler("x4")``): the same compute as the real
checkpoint, which this machine cannot download. It measures

1. restore: a ``--lq`` px LQ image to 4x (128 -> 512), ``--steps`` DDIM steps, UNet and VAE in fp16,
   median of ``--repeats`` after a warm-up (target <= 0.8 s at 512x512, 20 steps);
2. one darl RL iteration with LoRA (rank ``--rank``, attention and ResNet layers) at batch
   ``--batch``: the trainer itself (``train_rl``, bf16 autocast), rounds after the first, pool
   difficulty left out (it is a restore of the pool, timed in 1.);
3. the bare UNet compute such an iteration contains, with the same shapes and autocast: the
   rollout's forwards, and per PPO epoch K policy forward+backward passes (weights frozen, as
   under LoRA: activation gradients only), K reference forwards (KL) and one SFT
   forward+backward; the ratio iteration / bare (target <= 1.3);
4. the VAE work inside 2. that 3. leaves out: the reward decodes (``--reward-last-k`` per
   rollout) and the SFT term's encode of the HQ batch (once per epoch), timed alone, and the
   ratio without them, so that a ratio over target says where the time went;
5. peak GPU memory of 1. and of 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.models.loading import load_restorer
from darl_core.data.pool import PoolSample
from darl_core.models.restorer import Restorer
from darl_core.train.rl import get_rl_preset, train_rl
from darl_core.models.sampler import step_std
from darl_core.models.testing import random_sd_upscaler


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _autocast(device: str) -> torch.autocast:
    """The trainer's bf16 autocast on CUDA (``--bf16 true``); fp32 elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def _median_s(fn: Callable[[], object], device: str, repeats: int,
              after_warmup: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call (GPU work synchronised)."""
    def once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    once()
    if after_warmup is not None:
        after_warmup()
    return statistics.median(once() for _ in range(repeats))


def bench_restore(model_dir: Path, args: argparse.Namespace) -> dict[str, float | None]:
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    r = load_restorer(model_dir, args.device, dtype)
    lq = torch.rand(1, 3, args.lq, args.lq)

    def once() -> None:
        out = r.restore_tensor(lq, args.steps, generator=torch.Generator().manual_seed(0), tile_size=None)
        assert out.shape[-1] == 4 * args.lq

    median = _median_s(once, args.device, args.repeats, after_warmup=lambda: _peak_reset(args.device))
    return {"restore_median_s": median, "restore_peak_gib": _peak_gib(args.device)}


def bench_rl(model_dir: Path, args: argparse.Namespace, tmp: Path) -> dict[str, float | None]:
    g = torch.Generator().manual_seed(0)
    hq = torch.rand(args.batch, 3, 4 * args.lq, 4 * args.lq, generator=g)
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="bicubic", antialias=True).clamp(0, 1)
    pool = [PoolSample(f"s{i}", lq[i], hq[i]) for i in range(args.batch)]
    cfg = replace(get_rl_preset("darl"), output=str(tmp / "rl"), base_model=str(model_dir), rounds=args.rounds,
                  batch_size=args.batch, hard_fraction=1.0, num_steps=args.steps, patch=4 * args.lq,
                  reward=args.reward, reward_last_k=args.reward_last_k, lora_rank=args.rank, val_every=0,
                  ckpt_every=10_000, device=args.device, bf16=args.device.startswith("cuda"), task="sr4")
    _peak_reset(args.device)
    train_rl(cfg, pool=pool)
    peak = _peak_gib(args.device)
    recs = [json.loads(line) for line in open(tmp / "rl" / "metrics.jsonl")]
    iters = [r["round_s"] - r["difficulty_s"] for r in recs[1:]]  # the first round warms up
    return {"rl_iteration_median_s": statistics.median(iters), "rl_rounds_timed": len(iters), "rl_peak_gib": peak,
            "rl_rollout_median_s": statistics.median(r["rollout_s"] for r in recs[1:]),  # with decodes, rewards
            "rl_update_median_s": statistics.median(r["update_s"] for r in recs[1:]), "epochs": cfg.epochs}


def bench_vae(r: Restorer, args: argparse.Namespace, epochs: int) -> dict[str, float]:
    """The VAE calls of one iteration, as the trainer makes them (same shapes, autocast, no grad)."""
    z = torch.randn(args.batch, 4, args.lq, args.lq, device=args.device)
    hq = torch.rand(args.batch, 3, 4 * args.lq, 4 * args.lq, device=args.device)

    def timed(fn: Callable[[], object]) -> float:
        def run() -> None:
            with _autocast(args.device):
                fn()

        return _median_s(run, args.device, args.repeats)

    decode_s = timed(lambda: r.to_image(z, None))
    encode_s = timed(lambda: r.to_x0(hq, None))
    decodes = min(args.reward_last_k, args.steps) if args.reward_last_k > 0 else args.steps
    return {"vae_decode_s": decode_s, "vae_encode_s": encode_s, "vae_decodes": decodes,
            "vae_in_iteration_s": decodes * decode_s + epochs * encode_s}


def bench_bare(r: Restorer, args: argparse.Namespace, epochs: int) -> float:
    r.scheduler.set_timesteps(args.steps)
    k = sum(step_std(r.scheduler, int(t), 1.0) > 0 for t in r.scheduler.timesteps)  # stochastic steps
    r.unet.requires_grad_(False)  # as under LoRA: activation gradients only
    x = torch.randn(args.batch, 4, args.lq, args.lq, device=args.device)
    cond = torch.randn(args.batch, 3, args.lq, args.lq, device=args.device)

    def once() -> None:
        with _autocast(args.device):
            with torch.no_grad():
                for _ in range(args.steps):
                    r.predict(x, 500, cond)
                for _ in range(epochs * k):
                    r.predict(x, 500, cond)  # reference forward for the KL
            for _ in range(epochs * (k + 1)):  # policy passes, plus the SFT pass
                xi = x.clone().requires_grad_(True)
                r.predict(xi, 500, cond).float().pow(2).mean().backward()

    return _median_s(once, args.device, args.repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="x4", choices=["x4", "tiny"], help="x4: the real UNet/VAE size")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--lq", type=int, default=128, help="LQ side (the output is 4x)")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps of the restore and of the RL rollout")
    ap.add_argument("--batch", type=int, default=4, help="RL batch")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank")
    ap.add_argument("--reward", default="niqe")
    ap.add_argument("--reward-last-k", type=int, default=2, help="score the last k transitions (darl config)")
    ap.add_argument("--rounds", type=int, default=3, help="RL rounds (the first warms up)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    command = " ".join(["python bench/gpu_scale.py", *sys.argv[1:]])
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu-{torch.get_num_threads()}threads"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_scale-" + "".join(c if c.isalnum() else "_" for c in card)

    def save(res: dict[str, object], complete: bool) -> None:
        """After every phase, so that a run cut short by its time limit keeps what it measured."""
        (args.out / f"{stem}.json").write_text(json.dumps({**res, "complete": complete}, indent=2) + "\n")
        print("measured so far:", json.dumps(res), flush=True)

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        pipe = random_sd_upscaler(args.size, seed=0, workdir=tmp / "clip")
        pipe.to(torch.float16 if args.device.startswith("cuda") else torch.float32).save_pretrained(tmp / "model")
        n_unet = sum(p.numel() for p in pipe.unet.parameters())
        n_vae = sum(p.numel() for p in pipe.vae.parameters())
        del pipe
        setup_s = time.perf_counter() - t0
        res: dict[str, object] = {"command": command, "card": card, "size": args.size, "unet_params": n_unet,
                                  "vae_params": n_vae,
                                  "lq": args.lq, "out": 4 * args.lq, "steps": args.steps, "batch": args.batch,
                                  "lora_rank": args.rank, "reward": args.reward, "reward_last_k": args.reward_last_k,
                                  "torch": torch.__version__, "setup_s": round(setup_s, 1)}
        res.update(bench_restore(tmp / "model", args))
        save(res, False)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the fp16 restorer is gone with bench_restore's frame
        res.update(bench_rl(tmp / "model", args, tmp))
        save(res, False)
        fp32 = load_restorer(tmp / "model", args.device)  # as the trainer loads it (autocast on top)
        res["bare_unet_s"] = bench_bare(fp32, args, int(res["epochs"]))
        res["rl_ratio"] = res["rl_iteration_median_s"] / res["bare_unet_s"]
        save(res, False)
        res.update(bench_vae(fp32, args, int(res["epochs"])))
        res["rl_ratio_without_vae"] = (res["rl_iteration_median_s"] - res["vae_in_iteration_s"]) / res["bare_unet_s"]
    save(res, True)
    gib = lambda v: "n/a" if v is None else f"{v:.2f} GiB"  # noqa: E731
    cuda = args.device.startswith("cuda")
    half, mixed = ("fp16", "bf16 autocast") if cuda else ("fp32", "fp32")
    # The targets are for the real shapes on a GPU; other runs show none.
    at_target = cuda and args.size == "x4" and args.lq == 128 and args.steps == 20 and args.batch == 4
    t_restore, t_ratio = ("<= 0.8 s", "<= 1.3") if at_target else ("(GPU, 128->512, 20 steps: <= 0.8 s)",
                                                                    "(GPU, same shapes: <= 1.3)")
    md = (f"# gpu_scale on {card}\n\n`{command}` ({args.size} size: UNet {n_unet / 1e6:.0f} M, "
          f"VAE {n_vae / 1e6:.0f} M parameters, random weights), torch {torch.__version__}\n\n"
          f"| measure | value | target |\n|---|---:|---:|\n"
          f"| restore {args.lq}->{4 * args.lq}, {args.steps} steps, {half} (median of {args.repeats}) "
          f"| {res['restore_median_s']:.3f} s | {t_restore} |\n"
          f"| one LoRA darl iteration, batch {args.batch}, {args.steps} steps, {mixed} (median of "
          f"{res['rl_rounds_timed']}) | {res['rl_iteration_median_s']:.3f} s | |\n"
          f"| of which rollouts with decodes and rewards / PPO updates (medians) "
          f"| {res['rl_rollout_median_s']:.3f} s / {res['rl_update_median_s']:.3f} s | |\n"
          f"| bare UNet compute inside it (median of {args.repeats}) | {res['bare_unet_s']:.3f} s | |\n"
          f"| ratio | {res['rl_ratio']:.3f} | {t_ratio} |\n"
          f"| VAE inside the iteration: {res['vae_decodes']} reward decodes x {res['vae_decode_s']:.3f} s + "
          f"{res['epochs']} SFT encodes x {res['vae_encode_s']:.3f} s | {res['vae_in_iteration_s']:.3f} s | |\n"
          f"| ratio without that VAE work | {res['rl_ratio_without_vae']:.3f} | |\n"
          f"| peak GPU memory, restore | {gib(res['restore_peak_gib'])} | |\n"
          f"| peak GPU memory, RL | {gib(res['rl_peak_gib'])} | |\n")
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"written to {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
