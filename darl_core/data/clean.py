"""Clean (HQ) training images: user folders, a built-in offline set, and dead leaves.

Built-in set. Photographs that pip packages ship, read from the installed
packages (nothing is downloaded):

  scikit-image ``skimage/data`` (BSD-3 package; image notes from its docstrings):
    astronaut (NASA, public domain), chelsea (CC0, Stefan van der Walt),
    coffee (CC0, Rachel Michetti), rocket (SpaceX, public domain),
    hubble_deep_field (NASA, public domain), ihc (CMMI, no known copyright
    restrictions), retina (Häggström, CC0), motorcycle_left/right (Middlebury
    2014 stereo benchmark), camera (CC0, Lav Varshney), coins (Brooklyn
    Museum, no known copyright restrictions), moon, brick/grass/gravel (CC0
    textures);
  matplotlib ``mpl-data/sample_data`` (PSF-style licence): grace_hopper
    (US Navy photograph, public domain).

``TRAIN_IMAGES`` and ``HELDOUT_IMAGES`` are disjoint: evaluation numbers are
measured on pictures the shipped models never saw.

Dead leaves. Procedural images of overlapping discs with power-law radii
(Matheron's dead-leaves model; its use for training restoration networks is
from Achddou, Gousseau & Ladjal, "Synthetic images as a regularity prior for
image restoration neural networks", 2021). They have natural-image-like
scale statistics and are unlimited in number, which our few photos are not.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .degrade import DegradationConfig, degrade, get_preset
from .images import IMAGE_SUFFIXES, load_rgb, pil_to_tensor

__all__ = ["HELDOUT_IMAGES", "PatchSampler", "TRAIN_IMAGES", "builtin_image", "dead_leaves",
           "folder_images", "heldout_pairs"]

TRAIN_IMAGES = ("astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "motorcycle_left.png",
                "motorcycle_right.png", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
                "gravel.png")
HELDOUT_IMAGES = ("chelsea.png", "coffee.png", "rocket.jpg", "grace_hopper.jpg")


def _package_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0], *parts)


def builtin_image(name: str) -> Image.Image:
    """One image of the built-in set, as RGB (grey images are replicated)."""
    for d in (_package_dir("skimage", "data"), _package_dir("matplotlib", "mpl-data", "sample_data")):
        if d is not None and (d / name).is_file():
            return load_rgb(d / name)
    raise FileNotFoundError(f"built-in image {name} not found: is scikit-image (and matplotlib) installed?")


def folder_images(folder: str | Path, min_side: int = 64) -> list[tuple[str, Image.Image]]:
    """Every image in ``folder`` (recursively) at least ``min_side`` on its short side."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            im = load_rgb(p)
            if min(im.size) >= min_side:
                out.append((str(p.relative_to(folder)), im))
    if not out:
        raise ValueError(f"no usable images (>= {min_side} px) in {folder}")
    return out


def dead_leaves(size: int, rng: np.random.Generator, r_min: float = 2.0, r_max: float | None = None,
                alpha: float = 3.0, supersample: int = 2) -> np.ndarray:
    """A (size, size, 3) float32 dead-leaves image in [0, 1].

    Discs with radius density ~ r^-alpha in [r_min, r_max] are dropped until the
    canvas is covered; each disc gets a colour plus a gentle linear gradient so
    that regions are not perfectly flat. Rendered at ``supersample`` x and
    averaged down for anti-aliased edges.
    """
    n = size * supersample
    r_max = r_max or size / 2
    img = np.zeros((n, n, 3), np.float32)
    covered = np.zeros((n, n), bool)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    # Inverse-CDF sampling of the power law, done in batches.
    a1 = 1.0 - alpha
    lo, hi = (r_min * supersample) ** a1, (r_max * supersample) ** a1
    for _ in range(200):
        radii = (lo + rng.random(64) * (hi - lo)) ** (1.0 / a1)
        centres = rng.random((64, 2)) * n
        colours = rng.random((64, 3)).astype(np.float32)
        grads = (rng.normal(size=(64, 2)) * 0.3 / n).astype(np.float32)
        for r, (cy, cx), c, (gy, gx) in zip(radii, centres, colours, grads):
            y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, n))
            x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, n))
            if y0 >= y1 or x0 >= x1:
                continue
            sy, sx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
            m = ((sy - cy) ** 2 + (sx - cx) ** 2 <= r * r) & ~covered[y0:y1, x0:x1]
            if not m.any():
                continue
            # Front-to-back: a new disc only paints where nothing is in front of it.
            shade = (sy - cy) * gy + (sx - cx) * gx
            img[y0:y1, x0:x1][m] = np.clip(c[None] + shade[m][:, None], 0, 1)
            covered[y0:y1, x0:x1] |= m
        if covered.all():
            break
    img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    return img


