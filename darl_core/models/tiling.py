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

__all__ = ["STRETCH", "tile_hook", "tile_layout", "tile_starts", "tiled_apply"]

# Tiles may grow by up to this fraction of the tile size (per side) when that covers the image with
# less work: on 2 CPU cores a pass costs the same per pixel from 192 to 320 px (more at 384 and beyond;
# docs/benchmarks.md), so 5 rows of 272 px cover 1200 px with 11 % fewer pixels than 6 rows of 256.
STRETCH = 0.25

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


def tile_layout(length: int, tile: int, overlap: int, multiple: int = 1, stretch: float | None = None
                ) -> tuple[list[int], int]:
    """(start offsets, tile length) covering ``length`` with the least computed length (tiles x length),
    tiles between ``tile`` and ``tile * (1 + stretch)`` long (a multiple of ``multiple``, or the whole
    ``length``) overlapping by >= ``overlap``. Equal work: the nominal ``tile`` and ``tile_starts``.
    ``stretch`` None: the module's ``STRETCH``."""
    stretch = STRETCH if stretch is None else stretch  # read at call time (bench/cpu_speed.py sets 0 for "before")
    if tile >= length:
        return [0], length
    nominal = tile_starts(length, tile, overlap)
    best_n, best_size = len(nominal), tile
    for n in range(1, len(nominal)):
        size = -(-(length + (n - 1) * overlap) // n)  # the shortest tile n tiles can cover it with
        size = length if n == 1 else -(-size // multiple) * multiple
        if size % multiple == 0 and size <= tile * (1 + stretch) and n * size < best_n * best_size:
            best_n, best_size = n, size
    if best_size == tile:
        return nominal, tile
    if best_n == 1:
        return [0], length
    # spread evenly: every stride is at most size - overlap because n * size - (n - 1) * overlap >= length
    return [round(i * (length - best_size) / (best_n - 1)) for i in range(best_n)], best_size


def _window(n: int, overlap: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    i = torch.arange(n, device=device, dtype=dtype) + 0.5
    ramp = torch.minimum(i, n - i) / max(overlap, 1)
    return ramp.clamp(max=1.0)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None,
                overlap: int, multiple: int = 1) -> torch.Tensor:
    """``fn`` over (B, C, H, W) ``x`` in tiles of about ``tile`` x ``tile`` (None: whole image; see
    ``tile_layout``: sides a multiple of ``multiple``, stretched by up to ``STRETCH`` to save work)."""
    h, w = x.shape[-2:]
    hook = tile_hook.get()
    if tile is not None:
        (ys, th), (xs, tw) = tile_layout(h, tile, overlap, multiple), tile_layout(w, tile, overlap, multiple)
    if tile is None or (len(ys) == 1 and len(xs) == 1):
        out = fn(x)
        if hook is not None:
            hook(1, 1)
        return out
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
