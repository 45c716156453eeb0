"""Tiled application of a dense per-pixel predictor, with overlap blending.

Each tile's output is weighted by a separable window that ramps linearly
from ~0 at a tile edge to 1 at ``overlap`` pixels inside, and the weighted
outputs are normalised by the summed weights. Applied to the denoiser at
every sampling step (not to the final image), neighbouring tiles agree on a
shared noisy state, so no seam forms. An input that fits one tile is passed
through in a single call, so its result equals untiled inference exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

import torch

__all__ = ["tile_hook", "tile_starts", "tiled_apply"]

# Called as hook(done, total) after every tile of every ``tiled_apply`` in this thread/context while
# set: restores use it for per-tile progress, and a hook that raises stops the work between tiles.
tile_hook: ContextVar[Callable[[int, int], None] | None] = ContextVar("tile_hook", default=None)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with tiles of ``tile``, overlapping by >= ``overlap``."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _window(n: int, overlap: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    i = torch.arange(n, device=device, dtype=dtype) + 0.5
    ramp = torch.minimum(i, n - i) / max(overlap, 1)
    return ramp.clamp(max=1.0)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None,
                overlap: int) -> torch.Tensor:
    """``fn`` over (B, C, H, W) ``x`` in tiles of ``tile`` x ``tile`` (None: whole image)."""
    h, w = x.shape[-2:]
    hook = tile_hook.get()
    if tile is None or (h <= tile and w <= tile):
        out = fn(x)
        if hook is not None:
            hook(1, 1)
        return out
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    wy = _window(th, overlap, x.device, x.dtype)
    wx = _window(tw, overlap, x.device, x.dtype)
    weight = (wy[:, None] * wx[None, :])[None, None]
    out = None
    norm = torch.zeros((1, 1, h, w), device=x.device, dtype=x.dtype)
    for y0 in ys:
        for x0 in xs:
            pred = fn(x[..., y0 : y0 + th, x0 : x0 + tw])
            if out is None:
                out = torch.zeros((*pred.shape[:2], h, w), device=x.device, dtype=pred.dtype)
            out[..., y0 : y0 + th, x0 : x0 + tw] += pred * weight
            norm[..., y0 : y0 + th, x0 : x0 + tw] += weight
            if hook is not None:
                hook(len(xs) * ys.index(y0) + xs.index(x0) + 1, len(ys) * len(xs))
    return out / norm