@dataclass
class PatchSampler:
    """Random HQ patches (crops, flips, 90-degree turns) from an in-memory bank of images."""

    images: list[torch.Tensor]  # (3, H, W) tensors in [0, 1], each at least ``patch`` a side
    patch: int  # side of the square patches
    generator: torch.Generator  # all randomness comes from here

    @classmethod
    def from_sources(cls, patch: int, seed: int, folder: str | Path | None = None,
                     builtin: bool = True, n_dead_leaves: int = 0, dead_leaves_size: int = 256,
                     photos: bool = False) -> "PatchSampler":
        bank = []
        if folder is not None:
            bank += [pil_to_tensor(im) for _, im in folder_images(folder, patch)]
        if builtin:
            bank += [pil_to_tensor(builtin_image(n)) for n in TRAIN_IMAGES]
        if photos:  # the package corpus's training share (darl_core.data.photos)
            from . import photos as corpus

            found = corpus.train_images()
            if not found:
                raise FileNotFoundError(f"no photo corpus in {corpus.photos_dir()}: run `python -m darl_core.data.photos fetch`"
                                        " (or set DARL_PHOTOS_DIR), or train without --photos")
            bank += [pil_to_tensor(im) for _, im in found]
        rng = np.random.default_rng(seed)
        for _ in range(n_dead_leaves):
            bank.append(torch.from_numpy(dead_leaves(max(dead_leaves_size, patch), rng)).permute(2, 0, 1))
        bank = [_at_least(x, patch) for x in bank]
        if not bank:
            raise ValueError("no training images: give a folder, the built-in set or dead leaves")
        return cls(bank, patch, torch.Generator().manual_seed(seed))

    def sample(self, batch: int) -> torch.Tensor:
        """(batch, 3, patch, patch) in [0, 1]; images are drawn in proportion to their area."""
        areas = torch.tensor([x.shape[1] * x.shape[2] for x in self.images], dtype=torch.float64)
        idx = torch.multinomial(areas, batch, replacement=True, generator=self.generator)
        out = []
        for i in idx.tolist():
            x = self.images[i]
            y0 = int(torch.randint(x.shape[1] - self.patch + 1, (1,), generator=self.generator))
            x0 = int(torch.randint(x.shape[2] - self.patch + 1, (1,), generator=self.generator))
            p = x[:, y0 : y0 + self.patch, x0 : x0 + self.patch]
            flip, rot = torch.randint(2, (1,), generator=self.generator), torch.randint(4, (1,), generator=self.generator)
            if int(flip):
                p = p.flip(-1)
            out.append(torch.rot90(p, int(rot), dims=(1, 2)))
        return torch.stack(out)


def _at_least(x: torch.Tensor, side: int) -> torch.Tensor:
    h, w = x.shape[1:]
    if min(h, w) >= side:
        return x
    s = side / min(h, w)
    return F.interpolate(x[None], size=(max(side, round(h * s)), max(side, round(w * s))),
                         mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


def validation_set(task: str, crops: int = 8, photos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed (LQ, HQ) 192 px crops of the training photos (or of dead leaves without ``photos``),
    degraded with the ``task`` preset at a seed training never uses: the curves' validation set."""
    size = 192
    if photos:
        imgs = [pil_to_tensor(builtin_image(n)) for n in TRAIN_IMAGES[:crops]]
        hq = torch.stack([x[:, (x.shape[1] - size) // 2 :][:, :size, (x.shape[2] - size) // 2 :][:, :, :size]
                          for x in imgs])
    else:
        hq = PatchSampler.from_sources(size, 999_999, None, False, crops).sample(crops)
    lq = degrade(hq, get_preset(task), torch.Generator().manual_seed(987_654_321))
    return lq, hq


def heldout_pairs(cfg: DegradationConfig, seed: int = 0, size: int = 256,
                  names: tuple[str, ...] = HELDOUT_IMAGES) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The held-out evaluation set: non-overlapping ``size`` crops of the held-out photos.

    Returns (name, lq, hq) with (3, H, W) tensors in [0, 1]; the LQ of crop k is
    degraded with seed ``seed * 1000 + k``, so the set is the same on every run.
    """
    out = []
    for name in names:
        x = _at_least(pil_to_tensor(builtin_image(name)), size)
        ny, nx = x.shape[1] // size, x.shape[2] // size
        for iy in range(ny):
            for ix in range(nx):
                hq = x[:, iy * size : (iy + 1) * size, ix * size : (ix + 1) * size]
                g = torch.Generator().manual_seed(seed * 1000 + len(out))
                lq = degrade(hq[None], cfg, g)[0]
                out.append((f"{Path(name).stem}_{iy}{ix}", lq, hq))
    return out
