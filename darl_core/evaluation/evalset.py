"""The independent evaluation set: held-out photos degraded by Pillow and numpy, not by our code.

A model trained on ``darl_core.data.degrade`` and judged on pairs made by the same
code can learn that code's fingerprints (its kernels, its JPEG model) and
look better than it is. These pairs are made by another implementation:

  * blur: Pillow's ``ImageFilter.GaussianBlur`` (an extended box blur);
  * rescaling: Pillow's ``resize`` down by a random factor with a random
    filter (box, bilinear, Hamming, bicubic, Lanczos), back up with bicubic;
  * noise: additive Gaussian noise from numpy, in 8-bit levels;
  * JPEG: the real codec (Pillow's libjpeg, 4:2:0), decoded again.

Each crop draws its own strengths (``PillowRecipe`` ranges) from a numpy
generator seeded by (seed, crop index), so a seed gives the same set on
every machine. ``OUTSIDE`` is the fixed recipe of the project's outside
check (blur radius 1.2, bicubic x2, noise sigma 8, JPEG quality 50).

The pictures: the built-in held-out photos plus the package photos that the
corpus reserves for evaluation (``photos.eval_images``); training never reads
either. Crops are ``size`` px, non-overlapping, at most ``per_image`` per
photo, taken on a regular grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..data.clean import HELDOUT_IMAGES, builtin_image
from ..data.images import jpeg_roundtrip, pil_to_tensor

__all__ = ["OUTSIDE", "PillowRecipe", "RANDOM", "eval_photos", "flat_hf_ratio", "independent_pairs", "pillow_degrade"]

_DOWN_FILTERS = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.HAMMING,
                 Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


@dataclass(frozen=True)
class PillowRecipe:
    """Ranges the strengths of each crop are drawn from (lo == hi: fixed)."""

    blur_radius: tuple[float, float] = (0.3, 1.8)  # GaussianBlur radius in pixels (0: none)
    scale: tuple[float, float] = (1.0, 2.5)  # down-scale factor before resizing back (1: none)
    noise_sigma: tuple[float, float] = (2.0, 12.0)  # Gaussian noise std in 0..255 levels
    jpeg_quality: tuple[int, int] = (30, 85)  # JPEG quality of the real codec
    random_filter: bool = True  # draw the down-sampling filter; else bicubic


RANDOM = PillowRecipe()
OUTSIDE = PillowRecipe(blur_radius=(1.2, 1.2), scale=(2.0, 2.0), noise_sigma=(8.0, 8.0),
                       jpeg_quality=(50, 50), random_filter=False)


def pillow_degrade(im: Image.Image, recipe: PillowRecipe, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Degrade an RGB image with Pillow and numpy; returns the LQ image (same size) and its strengths."""
    im = im.convert("RGB")
    radius = float(rng.uniform(*recipe.blur_radius))
    scale = float(rng.uniform(*recipe.scale))
    sigma = float(rng.uniform(*recipe.noise_sigma))
    quality = int(rng.integers(recipe.jpeg_quality[0], recipe.jpeg_quality[1] + 1))
    filt = _DOWN_FILTERS[int(rng.integers(len(_DOWN_FILTERS)))] if recipe.random_filter else Image.Resampling.BICUBIC
    x = im.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else im
    if scale > 1.01:
        w, h = x.size
        x = x.resize((max(1, round(w / scale)), max(1, round(h / scale))), filt)
        x = x.resize((w, h), Image.Resampling.BICUBIC)
    a = np.asarray(x, dtype=np.float64) + rng.normal(0.0, sigma, size=(x.size[1], x.size[0], 3))
    lq = jpeg_roundtrip(Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)), quality)
    return lq, {"blur_radius": radius, "scale": scale, "noise_sigma": sigma, "jpeg_quality": quality,
                "filter": int(filt)}


