"""Supervised fine-tuning (SFT) of the restorer on synthetic (LQ, HQ) pairs.

    python -m darl_core.cli.train_sft --preset cpu --output runs/sft
    python -m darl_core.cli.train_sft --preset gpu --output runs/sft --hq-folder ~/DIV2K/train
    python -m darl_core.cli.train_sft --output runs/sft --resume      # continue from runs/sft/latest

The loss is the v-prediction MSE of the residual diffusion (see pipeline.py):
for a random timestep t and noise n, x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) n
and the UNet, given (x_t, LQ), predicts v = sqrt(abar_t) n - sqrt(1-abar_t) x0.
Weights are tracked with an exponential moving average (EMA); checkpoints and
the exported model hold the EMA weights, which sample better.

Two stages (see pipeline.py): ``--stage regression`` trains the stage-1
regression UNet with an L1 loss on the image (the denoiser is carried along
untouched); ``--stage diffusion`` (the default) trains the denoiser on the
residual around the frozen stage 1's output. The shipped model:

    python -m darl_core.cli.train_sft --preset cpu_stage1 --init-from models/sft-blind-v1 --output runs/s1
    python -m darl_core.cli.train_sft --preset cpu_stage2 --init-from runs/s1/model --output runs/s2

``distill_from`` trains a denoiser against another one's outputs instead of the true velocity
(same x_t, t and stage-1 condition): a cheaper architecture learns the shipped one's behaviour
from far fewer samples than from the noisy true target (``--preset cpu_stage2_distill``: the
pixel-unshuffled ``fast`` denoiser taught by the shipped ``small`` one).

With ``data_on_device`` the loader processes only crop clean patches and the
degradations run on the training device (a GPU), so the GPU, not the CPU
workers, sets the speed.

Validation restores a fixed set of crops of the *training* photos, degraded
with a seed the training stream never uses, and logs PSNR/SSIM next to those
of the plain input. The held-out photos are kept for evaluation alone.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_dir, latest_checkpoint, save_checkpoint
from ..data.clean import PatchSampler, validation_set
from ..data.degrade import degrade, get_preset
from .distributed import resolve_device
from ..models.loading import load_restorer
from ..models.pipeline import RestorationPipeline, build_stage1, build_unet, make_scheduler
from ..models.restorer import schedule_timesteps

__all__ = ["SFTConfig", "train_sft", "PRESETS"]


@dataclass
class SFTConfig:
    # --- Where, which stage, which model
    output: str = "runs/sft"  # folder for checkpoints, metrics.jsonl and the final model
    stage: Literal["regression", "diffusion"] = "diffusion"  # "regression": train stage 1 (L1); "diffusion": the denoiser
    task: str = "blind"  # degradation preset (darl_core.data.degrade.PRESETS)
    init_from: str | None = None  # start from this model folder / Hub id instead of a fresh UNet
    unet_size: str = "small"  # denoiser architecture for a fresh model (tiny, small, fast, tiny_fast; pipeline.build_unet)
    stage1_size: str = "small"  # architecture of a fresh stage 1 (tiny, small)
    new_denoiser: bool = False  # with init_from: keep its stage 1, start a fresh denoiser of unet_size
    residual_scale: float = 0.5  # x0 = (HQ - LQ) * 2 / residual_scale, see pipeline.py
    device: str = "auto"  # cpu, cuda, or auto
    bf16: bool = False  # bf16 autocast for the forward/backward (CUDA, or CPUs with bf16 support)
    seed: int = 0  # seeds the model init and the data stream

    # --- Distillation from a teacher denoiser
    distill_from: str | None = None  # stage "diffusion": regress onto this model's denoiser output (a teacher
                                     # trained on the same stage 1) instead of the true velocity
    distill_trajectory: int | tuple[int, ...] = 0  # with distill_from: a share of the samples at the states of
                                 # the student's own deterministic sampling with this many steps (several: one
                                 # drawn per sample; restorer.sft_loss), 0: none
    distill_trajectory_fraction: float = 0.5  # with distill_trajectory: the share of samples taken there
    distill_trajectory_last: float = 0.0  # with distill_trajectory: the share of those taken at the path's
                                          # last step (where a student's speckle is made), the rest uniform
    distill_hf_weight: float = 0.0  # with distill_from: extra weight on the error's high frequencies
                                    # (restorer.sft_loss hf_weight; against speckle in flat areas), 0: plain MSE

    # --- Data
    hq_folder: str | None = None  # a folder of your own HQ images, added to the training set
    builtin: bool = True  # use the built-in training photos (see darl_core.data.clean)
    photos: bool = False  # add the package photo corpus (darl_core.data.photos; fetched beforehand)
    dead_leaves: int = 40  # procedural dead-leaves images per data stream
    patch: int = 128  # side of the training patches
    num_workers: int = 0  # data-loader processes (0: in the training process)
    data_on_device: bool = False  # degrade on the training device (loaders only crop HQ patches)

    # --- Optimisation
    batch_size: int = 16  # patches per step
    steps: int = 20_000  # optimisation steps in total
    lr: float = 2e-4  # peak AdamW learning rate
    warmup: int = 500  # linear warm-up steps, then cosine decay to 10%
    ema_decay: float = 0.999  # EMA decay of the exported weights
    grad_clip: float = 1.0  # global gradient-norm clip
    train_timesteps: Literal["all", "schedule"] = "all"  # "all": t uniform over the 1000; "schedule": only the timesteps 1/2/4/10-step
                                  # DDIM visits (restorer.schedule_timesteps), all the budget where sampling looks

    # --- Validation, checkpoints, export
    val_every: int = 1000  # validate every N steps (0: never)
    val_steps: int = 10  # DDIM steps of the validation restores
    val_crops: int = 8  # validation crops (192 px)
    ckpt_every: int = 1000  # checkpoint every N steps
    keep_checkpoints: int = 2  # older checkpoints are deleted
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time
    export_fp16: bool = False  # store the exported model in float16 (half the size; loads as float32)

    def __post_init__(self) -> None:
        """Every value and cross-field check, when the config is built (the CLI refuses a bad one before
        any model loads, naming the values)."""
        for name, allowed in (("stage", ("regression", "diffusion")), ("train_timesteps", ("all", "schedule"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("patch", "batch_size", "steps", "val_crops", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("lr", "warmup", "grad_clip", "val_every", "val_steps", "dead_leaves", "num_workers",
                     "distill_hf_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.new_denoiser and self.stage == "regression":
            raise ValueError("new_denoiser applies to stage 'diffusion' (a fresh denoiser on a trained stage 1), "
                             "not to stage 'regression'")
        if self.distill_from and self.stage == "regression":
            raise ValueError("distill_from applies to stage 'diffusion' (a denoiser taught by another denoiser), "
                             "not to stage 'regression'")
        if not self.distill_from and (self.distill_trajectory or self.distill_hf_weight):
            raise ValueError(f"distill_trajectory ({self.distill_trajectory}) and distill_hf_weight "
                             f"({self.distill_hf_weight}) need distill_from (a teacher to say what to predict)")
        if not 0 <= self.distill_trajectory_last <= 1:
            raise ValueError(f"distill_trajectory_last must be in [0, 1], got {self.distill_trajectory_last}")
        if not 0 < self.distill_trajectory_fraction <= 1:
            raise ValueError(f"distill_trajectory_fraction must be in (0, 1], got {self.distill_trajectory_fraction}")



def cpu() -> SFTConfig:
    """Hours on a laptop-class CPU."""
    return SFTConfig(batch_size=8, patch=96, steps=30_000, val_every=2000, ckpt_every=500)


def gpu() -> SFTConfig:
    """One modern GPU; the shipped model was trained with this preset."""
    return SFTConfig(batch_size=48, patch=128, steps=200_000, lr=3e-4, warmup=500, num_workers=12,
                     bf16=True, val_every=2000, ckpt_every=2000, device="cuda", export_fp16=True)


def cpu_stage1() -> SFTConfig:
    """Stage 1 (regression) on this 2-core CPU: about 25 minutes."""
    return SFTConfig(stage="regression", task="realistic", photos=True, patch=96, batch_size=12, steps=100_000,
                     lr=1e-3, warmup=200, ema_decay=0.995, val_every=500, ckpt_every=500, val_steps=0,
                     max_minutes=25.0)


def cpu_stage2() -> SFTConfig:
    """Stage 2 (the denoiser on stage 1's output), fine-tuned on this CPU: about 35 minutes."""
    return SFTConfig(stage="diffusion", task="realistic", photos=True, patch=96, batch_size=8, steps=100_000,
                     lr=1e-4, warmup=100, ema_decay=0.995, val_every=500, ckpt_every=500, val_steps=2,
                     max_minutes=35.0)


def cpu_stage2_fast() -> SFTConfig:
    """A fresh ``fast`` denoiser (pixel-unshuffled, 2.6x cheaper than ``small``) on the shipped stage 1,
    on this CPU: about 70 minutes."""
    return SFTConfig(stage="diffusion", task="realistic", photos=True, init_from="models/sft-blind", new_denoiser=True,
                     unet_size="fast", patch=96, batch_size=12, steps=100_000, lr=3e-4, warmup=200, ema_decay=0.995,
                     val_every=500, ckpt_every=250, val_steps=2, max_minutes=70.0)


def cpu_stage2_distill() -> SFTConfig:
    """A fresh ``fast`` denoiser distilled from the shipped ``small`` one (its outputs as targets, at the
    sampler's timesteps) on the shipped stage 1, on this CPU: about 100 minutes."""
    return SFTConfig(stage="diffusion", task="realistic", photos=True, init_from="models/sft-blind", new_denoiser=True,
                     unet_size="fast", distill_from="models/sft-blind", train_timesteps="schedule", patch=96,
                     batch_size=12, steps=100_000, lr=4e-4, warmup=100, ema_decay=0.995, val_every=0,
                     ckpt_every=250, max_minutes=100.0)


def gpu_stage1() -> SFTConfig:
    """Stage 1 on one GPU, time-boxed to fit one 600-s call with loading and export."""
    return SFTConfig(stage="regression", task="realistic", photos=True, patch=128, batch_size=64, steps=200_000,
                     lr=1e-3, warmup=300, ema_decay=0.998, val_every=1000, ckpt_every=1000, val_steps=0,
                     num_workers=8, data_on_device=True, bf16=True, device="cuda", max_minutes=3.5)


def gpu_stage2() -> SFTConfig:
    """Stage 2 on one GPU, time-boxed like ``gpu_stage1``."""
    # train_timesteps "schedule": on this CPU 265 such steps raised the 1-step PSNR by 0.35 dB over 259 uniform
    # ones and left 2 steps level (docs/results.md 0b)
    return SFTConfig(stage="diffusion", task="realistic", photos=True, patch=128, batch_size=48, steps=200_000,
                     lr=2e-4, warmup=300, ema_decay=0.998, val_every=1000, ckpt_every=1000, val_steps=2,
                     train_timesteps="schedule",
                     num_workers=8, data_on_device=True, bf16=True, device="cuda", export_fp16=True,
                     max_minutes=4.5)


def gpu_stage2_distill() -> SFTConfig:
    """``sft-blind-fast``'s denoiser distilled further on one GPU, time-boxed like ``gpu_stage2``: along the
    student's own 2- and 4-step paths, mostly at their last step, the error's high frequencies weighted (against
    the speckle the default fast model still leaves in flat areas at 4 steps; docs/results.md 0b)."""
    # distill_trajectory_last 0.7: on this CPU it closed 43 % of the 2-step speckle gap in 70 minutes where
    # the same recipe at uniform steps closed a sixth in 75 (docs/results.md 0b)
    return SFTConfig(stage="diffusion", task="realistic", photos=True, init_from="models/sft-blind-fast",
                     distill_from="models/sft-blind", distill_trajectory=(2, 2, 4), distill_trajectory_fraction=0.85,
                     distill_trajectory_last=0.7, distill_hf_weight=4.0, train_timesteps="schedule", patch=128,
                     batch_size=48, steps=200_000,
                     lr=1e-4, warmup=100, ema_decay=0.998, val_every=0, ckpt_every=1000,
                     num_workers=8, data_on_device=True, bf16=True, device="cuda", export_fp16=True,
                     max_minutes=8.0)


def tiny_test() -> SFTConfig:
    """Seconds on a CPU: the tests' config."""
    return SFTConfig(unet_size="tiny", builtin=False, dead_leaves=2, patch=32, batch_size=2, steps=4,
                     val_every=2, val_steps=2, val_crops=1, ckpt_every=2, warmup=1)


PRESETS: dict[str, Callable[[], SFTConfig]] = {"default": SFTConfig, "cpu": cpu, "gpu": gpu,
                                               "cpu_stage1": cpu_stage1, "cpu_stage2": cpu_stage2,
                                               "cpu_stage2_fast": cpu_stage2_fast,
                                               "cpu_stage2_distill": cpu_stage2_distill,
                                               "gpu_stage1": gpu_stage1, "gpu_stage2": gpu_stage2,
                                               "gpu_stage2_distill": gpu_stage2_distill,
                                               "tiny_test": tiny_test}


class PairStream(torch.utils.data.IterableDataset):
    """Endless (LQ, HQ) batches (LQ None with ``data_on_device``); each worker draws from its own seeded stream."""

    def __init__(self, cfg: SFTConfig, start_step: int) -> None:
        self.cfg, self.start_step = cfg, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        if info:
            torch.set_num_threads(1)
        # A resumed run continues with a fresh stream (seeded by the step) rather than replaying one.
        seed = self.cfg.seed * 100_003 + wid * 7919 + self.start_step
        sampler = PatchSampler.from_sources(self.cfg.patch, seed, self.cfg.hq_folder, self.cfg.builtin,
                                            self.cfg.dead_leaves, photos=self.cfg.photos)
        g = torch.Generator().manual_seed(seed + 1)
        task = get_preset(self.cfg.task)
        while True:
            hq = sampler.sample(self.cfg.batch_size)
            yield (None if self.cfg.data_on_device else degrade(hq, task, g)), hq


def lr_at(cfg: SFTConfig, step: int, elapsed_s: float) -> float:
    """Warm-up, then cosine decay to 10%. With ``max_minutes`` the decay follows whichever
    of steps or wall time runs out first, so a time-boxed run still ends at a low LR."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    if cfg.max_minutes:
        p = max(p, elapsed_s / (60 * cfg.max_minutes))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


@torch.no_grad()
def validate(pipe: RestorationPipeline, lq: torch.Tensor, hq: torch.Tensor, steps: int) -> dict[str, float]:
    from ..rewards.registry import get_metric

    out = torch.cat([pipe.restore_tensor(lq[i : i + 1], steps, generator=torch.Generator().manual_seed(i))
                     for i in range(lq.shape[0])])
    psnr, ssim = get_metric("psnr"), get_metric("ssim")
    return {"val_psnr": float(psnr(out, hq).mean()), "val_ssim": float(ssim(out, hq).mean())}


@dataclass
class _Stage:
    """What one SFT stage trains: ``net`` (stage 1 or the denoiser) inside ``pipe``, its EMA copy, and
    ``export``, the model the EMA weights are exported as (the other network carried along unchanged)."""

    pipe: RestorationPipeline  # the model being trained
    net: torch.nn.Module  # the network this stage trains
    ema: torch.nn.Module  # its exponential moving average (what checkpoints and the export hold)
    export: RestorationPipeline  # the exported model: the EMA network with the untouched other one
    teacher: torch.nn.Module | None  # distill_from's denoiser (stage "diffusion"), or None


def _build_stage(cfg: SFTConfig, device: torch.device) -> _Stage:
    """The model, fresh or from ``init_from``, and the stage's network (the stage switch's first half)."""
    regression = cfg.stage == "regression"
    if cfg.init_from:
        pipe = load_restorer(cfg.init_from)
    else:
        pipe = RestorationPipeline(build_unet(cfg.unet_size, cfg.seed), make_scheduler(), cfg.residual_scale)
    if cfg.new_denoiser:
        pipe.register_modules(unet=build_unet(cfg.unet_size, cfg.seed))
    if regression and pipe.stage1 is None:
        pipe.stage1 = build_stage1(cfg.stage1_size, cfg.seed)
    teacher = None
    if cfg.distill_from:
        tpipe = load_restorer(cfg.distill_from)
        kinds = (tpipe.scheduler.config.prediction_type, pipe.scheduler.config.prediction_type)
        if kinds[0] != kinds[1] or tpipe.config.residual_scale != pipe.config.residual_scale:
            raise ValueError(f"the teacher {cfg.distill_from!r} predicts {kinds[0]} at residual scale "
                             f"{tpipe.config.residual_scale}, the student {kinds[1]} at {pipe.config.residual_scale}")
        teacher = tpipe.unet.float().to(device).eval().requires_grad_(False)
    pipe.to(device)
    net = (pipe.stage1 if regression else pipe.unet).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if regression:
        export = RestorationPipeline(pipe.unet.eval(), pipe.scheduler, pipe.config.residual_scale,
                                     pipe.config.upscale, stage1=ema)
    else:
        stage1 = pipe.stage1.eval().requires_grad_(False) if pipe.stage1 is not None else None
        export = RestorationPipeline(ema, pipe.scheduler, pipe.config.residual_scale, pipe.config.upscale,
                                     stage1=stage1)
    return _Stage(pipe, net, ema, export, teacher)


def _stage_loss(cfg: SFTConfig, st: _Stage, lq: torch.Tensor, hq: torch.Tensor,
                train_t: torch.Tensor | None) -> torch.Tensor:
    """The stage's loss (the stage switch's second half)."""
    if cfg.stage == "regression":  # L1 on the image: the fidelity stage (L1 keeps edges sharper than L2)
        return (st.pipe.regress(lq, tile_size=None, net=st.net).float() - (2 * hq - 1)).abs().mean()
    # v-prediction MSE (restorer.Restorer.sft_loss) around the frozen stage 1
    return st.pipe.sft_loss(lq, hq, timesteps=train_t, teacher=st.teacher, trajectory_steps=cfg.distill_trajectory,
                            trajectory_fraction=cfg.distill_trajectory_fraction,
                            trajectory_last=cfg.distill_trajectory_last, hf_weight=cfg.distill_hf_weight)


def _resume(out: Path, st: _Stage, opt: torch.optim.Optimizer, device: torch.device) -> int:
    """Weights, EMA, optimiser and RNG state of the last complete checkpoint; the step it was taken at."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return 0
    state = torch.load(ckpt / "train_state.pt", map_location=device, weights_only=False)
    st.net.load_state_dict(state["unet"])
    st.ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _ema_update(st: _Stage, step: int, decay_max: float) -> None:
    """EMA with a warm-up so early checkpoints are not dominated by the random init."""
    decay = min(decay_max, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(st.ema.parameters(), st.net.parameters()):
            pe.lerp_(p, 1 - decay)


def train_sft(cfg: SFTConfig, resume: bool = False, callbacks: dict[str, Callable[..., None]] | None = None
              ) -> Path:
    """Train; returns the folder of the exported final model (``output/model``). The config was checked
    when it was built (``SFTConfig.__post_init__``)."""
    callbacks = callbacks or {}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # 1. The model and what this stage trains (stage 1 or the denoiser); the other stays as it is.
    st = _build_stage(cfg, device)
    opt = torch.optim.AdamW(st.net.parameters(), lr=cfg.lr, weight_decay=0.0)
    train_t = schedule_timesteps(st.pipe.scheduler) if cfg.train_timesteps == "schedule" else None
    # 2. Resume.
    step = _resume(out, st, opt, device) if resume else 0
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    # 3. Data: a stream of (LQ, HQ) pairs (or HQ patches degraded on the device), and the validation crops.
    loader = iter(torch.utils.data.DataLoader(PairStream(cfg, step), batch_size=None,
                                              num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                              persistent_workers=cfg.num_workers > 0,
                                              prefetch_factor=4 if cfg.num_workers else None))
    task = get_preset(cfg.task)
    device_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + 17 + step)  # degradations on the device
    # On a GPU the noise fields are drawn there: drawn on the CPU and copied, they held an H200 to 1.6 steps/s.
    noise_gen = (torch.Generator(device).manual_seed(cfg.seed * 100_003 + 29 + step)
                 if device.type == "cuda" else None)
    val_lq, val_hq = validation_set(cfg.task, cfg.val_crops, cfg.builtin)
    log = open(out / "metrics.jsonl", "a")
    if step == 0 and cfg.val_every:
        from ..rewards.registry import get_metric
        base = {"step": 0, "input_psnr": float(get_metric("psnr")(val_lq, val_hq).mean()),
                "input_ssim": float(get_metric("ssim")(val_lq, val_hq).mean())}
        log.write(json.dumps(base) + "\n")

    def checkpoint() -> None:
        save_checkpoint(out, step, lambda p: st.export.save_pretrained(p),
                        {"unet": st.net.state_dict(), "ema": st.ema.state_dict(), "opt": opt.state_dict(),
                         "rng": torch.get_rng_state(), "step": step,
                         "config": asdict(cfg)}, keep=cfg.keep_checkpoints)

    # 4. Steps: loss, optimiser, EMA; validation, log, checkpoint, stop.
    t_start = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"sft ({cfg.stage})", unit="step", dynamic_ncols=True)
    while step < cfg.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, time.time() - t_start)
        lq, hq = next(loader)
        hq = hq.to(device, non_blocking=True)
        lq = degrade(hq, task, device_gen, noise_gen) if lq is None else lq.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = _stage_loss(cfg, st, lq, hq, train_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(st.net.parameters(), cfg.grad_clip)
        opt.step()
        _ema_update(st, step, cfg.ema_decay)
        step += 1
        bar.update(1)
        rec = {"step": step, "loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": opt.param_groups[0]["lr"],
               "elapsed_s": round(time.time() - t_start, 1)}
        if cfg.val_every and step % cfg.val_every == 0:
            rec.update(validate(st.export, val_lq, val_hq, cfg.val_steps))
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['val_psnr']:.2f}")
        if step % 50 == 0 or "val_psnr" in rec:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if "on_step" in callbacks:
            callbacks["on_step"](rec)
        stop = cfg.max_minutes is not None and time.time() - t_start > 60 * cfg.max_minutes
        stop = stop or bool("should_stop" in callbacks and callbacks["should_stop"]())
        if step % cfg.ckpt_every == 0 or step == cfg.steps or stop:
            checkpoint()
        if stop:
            break
    bar.close()
    log.close()
    if cfg.export_fp16:
        st.export.to(torch.float16)
    return atomic_dir(out / "model", lambda p: st.export.save_pretrained(p))
