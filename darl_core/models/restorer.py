"""The restorer interface: what the sampler, the rewards and the RL trainer need from a model.

The method (docs/method.md) is plug-and-play: it needs a conditional diffusion model
that can (a) be sampled step by step with DDIM, (b) show the clean image it
predicts at every step, and (c) be trained with its own diffusion loss. A
``Restorer`` says how, for one family of models:

    cond  = condition(lq)           LQ batch in [0, 1] -> what the denoiser is conditioned on
    shape = latent_shape(cond)      shape of the diffusion state x_t
    out   = predict(x_t, t, cond)   denoiser output (epsilon, v or x0: scheduler.config.prediction_type)
    img   = to_image(x0, cond)      predicted clean state -> image in [0, 1] (decoded for latent models)
    x0    = to_x0(hq, cond)         clean image -> diffusion target (encoded for latent models)

From these five, this class implements what every family shares: restoring
a batch (``restore_tensor``) or Pillow images (``restore_images``), the RL
rollout with log-probabilities (``rollout``), and the diffusion (SFT) loss
(``sft_loss``). The trainer touches nothing else, so it does not know which
model it drives. Families: ``pipeline.RestorationPipeline`` (our pixel-space
residual model) and ``latent.LatentRestorer`` (Stable Diffusion x4 upscaler,
LDM super-resolution).

Randomness comes from a ``Noise`` source. With several processes each one
draws the noise of the *global* batch from the same generator and keeps its
own rows, so the generators stay in step and a multi-process run sees
exactly the noise a single-process run would.
"""

from __future__ import annotations

import contextlib
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from PIL import Image
from tqdm.auto import tqdm

from ..data.images import pil_to_tensor, tensor_to_pil, to_rgb
from .sampler import ddim_step, step_std
from .tiling import tile_hook

__all__ = ["Noise", "Precision", "Restorer", "Trajectory", "cpu_bf16_supported", "laplacian", "schedule_timesteps", "timestep_batch"]

Precision = Literal["auto", "fp32", "bf16"]  # inference arithmetic: auto = bf16 where the hardware runs it natively


DIHEDRAL = [(rot, flip) for rot in range(4) for flip in (False, True)]  # the 8 symmetries of a square


def dihedral(x: torch.Tensor, rot: int, flip: bool, inverse: bool = False) -> torch.Tensor:
    """Rotate a (..., H, W) batch by ``rot`` quarter turns, then mirror it left-right when ``flip``;
    ``inverse`` undoes exactly that."""
    if inverse:
        return torch.rot90(x.flip(-1) if flip else x, -rot, (-2, -1))
    x = torch.rot90(x, rot, (-2, -1))
    return x.flip(-1) if flip else x


