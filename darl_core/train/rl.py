"""Difficulty-adaptive RL fine-tuning with an IQA reward (docs/method.md), and its ablations.

One round, for a batch of m inputs drawn from the pool:

 0. the batch: with ``sampling="weighted"`` (default) m inputs are drawn from
    the *whole* pool with probability ~ ``sampling_floor`` + w_i, so hard
    samples come more often and easy ones still get their SFT share, and
    samples migrate from RL to SFT as they get easier (docs/method.md step 8,
    revised); ``"hardest"`` draws uniformly from the hardest
    ``hard_fraction`` (the first design, which froze the curriculum);
 1. G = ``group_size`` rollouts of each input with different noise and the
    policy frozen as theta_old (DDIM, eta > 0), keeping x_t, x_{t-1} and
    log p_old of every stochastic transition; with ``stochastic_last`` the
    schedule ends at abar_0 < 1, so the last step is stochastic and trained
    too (evaluation samples with eta = 0 and ends at abar = 1);
 2. stepwise reward: transition x_t -> x_{t-1} is credited with the reward of
    the clean image predicted *from its result* x_{t-1} (the next step's
    x0_hat; the final image for the last one) [ours: the consequence of the
    sampled action, so the credit is causal]. ``reward_last_k`` limits the
    scored transitions to the last k (the others take the final image's
    reward), since IQA scores of very noisy predictions are unreliable;
 3. advantages: ``advantage="group"`` (default) normalises each reward within
    its input's G rollouts (GRPO / Flow-GRPO), so it says which rollout was
    better rather than which input was drawn; ``"memory"`` keeps a per-input
    reward memory keyed by (sample id, step) across rounds (DDPO's tracker,
    batch statistics while a buffer is short); both clipped;
 4. L = 1/m sum_i [ w_i L_RL,i + lambda_sft (1 - w_i) L_SFT,i ] + beta KL
    with the PPO-clipped L_RL (mean over transitions), the v-prediction
    diffusion loss L_SFT where a ground truth exists, and the closed-form KL
    between the Gaussians of the policy and the frozen reference (SFT)
    policy, ||mu - mu_ref||^2 / (2 sigma_t^2), averaged over pixels like the
    log-probabilities (see sampler.py);
 5. w_i from relative difficulty (difficulty.relative_weights), recomputed
    over the whole pool every ``difficulty_every`` rounds with the current
    policy.

Two options of ours against reward hacking and drift (off in the paper's
presets): ``beta_last`` adds beta_last ||mu - mu_ref||^2 / (2 sigma_last^2)
for the deterministic last step, which RL otherwise moves only as a side
effect of the shared weights (``last_step_anchor``); ``reward_reference``
"stage1" lets full-reference reward terms (a fidelity anchor such as
``darl_iqa + 20*psnr``) compare each rollout with the model's own stage-1
restoration, so they work without ground truths (``stage1_images``).

What a round does not repeat (the same computation as computing everything
afresh: the tests compare the weights bit for bit; ``bench/rl_step.py
--before REV`` times both): the pool's conditioning (stage 1, never trained)
is computed once per run; the on-policy first PPO epoch backpropagates
through the rollout's own forward passes (``keep_rollout_graph``); the KL
reference's means are computed once per round, not per epoch; on CPUs glibc
keeps freed memory instead of faulting fresh pages in every step
(``allocator.py``). One change to the estimator: with ``sft_per_input`` the
SFT term sees each of the m inputs once (m noise draws, not m x G).

Diagnostics in metrics.jsonl (every ``diag_every`` rounds): the gradient norm
of the RL, KL and SFT terms on their own (``grad_norm_rl`` / ``_kl`` /
``_sft``), the cosine of this round's RL gradient with the last diagnosed
one (``rl_grad_cos_prev``: near 0 means the RL gradient is noise), the clip
fraction per PPO epoch, the approximate KL of the update
(mean(rho - 1 - log rho)), the within-group reward std, the pool's mean w
and its shares at w = 0 and w = 1; every ``probe_every`` rounds (and at round 0) the
probe: fixed crops of the held-out photos, degraded by ``evalset``'s independent recipe and restored
as the app restores them (eta 0, fixed noise), scored by the reward (``probe_reward``), PSNR
(``probe_psnr``) and the texture in their flattest areas against the truth's (``probe_flat_hf``). A
reward that rises while PSNR falls and ``flat_hf`` climbs is being gamed with invented texture.

The ablations are presets of the same loop (``PRESETS``): ``sft`` (w = 0,
no KL: SFT only, same rounds and batch), ``rl_uniform`` (w = 1, no SFT, no
KL: plain DDPO with the IQA reward), ``rl_gt_reward`` (the full method with
PSNR as the reward) and ``darl``.

The trainer drives any ``restorer.Restorer`` (our pixel model, the Stable
Diffusion x4 upscaler, LDM super-resolution): it only calls ``rollout``,
``predict``, ``sft_loss`` and ``restore_tensor``. LoRA (``lora_rank > 0``)
keeps no second model: the reference is the UNet with its adapters off.

Several processes (``accelerate launch -m darl_core.cli.train_rl ...``): every
process holds the whole pool and the same generator, so all choose the same
batch; each rolls out and trains its slice of it (with the noise a single
process would draw for those rows), rewards and difficulty are gathered so
the reward memory and the weights w_i are identical everywhere, gradients
are averaged once per optimiser step, and only the main process validates,
logs and writes checkpoints.

Training reports through ``callbacks`` (``on_round(record)``,
``on_checkpoint(path, record)``, ``should_stop() -> bool``,
``on_sample(round, lq, restored)`` (the pool's first input restored after
every round, in [0, 1]), called on the main process; ``on_finish(restorer)``, called on every process at the end)
and imports neither Gradio nor the store. Randomness comes from one generator whose
state is checkpointed, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .allocator import keep_freed_memory
from .checkpoint import atomic_dir, latest_checkpoint, save_checkpoint
from ..data.clean import validation_set
from ..rewards.difficulty import difficulty, relative_weights
from .distributed import Processes
from ..models.loading import load_restorer
from ..models.lora import adapters_disabled, add_lora, load_lora_state_dict, lora_state_dict
from ..data.pool import PoolSample, build_pool, synthetic_pool
from ..models.restorer import Noise, Restorer, Trajectory
from ..rewards.registry import Reward, create_reward
from ..models.sampler import ddim_step, step_std

__all__ = ["CPU_SECONDS_PER_UNIT", "PRESETS", "ProbeGuard", "RLConfig", "RewardMemory", "SIZES",
           "get_rl_preset", "group_advantages", "last_step_anchor", "policy_losses", "ppo_loss", "probe_set",
           "reference_means", "round_cost", "sample_with_grad", "stage1_images", "train_rl"]

Callbacks = dict[str, Callable[..., object]]


class _StopInRound(Exception):
    """Raised inside a round when ``should_stop`` says so (caught by ``train_rl``)."""


@dataclass
class RLConfig:
    output: str = "runs/rl"  # folder for checkpoints, metrics.jsonl, difficulty.jsonl and the final model
    base_model: str | None = None  # SFT model (folder or Hub id; None: the shipped one); also the KL reference
    method: str = "darl"  # label of the ablation this config is (darl, sft, rl_uniform, rl_gt_reward)
    reward: str = "niqe"  # reward spec, see rewards.create_reward (e.g. "niqe", "niqe + 0.02*piqe", "psnr")
    reward_normalize: bool = False  # map each reward term to ~[0, 1] before weighting
    reward_reference: Literal["gt", "stage1", "auto"] = "gt"  # what full-reference reward terms (psnr, ...) compare
                                # with: the ground truth (samples without one are not rolled out), the model's own
                                # stage-1 restoration for every sample (a fidelity anchor without ground truth), or
                                # "auto": the ground truth where there is one, else stage 1's restoration
    adaptive_weight: bool = True  # w_i from relative difficulty; False: w_i = uniform_weight
    uniform_weight: float = 1.0  # w for every sample when adaptive_weight is False (1: pure RL, 0: pure SFT)
    lambda_sft: float = 1.0  # weight of the SFT loss (times 1 - w_i)
    beta_kl: float = 0.05  # weight of the KL to the reference policy (0: none)
    beta_last: float = 0.0  # weight of the anchor of the deterministic last step to the reference: its mean kept
                            # near the reference's as a KL with sigma_last in place of its zero sigma (0: none)
    sigma_last: float = 0.05  # the variance floor of that anchor: ||mu - mu_ref||^2 / (2 sigma_last^2)
    num_steps: int = 4  # DDIM steps of a rollout (the last one is deterministic)
    eta: float = 1.0  # DDIM eta of rollouts (> 0: stochastic policy)
    reward_last_k: int = 0  # score the consequences of the last k transitions only (0: all)
    rl_estimator: Literal["ppo", "backprop"] = "ppo"  # the RL term's gradient: PPO on the rollouts' log-probabilities,
                                # or the reward's own gradient backpropagated through the sampler (DRaFT-style;
                                # differentiable rewards only, e.g. darl_iqa + 20*psnr)
    backprop_steps: int = 1  # with "backprop": the gradient flows through the last this many sampler steps (DRaFT-K)
    backprop_scale: float = 0.01  # with "backprop": the reward's weight in the loss, against the SFT and KL terms
    rounds: int = 60  # RL rounds (rollout + update)
    batch_size: int = 8  # inputs per round (m)
    patch: int = 192  # side of the training crops (NIQE is reliable from 192 px)
    epochs: int = 2  # optimiser steps per round over the round's rollouts (PPO inner epochs)
    clip_range: float = 1e-4  # PPO clip range of the ratio (DDPO's value)
    adv_clip: float = 5.0  # advantages are clipped to [-adv_clip, adv_clip]
    lr: float = 1e-5  # AdamW learning rate
    grad_clip: float = 1.0  # global gradient-norm clip
    group_size: int = 4  # rollouts of each input per round, with different noise (G; GRPO / Flow-GRPO)
    advantage: Literal["group", "memory"] = "group"  # "group": normalised within each input's G rollouts; "memory": per-input
                              # reward memory across rounds (DDPO's tracker, batch statistics while short)
    stochastic_last: bool = False  # rollouts end at abar_0 < 1, so the last step is stochastic and trained too
    memory_size: int = 16  # rewards kept per (sample, step) (advantage "memory")
    memory_min: int = 4  # below this many, advantages use batch statistics (advantage "memory")
    difficulty_metric: str = "ssim"  # full-reference distance for difficulty (ssim: d = 1 - SSIM)
    difficulty_every: int = 1  # recompute pool difficulty every N rounds
    q_lo: float = 0.25  # pool quantile mapped to w = 0
    q_hi: float = 0.75  # pool quantile mapped to w = 1
    w_anchor: Literal["pool", "start"] = "pool"  # quantiles of "pool": the current pool's d (docs/method.md 7; the pool's mean w stays ~0.5 by
                            # construction), or "start": the pool's d at the first round, kept, so w falls as samples get easier
    sampling: Literal["weighted", "hardest"] = "weighted"  # "weighted": the batch is drawn from the whole pool with p ~ sampling_floor + w_i;
                                # "hardest": uniformly from the hardest ``hard_fraction`` (the first design)
    sampling_floor: float = 0.25  # with "weighted": the easiest samples (w = 0) are drawn this often relative to
                                  # 1 + floor for the hardest, so they get their SFT share
    hard_fraction: float = 0.5  # with "hardest": the batch is drawn from this hardest fraction of the pool
    pool_size: int = 64  # size of a synthetic pool
    task: str = "blind"  # degradation preset of a synthetic pool
    hq_folder: str | None = None  # HQ images for a synthetic pool (default: the built-in training photos)
    pairs_folder: str | None = None  # pool from a folder with lq/ and gt/ subfolders (same file names)
    samples_file: str | None = None  # pool from a JSON list of {"id", "lq", "gt"?} (the app's flagged samples)
    extra_hardest_k: int = 0  # with samples_file/pairs_folder: also the k hardest of a synthetic pool (seeded)
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA of this rank (reference = adapters off)
    lora_targets: str = "all"  # LoRA on "all" attention and ResNet layers, or on "attn" projections only
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass (less memory)
    keep_rollout_graph: bool = True  # the first (on-policy) PPO epoch backpropagates through the rollout's own
                                     # forward passes instead of repeating them (memory grows with the steps)
    sft_per_input: bool = True  # the SFT term once per input of the batch, not once per each of its G rollouts
                                # (the same objective, estimated from m noise draws instead of m x G)
    diag_every: int = 1  # every N rounds log the gradient norm of the RL, KL and SFT terms separately and the
                         # cosine of this round's RL gradient with the last one (one more backward; 0: never)
    probe_every: int = 0  # every N rounds the reward, PSNR and flat-area texture of fixed held-out crops restored as
                          # the app restores them (eta 0, fixed noise): what a held-out check sees (0: never)
    probe_crops: int = 16  # crops of the built-in held-out photos in the probe (degraded by evalset's Pillow recipe)
    guard_psnr: float = 0.0  # > 0 (with probe_every): export the last probed round whose probe PSNR is within this
                             # many dB of round 0's, flat_hf not above and reward not below round 0's (0: off)
    guard_patience: int = 2  # with guard_psnr: stop after this many probes in a row fail the guard
    val_every: int = 10  # validate every N rounds (0: never)
    ckpt_every: int = 10  # checkpoint every N rounds
    snapshot_every: int = 0  # also export the model every N rounds to output/snapshots/round-NNNN, kept (the
                             # Pareto plot of bench/pareto.py, one point per snapshot; 0: never)
    seed: int = 0  # seeds the pool, the batches, rollouts and SFT noise
    device: str = "auto"  # cpu, cuda, or auto
    bf16: bool = False  # bf16 autocast for model forwards (CUDA; fp32 keeps the ratio exact)
    stop_file: str | None = None  # stop (with a checkpoint) once this file exists (multi-process jobs)
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time

    def __post_init__(self) -> None:
        """Checks of single values and of fields against each other, before any model loads (a job with a
        bad config is refused when it is built, naming the values)."""
        choices = {"advantage": ("group", "memory"), "w_anchor": ("pool", "start"), "sampling": ("weighted", "hardest"),
                   "reward_reference": ("gt", "stage1", "auto"), "rl_estimator": ("ppo", "backprop")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("group_size", "batch_size", "num_steps", "patch", "backprop_steps", "difficulty_every",
                     "guard_patience", "probe_crops"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("rounds", "epochs", "lambda_sft", "beta_kl", "beta_last", "lr", "guard_psnr", "eta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        if self.advantage == "group" and self.group_size < 2 and self.rl_estimator == "ppo":
            raise ValueError(f"advantage 'group' needs group_size >= 2, got group_size {self.group_size} (use "
                             "advantage 'memory' for one rollout per input)")
        if self.guard_psnr > 0 and not self.probe_every:
            raise ValueError(f"guard_psnr {self.guard_psnr} needs the probe: set probe_every (it is 0)")

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: RLConfig | None = None) -> RLConfig:
        """``base`` (default: the defaults) with the fields ``values`` names replaced; an unknown
        field is a ValueError that lists it (a job's stored config, a ``--config`` file)."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return replace(base if base is not None else cls(), **values)


def darl() -> RLConfig:
    """The full method with the IQA reward (NIQE, offline)."""
    return RLConfig()


def sft() -> RLConfig:
    """Ablation: SFT loss only, same rounds and batch (no rollouts)."""
    return replace(RLConfig(), method="sft", adaptive_weight=False, uniform_weight=0.0, beta_kl=0.0)


def rl_uniform() -> RLConfig:
    """Ablation: plain DDPO-style RL with the IQA reward (w = 1, no SFT, no KL)."""
    return replace(RLConfig(), method="rl_uniform", adaptive_weight=False, uniform_weight=1.0,
                   lambda_sft=0.0, beta_kl=0.0)


def rl_gt_reward() -> RLConfig:
    """Ablation: the full method with a ground-truth reward (PSNR)."""
    return replace(RLConfig(), method="rl_gt_reward", reward="psnr")


def darl_anchored() -> RLConfig:
    """darl as it works on a CPU (docs/results.md 2f): the reward ``darl_iqa + 20*psnr`` (a fidelity anchor; against
    the ground truth where there is one, else stage 1's restoration) backpropagated through both steps of the app's
    2-step sampler (``rl_estimator="backprop"``) inside the same difficulty-weighted loss with the SFT term
    (lambda_sft 0.1), lr 3e-5 (bench/loop.py on flagged samples: 3e-6 moved too little, docs/results.md 5), 96-px
    crops, batch 8, 40 rounds; the held-out probe every 5 rounds, and the exported model is the last probed round
    that lost at most 0.1 dB there without adding flat-area texture or losing reward. The guard never stops the run
    early (patience 8 probes): at this lr the probe dips in the first rounds and recovers by round 25."""
    return replace(RLConfig(), method="darl_anchored", reward="darl_iqa + 20*psnr", reward_reference="auto",
                   rl_estimator="backprop", backprop_steps=2, eta=0.0, group_size=1, advantage="memory",
                   lr=3e-5, lambda_sft=0.1, num_steps=2, patch=96, batch_size=8, epochs=1, diag_every=10,
                   difficulty_every=10, probe_every=5, guard_psnr=0.1, guard_patience=8, rounds=40)


def tiny_test() -> RLConfig:
    """Seconds on a CPU with a tiny random model: the tests' config."""
    return replace(RLConfig(), reward="psnr", num_steps=3, rounds=2, batch_size=2, patch=32, pool_size=4,
                   val_every=0, ckpt_every=1, memory_min=2, clip_range=0.2, lr=1e-3, group_size=2)


PRESETS: dict[str, Callable[[], RLConfig]] = {"darl": darl, "sft": sft, "rl_uniform": rl_uniform,
                                              "rl_gt_reward": rl_gt_reward, "darl_anchored": darl_anchored,
                                              "tiny_test": tiny_test}


# Run sizes: fields applied over a method's preset, so any method can be tried on a CPU.
SIZES: dict[str, dict[str, Any]] = {
    # The same crops and steps without the probe, the guard or the diagnostics (96 px: NIQE's smallest side).
    "quick": {"patch": 96, "num_steps": 2, "epochs": 1, "diag_every": 0, "difficulty_every": 5, "probe_every": 0,
              "guard_psnr": 0.0},
    # The CPU study's setting (docs/results.md 2f): 96-px crops, 2 DDIM steps, one epoch, diagnostics every 10
    # rounds and the held-out probe every 5 (the guard's), pool difficulty every 5.
    "full": {"patch": 96, "num_steps": 2, "epochs": 1, "diag_every": 10, "difficulty_every": 5, "probe_every": 5},
    "paper": {},  # the method's own settings (192 px crops, 4 steps, G = 4, 2 PPO epochs, diagnostics): a GPU's
}
# Seconds per unit of ``round_cost`` on this project's 2-core CPU (bench/rl_step.py, 2026-12-07): the launch
# estimate's prior until the machine has timed a job of its own.
CPU_SECONDS_PER_UNIT = 2.8e-6


def round_cost(cfg: RLConfig, pool_size: int) -> float:
    """The work of one round in denoiser passes x output pixels, with the difficulty refresh, the probe
    and the diagnostic pass spread over the rounds they come every: what the time of a round grows with
    (the app's launch estimate multiplies it by seconds per unit measured on the machine)."""
    px = float(cfg.patch) ** 2
    rollouts = cfg.batch_size * cfg.group_size
    k = max(cfg.num_steps - 1, 0) + int(cfg.stochastic_last)  # trained transitions per rollout
    rl = cfg.adaptive_weight or cfg.uniform_weight > 0
    passes = 0.0
    if rl and cfg.rl_estimator == "backprop":  # per epoch: the sampler, backward through its last steps
        passes += rollouts * cfg.epochs * (cfg.num_steps + 2 * min(cfg.backprop_steps, cfg.num_steps))
    elif rl:
        passes += rollouts * cfg.num_steps  # the rollouts (the first epoch's forward included)
        passes += rollouts * k * (1 if cfg.beta_kl > 0 else 0)  # the KL reference
        passes += rollouts * k * (2 * cfg.epochs - (1 if cfg.keep_rollout_graph else 0))  # backward, later forwards
        passes += rollouts * 3 * (1 if cfg.beta_last > 0 else 0)  # the last step's anchor
        passes += rollouts * k * 2 / cfg.diag_every if cfg.diag_every else 0.0
    sft_rows = cfg.batch_size * (1 if cfg.sft_per_input else cfg.group_size)
    passes += sft_rows * 3 * cfg.epochs if cfg.lambda_sft > 0 and not (rl and not cfg.adaptive_weight
                                                                      and cfg.uniform_weight >= 1) else 0.0
    passes += pool_size * cfg.num_steps / max(cfg.difficulty_every, 1)
    passes += cfg.probe_crops * cfg.num_steps / cfg.probe_every if cfg.probe_every else 0.0
    return passes * px


def get_rl_preset(name: str) -> RLConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown RL preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ----------------------------------------------------------------------------- advantages

class RewardMemory:
    """Recent rewards per key; advantages normalised per key (DDPO's per-prompt tracker)."""

    def __init__(self, size: int, min_count: int):
        self.size, self.min_count = size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def advantages(self, keys: list[str], rewards: torch.Tensor, clip: float) -> torch.Tensor:
        """Add ``rewards`` under ``keys``, then return clip((r - mean) / (std + 1e-6))."""
        r = rewards.detach().float().cpu()
        b_mean, b_std = float(r.mean()), float(r.std(unbiased=False))
        out = torch.empty_like(r)
        for i, (k, v) in enumerate(zip(keys, r.tolist())):
            buf = self.buffers.setdefault(k, deque(maxlen=self.size))
            buf.append(v)
            if len(buf) >= self.min_count:
                t = torch.tensor(buf)
                mean, std = float(t.mean()), float(t.std(unbiased=False))
            else:
                mean, std = b_mean, b_std
            out[i] = (v - mean) / (std + 1e-6)
        return out.clamp(-clip, clip)

    def state_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.buffers = {k: deque(v, maxlen=self.size) for k, v in state.items()}


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """clip((r - mean_group) / (std_group + 1e-6)) for rewards laid out as consecutive groups of
    ``group_size`` rollouts of one input (GRPO / Flow-GRPO): the advantage says which *rollout* of an
    input was better, not which input was drawn."""
    r = rewards.detach().float().reshape(-1, group_size)
    a = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, unbiased=False, keepdim=True) + 1e-6)
    return a.clamp(-clip, clip).flatten()


