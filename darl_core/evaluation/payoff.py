"""Did a fine-tune pay off? Each image restored by the base model and by the new one, with the numbers.

    items = [PayoffItem("sample 3", lq, gt, sample_id=3), ...]
    rows = before_after(base, new, items, steps=2, reward="darl_iqa + 20*psnr", out_dir=folder)
    payoff_summary(rows)   # {"n": 32, "d_psnr": +0.31, "d_reward": +2.1, "d_difficulty": -0.01, ...}

Per image: the reward (the job's spec; its full-reference terms compare with the ground truth, or,
without one, with the base model's stage-1 restoration where ``reference`` allows it, as the trainer's
``reward_reference``), PSNR and SSIM where a ground truth exists, and the difficulty before and after
(``difficulty``: 1 - SSIM against the truth, or the no-reference proxy without one). Both models restore
with the same noise, at the job's steps, eta 0, as the app restores. Large images are scored on a
centre crop of at most ``max_side`` pixels (the whole comparison stays a few seconds an image on a CPU).

The worker runs this when a job finishes, on the job's own samples and on its held-out check crops,
and stores the rows (``storage.Comparison``); the Fine-tune tab shows them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..rewards.difficulty import difficulty, difficulty_no_reference
from ..data.images import save_tensor
from ..models.restorer import Restorer
from ..rewards.registry import MIN_SIDE, create_reward, get_metric

__all__ = ["HELDOUT_CROPS", "SUMMARY_TERMS", "PayoffItem", "before_after", "heldout_evaluation", "heldout_items", "payoff_summary"]

MAX_SIDE = 384  # larger images are compared on their centre crop of this side
HELDOUT_CROPS = 8  # the held-out check's crops (evaluate.heldout_check's default too)
# What a summary reports, in order: (key of payoff_summary, its name in the job log and the app, decimals).
SUMMARY_TERMS = (("reward", "reward", 2), ("reward_stage1", "reward against stage 1 (no truth)", 2),
                 ("psnr", "PSNR", 2), ("ssim", "SSIM", 4), ("difficulty", "difficulty (1 - SSIM)", 3),
                 ("difficulty_proxy", "difficulty (no-reference proxy)", 3))


@dataclass
class PayoffItem:
    name: str  # what the view calls it ("sample 12", a held-out crop's name)
    lq: torch.Tensor  # (3, H, W) in [0, 1]
    gt: torch.Tensor | None = None  # (3, H*s, W*s) in [0, 1], or None
    sample_id: int | None = None  # the store's sample, for the job's own samples


def _centre(x: torch.Tensor, side: int, scale: int = 1) -> torch.Tensor:
    """The centre crop of at most ``side`` x ``side`` (x ``scale`` for a ground truth of a x-s model)."""
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return x[..., top * scale:(top + min(h, side)) * scale, left * scale:(left + min(w, side)) * scale]


def heldout_items(crops: int = HELDOUT_CROPS, size: int = 128, seed: int = 0) -> list[PayoffItem]:
    """The held-out check's crops (``evaluate.heldout_check``: the built-in held-out photos, degraded by
    the independent Pillow / JPEG recipe), with their ground truths."""
    from ..data.clean import HELDOUT_IMAGES, builtin_image
    from .evalset import independent_pairs

    photos = [(n, builtin_image(n)) for n in HELDOUT_IMAGES]
    pairs = independent_pairs(seed=seed, size=size, per_image=max(1, -(-crops // len(photos))), images=photos)
    return [PayoffItem(name, lq, hq) for name, lq, hq, _ in pairs[:crops]]


def before_after(base: Restorer, new: Restorer, items: list[PayoffItem], steps: int, reward: str,
                 out_dir: Path, reference: Literal["gt", "stage1", "auto"] = "gt", seed: int = 0,
                 max_side: int = MAX_SIDE, judges: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One row per item: ``name``, ``sample_id``, the files written under ``out_dir`` (``lq``, ``base``,
    ``new``, ``gt`` or None) and ``metrics``: ``reward_base`` / ``reward_new`` (``reward_stage1_*`` when its
    full-reference terms compared with stage 1 for want of a truth: another scale), ``psnr_*`` and ``ssim_*``
    with a ground truth, ``difficulty_*`` (1 - SSIM) or ``difficulty_proxy_*`` (the no-reference proxy) and
    ``difficulty_kind``, and ``{judge}_base`` / ``{judge}_new`` for each no-reference metric of ``judges``."""
    r = create_reward(reward)
    nr = {name: get_metric(name) for name in judges}
    psnr, ssim = get_metric("psnr"), get_metric("ssim")
    scale = base.output_scale
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, it in enumerate(items):
        lq = _centre(it.lq, max_side)[None]
        gt = None if it.gt is None else _centre(it.gt, max_side, scale)[None]
        outs = {}
        for label, model in (("base", base), ("new", new)):
            g = torch.Generator().manual_seed(seed * 100_000 + i)  # the same noise for both models
            outs[label] = model.restore_tensor(lq, steps, eta=0.0, generator=g).cpu().float().clamp(0, 1)
        ref, against = gt, "gt" if r.full_reference else None
        if ref is None and r.full_reference and reference != "gt" and base.has_stage1:
            ref, against = base.restore_tensor(lq, 0).cpu().float(), "stage1"  # the trainer's anchor without a truth
        m: dict[str, Any] = {}
        # A reward against stage 1's restoration is not comparable with one against a truth: its own key.
        rkey = "reward_stage1" if against == "stage1" else "reward"
        if ref is not None or not r.full_reference:
            for label, x in outs.items():
                m[f"{rkey}_{label}"] = float(r(x, ref))
        small = min(outs["base"].shape[-2:]) < MIN_SIDE.get("niqe", 1)
        for label, x in outs.items():
            for name, metric in nr.items():
                m[f"{name}_{label}"] = float(metric(x))
            if gt is not None:
                m[f"psnr_{label}"] = float(psnr(x, gt))
                m[f"ssim_{label}"] = float(ssim(x, gt))
                m[f"difficulty_{label}"] = float(difficulty(x, gt)[0])
            elif not small:  # the no-reference proxy: another scale, its own key (never averaged with 1 - SSIM)
                m[f"difficulty_proxy_{label}"] = float(difficulty_no_reference(x)[0])
        if gt is not None and scale == 1:
            m["psnr_input"] = float(psnr(lq, gt))
        m["difficulty_kind"] = "gt" if gt is not None else ("proxy" if not small else None)
        stem = f"{i:03d}"
        files = {"lq": out_dir / f"{stem}_input.png", "base": out_dir / f"{stem}_base.png",
                 "new": out_dir / f"{stem}_new.png", "gt": out_dir / f"{stem}_gt.png" if gt is not None else None}
        save_tensor(lq[0], files["lq"])
        save_tensor(outs["base"][0], files["base"])
        save_tensor(outs["new"][0], files["new"])
        if gt is not None:
            save_tensor(gt[0], files["gt"])
        rows.append({"name": it.name, "sample_id": it.sample_id, "files": files, "metrics": m})
    return rows


