"""Difficulty-adaptive RL fine-tuning with an IQA reward (docs/method.md), and its ablations.

Symbols (as in docs/method.md):

    m        inputs per round (``batch_size``)
    G        rollouts of each input, with different noise (``group_size``)
    K        trained (stochastic) transitions x_t -> x_{t-1} of a rollout
    r, A     a transition's reward and its advantage (clipped to ``adv_clip``)
    rho, eps the PPO ratio p_theta / p_old and its clip range (``clip_range``)
    d_i      sample i's difficulty, 1 - SSIM of its restoration against its ground truth
    w_i      its weight in [0, 1]: the RL share of its loss, from d_i's rank in the pool (``q_lo``, ``q_hi``)
    lambda   the SFT term's weight, times 1 - w_i (``lambda_sft``)
    beta     the KL term's weight (``beta_kl``); beta_last the last step's anchor (``beta_last``)

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

import copy
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.clean import validation_set
from ..data.pool import PoolSample, build_pool, synthetic_pool
from ..models.loading import load_restorer
from ..models.lora import add_lora, load_lora_state_dict, lora_state_dict
from ..models.restorer import Noise, Trajectory
from ..rewards.difficulty import relative_weights
from ..rewards.registry import create_reward
from .allocator import keep_freed_memory
from .checkpoint import atomic_dir, latest_checkpoint, save_checkpoint
from .distributed import Processes
from .rl_config import CPU_SECONDS_PER_UNIT, PRESETS, SIZES, RLConfig, get_rl_preset, round_cost, tiny_test
from .rl_objective import (RewardMemory, backward_terms, group_advantages, last_step_anchor, policy_losses, ppo_loss,
                           reference_means, sample_with_grad)
from .rl_probe import (ProbeGuard, pool_conditioning, pool_difficulty, probe_set, restore_as_app, run_probe,
                       stage1_images, validate)

__all__ = ["CPU_SECONDS_PER_UNIT", "PRESETS", "ProbeGuard", "RLConfig", "RewardMemory", "SIZES",
           "get_rl_preset", "group_advantages", "last_step_anchor", "policy_losses", "ppo_loss", "probe_set",
           "reference_means", "round_cost", "sample_with_grad", "stage1_images", "tiny_test", "train_rl"]

Callbacks = dict[str, Callable[..., object]]
# What a resume may change without breaking the exact continuation.
_FREE_ON_RESUME = ("rounds", "max_minutes", "stop_file", "device", "output", "ckpt_every", "snapshot_every")


def train_rl(cfg: RLConfig, pool: list[PoolSample] | None = None, resume: bool = False,
             callbacks: Callbacks | None = None) -> Path:
    """Run the rounds of ``cfg``; returns the folder of the exported final model.

    The config's own checks ran when it was built (``RLConfig.__post_init__``: every value, the fields
    against each other, the reward spec); those that need the processes, the model or the pool run in
    phases 1 and 2, before any training."""
    run = _Run(cfg, callbacks or {})  # 1. processes, the policy and its frozen reference, the optimiser
    run.prepare_pool(pool)  # 2. the pool, its conditioning (once), the reward, which samples can train
    run.resume(resume)  # 3. an exact resume: weights, optimiser, memory, difficulty, generator
    run.open_logs()  # 4. validation set, probe, round 0's record, logs
    try:
        for rnd in range(run.start, cfg.rounds):
            batch = run.draw_batch(rnd)  # 5. pool difficulty d, weights w, the batch of m inputs
            rollouts = run.rollouts(batch)  # 6. G rollouts per input, rewards, advantages, the reference
            run.update(batch, rollouts)  # 7. epochs of RL (PPO or backprop), KL and SFT terms
            if run.after_round(batch):  # 8. probe and guard, validation, logs, checkpoint; stop?
                break
    except _StopInRound:  # a cancel inside a round: the round is dropped, not logged or checkpointed
        run.note_stop_in_round()
    return run.finish()  # 9. the guard's choice of round, the exported model, on_finish


class _StopInRound(Exception):
    """Raised inside a round when ``should_stop`` says so (caught by ``train_rl``)."""


@dataclass
class _Batch:
    """One round's batch: m inputs, each repeated G times (this process keeps its ``rows``)."""

    rnd: int  # the round, from 0
    t0: float  # when the round started
    idx: torch.Tensor  # pool indices of the m inputs
    ids: list[str]  # their sample ids
    w_pool: torch.Tensor  # w of every pool sample this round
    w: torch.Tensor  # w of each of the m x G rollouts (all processes')
    gt_mask: torch.Tensor  # which of the m x G have a ground truth
    lq: torch.Tensor  # this process's rollout inputs
    gt: torch.Tensor  # their ground truths (the input where there is none)
    gt_in: torch.Tensor  # the m inputs' ground truths (for the SFT term once per input)
    cond: torch.Tensor | None  # the m inputs' conditioning (stage 1), computed once per run
    cond_rows: torch.Tensor | None  # this process's rows of it
    rec: dict[str, Any]  # the round's record for metrics.jsonl
    t_diff: float  # seconds of the difficulty pass
    t_roll: float = 0.0  # when the rollouts started (set by ``rollouts``)
    t_upd: float = 0.0  # when the update started (set by ``update``)