# ----------------------------------------------------------------------------- loss

def ppo_loss(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float) -> torch.Tensor:
    """docs/method.md, step 4, per sample: max(-A rho, -A clip(rho, 1 - eps, 1 + eps))."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))


def policy_losses(policy: Restorer, traj: Trajectory, k: int, adv: torch.Tensor, eta: float,
                  clip_range: float, ref_mean: torch.Tensor | None = None, out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample PPO loss, KL, ratio and clipped flag of transition ``k`` (with grad).

    ``ref_mean``: the frozen reference policy's mean of this transition (``reference_means``; None:
    no KL). ``out``: the policy's output at x_t already computed with its graph (the rollout's, for
    the on-policy first epoch); None: computed here."""
    t, x_t, x_prev = traj.timesteps[k], traj.x_t[k], traj.x_prev[k]
    out = (policy.predict(x_t, t, traj.cond) if out is None else out).float()
    step = ddim_step(policy.scheduler, out, t, x_t, eta=eta, prev_sample=x_prev)
    ratio = torch.exp(step.log_prob - traj.log_prob[k])
    loss = ppo_loss(ratio, adv.to(ratio), clip_range)
    kl = torch.zeros_like(loss)
    if ref_mean is not None:
        kl = ((step.mean - ref_mean) ** 2).mean(dim=tuple(range(1, x_t.ndim))) / (2 * step.std**2)
    clipped = ((ratio - 1).abs() > clip_range).float()
    return loss, kl, ratio.detach(), clipped