def eval_photos() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) of every evaluation photo: the built-in held-out ones and the corpus's
    evaluation share when the corpus has been fetched (``python -m darl_core.data.photos fetch``)."""
    from ..data import photos

    out = [(name.rsplit(".", 1)[0], builtin_image(name)) for name in HELDOUT_IMAGES]
    out += photos.eval_images()
    return out


def independent_pairs(recipe: PillowRecipe = RANDOM, seed: int = 0, size: int = 192, per_image: int = 4,
                      images: list[tuple[str, Image.Image]] | None = None
                      ) -> list[tuple[str, torch.Tensor, torch.Tensor, dict]]:
    """(name, lq, hq, strengths) crops of the evaluation photos, LQ made by ``pillow_degrade``.

    Photos smaller than ``size`` are skipped; at most ``per_image`` crops of each, spread over
    a regular grid. Crop k is degraded with ``np.random.default_rng([seed, k])``.
    """
    images = eval_photos() if images is None else images
    out = []
    for name, im in images:
        w, h = im.size
        ny, nx = h // size, w // size
        if ny == 0 or nx == 0:
            continue
        cells = [(iy, ix) for iy in range(ny) for ix in range(nx)]
        pick = np.linspace(0, len(cells) - 1, min(per_image, len(cells))).round().astype(int)
        for c in sorted(set(pick.tolist())):
            iy, ix = cells[c]
            # Centre the grid in the photo so crops avoid the borders.
            y0 = (h - ny * size) // 2 + iy * size
            x0 = (w - nx * size) // 2 + ix * size
            hq = im.crop((x0, y0, x0 + size, y0 + size))
            lq, info = pillow_degrade(hq, recipe, np.random.default_rng([seed, len(out)]))
            out.append((f"{name}_{iy}{ix}", pil_to_tensor(lq), pil_to_tensor(hq), info))
    return out


def flat_hf_ratio(out: torch.Tensor, gt: torch.Tensor, block: int = 8, share: float = 0.1) -> float:
    """High-frequency energy of ``out`` over that of ``gt`` in the flattest ``share`` of ``gt``'s blocks.

    Grey levels in 0..255; HF = the image minus its Gaussian blur (sigma 1.5); "flat" = the
    ``block`` x ``block`` blocks of lowest GT standard deviation. Returns a ratio (1 = equal).
    """
    def grey(x: torch.Tensor) -> torch.Tensor:
        return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None, None] * 255.0

    r = torch.arange(9, dtype=torch.float32) - 4
    k = torch.exp(-0.5 * (r / 1.5) ** 2)
    k = (k / k.sum())
    k2 = (k[:, None] * k[None, :])[None, None]

    def hf(x: torch.Tensor) -> torch.Tensor:
        return x - F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), k2)

    g, o = grey(gt.float()), grey(out.float())
    h, w = g.shape[-2:]
    h, w = h - h % block, w - w % block
    std = F.unfold(g[..., :h, :w], block, stride=block).std(dim=1)[0]  # per block
    n = max(1, int(round(share * std.numel())))
    idx = torch.argsort(std)[:n]
    e_gt = F.unfold(hf(g)[..., :h, :w] ** 2, block, stride=block).mean(dim=1)[0][idx].mean()
    e_out = F.unfold(hf(o)[..., :h, :w] ** 2, block, stride=block).mean(dim=1)[0][idx].mean()
    return float(e_out / e_gt.clamp_min(1e-3))


def _gauss_hf(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """(B, 1, H, W) minus its Gaussian blur (reflect-padded): the fine detail flat_hf and texture_match weigh."""
    r = torch.arange(9, dtype=x.dtype, device=x.device) - 4
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = k / k.sum()
    return x - F.conv2d(F.pad(x, (4, 4, 4, 4), mode="reflect"), (k[:, None] * k[None, :])[None, None])


def texture_match(x: torch.Tensor, ref: torch.Tensor, block: int = 8) -> torch.Tensor:
    """How well each image's fine texture matches its reference's, block by block (ours; higher is better, 0 best).

    Per ``block`` x ``block`` block of the grey image (levels 0..255): the energy of the high frequencies
    (``_gauss_hf``, as ``flat_hf_ratio``), then minus the mean over blocks of |log(1 + E_x) - log(1 + E_ref)|.
    Texture painted where the reference is flat and texture smoothed away where it has some cost alike, which
    neither PSNR (it prefers smoothing) nor a no-reference score (it may prefer either) says. Differentiable:
    a reward term for reward backpropagation (``texture_match`` in a reward spec)."""
    def grey(t: torch.Tensor) -> torch.Tensor:
        return (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None] * 255.0

    def energy(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(_gauss_hf(grey(t.float())) ** 2, block)

    return -(torch.log1p(energy(x)) - torch.log1p(energy(ref.to(x.device)))).abs().mean(dim=(1, 2, 3))
