"""The RL training pool: the inputs a run draws its batches from, with their ground truths.

A pool comes from the app's flagged samples (a JSON file), a folder of lq/ and gt/ pairs, or
synthetic degradations of HQ photos (``RLConfig.task``). Every sample is cropped once, to
``patch`` (GT side; the LQ side is ``patch / scale`` for x4 models), so rounds are cheap and the
difficulty of a sample is comparable from round to round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .clean import PatchSampler, folder_images
from .degrade import degrade, get_preset
from .images import load_rgb, pil_to_tensor

if TYPE_CHECKING:
    from ..train.rl_config import RLConfig

__all__ = ["PoolSample", "build_pool", "synthetic_pool"]


@dataclass
class PoolSample:
    id: str  # stable key across rounds (the reward memory and the logs use it)
    lq: torch.Tensor  # (3, P, P) degraded input in [0, 1]
    gt: torch.Tensor | None  # (3, P, P) ground truth, or None


def _fit(x: torch.Tensor, side: int, g: torch.Generator | None = None) -> tuple[int, int, torch.Tensor]:
    """A ``side`` crop (random with ``g``, else centred) of x, enlarged first if it is smaller."""
    if min(x.shape[1:]) < side:
        s = side / min(x.shape[1:])
        x = torch.nn.functional.interpolate(x[None], size=(max(side, round(x.shape[1] * s)),
                                                           max(side, round(x.shape[2] * s))),
                                            mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
    h, w = x.shape[1:]
    if g is None:
        y0, x0 = (h - side) // 2, (w - side) // 2
    else:
        y0 = int(torch.randint(h - side + 1, (1,), generator=g))
        x0 = int(torch.randint(w - side + 1, (1,), generator=g))
    return y0, x0, x[:, y0 : y0 + side, x0 : x0 + side]


def _pair(lq: torch.Tensor, gt: torch.Tensor, side: int, scale: int, name: str,
          g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops: ``side`` of the GT and ``side / scale`` of the LQ (random with ``g``, else centred)."""
    if tuple(gt.shape[1:]) != (lq.shape[1] * scale, lq.shape[2] * scale):
        raise ValueError(f"{name}: GT {tuple(gt.shape[1:])} is not {scale}x LQ {tuple(lq.shape[1:])} "
                         f"(the model's output scale)")
    if scale == 1:
        both = _fit(torch.cat([lq, gt]), side, g)[2]
        return both[:3], both[3:]
    small = side // scale
    if min(lq.shape[1:]) < small:
        raise ValueError(f"{name}: LQ {tuple(lq.shape[1:])} is smaller than the crop side {small}")
    y0, x0, lq_c = _fit(lq, small, g)
    return lq_c, gt[:, y0 * scale : (y0 + small) * scale, x0 * scale : (x0 + small) * scale]


def build_pool(cfg: RLConfig, scale: int = 1) -> list[PoolSample]:
    """The training pool the config names: samples file, pairs folder, or synthetic degradations.

    ``scale`` is the model's output scale: the GT crop is ``patch`` and the LQ crop ``patch / scale``.
    """
    g = torch.Generator().manual_seed(cfg.seed + 17)
    if cfg.samples_file:
        items = json.loads(Path(cfg.samples_file).read_text())
        pool = []
        for it in items:
            lq = pil_to_tensor(load_rgb(it["lq"]))
            if it.get("gt"):
                lq_c, gt_c = _pair(lq, pil_to_tensor(load_rgb(it["gt"])), cfg.patch, scale, f"sample {it['id']}")
            else:
                lq_c, gt_c = _fit(lq, cfg.patch // scale)[2], None
            pool.append(PoolSample(str(it["id"]), lq_c, gt_c))
        return pool
    if cfg.pairs_folder:
        root = Path(cfg.pairs_folder)
        lqs = dict(folder_images(root / "lq", 1))
        gts = dict(folder_images(root / "gt", 1))
        pool = []
        for name in sorted(lqs):
            if name not in gts:
                raise ValueError(f"{root / 'lq' / name} has no ground truth {root / 'gt' / name}")
            lq_c, gt_c = _pair(pil_to_tensor(lqs[name]), pil_to_tensor(gts[name]), cfg.patch, scale, name, g)
            pool.append(PoolSample(name, lq_c, gt_c))
        return pool
    return synthetic_pool(cfg, g)


def synthetic_pool(cfg: RLConfig, g: torch.Generator | None = None) -> list[PoolSample]:
    """``pool_size`` crops of the HQ folder (default: built-in training photos) degraded with ``task``."""
    g = g if g is not None else torch.Generator().manual_seed(cfg.seed + 17)
    sampler = PatchSampler.from_sources(cfg.patch, cfg.seed + 23, cfg.hq_folder, cfg.hq_folder is None,
                                        n_dead_leaves=0 if cfg.patch > 64 else 2)
    hq = sampler.sample(cfg.pool_size)
    lq = degrade(hq, get_preset(cfg.task), g)
    return [PoolSample(f"syn-{k:04d}", lq[k], hq[k]) for k in range(cfg.pool_size)]
