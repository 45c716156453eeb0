"""What the RL trainer measures with the policy as the app restores (eta 0, fixed noise): the pool's
difficulty, the held-out probe and its guard, validation, and stage 1's restorations (the fidelity anchor
without ground truths)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

from ..data.pool import PoolSample
from ..models.restorer import Restorer
from ..rewards.difficulty import difficulty
from ..rewards.registry import Reward
from .distributed import Processes
from .rl_config import RLConfig

__all__ = ["ProbeGuard", "pool_conditioning", "pool_difficulty", "probe_set", "restore_as_app", "run_probe",
           "stage1_images", "validate"]


class ProbeGuard:
    """Keeps the last weights the held-out probe found no worse than the start (``guard_psnr``).

    A probed round passes when its probe PSNR is at least round 0's minus ``psnr_drop`` dB, its
    ``flat_hf`` is not above round 0's and its reward not below; the trainer exports the last passing
    round's weights (round 0's, i.e. the base model unchanged, if none passed) and stops after
    ``patience`` failing probes in a row. So a job cannot hand back a model that the probe saw get
    worse, and ``guard.json`` in the run folder says which round it exported and why."""

    def __init__(self, psnr_drop: float, patience: int, weights: dict[str, torch.Tensor]) -> None:
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
def restore_as_app(policy: Restorer, lq: torch.Tensor, steps: int, procs: Processes | None = None,
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


def pool_difficulty(policy: Restorer, pool: list[PoolSample], cfg: RLConfig, device: torch.device,
                     procs: Processes | None = None, conds: list[torch.Tensor] | None = None) -> torch.Tensor:
    """d for every pool sample (+inf where there is no GT: flagged samples always count as hard)."""
    d = torch.full((len(pool),), math.inf)
    idx = [i for i, s in enumerate(pool) if s.gt is not None]
    if idx:
        lq = torch.stack([pool[i].lq for i in idx])
        gt = torch.stack([pool[i].gt for i in idx])  # type: ignore[misc]
        cond = torch.stack([conds[i] for i in idx]) if conds is not None else None
        d[idx] = difficulty(restore_as_app(policy, lq, cfg.num_steps, procs, cond=cond).to(device), gt.to(device),
                            cfg.difficulty_metric, device).cpu()
    return d


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


def run_probe(policy: Restorer, probe: tuple[torch.Tensor, torch.Tensor | None], conds: torch.Tensor | None,
           reward: Reward | None, cfg: RLConfig, device: torch.device) -> dict[str, float]:
    """The probe (``probe_every``): the fixed crops restored as the app restores them (eta 0, the same
    noise every time), so the curve shows the policy and not which batch was drawn, and sees what a
    held-out check sees: the reward, and with ground truths PSNR and ``flat_hf`` (texture in the flattest
    areas against the truth's: invented texture raises it while a no-reference reward may rise too)."""
    from ..evaluation.evalset import flat_hf_ratio
    from ..rewards.registry import get_metric

    lq, gt = probe
    out = restore_as_app(policy, lq, cfg.num_steps, cond=conds)
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
def validate(policy: Restorer, val: tuple[torch.Tensor, torch.Tensor], reward: Reward | None,
              cfg: RLConfig, device: torch.device) -> dict[str, float]:
    from ..rewards.registry import get_metric

    lq, hq = val
    out = restore_as_app(policy, lq, cfg.num_steps).to(device)
    hq = hq.to(device)
    rec = {"val_psnr": float(get_metric("psnr", device)(out, hq).mean()),
           "val_ssim": float(get_metric("ssim", device)(out, hq).mean())}
    if reward is not None:
        rec["val_reward"] = float(reward(out, hq if reward.full_reference else None).mean())
    return rec
