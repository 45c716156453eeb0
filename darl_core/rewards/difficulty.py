"""Per-sample difficulty and the difficulty-adaptive weight of docs/method.md (step 7).

Difficulty of a pair (LQ, GT): the distance between the current model's
restoration and the ground truth,

    d = 1 - SSIM(restored, GT)            (default, ``metric="ssim"``)
    d = LPIPS(restored, GT)               (``metric="lpips"``, where its weights are cached)

and in general: the raw score for metrics where lower is better, ``1 - s``
for similarity metrics scored in [0, 1], ``-s`` otherwise (monotone either way).

Without a ground truth, a no-reference proxy: ``d = clip(1 - q, 0, 1)`` where
q is the restoration's no-reference score (NIQE by default) oriented and
normalised to about [0, 1] with ``rewards.NORM_RANGES``. It ranks but is not
comparable with the full-reference difficulty; the app labels it as such.

Relative difficulty over a pool gives the weight of RL against SFT:

    w_i = clip((d_i - d_lo) / (d_hi - d_lo), 0, 1)

with d_lo, d_hi the ``q_lo`` and ``q_hi`` quantiles of d over the pool
(0.25 / 0.75 by default). Hard samples get w near 1 (mostly RL), easy ones
near 0 (mostly SFT). When d_hi - d_lo is (numerically) zero, as for a pool of
one or all-tied difficulties, there is no relative difficulty and every
sample gets w = 0.5. Samples without ground truth get w = 1.
"""

from __future__ import annotations

import torch

from .registry import get_metric

__all__ = ["difficulty", "difficulty_no_reference", "relative_weights"]

_SIMILARITY_01 = {"ssim", "ms_ssim", "cw_ssim", "fsim", "vif", "vsi"}


def difficulty(restored: torch.Tensor, gt: torch.Tensor, metric: str = "ssim",
               device: str | torch.device = "cpu") -> torch.Tensor:
    """(B,) distance of restorations to their ground truths; higher is harder."""
    m = get_metric(metric, device)
    if not m.full_reference:
        raise ValueError(f"difficulty metric must be full-reference, {metric!r} is not")
    s = m(restored, gt)
    if m.lower_better:
        return s
    return 1 - s if metric in _SIMILARITY_01 else -s


def difficulty_no_reference(restored: torch.Tensor, metric: str = "niqe",
                            device: str | torch.device = "cpu", raw: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) proxy difficulty in [0, 1] from a no-reference metric (see the module docstring).
    ``raw``: the metric's scores of ``restored`` when already computed (not computed again)."""
    m = get_metric(metric, device)
    if m.full_reference:
        raise ValueError(f"the no-reference proxy needs a no-reference metric, {metric!r} is not")
    return (1 - m.oriented(m(restored) if raw is None else raw.float(), normalize=True)).clamp(0, 1)


def relative_weights(d: torch.Tensor, pool: torch.Tensor | None = None, q_lo: float = 0.25,
                     q_hi: float = 0.75, has_gt: torch.Tensor | None = None) -> torch.Tensor:
    """w in [0, 1] for difficulties ``d``, relative to the difficulties of ``pool`` (default: d)."""
    if not 0.0 <= q_lo <= q_hi <= 1.0:
        raise ValueError(f"need 0 <= q_lo <= q_hi <= 1, got {q_lo}, {q_hi}")
    d = d.float()
    ref = (d if pool is None else pool.float()).flatten()
    if ref.numel() == 0:
        raise ValueError("empty difficulty pool")
    lo, hi = torch.quantile(ref, q_lo), torch.quantile(ref, q_hi)
    span = hi - lo
    if float(span) <= 1e-8 * max(1.0, float(hi.abs())):
        w = torch.full_like(d, 0.5)
    else:
        w = ((d - lo) / span).clamp(0, 1)
    if has_gt is not None:
        w = torch.where(has_gt.to(torch.bool), w, torch.ones_like(w))
    return w