def _reference_output(policy: Restorer, x_t: torch.Tensor, t: int, cond: torch.Tensor,
                      ref_unet: torch.nn.Module | None, use_adapters_off: bool) -> torch.Tensor:
    """The frozen reference policy's denoiser output: the copied SFT UNet, or the policy's own with its LoRA
    adapters off."""
    if use_adapters_off:
        with adapters_disabled(policy.unet):
            return policy.predict(x_t, t, cond).float()
    return policy.predict(x_t, t, cond, unet=ref_unet).float()


@torch.no_grad()
def reference_means(policy: Restorer, traj: Trajectory, eta: float, ref_unet: torch.nn.Module | None,
                    use_adapters_off: bool) -> list[torch.Tensor] | None:
    """The frozen reference (SFT) policy's Gaussian mean of every recorded transition, once per
    round (they do not change during the update); None when there is no KL term."""
    if ref_unet is None and not use_adapters_off:
        return None
    means = []
    for t, x_t, x_prev in zip(traj.timesteps, traj.x_t, traj.x_prev):
        ref_out = _reference_output(policy, x_t, t, traj.cond, ref_unet, use_adapters_off)
        means.append(ddim_step(policy.scheduler, ref_out, t, x_t, eta=eta, prev_sample=x_prev).mean)
    return means