@functools.cache
def cpu_bf16_supported() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast roughly
    halves a forward pass; elsewhere oneDNN emulates it and it is ~10x *slower* (docs/benchmarks.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API: fall back to the kernel's CPU flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """The 4-neighbour Laplacian of each channel of a (B, C, H, W) batch (replicated borders), divided
    by sqrt(20) so that i.i.d. noise keeps its variance: the high frequencies of ``x``."""
    k = x.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 20 ** 0.5
    c = x.shape[1]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(c, 1, 3, 3).contiguous(), groups=c)


def schedule_timesteps(scheduler: DDIMScheduler, steps: tuple[int, ...] = (1, 2, 4, 10)) -> torch.Tensor:
    """The timesteps DDIM visits with any of ``steps`` steps under this scheduler's spacing, sorted:
    what few-step sampling ever shows the denoiser (``SFTConfig.train_timesteps = "schedule"``)."""
    sched = DDIMScheduler.from_config(scheduler.config)
    seen: set[int] = set()
    for n in steps:
        sched.set_timesteps(n)
        seen.update(int(t) for t in sched.timesteps)
    return torch.tensor(sorted(seen), dtype=torch.long)


def timestep_batch(t: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``t`` as the (n,) long tensor a UNet takes: one timestep for the batch, or per-sample ones."""
    if torch.is_tensor(t):
        return t.to(device)
    return torch.full((n,), int(t), device=device, dtype=torch.long)


class Noise:
    """Random draws for this process's rows of a global batch (rank r of ``world`` processes)."""

    def __init__(self, generator: torch.Generator | None = None, rank: int = 0, world: int = 1) -> None:
        self.generator, self.rank, self.world = generator, rank, world

    @classmethod
    def of(cls, source: Noise | torch.Generator | None) -> Noise:
        return source if isinstance(source, Noise) else cls(source)

    def _rows(self, full: torch.Tensor, n: int) -> torch.Tensor:
        return full[self.rank * n : (self.rank + 1) * n]

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise of ``shape`` (on the CPU: a seed gives the same result on every device)."""
        full = torch.randn((shape[0] * self.world, *shape[1:]), generator=self.generator)
        return self._rows(full, shape[0])

    def randint(self, high: int, n: int) -> torch.Tensor:
        return self._rows(torch.randint(0, high, (n * self.world,), generator=self.generator), n)

    def rand(self, n: int) -> torch.Tensor:
        """n uniform draws in [0, 1)."""
        return self._rows(torch.rand((n * self.world,), generator=self.generator), n)


@dataclass
class Trajectory:
    """A stochastic rollout, everything the RL update needs (tensors on the model's device)."""

    cond: torch.Tensor  # conditioning the rollout used (kept: latent models noise-augment it)
    timesteps: list[int]  # t of each recorded (stochastic) step
    step_index: list[int] = field(default_factory=list)  # position of each recorded step in the schedule
    x_t: list[torch.Tensor] = field(default_factory=list)  # state before each recorded step
    x_prev: list[torch.Tensor] = field(default_factory=list)  # sampled state after it
    log_prob: list[torch.Tensor] = field(default_factory=list)  # (B,) log p_old of each transition
    pred_image: list[torch.Tensor | None] = field(default_factory=list)  # x0_hat of each step as an image in [0, 1]
    final: torch.Tensor | None = None  # (B, 3, H, W) restored image in [0, 1]
    out: list[torch.Tensor] = field(default_factory=list)  # with keep_graph: the denoiser output of each recorded
                                                           # step, with its autograd graph (the update's first epoch)


class Restorer(ABC):
    """Base class of the restorer families (see the module docstring); a family implements the
    abstract methods."""

    family: str = ""  # "pixel", "sd_upscale" or "ldm_sr"
    source: str | None = None  # the folder or Hub id it was loaded from (set by ``loading.load_restorer``)
    inference_bf16: bool = False  # bf16 autocast in restore_tensor (set by ``set_precision``)
    unet: torch.nn.Module  # the denoiser: what the RL trainer optimises (LoRA goes here)
    scheduler: DDIMScheduler  # the noise schedule (our DDIM step samples it)

    # The conditioning depends on the LQ alone (no noise drawn), so it can be computed once per input and
    # reused (the RL trainer conditions its pool once); False where ``condition`` noise-augments.
    fixed_condition: bool = False

    # ------------------------------------------------------------ per family
    @abstractmethod
    def condition(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        """LQ batch in [0, 1] -> the conditioning ``predict`` takes (may draw noise from ``noise``)."""

    @abstractmethod
    def latent_shape(self, cond: torch.Tensor) -> tuple[int, ...]:
        """Shape of the diffusion state for conditioning ``cond``."""

    @abstractmethod
    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, tile_size: int | None = None,
                tile_overlap: int = 32, unet: torch.nn.Module | None = None) -> torch.Tensor:
        """Denoiser output; ``unet`` replaces the model's own (the frozen reference of the KL term)."""

    @abstractmethod
    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A (predicted) clean state -> image in [0, 1]."""

    @abstractmethod
    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A clean image in [0, 1] -> the diffusion target."""

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write a folder that ``loading.load_restorer`` loads back."""

    def export(self, path: str | os.PathLike) -> None:
        """Write the trained model as the app and the CLI load it: ``save`` here; families with a
        LoRA write a merged model or the adapter folder instead (the trainer calls only this)."""
        self.save(path)

    def adapter_info(self) -> dict[str, Any]:
        """What an adapter folder records besides the adapter (``lora.save_adapter``)."""
        return {"base_model": self.source, "family": self.family}

    @property
    @abstractmethod
    def output_scale(self) -> int:
        """Output side / input side (1 for restoration, 4 for x4 super-resolution)."""

    @property
    def network_scale(self) -> int:
        """Output pixels per input pixel at which the networks run: ``output_scale`` for a pixel-space model
        (its denoiser works at the output's size), 1 for a latent model (its UNet works on latents the
        input's size). What the work of a restore grows with."""
        return self.output_scale

    @property
    def has_stage1(self) -> bool:
        """A regression stage whose restoration conditions the diffusion (``steps=0`` restores with it
        alone; the RL trainer can use it as a no-ground-truth fidelity reference)."""
        return False

    @property
    def multiple(self) -> int:
        """Input sides are padded to a multiple of this (the UNet's total down-sampling)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def model_device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def inference_modules(self) -> list[torch.nn.Module]:
        """The networks a restore runs (``set_precision`` puts them in channels-last)."""
        return [self.unet]

    # ------------------------------------------------------------ shared
    def set_precision(self, precision: Precision = "auto") -> str:
        """Choose the inference arithmetic; returns what was chosen, in words.

        On a CPU the networks go channels-last (oneDNN's fast layout: 1.1-1.6x here) and, with
        ``bf16`` or ``auto`` on a CPU with native bf16, restores run under bf16 autocast
        (weights stay fp32). On CUDA, ``auto`` and ``bf16`` use bf16 autocast. Training is not
        affected: ``restore_tensor`` is the only place that reads the setting.
        """
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
        dev = self.model_device
        native = cpu_bf16_supported() if dev.type == "cpu" else dev.type == "cuda"
        self.inference_bf16 = precision == "bf16" or (precision == "auto" and native)
        if dev.type == "cpu":
            for m in self.inference_modules():
                m.to(memory_format=torch.channels_last)
        words = "bf16 autocast" if self.inference_bf16 else "fp32"
        return words + (", channels-last" if dev.type == "cpu" else "")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.inference_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model_device.type, dtype=torch.bfloat16)

    def _pad(self, lq: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = lq.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            lq = F.pad(lq, (0, pw, 0, ph), mode=mode)
        return lq, (h, w)

    @torch.no_grad()
    def conditioning(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        """The conditioning of a LQ batch as ``rollout`` and ``sft_loss`` compute it (padded to
        ``multiple``), to pass back to them as ``cond`` when ``fixed_condition`` allows reuse."""
        return self.condition(self._pad(lq.to(self.model_device, torch.float32))[0], noise)

    def _start(self, lq: torch.Tensor, noise: Noise, cond: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Padded conditioning (``cond`` when given: computed earlier by ``conditioning``), the initial
        noise x_T and the output size."""
        lq, (h, w) = self._pad(lq.to(self.model_device, torch.float32))
        cond = self.condition(lq, noise) if cond is None else cond.to(self.model_device)
        x = noise.randn(self.latent_shape(cond)).to(self.model_device, self.model_dtype)
        s = self.output_scale
        return cond, x * float(self.scheduler.init_noise_sigma), (h * s, w * s)

    @torch.no_grad()
    def restore_tensor(self, lq: torch.Tensor, num_inference_steps: int = 4, eta: float = 0.0,
                       generator: torch.Generator | Noise | None = None, tile_size: int | None = 256,
                       tile_overlap: int = 32, progress: bool = False,
                       callback: Callable[[float, str], None] | None = None,
                       self_ensemble: bool = False) -> torch.Tensor:
        """Restore a (B, 3, H, W) batch in [0, 1]; returns (B, 3, H*s, W*s) in [0, 1] (s = output_scale).

        ``callback(fraction, text)`` is called after every tile of the conditioning (stage 1) and of
        every step, e.g. ``(0.55, "step 2/2, tile 3/12")``; an exception it raises stops the restore
        there (the app's Stop button does this), and propagates.

        ``self_ensemble`` (0 steps only: stage 1 alone) restores the 8 rotations and mirror images of
        the input and averages the 8 results mapped back, at 8x the cost: the geometric self-ensemble
        of Timofte et al. (CVPR 2016) and EDSR+ (Lim et al., CVPRW 2017); +0.17 dB on the
        independent evaluation set (docs/results.md). With diffusion steps it would average 8 samples
        and so the detail they add, hence the 0-step restriction.
        """
        if self_ensemble:
            if num_inference_steps != 0:
                raise ValueError("self_ensemble applies to stage 1 alone (0 steps): averaging 8 diffusion "
                                 f"samples would average away the detail they add; got {num_inference_steps} steps")
            views = []
            for k, (rot, flip) in enumerate(DIHEDRAL):
                def view_cb(f: float, text: str, k: int = k) -> None:
                    callback((k + f) / len(DIHEDRAL), f"view {k + 1}/{len(DIHEDRAL)}, {text}")
                out = self.restore_tensor(dihedral(lq, rot, flip), 0, eta, generator, tile_size, tile_overlap,
                                          progress, view_cb if callback is not None else None)
                views.append(dihedral(out, rot, flip, inverse=True))
            return torch.stack(views).mean(0)
        if callback is None:
            return self._restore(lq, num_inference_steps, eta, generator, tile_size, tile_overlap, progress)
        phase = {"i": 0, "n": 1 + num_inference_steps, "name": "conditioning"}

        def hook(done: int, total: int) -> None:
            callback((phase["i"] + done / total) / phase["n"], f"{phase['name']}, tile {done}/{total}")
        token = tile_hook.set(hook)
        try:
            return self._restore(lq, num_inference_steps, eta, generator, tile_size, tile_overlap, progress, phase)
        finally:
            tile_hook.reset(token)

    def _restore(self, lq: torch.Tensor, num_inference_steps: int, eta: float,
                 generator: torch.Generator | Noise | None, tile_size: int | None, tile_overlap: int,
                 progress: bool, phase: dict[str, Any] | None = None) -> torch.Tensor:
        if tile_size is not None and tile_size % self.multiple:
            raise ValueError(f"tile_size must be a multiple of {self.multiple}, got {tile_size}")
        if num_inference_steps < 0 or (num_inference_steps == 0 and not self.has_stage1):
            raise ValueError(f"num_inference_steps must be >= 1 (0: stage 1 alone, for two-stage models), "
                             f"got {num_inference_steps}")
        noise = Noise.of(generator)
        with self._autocast():  # the DDIM arithmetic itself stays fp32 (ddim_step gets .float() inputs)
            cond, x, (h, w) = self._start(lq, noise)
            cond = cond.float()
            if num_inference_steps == 0:  # no diffusion: the conditioning image (stage 1's restoration)
                return self.to_image(torch.zeros_like(x).float(), cond)[..., :h, :w].float()
            self.scheduler.set_timesteps(num_inference_steps)
            for j, t in enumerate(tqdm(self.scheduler.timesteps, desc="restore", disable=not progress, leave=False)):
                if phase is not None:
                    phase.update(i=1 + j, name=f"step {j + 1}/{num_inference_steps}")
                out = self.predict(x, int(t), cond, tile_size, tile_overlap).float()
                z = noise.randn(tuple(x.shape)).to(out) if step_std(self.scheduler, int(t), eta) > 0 else None
                step = ddim_step(self.scheduler, out, int(t), x.float(), eta=eta, noise=z)
                x = step.prev_sample
            # The last state, as diffusers' pipelines decode it (= x0_hat when the schedule ends at abar = 1).
            return self.to_image(x, cond)[..., :h, :w].float()

    def rollout(self, lq: torch.Tensor, num_inference_steps: int, eta: float,
                generator: torch.Generator | Noise | None = None, decode_from: int = 0,
                cond: torch.Tensor | None = None, keep_graph: bool = False) -> Trajectory:
        """Stochastic rollout recording every stochastic step's transition and log-probability.

        Only steps ``j >= decode_from`` are decoded to ``pred_image`` (the others are None): a
        VAE decode per step is the costly part for latent models when only late steps are scored.

        ``pred_image[j]`` is x0_hat of step j as an image (the final state for the last one); the consequence of the
        transition recorded at ``step_index[k]`` is ``pred_image[step_index[k] + 1]``.

        ``cond``: the conditioning from ``conditioning(lq)``, reused (``fixed_condition`` families).
        ``keep_graph``: the denoiser runs with autograd at the stochastic steps and ``out`` keeps its
        outputs with their graphs, so the on-policy first PPO epoch backpropagates through the
        rollout's own forward passes instead of repeating them (same values; memory grows with
        the number of stochastic steps). With ``eta == 0`` it restores as ``restore_tensor`` does.
        """
        noise = Noise.of(generator)
        with torch.no_grad():
            cond, x, _ = self._start(lq, noise, cond)
            self.scheduler.set_timesteps(num_inference_steps)
            traj = Trajectory(cond=cond, timesteps=[])
            for j, t in enumerate(self.scheduler.timesteps):
                stochastic = step_std(self.scheduler, int(t), eta) > 0
                with torch.set_grad_enabled(keep_graph and stochastic):
                    out = self.predict(x, int(t), cond).float()
                if out.requires_grad:
                    traj.out.append(out)
                    out = out.detach()
                z = noise.randn(tuple(x.shape)).to(out) if stochastic else None
                step = ddim_step(self.scheduler, out, int(t), x.float(), eta=eta, noise=z)
                if step.stochastic:
                    traj.timesteps.append(int(t))
                    traj.step_index.append(j)
                    traj.x_t.append(x)
                    traj.x_prev.append(step.prev_sample)
                    traj.log_prob.append(step.log_prob)
                last = j == len(self.scheduler.timesteps) - 1  # the result itself, as restore_tensor gives it
                traj.pred_image.append(self.to_image(step.prev_sample if last else step.pred_x0, cond).float()
                                       if j >= decode_from or last else None)
                x = step.prev_sample
            traj.final = traj.pred_image[-1]
        return traj

    def sft_loss(self, lq: torch.Tensor, hq: torch.Tensor, generator: torch.Generator | Noise | None = None,
                 reduce: bool = True, timesteps: torch.Tensor | None = None,
                 teacher: torch.nn.Module | None = None, trajectory_steps: int | tuple[int, ...] = 0,
                 trajectory_fraction: float = 0.5, hf_weight: float = 0.0,
                 trajectory_last: float = 0.0, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The diffusion loss of pairs (LQ, HQ) in the model's own parameterisation (per sample
        when ``reduce`` is False): t uniform (over ``timesteps`` when given, else over all of the
        schedule's), x_t = add_noise(x0), MSE of the denoiser's output. With a ``teacher`` denoiser
        (same parameterisation, any architecture this restorer can run) the target is the teacher's
        output at the same x_t, t and condition (distillation) instead of the true one.

        ``trajectory_steps`` n > 0 (with a teacher): a ``trajectory_fraction`` of the samples take
        their x_t instead from this model's own deterministic n-step DDIM sampling (no gradient), at
        a step drawn uniformly: the states few-step sampling really visits, which after its first
        step are not the forward process's (x0_hat is smoother than a true x0), taught there what
        the teacher would predict (on-policy, so a student's own first-step errors are corrected).
        ``trajectory_last`` p > 0 takes a share p of those samples at the path's last step instead
        (where a few-step student makes its speckle; bench/distill_check.py), the rest uniformly.

        ``hf_weight`` w > 0 adds w times the mean square of the error's high frequencies (a 3x3
        Laplacian, scaled so white noise keeps its energy): the fine-scale noise a few-step sampler
        leaves when its last prediction does not cancel x_t's noise exactly (speckle in flat areas),
        which plain MSE weighs no more than a slight shift of a smooth gradient.

        ``cond``: ``lq``'s conditioning computed earlier (``conditioning``; ``fixed_condition`` families)."""
        noise = Noise.of(generator)
        with torch.no_grad():
            cond = self.condition(lq, noise) if cond is None else cond
            x0 = self.to_x0(hq, cond).float()
        sched = self.scheduler
        if timesteps is None:
            t = noise.randint(sched.config.num_train_timesteps, x0.shape[0]).to(x0.device)
        else:
            t = timesteps.cpu()[noise.randint(len(timesteps), x0.shape[0])].to(x0.device)
        eps = noise.randn(tuple(x0.shape)).to(x0)
        x_t = sched.add_noise(x0, eps, t)
        kind = sched.config.prediction_type
        target = {"epsilon": eps, "sample": x0}.get(kind)
        if target is None:
            if kind != "v_prediction":
                raise ValueError(f"unsupported prediction_type {kind!r}")
            target = sched.get_velocity(x0, eps, t)
        if teacher is not None:
            if trajectory_steps:
                x_t, t = self._trajectory_states(x_t, t, cond, noise, trajectory_steps, trajectory_fraction,
                                                 trajectory_last)
            # The teacher's output is the regression's conditional mean as far as it learned it: a
            # target without the noise of the true v, so a small student learns from fewer samples.
            with torch.no_grad():
                target = self.predict(x_t.to(self.model_dtype), t, cond, unet=teacher).float()
        pred = self.predict(x_t.to(self.model_dtype), t, cond)
        diff = pred.float() - target.float()
        err = diff.square().mean(dim=tuple(range(1, x0.ndim)))
        if hf_weight > 0:
            err = err + hf_weight * laplacian(diff).square().mean(dim=tuple(range(1, x0.ndim)))
        return err.mean() if reduce else err

    @torch.no_grad()
    def _trajectory_states(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, noise: Noise,
                           steps: int | tuple[int, ...], fraction: float,
                           last: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace a ``fraction`` of the rows of (x_t, t) by states of this model's own ``steps``-step
        deterministic sampling from fresh noise, each at a step drawn uniformly, or with probability
        ``last`` at the last step (sft_loss). A tuple of step counts gives each chosen row one of them,
        uniformly (repeat a count to weigh it more)."""
        b = x_t.shape[0]
        rows = torch.nonzero(noise.rand(b) < fraction).flatten()
        if len(rows) == 0:
            return x_t, t
        x_t, t = x_t.clone(), t.clone()
        steps = (steps,) if isinstance(steps, int) else tuple(steps)
        which = noise.randint(len(steps), b)[rows] if len(steps) > 1 else torch.zeros_like(rows)
        for k, n in enumerate(steps):
            if bool((which == k).any()):
                self._follow(x_t, t, cond, noise, rows[which == k], n, last)
        return x_t, t

    def _follow(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, noise: Noise,
                rows: torch.Tensor, steps: int, last: float = 0.0) -> None:
        """Write into ``rows`` of (x_t, t) the states of ``steps``-step sampling, each at a random step
        (the last one with probability ``last``)."""
        b = x_t.shape[0]
        sched = type(self.scheduler).from_config(self.scheduler.config)  # the pipeline's own keeps its state
        sched.set_timesteps(steps)
        at = noise.randint(steps, b)[rows]  # which step each chosen row is taken at
        if last > 0:  # drawn only when asked, so the draws above stay those of a plain run
            at[noise.rand(b)[rows] < last] = steps - 1
        c = cond[rows.to(cond.device)]
        x = noise.randn(tuple(x_t.shape))[rows].to(x_t) * float(sched.init_noise_sigma)
        for j, tj in enumerate(sched.timesteps):
            here = (at == j).nonzero().flatten()
            x_t[rows[here].to(x_t.device)] = x[here.to(x.device)].to(x_t)
            t[rows[here].to(t.device)] = int(tj)
            if j == int(at.max()):
                break
            out = self.predict(x.to(self.model_dtype), int(tj), c).float()
            x = ddim_step(sched, out, int(tj), x.float(), eta=0.0).prev_sample

    @torch.no_grad()
    def restore_images(self, image: Image.Image | list[Image.Image], num_inference_steps: int = 4,
                       eta: float = 0.0, seed: int | None = 0, tile_size: int | None = 256,
                       tile_overlap: int = 32, progress: bool = False,
                       callback: Callable[[float, str], None] | None = None,
                       self_ensemble: bool = False) -> list[Image.Image]:
        """Restore Pillow images of any size and mode; grey stays grey, alpha is carried through."""
        images = image if isinstance(image, list) else [image]
        results = []
        for im in images:
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            rgb, alpha = to_rgb(im)
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            out = self.restore_tensor(pil_to_tensor(rgb)[None], num_inference_steps, eta, g,
                                      tile_size, tile_overlap, progress, callback, self_ensemble)
            res = tensor_to_pil(out[0])
            if grey:
                res = res.convert("L")
            if alpha is not None:
                res.putalpha(alpha.resize(res.size, Image.Resampling.BICUBIC))
            results.append(res)
        return results
