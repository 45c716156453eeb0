"""Image loading and conversion: every file becomes an 8-bit RGB image.

Rules, applied in this order:
  * the first frame of an animated file is used;
  * EXIF orientation is applied;
  * modes are converted to RGB: 1, L, P (through RGBA when it has
    transparency), LA and RGBA (alpha kept aside, see ``split_alpha``),
    CMYK, YCbCr, and the high-depth modes I;16 / I (scaled from 16 bit when
    any value exceeds 255) and F (taken as [0, 1] when its maximum is at most
    1, else as 0..255);
  * only the decoders in ``IMAGE_FORMATS`` run, chosen by content (a renamed ICO is refused);
  * Pillow's decompression-bomb limit (``MAX_PIXELS``) is an error, not a
    warning.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_FORMATS", "IMAGE_SUFFIXES", "ImageError", "MAX_PIXELS", "jpeg_roundtrip", "load_image", "load_rgb", "pil_to_tensor",
           "save_tensor", "tensor_to_pil", "to_rgb"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# Decoders that may run, chosen by the file's *content* (the JPEG one also reads phones' MPO files).
# Everything else Pillow could open (ICO, TGA, PCX, PPM, EPS through Ghostscript, JPEG 2000, ...)
# is refused even when renamed .png: fewer decoders, less attack surface.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")
MAX_PIXELS = 64_000_000  # larger images are refused (Pillow's bomb check at this limit)


class ImageError(ValueError):
    """An input that is not a usable image; the message is meant for the user."""


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
    elif np.nanmax(a, initial=0.0) > 255:
        a = a / 257.0  # 16-bit range to 8-bit
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, alpha channel or None) for a Pillow image of any mode."""
    if getattr(im, "is_animated", False):
        im.seek(0)
    im = ImageOps.exif_transpose(im)
    alpha = None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = _high_depth_to_l(im)
    if im.mode in ("LA", "RGBA", "PA", "La", "RGBa"):
        alpha = im.getchannel("A")
        im = im.convert("RGBA").convert("RGB") if im.mode != "LA" else im.getchannel("L")
    if im.mode != "RGB":
        im = im.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV
    return im, alpha


def load_image(src: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and decode a path, bytes or Pillow image (mode kept, first frame); raises ImageError."""
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        if isinstance(src, Image.Image):
            im = src
        else:
            im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src, formats=IMAGE_FORMATS)
        w, h = im.size
        if w * h > max_pixels:
            raise ImageError(f"image is {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,}")
        if w < 1 or h < 1:
            raise ImageError("image has no pixels")
        if getattr(im, "is_animated", False):
            im.seek(0)
        im.load()
        return ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow refuses twice our limit while opening, from the header (before our check runs): our words
        m = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise ImageError(f"image is {what}; the limit is {max_pixels:,}") from None
    except FileNotFoundError:
        raise ImageError(f"no such file: {src}") from None
    except UnidentifiedImageError:
        raise ImageError("not a PNG, JPEG, BMP, TIFF, WebP or GIF file (judged by its content, not its "
                         "name)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
        detail = str(e).strip()
        said = "" if not detail or "truncated" in detail.lower() else f" ({detail})"
        raise ImageError(f"the image file is damaged or truncated{said}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old


def load_rgb(src: str | Path | bytes | Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``load_image`` converted to RGB (alpha dropped); raises ImageError."""
    try:
        return to_rgb(load_image(src, max_pixels))[0]
    except ImageError:
        raise
    except (OSError, ValueError) as e:
        raise ImageError(f"the image could not be converted to RGB ({e})") from None


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB Pillow image to a float (3, H, W) tensor in [0, 1]."""
    a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Float (3, H, W) tensor in [0, 1] to an RGB Pillow image (rounded to 8 bit)."""
    a = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, mode="RGB")


def save_tensor(x: torch.Tensor, path: str | Path) -> None:
    """Save a (3, H, W) tensor in [0, 1]; the format follows the suffix."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(x).save(path)


def jpeg_roundtrip(im: Image.Image, quality: int) -> Image.Image:
    """``im`` encoded by the real JPEG codec (Pillow's libjpeg, 4:2:0) at ``quality`` and decoded again."""
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