def last_step_anchor(policy: Restorer, traj: Trajectory, ref_unet: torch.nn.Module | None, use_adapters_off: bool,
                     sigma: float) -> torch.Tensor | None:
    """Per-sample ||mu - mu_ref||^2 / (2 sigma^2) of the rollout's deterministic last step (with grad), or None
    when the last step is stochastic (then the KL covers it) or there is no reference.

    RL trains the denoiser through the stochastic transitions only; with few steps that leaves out the
    last one, which makes the final texture, although it shares every weight: the RL updates move it as a
    side effect, unchecked. This keeps it near the reference policy at the states the policy visits, like
    the KL term with a floor ``sigma`` in place of its zero variance."""
    sched = policy.scheduler
    t_last = int(sched.timesteps[-1])
    if not traj.timesteps or traj.timesteps[-1] == t_last or (ref_unet is None and not use_adapters_off):
        return None
    x = traj.x_prev[-1]  # the state the last step starts from (every earlier step is stochastic)
    mean = ddim_step(sched, policy.predict(x, t_last, traj.cond).float(), t_last, x, eta=0.0).mean
    with torch.no_grad():
        ref_out = _reference_output(policy, x, t_last, traj.cond, ref_unet, use_adapters_off)
        ref_mean = ddim_step(sched, ref_out, t_last, x, eta=0.0).mean
    return ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, x.ndim))) / (2 * sigma**2)


class ProbeGuard:
    """Keeps the last weights the held-out probe found no worse than the start (``guard_psnr``).

    A probed round passes when its probe PSNR is at least round 0's minus ``psnr_drop`` dB, its
    ``flat_hf`` is not above round 0's and its reward not below; the trainer exports the last passing
    round's weights (round 0's, i.e. the base model unchanged, if none passed) and stops after
    ``patience`` failing probes in a row. So a job cannot hand back a model that the probe saw get
    worse, and ``guard.json`` in the run folder says which round it exported and why."""

    def __init__(self, psnr_drop: float, patience: int, weights: dict[str, torch.Tensor]):
        self.psnr_drop, self.patience = psnr_drop, patience
        self.base: dict[str, float] = {}
        self.best_round, self.fails = 0, 0
        self.best = {k: v.detach().cpu().clone() for k, v in weights.items()}  # round 0's until a round passes

    def start(self, rec0: dict[str, Any]) -> None:
        self.base = {k: float(rec0[k]) for k in ("probe_psnr", "probe_flat_hf", "probe_reward") if k in rec0}

    def passes(self, rec: dict[str, Any]) -> bool:
        b = self.base
        return (rec["probe_psnr"] >= b["probe_psnr"] - self.psnr_drop and rec["probe_flat_hf"] <= b["probe_flat_hf"]
                and ("probe_reward" not in b or rec.get("probe_reward", -math.inf) >= b["probe_reward"]))

    def check(self, rnd: int, rec: dict[str, Any], weights: dict[str, torch.Tensor]) -> bool:
        """Judge a probed round (``rec`` gets ``guard_ok``); True when training should stop."""
        ok = self.passes(rec)
        rec["guard_ok"] = float(ok)
        if ok:
            self.best_round, self.fails = rnd, 0
            self.best = {k: v.detach().cpu().clone() for k, v in weights.items()}
        else:
            self.fails += 1
        return self.fails >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base, "best_round": self.best_round, "fails": self.fails, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base, self.best_round, self.fails, self.best = (state["base"], state["best_round"], state["fails"],
                                                             state["best"])


def sample_with_grad(policy: Restorer, lq: torch.Tensor, steps: int, eta: float, noise: Noise,
                     cond: torch.Tensor | None, grad_steps: int) -> torch.Tensor:
    """Restorations of ``lq`` whose last ``grad_steps`` sampler steps keep their autograd graph (reward
    backpropagation, ``rl_estimator="backprop"``; the earlier steps run without, DRaFT-K's truncation)."""
    with torch.no_grad():
        cond, x, (h, w) = policy._start(lq, noise, cond)
    policy.scheduler.set_timesteps(steps)
    for j, t in enumerate(policy.scheduler.timesteps):
        with torch.set_grad_enabled(j >= steps - grad_steps):
            out = policy.predict(x, int(t), cond).float()
            z = noise.randn(tuple(x.shape)).to(out) if step_std(policy.scheduler, int(t), eta) > 0 else None
            x = ddim_step(policy.scheduler, out, int(t), x.float(), eta=eta, noise=z).prev_sample
    return policy.to_image(x, cond)[..., :h, :w].float()


# ----------------------------------------------------------------------------- helpers

def _truncate_log(path: Path, last_round: int) -> None:
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("round", 0) <= last_round]
        path.write_text("".join(ln + "\n" for ln in keep))


@contextlib.contextmanager
def _app_schedule(policy: Restorer) -> Iterator[None]:
    """The schedule's end as the app samples it (abar = 1 with ``set_alpha_to_one``), also while
    ``stochastic_last`` rollouts end at abar_0 < 1: what the trainer's restorations measure (difficulty,
    probe, validation) is what a user gets."""
    sched = policy.scheduler
    saved = sched.final_alpha_cumprod
    sched.final_alpha_cumprod = torch.tensor(1.0) if sched.config.set_alpha_to_one else sched.alphas_cumprod[0]
    try:
        yield
    finally:
        sched.final_alpha_cumprod = saved