def payoff_summary(metrics: list[dict[str, Any]], judges: tuple[str, ...] = ()) -> dict[str, float]:
    """Over rows' ``metrics``: ``n`` and, per quantity scored before and after on every row that has it,
    the means (``psnr_base``, ``psnr_new``), the mean change (``d_psnr``), its count (``n_psnr``) and the
    share of rows the new model improves (``better_psnr``: higher reward / PSNR / SSIM, lower difficulty,
    each judge in its own direction)."""
    out: dict[str, float] = {"n": float(len(metrics))}
    lower = {"difficulty", "difficulty_proxy"} | {j for j in judges if get_metric(j).lower_better}
    for key in ("reward", "reward_stage1", "psnr", "ssim", "difficulty", "difficulty_proxy", *judges):
        pairs = [(m[f"{key}_base"], m[f"{key}_new"]) for m in metrics if f"{key}_base" in m and f"{key}_new" in m]
        if not pairs:
            continue
        sign = -1.0 if key in lower else 1.0
        out[f"{key}_base"] = statistics.fmean(b for b, _ in pairs)
        out[f"{key}_new"] = statistics.fmean(n for _, n in pairs)
        out[f"d_{key}"] = out[f"{key}_new"] - out[f"{key}_base"]
        out[f"n_{key}"] = float(len(pairs))
        out[f"better_{key}"] = sum(sign * (n - b) > 0 for b, n in pairs) / len(pairs)
    return out


def heldout_evaluation(metrics: list[dict[str, Any]]) -> dict[str, float]:
    """``evaluate.heldout_check``'s numbers of the new model, and its base's PSNR, from the held-out crops'
    before and after (the same crops and noise with ``seed`` 0): they need no second restore."""
    if not metrics or any("psnr_new" not in m for m in metrics):
        return {}
    return {"heldout_psnr": statistics.fmean(m["psnr_new"] for m in metrics),
            "heldout_ssim": statistics.fmean(m["ssim_new"] for m in metrics),
            "heldout_input_psnr": statistics.fmean(m["psnr_input"] for m in metrics),
            "heldout_psnr_base": statistics.fmean(m["psnr_base"] for m in metrics)}