@dataclass
class _Rollouts:
    """Phase 6's result: the trajectories, their advantages per transition and the reference's means."""

    rl_active: bool  # the RL term has weight this round
    rollout_rl: bool  # ... estimated by PPO on rollouts
    backprop_rl: bool  # ... estimated by backpropagating the reward
    traj: Trajectory | None = None  # (PPO) the rollouts' transitions
    adv: dict[int, torch.Tensor] = field(default_factory=dict)  # (PPO) advantage per transition k
    ref_means: list[torch.Tensor] | None = None  # (PPO, KL) the reference policy's mean per transition


class _Run:
    """The state of one RL run and its phases (``train_rl`` calls them in order)."""

    # ------------------------------------------------------------------------------------------ 1. setup
    def __init__(self, cfg: RLConfig, callbacks: Callbacks) -> None:
        self.cfg, self.callbacks = cfg, callbacks
        self.out = Path(cfg.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.procs = procs = Processes(cfg.device)
        self.device, self.main = procs.device, procs.main
        if self.device.type == "cpu":
            keep_freed_memory()  # activations from the heap, not fresh pages every step (allocator.py)
        if cfg.batch_size * cfg.group_size % procs.world:
            raise ValueError(f"batch_size x group_size ({cfg.batch_size} x {cfg.group_size} rollouts) must be a "
                             f"multiple of the {procs.world} processes")
        if cfg.sft_per_input and cfg.batch_size % procs.world:
            raise ValueError(f"sft_per_input needs batch_size ({cfg.batch_size}) to be a multiple of the "
                             f"{procs.world} processes (or sft_per_input false)")
        torch.manual_seed(cfg.seed)
        self.g = torch.Generator().manual_seed(cfg.seed)  # the same on every process: the same batches
        # Policy, and the frozen reference it is kept close to (the SFT model; with LoRA its adapters off).
        self.policy = load_restorer(cfg.base_model, self.device)
        self.unet = self.policy.unet
        self.scale = self.policy.output_scale
        if cfg.lora_rank:
            add_lora(self.unet, cfg.lora_rank, targets=cfg.lora_targets)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.ref_unet = None
        if (cfg.beta_kl > 0 or cfg.beta_last > 0) and not cfg.lora_rank:
            self.ref_unet = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def weights(self) -> dict[str, torch.Tensor]:
        """What training changes: the LoRA adapters, or the whole denoiser."""
        return lora_state_dict(self.unet) if self.cfg.lora_rank else self.unet.state_dict()

    # ------------------------------------------------------------------------------------------ 2. the pool
    def prepare_pool(self, pool: list[PoolSample] | None) -> None:
        cfg, policy = self.cfg, self.policy
        pool = pool if pool is not None else build_pool(cfg, self.scale)
        if cfg.extra_hardest_k > 0 and (cfg.samples_file or cfg.pairs_folder):
            # Add the k hardest synthetic samples under the base model: same seed, same samples.
            extra = synthetic_pool(cfg)
            d_extra = pool_difficulty(policy, extra, cfg, self.device, self.procs, pool_conditioning(policy, extra))
            pool = pool + [extra[i] for i in torch.argsort(d_extra, descending=True)[: cfg.extra_hardest_k].tolist()]
        if not pool:
            raise ValueError("the training pool is empty")
        for s in pool:
            if s.gt is not None and s.gt.shape[-1] != s.lq.shape[-1] * self.scale:
                raise ValueError(f"pool sample {s.id}: GT {tuple(s.gt.shape[1:])} is not {self.scale}x its LQ "
                                 f"{tuple(s.lq.shape[1:])}; this model's output scale is {self.scale} "
                                 f"(for x4 models use a x4 task such as --task sr4)")
        self.pool = pool
        self.conds = pool_conditioning(policy, pool)  # each input's conditioning (stage 1), once: RL never trains it
        needs_rl = cfg.adaptive_weight or cfg.uniform_weight > 0
        self.reward = reward = create_reward(cfg.reward, self.device, cfg.reward_normalize) if needs_rl else None
        self.has_gt = torch.tensor([s.gt is not None for s in pool])
        self.anchored = reward is not None and reward.full_reference and cfg.reward_reference != "gt"
        if self.anchored and (not policy.has_stage1 or self.conds is None):
            raise ValueError(f"reward_reference {cfg.reward_reference!r} needs a two-stage model; "
                             f"{cfg.base_model or 'the default model'} has no stage 1 (use reward_reference 'gt' "
                             "with ground truths)")
        needs_gt = (reward is not None and reward.full_reference and not self.anchored) or not needs_rl
        self.eligible = self.has_gt if needs_gt else torch.ones_like(self.has_gt)
        self.memory = RewardMemory(cfg.memory_size, cfg.memory_min)
        self.diff: torch.Tensor | None = None
        self.diff_start: torch.Tensor | None = None  # the pool's difficulty at the first round (w_anchor "start")
        self.guard = (ProbeGuard(cfg.guard_psnr, cfg.guard_patience, self.weights())
                      if cfg.guard_psnr > 0 and cfg.probe_every else None)

    # ------------------------------------------------------------------------------------------ 3. resume
    def resume(self, resume: bool) -> None:
        cfg, out = self.cfg, self.out
        self.start = 0
        ckpt = latest_checkpoint(out) if resume else None
        if ckpt is not None:
            # Exact resume: weights, optimiser, reward memory, pool difficulty and the generator.
            state = torch.load(ckpt / "train_state.pt", map_location=self.device, weights_only=False)
            if cfg.lora_rank:
                load_lora_state_dict(self.unet, state["unet"])
            else:
                self.unet.load_state_dict(state["unet"])
            self.opt.load_state_dict(state["opt"])
            self.memory.load_state_dict(state["memory"])
            self.diff, self.start = state["difficulty"], state["round"]
            self.diff_start = state.get("difficulty_start")  # absent in checkpoints of older versions: the current d
            if self.guard is not None and "guard" in state:
                self.guard.load_state_dict(state["guard"])
            # A resume is exact only with the same settings: say which ones changed.
            saved = state.get("config", {})
            changed = sorted(k for k, v in asdict(cfg).items() if k in saved and saved[k] != v
                             and k not in _FREE_ON_RESUME)
            if changed and self.main:
                warnings.warn(f"resuming {out} with settings that differ from its checkpoint: "
                              + ", ".join(f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
                              + " (the resumed run is not an exact continuation)", stacklevel=3)
            self.g.set_state(state["generator"])
            # Rounds after the checkpoint were lost with the crash and will be redone: drop their log lines.
            if self.main:
                for name in ("metrics.jsonl", "difficulty.jsonl"):
                    _truncate_log(out / name, self.start)
        self.procs.barrier()

    # ------------------------------------------------------------------------------------------ 4. logs
    def open_logs(self) -> None:
        cfg, out, main, policy = self.cfg, self.out, self.main, self.policy
        self.val = validation_set(cfg.task if self.scale > 1 else "blind", crops=8) if cfg.val_every and main else None
        if main:
            (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            self.metrics_log = open(out / "metrics.jsonl", "a")
            self.diff_log = open(out / "difficulty.jsonl", "a")
        self.probe = probe_set(cfg, self.scale, self.pool) if cfg.probe_every and main else None
        self.probe_conds = None
        if self.probe is not None and policy.fixed_condition:
            self.probe_conds = policy.conditioning(self.probe[0]).cpu()
        if self.start == 0 and main and (self.val is not None or self.probe is not None):
            self.unet.eval()
            rec0: dict[str, object] = {"round": 0}
            with self.autocast:
                if self.val is not None:
                    rec0.update(validate(policy, self.val, self.reward, cfg, self.device))
                if self.probe is not None:
                    rec0.update(run_probe(policy, self.probe, self.probe_conds, self.reward, cfg, self.device))
            self.metrics_log.write(json.dumps(rec0) + "\n")
            if self.guard is not None:
                self.guard.start(rec0)
        from tqdm.auto import tqdm

        self.bar = tqdm(total=cfg.rounds, initial=self.start, desc=f"rl ({cfg.method})", unit="round",
                        dynamic_ncols=True, disable=not main)
        self.t_start = time.time()
        self.rows = self.procs.rows(cfg.batch_size * cfg.group_size)  # this process's rollouts: m inputs x G
        self.noise = Noise(self.g, self.procs.rank, self.procs.world)  # this process's rows of the batch's noise
        if cfg.stochastic_last:
            # End the schedule at abar_0 < 1 (DDPO's set_alpha_to_one=False): the last step gets a small
            # sigma, so it has a log-probability and RL trains the step that makes the final texture.
            policy.scheduler.final_alpha_cumprod = policy.scheduler.alphas_cumprod[0]
        self.prev_rl_grad: torch.Tensor | None = None  # last diagnosed round's RL gradient (agreement)
        # The rollout keeps its graphs for the first PPO epoch (not with gradient checkpointing, which acts in
        # training mode only, so the rollout's eval-mode graph would hold every activation).
        self.keep_graph = cfg.keep_rollout_graph and cfg.epochs > 0 and not cfg.gradient_checkpointing
        self.done = self.start

    def stop_now(self) -> None:
        """A cancel (``should_stop``) is also checked inside a round, between its phases and PPO transitions,
        so a job stops within seconds rather than at the end of a long round (one process: with several, all
        stop together at the round's end)."""
        if self.procs.world == 1 and "should_stop" in self.callbacks and self.callbacks["should_stop"]():
            raise _StopInRound

    # ------------------------------------------------------------------------------------------ 5. the batch
    def draw_batch(self, rnd: int) -> _Batch:
        cfg, pool, device, G = self.cfg, self.pool, self.device, self.cfg.group_size
        t0 = time.time()
        self.unet.eval()
        # Difficulty of every pool sample under the current policy (every difficulty_every rounds).
        if self.diff is None or rnd % cfg.difficulty_every == 0:
            with self.autocast:
                self.diff = pool_difficulty(self.policy, pool, cfg, device, self.procs, self.conds)
        t_diff = time.time() - t0
        self.stop_now()
        diff = self.diff
        if self.diff_start is None:
            self.diff_start = diff.clone()
        # The weights of the whole pool (the curriculum): w near 1 for the hardest, near 0 for the easiest,
        # relative to the current pool or (w_anchor "start") to where the pool started, so that w falls
        # as the policy gets better at the pool.
        finite = diff[self.has_gt]
        ref = self.diff_start[self.has_gt] if cfg.w_anchor == "start" else finite
        if cfg.adaptive_weight:
            w_pool = relative_weights(diff.clamp(max=1e9), ref if ref.numel() else None, cfg.q_lo, cfg.q_hi,
                                      self.has_gt)
        else:
            w_pool = torch.full((len(pool),), float(cfg.uniform_weight))
        idx = _choose(diff, self.eligible, w_pool, cfg, self.g)
        pick = idx.tolist()
        ids = [pool[i].id for i in pick]
        # G rollouts of each input, consecutive (the advantage's groups); this process keeps its rows.
        lq = torch.stack([pool[i].lq for i in pick]).repeat_interleave(G, 0)[self.rows].to(device)
        gt_mask = self.has_gt[idx].repeat_interleave(G).to(device)
        gt_in = torch.stack([pool[i].gt if pool[i].gt is not None else pool[i].lq for i in pick])
        gt = gt_in.repeat_interleave(G, 0)[self.rows].to(device)
        cond = torch.stack([self.conds[i] for i in pick]) if self.conds is not None else None
        cond_rows = cond.repeat_interleave(G, 0)[self.rows].to(device) if cond is not None else None
        w = w_pool[idx].repeat_interleave(G).to(device)
        rec: dict[str, Any] = {"round": rnd + 1, "w_mean": float(w.mean()),
                               "d_mean": float(finite.mean()) if finite.numel() else None,
                               "pool_w_mean": float(w_pool.mean()),
                               "pool_w0_share": float((w_pool <= 0).float().mean()),
                               "pool_w1_share": float((w_pool >= 1).float().mean())}
        if self.main:
            self.diff_log.write(json.dumps({"round": rnd + 1, "ids": [s.id for s in pool],
                                            "difficulty": [None if math.isinf(v) else v for v in diff.tolist()],
                                            "batch": ids, "w": w_pool[idx].tolist()}) + "\n")
        return _Batch(rnd, t0, idx, ids, w_pool, w, gt_mask, lq, gt, gt_in, cond, cond_rows, rec, t_diff)

    def reward_reference(self, b: _Batch, size: tuple[int, int]) -> torch.Tensor | None:
        """What the full-reference reward terms compare this process's rows with (cropped to ``size``): the
        ground truth, or stage 1's restoration (``reward_reference``)."""
        if not self.reward.full_reference:
            return None
        if not self.anchored:
            return b.gt
        s1 = stage1_images(self.policy, b.cond_rows)[..., : size[0], : size[1]]
        return s1 if self.cfg.reward_reference == "stage1" else torch.where(
            b.gt_mask[self.rows].view(-1, 1, 1, 1), b.gt, s1)

    # ------------------------------------------------------------------------------------------ 6. rollouts
    def rollouts(self, b: _Batch) -> _Rollouts:
        """G rollouts of each input with the policy frozen as theta_old, the reward of each transition's
        consequence, and the advantages (PPO; backprop samples inside the update instead)."""
        cfg, reward, procs, G = self.cfg, self.reward, self.procs, self.cfg.group_size
        rl_active = reward is not None and float(b.w.max()) > 0
        b.t_roll = time.time()
        r = _Rollouts(rl_active, rl_active and cfg.rl_estimator == "ppo", rl_active and cfg.rl_estimator == "backprop")
        if r.rollout_rl:
            with self.autocast:
                # Decode only the predictions that will be scored (all steps unless reward_last_k).
                first = 0 if cfg.reward_last_k <= 0 else max(0, cfg.num_steps - cfg.reward_last_k)
                r.traj = traj = self.policy.rollout(b.lq, cfg.num_steps, cfg.eta, self.noise, decode_from=first,
                                                    cond=b.cond_rows, keep_graph=self.keep_graph)
            K = len(traj.timesteps)
            t_reward = time.time()
            ref = self.reward_reference(b, tuple(traj.final.shape[-2:]))
            final_r = reward(traj.final, ref)
            scored = range(K) if cfg.reward_last_k <= 0 else range(max(0, K - cfg.reward_last_k), K)
            step_r = {k: (reward(traj.pred_image[traj.step_index[k] + 1], ref) if k in scored and
                          traj.step_index[k] + 1 < len(traj.pred_image) - 1 else final_r) for k in range(K)}
            # Advantages within each input's group, or against its reward history at that step (all
            # processes' rewards, so every process keeps the same memory).
            final_r = procs.gather(final_r)
            step_r = {k: procs.gather(v) for k, v in step_r.items()}
            if cfg.advantage == "group":
                r.adv = {k: group_advantages(step_r[k], G, cfg.adv_clip)[self.rows] for k in range(K)}
            else:
                r.adv = {k: self.memory.advantages([f"{i}@{k}" for i in b.ids for _ in range(G)], step_r[k],
                                                   cfg.adv_clip)[self.rows] for k in range(K)}
            b.rec["reward"] = float(final_r.mean())
            b.rec["reward_steps"] = [float(step_r[k].mean()) for k in range(K)]
            # How much the rollouts of one input differ: the signal group advantages are made of.
            b.rec["group_reward_std"] = (float(final_r.reshape(-1, G).std(dim=1, unbiased=False).mean()) if G > 1
                                         else 0.0)
            t_ref = time.time()
            with self.autocast:  # the reference's means do not change during the update: once per round
                r.ref_means = reference_means(self.policy, traj, cfg.eta, self.ref_unet if cfg.beta_kl > 0 else None,
                                              cfg.lora_rank > 0 and cfg.beta_kl > 0)
            b.rec["reward_s"] = round(t_ref - t_reward, 3)  # the rewards of every scored prediction
            b.rec["reference_s"] = round(time.time() - t_ref, 3)  # the KL reference's forward passes
        self.stop_now()
        return r

    # ------------------------------------------------------------------------------------------ 7. update
    def update(self, b: _Batch, r: _Rollouts) -> None:
        """``epochs`` optimiser steps, each over all transitions (so from the second epoch on the ratio leaves
        1 and the PPO clip matters): L = w L_RL + lambda_sft (1 - w) L_SFT + beta KL (+ beta_last's anchor)."""
        cfg, procs, pool, device, rec = self.cfg, self.procs, self.pool, self.device, b.rec
        sft_w = cfg.lambda_sft * (1 - b.w) * b.gt_mask.float()
        sft_active = float(sft_w.max()) > 0
        w, sft_w = b.w[self.rows], sft_w[self.rows]
        if cfg.sft_per_input:  # the SFT term on this process's inputs, once each (not on each rollout)
            in_rows = procs.rows(cfg.batch_size)
            sft_lq = torch.stack([pool[i].lq for i in b.idx.tolist()])[in_rows].to(device)
            sft_gt = b.gt_in[in_rows].to(device)
            sft_cond = b.cond[in_rows].to(device) if b.cond is not None else None
            sft_w = (cfg.lambda_sft * (1 - b.w_pool[b.idx]) * self.has_gt[b.idx].float())[in_rows].to(device)
        else:
            sft_lq, sft_gt, sft_cond = b.lq, b.gt, b.cond_rows
        if sft_cond is not None and sft_cond.shape[-2:] != sft_gt.shape[-2:]:
            sft_cond = None  # padded by the rollout: sft_loss conditions the unpadded input itself

        b.t_upd = time.time()
        self.unet.train()
        logs: dict[str, list[float]] = {"kl": [], "kl_last": [], "ratio": [], "clip_frac": [], "approx_kl": [],
                                        "loss_rl": [], "loss_sft": [], "grad_norm": []}
        # Diagnostics (first epoch): each term's gradient on its own, so one can see which term sets the
        # direction of the update (under Adam a consistent SFT gradient wins over a noisy RL one).
        diag = bool(cfg.diag_every) and (b.rnd + 1) % cfg.diag_every == 0
        term_grads: dict[str, list[torch.Tensor]] = {}
        clip_epochs: list[float] = []
        for epoch in range(cfg.epochs if (r.rl_active or sft_active) else 0):
            self.stop_now()
            self.opt.zero_grad(set_to_none=True)
            per_term = term_grads if diag and epoch == 0 else None
            clip_e: list[float] = []
            if r.backprop_rl:
                self._backprop_term(b, w, epoch, logs, per_term)
            if r.rollout_rl:
                clip_e = self._ppo_terms(r, w, epoch, logs, per_term)
            if sft_active:
                # SFT loss where a ground truth exists, weighted by 1 - w_i.
                with self.autocast:
                    l_sft = self.policy.sft_loss(sft_lq, sft_gt, self.noise, reduce=False, cond=sft_cond)
                backward_terms({"sft": (sft_w * l_sft).mean()}, self.params, per_term)
                logs["loss_sft"].append(float(l_sft.detach().mean()))
            if clip_e:
                clip_epochs.append(sum(clip_e) / len(clip_e))
                logs["clip_frac"] += clip_e
            procs.average_gradients(self.params)
            logs["grad_norm"].append(float(torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)))
            self.opt.step()
        if clip_epochs:
            rec["clip_frac_epochs"] = clip_epochs
        for name, gs in term_grads.items():
            flat = torch.cat([x.flatten() for x in gs]).float()
            rec[f"grad_norm_{name}"] = float(flat.norm())
            if name == "rl":
                cur = flat.detach().cpu()  # kept on the CPU between rounds (GPU memory, one device)
                prev = self.prev_rl_grad
                if prev is not None and float(cur.norm()) > 0 and float(prev.norm()) > 0:
                    rec["rl_grad_cos_prev"] = float(torch.nn.functional.cosine_similarity(cur, prev, dim=0))
                self.prev_rl_grad = cur
        means = {k: sum(v) / len(v) for k, v in logs.items() if v}
        if means:
            avg = procs.mean(torch.tensor(list(means.values()), dtype=torch.float64, device=device)).tolist()
            rec.update(dict(zip(means, avg)))
        self.stop_now()

    def _backprop_term(self, b: _Batch, w: torch.Tensor, epoch: int, logs: dict[str, list[float]],
                       per_term: dict[str, list[torch.Tensor]] | None) -> None:
        """The reward's own gradient through the last ``backprop_steps`` steps of the sampler (DRaFT-K)."""
        cfg, G = self.cfg, self.cfg.group_size
        with self.autocast:
            img = sample_with_grad(self.policy, b.lq, cfg.num_steps, cfg.eta, self.noise, b.cond_rows,
                                   cfg.backprop_steps)
            r_bp = self.reward.with_grad(img, self.reward_reference(b, tuple(img.shape[-2:]))).to(w.device)
        backward_terms({"rl": -(w * r_bp).mean() * cfg.backprop_scale}, self.params, per_term)
        logs["loss_rl"].append(float(-(w * r_bp).detach().mean()))
        if epoch == 0:
            b.rec["reward"] = float(self.procs.gather(r_bp.detach()).mean())
            if G > 1:
                b.rec["group_reward_std"] = float(self.procs.gather(r_bp.detach()).reshape(-1, G).std(
                    dim=1, unbiased=False).mean())

    def _ppo_terms(self, r: _Rollouts, w: torch.Tensor, epoch: int, logs: dict[str, list[float]],
                   per_term: dict[str, list[torch.Tensor]] | None) -> list[float]:
        """PPO-clipped policy loss and KL, one transition at a time (memory), averaged over the K transitions;
        then the last step's anchor. Returns the clipped share of each transition."""
        cfg, traj = self.cfg, r.traj
        assert traj is not None
        K, clip_e = len(traj.timesteps), []
        for k in range(K):
            self.stop_now()
            with self.autocast:  # on-policy first epoch: through the rollout's own forward pass
                loss_k, kl_k, ratio_k, clip_k = policy_losses(
                    self.policy, traj, k, r.adv[k], cfg.eta, cfg.clip_range,
                    r.ref_means[k] if r.ref_means is not None else None,
                    traj.out[k] if epoch == 0 and traj.out else None)
            backward_terms({"rl": (w * loss_k).mean() / K, "kl": cfg.beta_kl * kl_k.mean() / K}, self.params,
                           per_term)
            logs["kl"].append(float(kl_k.detach().mean()))
            logs["ratio"].append(float(ratio_k.mean()))
            clip_e.append(float(clip_k.mean()))
            logs["approx_kl"].append(float((ratio_k - 1 - torch.log(ratio_k)).mean()))
            logs["loss_rl"].append(float((w * loss_k).detach().mean()))
        if cfg.beta_last > 0:
            with self.autocast:
                last = last_step_anchor(self.policy, traj, self.ref_unet, cfg.lora_rank > 0, cfg.sigma_last)
            if last is not None:
                backward_terms({"last": cfg.beta_last * last.mean()}, self.params, per_term)
                logs["kl_last"].append(float(last.detach().mean()))
        return clip_e

    # ------------------------------------------------------------------------------------------ 8. after
    def after_round(self, b: _Batch) -> bool:
        """The probe (and the guard's verdict), validation, the round's record, callbacks, snapshot and
        checkpoint; True when training stops (a cancel, the time limit, the stop file or the guard)."""
        cfg, main, rec, out = self.cfg, self.main, b.rec, self.out
        t_probe = time.time()
        guard_stop = False
        if self.probe is not None and (b.rnd + 1) % cfg.probe_every == 0:
            self.unet.eval()
            with self.autocast:
                rec.update(run_probe(self.policy, self.probe, self.probe_conds, self.reward, cfg, self.device))
            if self.guard is not None:
                guard_stop = self.guard.check(b.rnd + 1, rec, self.weights())
        t_probe = time.time() - t_probe
        rec["round_s"] = round(time.time() - b.t0, 3)
        rec["difficulty_s"] = round(b.t_diff, 3)
        rec["rollout_s"] = round(b.t_upd - b.t_roll, 3)  # rollouts, decodes, rewards and the KL reference's passes
        rec["update_s"] = round(time.time() - b.t_upd - t_probe, 3)  # the epochs (policy, SFT) and steps
        rec["probe_s"] = round(t_probe, 3)
        self.done = done = b.rnd + 1
        if self.val is not None and done % cfg.val_every == 0:
            self.unet.eval()
            with self.autocast:
                rec.update(validate(self.policy, self.val, self.reward, cfg, self.device))
        stop = False
        if main:
            self.metrics_log.write(json.dumps(rec) + "\n")
            self.metrics_log.flush()
            self.diff_log.flush()
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in rec.items() if k in ("reward", "kl", "val_psnr")
                                  and isinstance(v, float)})
            self._report(done, rec)
            stop = bool(self.callbacks["should_stop"]()) if "should_stop" in self.callbacks else False
            stop = stop or (cfg.max_minutes is not None and time.time() - self.t_start > 60 * cfg.max_minutes)
            stop = stop or (cfg.stop_file is not None and Path(cfg.stop_file).exists()) or guard_stop
        stop = self.procs.any(stop)  # the main process decides; all stop together
        if main and cfg.snapshot_every and (done % cfg.snapshot_every == 0 or done == cfg.rounds or stop):
            self.unet.eval()  # kept models (checkpoints are pruned), one point each on the fidelity-reward plot
            atomic_dir(out / "snapshots" / f"round-{done:04d}", self.policy.export)
        if done % cfg.ckpt_every == 0 or done == cfg.rounds or stop:
            self._checkpoint(done, rec)
        return stop

    def _report(self, done: int, rec: dict[str, Any]) -> None:
        """``on_sample``: the pool's first input restored as the app restores it (the same every round, so a
        person can watch what training does to one picture); ``on_round``: the record."""
        if "on_sample" in self.callbacks:
            self.unet.eval()
            lq = self.pool[0].lq
            with self.autocast:
                img = restore_as_app(self.policy, lq[None], self.cfg.num_steps,
                                     cond=self.conds[0][None] if self.conds else None)[0]
            self.callbacks["on_sample"](done, lq, img)
        if "on_round" in self.callbacks:
            self.callbacks["on_round"](rec)

    def _checkpoint(self, done: int, rec: dict[str, Any]) -> None:
        """Everything an exact resume needs, beside the exported model (written atomically)."""
        if self.main:
            self.unet.eval()
            state = {"unet": self.weights(), "opt": self.opt.state_dict(), "memory": self.memory.state_dict(),
                     "difficulty": self.diff, "difficulty_start": self.diff_start,
                     "guard": self.guard.state_dict() if self.guard else None, "round": done,
                     "generator": self.g.get_state(), "config": asdict(self.cfg)}
            path = save_checkpoint(self.out, done, self.policy.export, state)
            if "on_checkpoint" in self.callbacks:
                self.callbacks["on_checkpoint"](path, rec)
        self.procs.barrier()

    def note_stop_in_round(self) -> None:
        if self.main:
            (self.out / "stopped.json").write_text(json.dumps({"stopped_in_round": self.done + 1,
                                                               "last_complete_round": self.done}))

    # ------------------------------------------------------------------------------------------ 9. finish
    def finish(self) -> Path:
        """The exported model: the last round's weights, or the guard's last passing round's."""
        cfg, guard, done = self.cfg, self.guard, self.done
        self.bar.close()
        final = self.out / "model"
        if self.main:
            self.metrics_log.close()
            self.diff_log.close()
            self.unet.eval()
            if guard is not None and guard.base:
                if guard.best_round != done:  # later rounds failed the probe: the last one that passed
                    (load_lora_state_dict(self.unet, guard.best) if cfg.lora_rank else
                     self.unet.load_state_dict(guard.best))
                why = ("every probed round passed" if guard.best_round == done else
                       f"later probes were worse than round 0 (PSNR down more than {cfg.guard_psnr} dB, more "
                       "flat-area texture or a lower reward)" if guard.best_round else
                       "no probed round passed: the exported model is the base model, unchanged")
                (self.out / "guard.json").write_text(json.dumps({"exported_round": guard.best_round,
                                                                 "last_round": done, "base": guard.base,
                                                                 "why": why}, indent=1))
            atomic_dir(final, self.policy.export)  # the restorer decides: full, merged LoRA or adapter folder
        self.procs.barrier()
        if "on_finish" in self.callbacks:
            self.callbacks["on_finish"](self.policy)
        return final


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


def _truncate_log(path: Path, last_round: int) -> None:
    """Drop the lines of rounds after ``last_round`` (redone after a resume)."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("round", 0) <= last_round]
        path.write_text("".join(ln + "\n" for ln in keep))