@torch.no_grad()
def _restore(policy: Restorer, lq: torch.Tensor, steps: int, procs: Processes | None = None,
             chunk: int = 16, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Deterministic restorations of ``lq`` (fixed noise per chunk: comparable from round to round), as
    the app restores them; with several processes each restores every world-th chunk and all get the
    whole result. ``cond``: ``lq``'s conditioning computed once (``pool_conditioning``), reused."""
    with _app_schedule(policy):
        return _restore_chunks(policy, lq, steps, procs, chunk, cond)


def _restore_chunks(policy: Restorer, lq: torch.Tensor, steps: int, procs: Processes | None, chunk: int,
                    cond: torch.Tensor | None) -> torch.Tensor:
    rank, world = (procs.rank, procs.world) if procs else (0, 1)

    def one(i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1234 + i)
        if cond is None:
            return policy.restore_tensor(lq[i : i + chunk], steps, eta=0.0, tile_size=None, generator=g)
        # eta = 0: the rollout's path is restore_tensor's, without conditioning the input again
        h, w = lq.shape[-2:]
        s = policy.output_scale
        return policy.rollout(lq[i : i + chunk], steps, 0.0, g, decode_from=steps,
                              cond=cond[i : i + chunk]).final[..., : h * s, : w * s]

    mine = [(i, one(i).cpu()) for i in range(rank * chunk, lq.shape[0], world * chunk)]
    parts = procs.gather_objects(mine) if procs else mine
    return torch.cat([x for _, x in sorted(parts, key=lambda p: p[0])])


@torch.no_grad()
def pool_conditioning(policy: Restorer, pool: list[PoolSample], chunk: int = 16) -> list[torch.Tensor] | None:
    """Every pool input's conditioning (stage 1's restoration for our pixel models), computed once:
    RL trains the denoiser only, so it never changes; None where the family draws noise for it."""
    if not policy.fixed_condition:
        return None
    out: list[torch.Tensor] = []
    for i in range(0, len(pool), chunk):
        part = pool[i : i + chunk]
        shapes = {tuple(s.lq.shape) for s in part}
        if len(shapes) == 1:
            out += list(policy.conditioning(torch.stack([s.lq for s in part])).cpu())
        else:
            out += [policy.conditioning(s.lq[None])[0].cpu() for s in part]
    return out


def _pool_difficulty(policy: Restorer, pool: list[PoolSample], cfg: RLConfig, device: torch.device,
                     procs: Processes | None = None, conds: list[torch.Tensor] | None = None) -> torch.Tensor:
    """d for every pool sample (+inf where there is no GT: flagged samples always count as hard)."""
    d = torch.full((len(pool),), math.inf)
    idx = [i for i, s in enumerate(pool) if s.gt is not None]
    if idx:
        lq = torch.stack([pool[i].lq for i in idx])
        gt = torch.stack([pool[i].gt for i in idx])  # type: ignore[misc]
        cond = torch.stack([conds[i] for i in idx]) if conds is not None else None
        d[idx] = difficulty(_restore(policy, lq, cfg.num_steps, procs, cond=cond).to(device), gt.to(device),
                            cfg.difficulty_metric, device).cpu()
    return d


def _choose(d: torch.Tensor, eligible: torch.Tensor, w_pool: torch.Tensor, cfg: RLConfig,
            g: torch.Generator) -> torch.Tensor:
    """Indices of a batch: from the whole eligible pool with p ~ ``sampling_floor`` + w_i ("weighted",
    so hard samples come more often and easy ones still get their SFT share), or uniformly from its
    hardest ``hard_fraction`` ("hardest")."""
    cand = torch.nonzero(eligible).flatten()
    if cand.numel() == 0:
        raise ValueError("no pool sample can be trained on (an FR reward needs ground truths)")
    if cfg.sampling == "weighted":
        p = (cfg.sampling_floor + w_pool[cand].float()).clamp_min(0)
        p = p if float(p.sum()) > 0 else torch.ones_like(p)
        pick = torch.multinomial(p, cfg.batch_size, replacement=cand.numel() < cfg.batch_size, generator=g)
        return cand[pick]
    order = cand[torch.argsort(d[cand], descending=True, stable=True)]
    top = order[: max(1, math.ceil(cfg.hard_fraction * order.numel()))]
    if top.numel() >= cfg.batch_size:
        return top[torch.randperm(top.numel(), generator=g)[: cfg.batch_size]]
    return top[torch.randint(top.numel(), (cfg.batch_size,), generator=g)]


def _backward(terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter],
              per_term: dict[str, list[torch.Tensor]] | None) -> None:
    """Accumulate the gradient of the sum of ``terms`` into ``params``; with ``per_term``, also
    add each term's own gradient to ``per_term[name]`` (one autograd pass per term)."""
    live = {n: t for n, t in terms.items() if t.requires_grad}
    if not live:
        return
    if per_term is None:
        sum(live.values()).backward()
        return
    names = list(live)
    for j, n in enumerate(names):
        grads = torch.autograd.grad(live[n], params, retain_graph=j < len(names) - 1, allow_unused=True)
        acc = per_term.setdefault(n, [torch.zeros_like(p) for p in params])
        for p, a, gr in zip(params, acc, grads):
            if gr is None:
                continue
            a.add_(gr)
            p.grad = gr.clone() if p.grad is None else p.grad + gr


