"""Reward sanity: does a reward prefer a clean photo to the same photo distorted?

A reward for RL must at least order a clean image above its distorted
versions, or RL will learn the distortion (docs/method.md, "Known pitfalls").
For each clean crop and each distortion below, the pair is *ordered right*
when the reward of the clean crop is strictly higher:

  noise5, noise10   additive Gaussian noise, sigma 5 / 10 (0..255 levels)
  blur              Gaussian blur, Pillow radius 1.5
  jpeg30            the real JPEG codec (Pillow), quality 30
  oversharpen       Pillow UnsharpMask(radius 2, percent 200, threshold 0)
  restored          a restorer's output for a degraded copy (``realistic`` preset)
                    -- a reward that prefers it to the clean photo rewards what the
                    restorer invents (speckle) over what was there

``reward_sanity`` returns the share of pairs ordered right per distortion.
The bench (``bench/reward_sanity.py``) runs it for several reward specs on
the training photos; the tests run it on a few crops.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..data.images import jpeg_roundtrip, pil_to_tensor, tensor_to_pil

__all__ = ["CHECK_EVERY", "DISTORTIONS", "distort", "is_check_photo", "reward_sanity"]

# 1 in CHECK_EVERY training photos (by position in photos.train_images(), or in data.TRAIN_IMAGES)
# is kept for checking rewards: bench/reward_sanity.py crops them, the learned darl_iqa never sees them.
CHECK_EVERY = 8


def is_check_photo(index: int) -> bool:
    """Whether the training photo at ``index`` is one of the reward-check photos."""
    return index % CHECK_EVERY == 0


def _noise(sigma: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    def f(im: Image.Image, rng: np.random.Generator) -> Image.Image:
        a = np.asarray(im, dtype=np.float64) + rng.normal(0, sigma, (im.size[1], im.size[0], 3))
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    return f


DISTORTIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "noise5": _noise(5.0),
    "noise10": _noise(10.0),
    "blur": lambda im, rng: im.filter(ImageFilter.GaussianBlur(1.5)),
    "jpeg30": lambda im, rng: jpeg_roundtrip(im, 30),
    "oversharpen": lambda im, rng: im.filter(ImageFilter.UnsharpMask(radius=2, percent=200, threshold=0)),
}


def distort(clean: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) clean crop in [0, 1] with one of ``DISTORTIONS``."""
    return pil_to_tensor(DISTORTIONS[name](tensor_to_pil(clean), np.random.default_rng(seed)))


@torch.no_grad()
def reward_sanity(reward: Callable[..., torch.Tensor], clean: list[torch.Tensor], restorer: object | None = None,
                  steps: int = 4, seed: int = 0) -> dict[str, float]:
    """Share of (clean, distorted) pairs where ``reward`` scores the clean crop higher, per distortion.

    ``reward(batch) -> (B,)`` is higher-is-better (``rewards.create_reward``). With a
    ``restorer``, the ``restored`` row compares the clean crop with the restorer's output
    (``steps`` DDIM steps) for a copy degraded by the ``realistic`` preset.
    """
    from ..data.degrade import degrade, get_preset

    rows: dict[str, list[torch.Tensor]] = {name: [] for name in DISTORTIONS}
    if restorer is not None:
        rows["restored"] = []
    for i, x in enumerate(clean):
        for name in DISTORTIONS:
            rows[name].append(distort(x, name, seed * 1000 + i))
        if restorer is not None:
            lq = degrade(x[None], get_preset("realistic"), torch.Generator().manual_seed(seed * 1000 + i))
            rows["restored"].append(restorer.restore_tensor(lq, steps, generator=torch.Generator().manual_seed(i))[0])
    base = torch.stack([reward(x[None])[0] for x in clean])
    out = {}
    for name, imgs in rows.items():
        r = torch.stack([reward(y[None])[0] for y in imgs])
        out[name] = float((base > r).float().mean())
    return out
