"""The RL trainer's configuration: ``RLConfig``, the method's presets and its ablations, the run sizes
the app offers, and the cost model of a round behind the launch estimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

__all__ = ["CPU_SECONDS_PER_UNIT", "PRESETS", "RLConfig", "SIZES", "darl", "darl_anchored", "get_rl_preset",
           "rl_gt_reward", "rl_uniform", "round_cost", "sft", "tiny_test"]


@dataclass
class RLConfig:
    # --- Where and which model
    output: str = "runs/rl"  # folder for checkpoints, metrics.jsonl, difficulty.jsonl and the final model
    base_model: str | None = None  # SFT model (folder or Hub id; None: the shipped one); also the KL reference
    method: str = "darl"  # label of the ablation this config is (darl, sft, rl_uniform, rl_gt_reward)
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA of this rank (reference = adapters off)
    lora_targets: str = "all"  # LoRA on "all" attention and ResNet layers, or on "attn" projections only
    device: str = "auto"  # cpu, cuda, or auto
    bf16: bool = False  # bf16 autocast for model forwards (CUDA; fp32 keeps the ratio exact)
    seed: int = 0  # seeds the pool, the batches, rollouts and SFT noise

    # --- The reward
    reward: str = "niqe"  # reward spec, see rewards.create_reward (e.g. "niqe", "niqe + 0.02*piqe", "psnr")
    reward_normalize: bool = False  # map each reward term to ~[0, 1] before weighting
    reward_reference: Literal["gt", "stage1", "auto"] = "gt"  # what full-reference reward terms (psnr, ...) compare
                                # with: the ground truth (samples without one are not rolled out), the model's own
                                # stage-1 restoration for every sample (a fidelity anchor without ground truth), or
                                # "auto": the ground truth where there is one, else stage 1's restoration
    reward_last_k: int = 0  # score the consequences of the last k transitions only (0: all)

    # --- The objective: L = w L_RL + lambda_sft (1 - w) L_SFT + beta KL
    rl_estimator: Literal["ppo", "backprop"] = "ppo"  # the RL term's gradient: PPO on the rollouts' log-probabilities,
                                # or the reward's own gradient backpropagated through the sampler (DRaFT-style;
                                # differentiable rewards only, e.g. darl_iqa + 20*psnr)
    backprop_steps: int = 1  # with "backprop": the gradient flows through the last this many sampler steps (DRaFT-K)
    backprop_scale: float = 0.01  # with "backprop": the reward's weight in the loss, against the SFT and KL terms
    lambda_sft: float = 1.0  # weight of the SFT loss (times 1 - w_i)
    beta_kl: float = 0.05  # weight of the KL to the reference policy (0: none)
    beta_last: float = 0.0  # weight of the anchor of the deterministic last step to the reference: its mean kept
                            # near the reference's as a KL with sigma_last in place of its zero sigma (0: none)
    sigma_last: float = 0.05  # the variance floor of that anchor: ||mu - mu_ref||^2 / (2 sigma_last^2)
    clip_range: float = 1e-4  # PPO clip range of the ratio (DDPO's value)
    adv_clip: float = 5.0  # advantages are clipped to [-adv_clip, adv_clip]
    advantage: Literal["group", "memory"] = "group"  # "group": normalised within each input's G rollouts; "memory": per-input
                              # reward memory across rounds (DDPO's tracker, batch statistics while short)
    memory_size: int = 16  # rewards kept per (sample, step) (advantage "memory")
    memory_min: int = 4  # below this many, advantages use batch statistics (advantage "memory")

    # --- Rollouts
    num_steps: int = 4  # DDIM steps of a rollout (the last one is deterministic)
    eta: float = 1.0  # DDIM eta of rollouts (> 0: stochastic policy)
    group_size: int = 4  # rollouts of each input per round, with different noise (G; GRPO / Flow-GRPO)
    stochastic_last: bool = False  # rollouts end at abar_0 < 1, so the last step is stochastic and trained too

    # --- The curriculum: difficulty d and weights w
    adaptive_weight: bool = True  # w_i from relative difficulty; False: w_i = uniform_weight
    uniform_weight: float = 1.0  # w for every sample when adaptive_weight is False (1: pure RL, 0: pure SFT)
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

    # --- The pool
    pool_size: int = 64  # size of a synthetic pool
    task: str = "blind"  # degradation preset of a synthetic pool
    hq_folder: str | None = None  # HQ images for a synthetic pool (default: the built-in training photos)
    pairs_folder: str | None = None  # pool from a folder with lq/ and gt/ subfolders (same file names)
    samples_file: str | None = None  # pool from a JSON list of {"id", "lq", "gt"?} (the app's flagged samples)
    extra_hardest_k: int = 0  # with samples_file/pairs_folder: also the k hardest of a synthetic pool (seeded)
    patch: int = 192  # side of the training crops (NIQE is reliable from 192 px)

    # --- Optimisation
    rounds: int = 60  # RL rounds (rollout + update)
    batch_size: int = 8  # inputs per round (m)
    epochs: int = 2  # optimiser steps per round over the round's rollouts (PPO inner epochs)
    lr: float = 1e-5  # AdamW learning rate
    grad_clip: float = 1.0  # global gradient-norm clip
    gradient_checkpointing: bool = False  # recompute UNet activations in the backward pass (less memory)
    keep_rollout_graph: bool = True  # the first (on-policy) PPO epoch backpropagates through the rollout's own
                                     # forward passes instead of repeating them (memory grows with the steps)
    sft_per_input: bool = True  # the SFT term once per input of the batch, not once per each of its G rollouts
                                # (the same objective, estimated from m noise draws instead of m x G)

    # --- Probe, guard and diagnostics
    diag_every: int = 1  # every N rounds log the gradient norm of the RL, KL and SFT terms separately and the
                         # cosine of this round's RL gradient with the last one (one more backward; 0: never)
    probe_every: int = 0  # every N rounds the reward, PSNR and flat-area texture of fixed held-out crops restored as
                          # the app restores them (eta 0, fixed noise): what a held-out check sees (0: never)
    probe_crops: int = 16  # crops of the built-in held-out photos in the probe (degraded by evalset's Pillow recipe)
    guard_psnr: float = 0.0  # > 0 (with probe_every): export the last probed round whose probe PSNR is within this
                             # many dB of round 0's, flat_hf not above and reward not below round 0's (0: off)
    guard_patience: int = 2  # with guard_psnr: stop after this many probes in a row fail the guard
    val_every: int = 10  # validate every N rounds (0: never)

    # --- Checkpoints and stopping
    ckpt_every: int = 10  # checkpoint every N rounds
    snapshot_every: int = 0  # also export the model every N rounds to output/snapshots/round-NNNN, kept (the
                             # Pareto plot of bench/pareto.py, one point per snapshot; 0: never)
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
        from ..rewards.registry import DIFFERENTIABLE, parse_spec  # (regular expressions; no metric loads)

        names = [name for _, name in parse_spec(self.reward)]  # a reward spec that does not parse: refused here
        if self.rl_estimator == "backprop" and (bad := [n for n in names if n not in DIFFERENTIABLE]):
            raise ValueError(f"rl_estimator 'backprop' needs a differentiable reward; {bad} are not "
                             f"(differentiable: {sorted(DIFFERENTIABLE)})")

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