def probe_set(cfg: RLConfig, scale: int, pool: list[PoolSample]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The probe's fixed inputs (and ground truths): ``probe_crops`` crops of the built-in held-out
    photos, degraded by ``evalset``'s Pillow and JPEG recipe (not the training degradations), at the
    training patch size; for x4 models (no such pairs) the pool's first inputs."""
    if scale == 1:
        from ..data.clean import HELDOUT_IMAGES, builtin_image
        from ..evaluation.evalset import independent_pairs

        photos = [(n, builtin_image(n)) for n in HELDOUT_IMAGES]
        per = max(1, -(-cfg.probe_crops // len(photos)))
        pairs = independent_pairs(seed=1000, size=cfg.patch, per_image=per, images=photos)[: cfg.probe_crops]
        if pairs:
            return torch.stack([p[1] for p in pairs]), torch.stack([p[2] for p in pairs])
    part = pool[: cfg.probe_crops]
    gts = [s.gt for s in part]
    return torch.stack([s.lq for s in part]), torch.stack(gts) if all(g is not None for g in gts) else None


@torch.no_grad()
def stage1_images(policy: Restorer, cond: torch.Tensor) -> torch.Tensor:
    """The restorations of a two-stage model's stage 1 for conditionings ``cond`` (``conditioning``): the
    image of a zero residual. Close to the posterior mean (it is trained by regression), so within one
    input's group of rollouts -MSE against it ranks the rollouts as -MSE against the unknown truth
    would, in expectation: the fidelity anchor of ``reward_reference="stage1"``."""
    return policy.to_image(torch.zeros_like(cond), cond).float()


def _probe(policy: Restorer, probe: tuple[torch.Tensor, torch.Tensor | None], conds: torch.Tensor | None,
           reward: Reward | None, cfg: RLConfig, device: torch.device) -> dict[str, float]:
    """The probe (``probe_every``): the fixed crops restored as the app restores them (eta 0, the same
    noise every time), so the curve shows the policy and not which batch was drawn, and sees what a
    held-out check sees: the reward, and with ground truths PSNR and ``flat_hf`` (texture in the flattest
    areas against the truth's: invented texture raises it while a no-reference reward may rise too)."""
    from ..evaluation.evalset import flat_hf_ratio
    from ..rewards.registry import get_metric

    lq, gt = probe
    out = _restore(policy, lq, cfg.num_steps, cond=conds)
    rec: dict[str, float] = {}
    ref = gt
    if reward is not None and reward.full_reference and cfg.reward_reference == "stage1" and conds is not None:
        ref = stage1_images(policy, conds.to(device)).cpu()[..., : out.shape[-2], : out.shape[-1]]
    if reward is not None and (ref is not None or not reward.full_reference):
        rec["probe_reward"] = float(reward(out.to(device), ref.to(device) if ref is not None else None).mean())
    if gt is not None:
        rec["probe_psnr"] = float(get_metric("psnr")(out, gt).mean())
        rec["probe_flat_hf"] = sum(flat_hf_ratio(o, g) for o, g in zip(out, gt)) / len(out)
    return rec


@torch.no_grad()
def _validate(policy: Restorer, val: tuple[torch.Tensor, torch.Tensor], reward: Reward | None,
              cfg: RLConfig, device: torch.device) -> dict[str, float]:
    from ..rewards.registry import get_metric

    lq, hq = val
    out = _restore(policy, lq, cfg.num_steps).to(device)
    hq = hq.to(device)
    rec = {"val_psnr": float(get_metric("psnr", device)(out, hq).mean()),
           "val_ssim": float(get_metric("ssim", device)(out, hq).mean())}
    if reward is not None:
        rec["val_reward"] = float(reward(out, hq if reward.full_reference else None).mean())
    return rec


# ----------------------------------------------------------------------------- training

def train_rl(cfg: RLConfig, pool: list[PoolSample] | None = None, resume: bool = False,
             callbacks: Callbacks | None = None) -> Path:
    """Run the rounds of ``cfg``; returns the folder of the exported final model."""
    callbacks = callbacks or {}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    procs = Processes(cfg.device)
    device, main = procs.device, procs.main
    if device.type == "cpu":
        keep_freed_memory()  # activations from the heap, not fresh pages every step (allocator.py)
    if cfg.batch_size * cfg.group_size % procs.world:
        raise ValueError(f"batch_size x group_size ({cfg.batch_size} x {cfg.group_size} rollouts) must be a "
                         f"multiple of the {procs.world} processes")
    if cfg.sft_per_input and cfg.batch_size % procs.world:
        raise ValueError(f"sft_per_input needs batch_size ({cfg.batch_size}) to be a multiple of the "
                         f"{procs.world} processes (or sft_per_input false)")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # the same on every process: the same batches

    # Policy, and the frozen reference it is kept close to (the SFT model).
    policy = load_restorer(cfg.base_model, device)
    unet = policy.unet
    scale = policy.output_scale
    if cfg.lora_rank:
        add_lora(unet, cfg.lora_rank, targets=cfg.lora_targets)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ref_unet = None
    if (cfg.beta_kl > 0 or cfg.beta_last > 0) and not cfg.lora_rank:
        ref_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    pool = pool if pool is not None else build_pool(cfg, scale)
    if cfg.extra_hardest_k > 0 and (cfg.samples_file or cfg.pairs_folder):
        # Add the k hardest synthetic samples under the base model: same seed, same samples.
        extra = synthetic_pool(cfg)
        d_extra = _pool_difficulty(policy, extra, cfg, device, procs, pool_conditioning(policy, extra))
        pool = pool + [extra[i] for i in torch.argsort(d_extra, descending=True)[: cfg.extra_hardest_k].tolist()]
    if not pool:
        raise ValueError("the training pool is empty")
    for s in pool:
        if s.gt is not None and s.gt.shape[-1] != s.lq.shape[-1] * scale:
            raise ValueError(f"pool sample {s.id}: GT {tuple(s.gt.shape[1:])} is not {scale}x its LQ "
                             f"{tuple(s.lq.shape[1:])}; this model's output scale is {scale} "
                             f"(for x4 models use a x4 task such as --task sr4)")
    conds = pool_conditioning(policy, pool)  # each input's conditioning (stage 1), once: RL never trains it
    needs_rl = cfg.adaptive_weight or cfg.uniform_weight > 0
    reward = create_reward(cfg.reward, device, cfg.reward_normalize) if needs_rl else None
    has_gt = torch.tensor([s.gt is not None for s in pool])
    if reward is not None and cfg.rl_estimator == "backprop":
        from ..rewards.registry import DIFFERENTIABLE

        if bad := [n for n in reward.metric_names if n not in DIFFERENTIABLE]:
            raise ValueError(f"rl_estimator 'backprop' needs a differentiable reward; {bad} are not "
                             f"(differentiable: {sorted(DIFFERENTIABLE)})")
    anchored = reward is not None and reward.full_reference and cfg.reward_reference != "gt"
    if anchored and (not policy.has_stage1 or conds is None):
        raise ValueError(f"reward_reference {cfg.reward_reference!r} needs a two-stage model; "
                         f"{cfg.base_model or 'the default model'} has no stage 1 (use reward_reference 'gt' with "
                         "ground truths)")
    needs_gt = (reward is not None and reward.full_reference and not anchored) or not needs_rl
    eligible = has_gt if needs_gt else torch.ones_like(has_gt)
    memory = RewardMemory(cfg.memory_size, cfg.memory_min)
    diff: torch.Tensor | None = None
    diff_start: torch.Tensor | None = None  # the pool's difficulty at the first round (w_anchor "start")

    def weights() -> dict[str, torch.Tensor]:
        return lora_state_dict(unet) if cfg.lora_rank else unet.state_dict()
    guard = (ProbeGuard(cfg.guard_psnr, cfg.guard_patience, weights()) if cfg.guard_psnr > 0 and cfg.probe_every
             else None)
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        # Exact resume: weights, optimiser, reward memory, pool difficulty and the generator.
        state = torch.load(ckpt / "train_state.pt", map_location=device, weights_only=False)
        if cfg.lora_rank:
            load_lora_state_dict(unet, state["unet"])
        else:
            unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        memory.load_state_dict(state["memory"])
        diff, start = state["difficulty"], state["round"]
        diff_start = state.get("difficulty_start")  # absent in checkpoints of older versions: the current d
        if guard is not None and "guard" in state:
            guard.load_state_dict(state["guard"])
        # A resume is exact only with the same settings: say which ones changed (rounds, wall time, the
        # device and how often to checkpoint may change freely).
        saved = state.get("config", {})
        changed = sorted(k for k, v in asdict(cfg).items() if k in saved and saved[k] != v
                         and k not in ("rounds", "max_minutes", "stop_file", "device", "output", "ckpt_every",
                                       "snapshot_every"))
        if changed and main:
            warnings.warn(f"resuming {out} with settings that differ from its checkpoint: "
                          + ", ".join(f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
                          + " (the resumed run is not an exact continuation)", stacklevel=2)
        g.set_state(state["generator"])
        # Rounds after the checkpoint were lost with the crash and will be redone: drop their log lines.
        if main:
            for name in ("metrics.jsonl", "difficulty.jsonl"):
                _truncate_log(out / name, start)
    procs.barrier()
    val = None
    if cfg.val_every and main:
        val = validation_set(cfg.task if scale > 1 else "blind", crops=8)
    if main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        metrics_log = open(out / "metrics.jsonl", "a")
        diff_log = open(out / "difficulty.jsonl", "a")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    probe = probe_set(cfg, scale, pool) if cfg.probe_every and main else None
    probe_conds = None
    if probe is not None and policy.fixed_condition:
        probe_conds = policy.conditioning(probe[0]).cpu()
    if start == 0 and main and (val is not None or probe is not None):
        unet.eval()
        rec0: dict[str, object] = {"round": 0}
        with autocast:
            if val is not None:
                rec0.update(_validate(policy, val, reward, cfg, device))
            if probe is not None:
                rec0.update(_probe(policy, probe, probe_conds, reward, cfg, device))
        metrics_log.write(json.dumps(rec0) + "\n")
        if guard is not None:
            guard.start(rec0)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.rounds, initial=start, desc=f"rl ({cfg.method})", unit="round", dynamic_ncols=True,
               disable=not main)
    t_start = time.time()
    G = cfg.group_size  # (the config's values were checked when it was built: RLConfig.__post_init__)
    rows = procs.rows(cfg.batch_size * G)  # this process's rollouts: batch_size inputs x G each
    noise = Noise(g, procs.rank, procs.world)  # this process's rows of the global batch's noise
    if cfg.stochastic_last:
        # End the schedule at abar_0 < 1 (DDPO's set_alpha_to_one=False): the last step gets a small
        # sigma, so it has a log-probability and RL trains the step that makes the final texture.
        policy.scheduler.final_alpha_cumprod = policy.scheduler.alphas_cumprod[0]
    prev_rl_grad: torch.Tensor | None = None  # last diagnosed round's RL gradient (agreement between rounds)
    # The rollout keeps its graphs for the first PPO epoch (not with gradient checkpointing, which acts in
    # training mode only, so the rollout's eval-mode graph would hold every activation).
    keep_graph = cfg.keep_rollout_graph and cfg.epochs > 0 and not cfg.gradient_checkpointing
    # A cancel (``should_stop``) is also checked inside a round, between its phases and PPO transitions, so a
    # job stops within seconds rather than at the end of a long round (one process: with several, all stop
    # together at the round's end). A round cut short is not logged, checkpointed or counted.
    def stop_now() -> None:
        if procs.world == 1 and "should_stop" in callbacks and callbacks["should_stop"]():
            raise _StopInRound

    done = start
    try:
        for rnd in range(start, cfg.rounds):
            t0 = time.time()
            unet.eval()
            # 1. Difficulty of every pool sample under the current policy, and the batch from the hardest part.
            if diff is None or rnd % cfg.difficulty_every == 0:
                with autocast:
                    diff = _pool_difficulty(policy, pool, cfg, device, procs, conds)
            t_diff = time.time() - t0
            stop_now()
            if diff_start is None:
                diff_start = diff.clone()
            # The weights of the whole pool (the curriculum): w near 1 for the hardest, near 0 for the easiest,
            # relative to the current pool or (w_anchor "start") to where the pool started, so that w falls
            # as the policy gets better at the pool.
            finite = diff[has_gt]
            ref = diff_start[has_gt] if cfg.w_anchor == "start" else finite
            if cfg.adaptive_weight:
                w_pool = relative_weights(diff.clamp(max=1e9), ref if ref.numel() else None,
                                          cfg.q_lo, cfg.q_hi, has_gt)
            else:
                w_pool = torch.full((len(pool),), float(cfg.uniform_weight))
            idx = _choose(diff, eligible, w_pool, cfg, g)
            ids = [pool[i].id for i in idx.tolist()]
            # G rollouts of each input, consecutive (the advantage's groups); this process keeps its rows.
            lq = torch.stack([pool[i].lq for i in idx.tolist()]).repeat_interleave(G, 0)[rows].to(device)
            gt_mask = has_gt[idx].repeat_interleave(G).to(device)
            gt = torch.stack([pool[i].gt if pool[i].gt is not None else pool[i].lq for i in idx.tolist()])
            gt_in = gt
            gt = gt.repeat_interleave(G, 0)[rows].to(device)
            cond = torch.stack([conds[i] for i in idx.tolist()]) if conds is not None else None
            cond_rows = cond.repeat_interleave(G, 0)[rows].to(device) if cond is not None else None
            w = w_pool[idx].repeat_interleave(G).to(device)
            rec: dict[str, object] = {"round": rnd + 1, "w_mean": float(w.mean()),
                                      "d_mean": float(finite.mean()) if finite.numel() else None,
                                      "pool_w_mean": float(w_pool.mean()),
                                      "pool_w0_share": float((w_pool <= 0).float().mean()),
                                      "pool_w1_share": float((w_pool >= 1).float().mean())}
            if main:
                diff_log.write(json.dumps({"round": rnd + 1, "ids": [s.id for s in pool],
                                           "difficulty": [None if math.isinf(v) else v for v in diff.tolist()],
                                           "batch": ids, "w": w_pool[idx].tolist()}) + "\n")

            # 2. Rollouts with the policy frozen as theta_old, and the reward of each transition's consequence.
            rl_active = reward is not None and float(w.max()) > 0
            rollout_rl = rl_active and cfg.rl_estimator == "ppo"
            backprop_rl = rl_active and cfg.rl_estimator == "backprop"

            def reward_ref(size: tuple[int, int]) -> torch.Tensor | None:
                """What the full-reference reward terms compare this process's rows with (cropped to ``size``)."""
                if not reward.full_reference:
                    return None
                if not anchored:
                    return gt
                s1 = stage1_images(policy, cond_rows)[..., : size[0], : size[1]]
                return s1 if cfg.reward_reference == "stage1" else torch.where(gt_mask[rows].view(-1, 1, 1, 1), gt, s1)
            t_roll = time.time()
            if rollout_rl:
                with autocast:
                    # Decode only the predictions that will be scored (all steps unless reward_last_k).
                    first = 0 if cfg.reward_last_k <= 0 else max(0, cfg.num_steps - cfg.reward_last_k)
                    traj = policy.rollout(lq, cfg.num_steps, cfg.eta, noise, decode_from=first, cond=cond_rows,
                                          keep_graph=keep_graph)
                K = len(traj.timesteps)
                t_reward = time.time()
                ref = reward_ref(tuple(traj.final.shape[-2:]))
                final_r = reward(traj.final, ref)
                scored = range(K) if cfg.reward_last_k <= 0 else range(max(0, K - cfg.reward_last_k), K)
                step_r = {k: (reward(traj.pred_image[traj.step_index[k] + 1], ref) if k in scored and
                              traj.step_index[k] + 1 < len(traj.pred_image) - 1 else final_r) for k in range(K)}
                # 3. Advantages against each input's own reward history at that step (all processes'
                #    rewards, so every process keeps the same memory).
                final_r = procs.gather(final_r)
                step_r = {k: procs.gather(v) for k, v in step_r.items()}
                if cfg.advantage == "group":
                    adv = {k: group_advantages(step_r[k], G, cfg.adv_clip)[rows] for k in range(K)}
                else:
                    adv = {k: memory.advantages([f"{i}@{k}" for i in ids for _ in range(G)], step_r[k],
                                                cfg.adv_clip)[rows] for k in range(K)}
                rec["reward"] = float(final_r.mean())
                rec["reward_steps"] = [float(step_r[k].mean()) for k in range(K)]
                # How much the rollouts of one input differ: the signal group advantages are made of.
                rec["group_reward_std"] = float(final_r.reshape(-1, G).std(dim=1, unbiased=False).mean()) if G > 1 else 0.0
                t_ref = time.time()
                with autocast:  # the reference's means do not change during the update: once per round
                    ref_means = reference_means(policy, traj, cfg.eta, ref_unet if cfg.beta_kl > 0 else None,
                                                cfg.lora_rank > 0 and cfg.beta_kl > 0)
                rec["reward_s"] = round(t_ref - t_reward, 3)  # the rewards of every scored prediction
                rec["reference_s"] = round(time.time() - t_ref, 3)  # the KL reference's forward passes
            stop_now()
            sft_w = cfg.lambda_sft * (1 - w) * gt_mask.float()
            sft_active = float(sft_w.max()) > 0
            w, sft_w = w[rows], sft_w[rows]
            if cfg.sft_per_input:  # the SFT term on this process's inputs, once each (not on each rollout)
                in_rows = procs.rows(cfg.batch_size)
                sft_lq = torch.stack([pool[i].lq for i in idx.tolist()])[in_rows].to(device)
                sft_gt, sft_cond = gt_in[in_rows].to(device), cond[in_rows].to(device) if cond is not None else None
                sft_w = (cfg.lambda_sft * (1 - w_pool[idx]) * has_gt[idx].float())[in_rows].to(device)
            else:
                sft_lq, sft_gt, sft_cond = lq, gt, cond_rows
            if sft_cond is not None and sft_cond.shape[-2:] != sft_gt.shape[-2:]:
                sft_cond = None  # padded by the rollout: sft_loss conditions the unpadded input itself

            t_upd = time.time()
            # 4. Updates: each epoch is one optimiser step over all transitions (so from the second
            #    epoch on the ratio leaves 1 and the PPO clip matters) plus the SFT term.
            unet.train()
            logs: dict[str, list[float]] = {"kl": [], "kl_last": [], "ratio": [], "clip_frac": [], "approx_kl": [],
                                            "loss_rl": [], "loss_sft": [], "grad_norm": []}
            # Diagnostics (first epoch): each term's gradient on its own, so one can see which term sets the
            # direction of the update (under Adam a consistent SFT gradient wins over a noisy RL one).
            diag = bool(cfg.diag_every) and (rnd + 1) % cfg.diag_every == 0
            term_grads: dict[str, list[torch.Tensor]] = {}
            clip_epochs: list[float] = []
            for epoch in range(cfg.epochs if (rl_active or sft_active) else 0):
                stop_now()
                opt.zero_grad(set_to_none=True)
                split = diag and epoch == 0
                clip_e: list[float] = []
                if backprop_rl:
                    # The reward's own gradient through the last backprop_steps steps of the sampler (DRaFT-K).
                    with autocast:
                        img = sample_with_grad(policy, lq, cfg.num_steps, cfg.eta, noise, cond_rows, cfg.backprop_steps)
                        r_bp = reward.with_grad(img, reward_ref(tuple(img.shape[-2:]))).to(w.device)
                    _backward({"rl": -(w * r_bp).mean() * cfg.backprop_scale}, params, term_grads if split else None)
                    logs["loss_rl"].append(float(-(w * r_bp).detach().mean()))
                    if epoch == 0:
                        rec["reward"] = float(procs.gather(r_bp.detach()).mean())
                        if G > 1:
                            rec["group_reward_std"] = float(procs.gather(r_bp.detach()).reshape(-1, G).std(
                                dim=1, unbiased=False).mean())
                if rollout_rl:
                    # PPO-clipped policy loss and KL, one transition at a time (memory), averaged over t.
                    for k in range(K):
                        stop_now()
                        with autocast:  # on-policy first epoch: through the rollout's own forward pass
                            loss_k, kl_k, ratio_k, clip_k = policy_losses(
                                policy, traj, k, adv[k], cfg.eta, cfg.clip_range,
                                ref_means[k] if ref_means is not None else None,
                                traj.out[k] if epoch == 0 and traj.out else None)
                        terms = {"rl": (w * loss_k).mean() / K, "kl": cfg.beta_kl * kl_k.mean() / K}
                        _backward(terms, params, term_grads if split else None)
                        logs["kl"].append(float(kl_k.detach().mean()))
                        logs["ratio"].append(float(ratio_k.mean()))
                        clip_e.append(float(clip_k.mean()))
                        logs["approx_kl"].append(float((ratio_k - 1 - torch.log(ratio_k)).mean()))
                        logs["loss_rl"].append(float((w * loss_k).detach().mean()))
                    if cfg.beta_last > 0:
                        with autocast:
                            last = last_step_anchor(policy, traj, ref_unet, cfg.lora_rank > 0, cfg.sigma_last)
                        if last is not None:
                            _backward({"last": cfg.beta_last * last.mean()}, params, term_grads if split else None)
                            logs["kl_last"].append(float(last.detach().mean()))
                if sft_active:
                    # SFT loss where a ground truth exists, weighted by 1 - w_i.
                    with autocast:
                        l_sft = policy.sft_loss(sft_lq, sft_gt, noise, reduce=False, cond=sft_cond)
                    _backward({"sft": (sft_w * l_sft).mean()}, params, term_grads if split else None)
                    logs["loss_sft"].append(float(l_sft.detach().mean()))
                if clip_e:
                    clip_epochs.append(sum(clip_e) / len(clip_e))
                    logs["clip_frac"] += clip_e
                procs.average_gradients(params)
                logs["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
                opt.step()
            if clip_epochs:
                rec["clip_frac_epochs"] = clip_epochs
            for name, gs in term_grads.items():
                flat = torch.cat([x.flatten() for x in gs]).float()
                rec[f"grad_norm_{name}"] = float(flat.norm())
                if name == "rl":
                    cur = flat.detach().cpu()  # kept on the CPU between rounds (GPU memory, one device)
                    if prev_rl_grad is not None and float(cur.norm()) > 0 and float(prev_rl_grad.norm()) > 0:
                        rec["rl_grad_cos_prev"] = float(torch.nn.functional.cosine_similarity(cur, prev_rl_grad, dim=0))
                    prev_rl_grad = cur
            stop_now()
            t_probe = time.time()
            guard_stop = False
            if probe is not None and (rnd + 1) % cfg.probe_every == 0:
                unet.eval()
                with autocast:
                    rec.update(_probe(policy, probe, probe_conds, reward, cfg, device))
                if guard is not None:
                    guard_stop = guard.check(rnd + 1, rec, weights())
            t_probe = time.time() - t_probe
            means = {k: sum(v) / len(v) for k, v in logs.items() if v}
            if means:
                avg = procs.mean(torch.tensor(list(means.values()), dtype=torch.float64, device=device)).tolist()
                rec.update(dict(zip(means, avg)))
            rec["round_s"] = round(time.time() - t0, 3)
            rec["difficulty_s"] = round(t_diff, 3)
            rec["rollout_s"] = round(t_upd - t_roll, 3)  # rollouts, decodes, rewards and the KL reference's passes
            rec["update_s"] = round(time.time() - t_upd - t_probe, 3)  # the PPO epochs (policy, SFT) and steps
            rec["probe_s"] = round(t_probe, 3)

            # 5. Validation, logging, checkpoints, stop flag.
            done = rnd + 1
            if val is not None and done % cfg.val_every == 0:
                unet.eval()
                with autocast:
                    rec.update(_validate(policy, val, reward, cfg, device))
            stop = False
            if main:
                metrics_log.write(json.dumps(rec) + "\n")
                metrics_log.flush()
                diff_log.flush()
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("reward", "kl", "val_psnr")
                                 and isinstance(v, float)})
                if "on_sample" in callbacks:
                    # The same pool input every round, restored as the app restores (eta = 0, fixed noise), so a
                    # person can watch what training does to one picture.
                    unet.eval()
                    with autocast:
                        callbacks["on_sample"](done, pool[0].lq, _restore(policy, pool[0].lq[None], cfg.num_steps,
                                                                            cond=conds[0][None] if conds else None)[0])
                if "on_round" in callbacks:
                    callbacks["on_round"](rec)
                stop = bool(callbacks["should_stop"]()) if "should_stop" in callbacks else False
                stop = stop or (cfg.max_minutes is not None and time.time() - t_start > 60 * cfg.max_minutes)
                stop = stop or (cfg.stop_file is not None and Path(cfg.stop_file).exists()) or guard_stop
            stop = procs.any(stop)  # the main process decides; all stop together
            if main and cfg.snapshot_every and (done % cfg.snapshot_every == 0 or done == cfg.rounds or stop):
                unet.eval()  # kept models (checkpoints are pruned), one point each on the fidelity-reward plot
                atomic_dir(out / "snapshots" / f"round-{done:04d}", policy.export)
            if done % cfg.ckpt_every == 0 or done == cfg.rounds or stop:
                # Everything an exact resume needs, beside the exported model (written atomically).
                if main:
                    unet.eval()
                    state = {"unet": lora_state_dict(unet) if cfg.lora_rank else unet.state_dict(),
                             "opt": opt.state_dict(), "memory": memory.state_dict(), "difficulty": diff,
                             "difficulty_start": diff_start, "guard": guard.state_dict() if guard else None,
                             "round": done, "generator": g.get_state(), "config": asdict(cfg)}
                    path = save_checkpoint(out, done, policy.export, state)
                    if "on_checkpoint" in callbacks:
                        callbacks["on_checkpoint"](path, rec)
                procs.barrier()
            if stop:
                break
    except _StopInRound:
        if main:
            (out / "stopped.json").write_text(json.dumps({"stopped_in_round": done + 1, "last_complete_round": done}))
    bar.close()
    final = out / "model"
    if main:
        metrics_log.close()
        diff_log.close()
        unet.eval()
        if guard is not None and guard.base:
            if guard.best_round != done:  # later rounds failed the probe: the last one that passed (also on_finish's)
                (load_lora_state_dict(unet, guard.best) if cfg.lora_rank else unet.load_state_dict(guard.best))
            why = ("every probed round passed" if guard.best_round == done else
                   f"later probes were worse than round 0 (PSNR down more than {cfg.guard_psnr} dB, more flat-area "
                   "texture or a lower reward)" if guard.best_round else
                   "no probed round passed: the exported model is the base model, unchanged")
            (out / "guard.json").write_text(json.dumps({"exported_round": guard.best_round, "last_round": done,
                                                        "base": guard.base, "why": why}, indent=1))
        atomic_dir(final, policy.export)  # the restorer decides the format: full, merged LoRA or adapter folder
    procs.barrier()
    if "on_finish" in callbacks:
        callbacks["on_finish"](policy)
    return final
