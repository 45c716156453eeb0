"""The comparison pictures of the Restore tab: lossless files for the page, the |SFT - RL| difference map
and the zoom strip (PIL only; no Gradio, no models)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from darl_core.data.images import pil_to_tensor, to_rgb

from .context import UserError

__all__ = ["DIFF_GAIN", "SHOWN", "compare_views", "difference_map", "shown_file", "zoom_strip"]

DIFF_GAIN = 4.0  # the difference map shows |SFT - RL| times this (small differences become visible)
# What the page shows is lossless. Gradio's default, WebP at quality 80, took away about a third of a
# 256x256 restoration's finest texture (the speckle being compared) and added an error as large as the
# SFT-RL difference itself (both about 36 dB), so the page could show RL smoother than SFT when it is not.
SHOWN = "png"


def shown_file(img: Image.Image, path: Path) -> str:
    """``img`` saved losslessly at ``path`` for the page to show: PNG at the fastest compression
    (encoding is part of every restore's wait; the downloads keep the default, smaller PNGs)."""
    img.save(path, "PNG", compress_level=1)
    return str(path)


def difference_map(a: Image.Image, b: Image.Image, gain: float = DIFF_GAIN) -> tuple[Image.Image, float]:
    """|a - b| averaged over the colour channels, times ``gain``, as a grey image (black: identical),
    and the mean absolute difference in 8-bit levels."""
    if a.size != b.size:
        raise UserError(f"cannot compare a {a.size[0]}x{a.size[1]} image with a {b.size[0]}x{b.size[1]} one")
    d = (pil_to_tensor(to_rgb(a)[0]) - pil_to_tensor(to_rgb(b)[0])).abs().mean(dim=0) * 255
    grey = (d * gain).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(grey, mode="L").convert("RGB"), float(d.mean())


def zoom_strip(images: list[tuple[str, Image.Image]], center: tuple[int, int] | None = None, side: int = 128,
               scale: int = 3) -> Image.Image:
    """The same ``side`` x ``side`` region of every image, side by side with its name below, each pixel
    drawn as ``scale`` x ``scale`` (nearest: no smoothing hides what the models did). ``center`` is in
    the pixels of the largest image (default: its centre); smaller images (the input of a x4 model)
    show the same region of the scene, enlarged to the same size."""
    from PIL import ImageDraw, ImageFont

    big = max((im.size for _, im in images), key=lambda wh: wh[0] * wh[1])
    side = min(side, *big)  # a small image is shown whole
    cx, cy = center if center is not None else (big[0] // 2, big[1] // 2)
    half = side // 2
    cx, cy = min(max(int(cx), half), max(big[0] - half, half)), min(max(int(cy), half), max(big[1] - half, half))
    tiles = []
    font = ImageFont.load_default(size=20)
    bar = 30  # a white band below each panel with its name, centred (Gradio draws its label and buttons on top)
    for name, im in images:
        f = im.size[0] / big[0]  # this image's pixels per pixel of the largest one
        box = (round((cx - half) * f), round((cy - half) * f), round((cx + half) * f), round((cy + half) * f))
        crop = to_rgb(im)[0].crop(box).resize((side * scale, side * scale), Image.NEAREST)
        tile = Image.new("RGB", (side * scale, side * scale + bar), "white")
        tile.paste(crop, (0, 0))
        text = name if f == 1 else f"{name} (x{1 / f:g}, nearest)"
        ImageDraw.Draw(tile).text((side * scale // 2, side * scale + bar // 2), text, fill="black", font=font,
                                  anchor="mm")
        tiles.append(tile)
    strip = Image.new("RGB", (sum(t.size[0] for t in tiles) + 6 * (len(tiles) - 1), tiles[0].size[1]), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.size[0] + 6
    return strip


def compare_views(inp: Image.Image, sft: Image.Image, rl: Image.Image, gt: Image.Image | None = None,
                  center: tuple[int, int] | None = None) -> tuple[Image.Image, str, Image.Image]:
    """The difference map of SFT against RL with its caption, and the zoom strip of input, SFT, RL and
    the ground truth (when given) around ``center`` (in output pixels)."""
    diff, mad = difference_map(sft, rl)
    caption = (f"|SFT − RL| × {DIFF_GAIN:g}: black where both models agree; mean difference {mad:.2f} of 255 "
               f"levels")
    views = [("input", inp), ("SFT", sft), ("RL", rl)] + ([("ground truth", gt)] if gt else [])
    return diff, caption, zoom_strip(views, center)


