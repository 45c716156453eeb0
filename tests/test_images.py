import io

import numpy as np
import pytest
from PIL import Image

from darl_core.data.images import ImageError, load_image, load_rgb, to_rgb


def _png(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "RGBA", "CMYK", "I;16", "I", "F", "RGB"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    im = Image.new(mode, (8, 6))
    rgb, alpha = to_rgb(im)
    assert rgb.mode == "RGB" and rgb.size == (8, 6)
    assert (alpha is not None) == (mode in ("LA", "RGBA"))


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    a = np.full((4, 4), 65535, dtype=np.uint16)
    a[0, 0] = 0
    im = Image.fromarray(a)  # mode I;16
    rgb = np.asarray(to_rgb(im)[0])
    assert rgb.max() == 255 and rgb.min() == 0
    f = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))  # mode F in [0, 1]
    assert np.asarray(to_rgb(f)[0]).max() == 128


def test_exif_orientation_applied() -> None:
    im = Image.new("RGB", (10, 4), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = load_rgb(_png(im, "JPEG", exif=exif))
    assert out.size == (4, 10)


def test_animated_uses_first_frame() -> None:
    frames = [Image.new("RGB", (5, 5), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_rgb(buf.getvalue()))
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_bad_inputs_raise_clear_errors() -> None:
    good = _png(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(ImageError, match="not a PNG, JPEG"):
        load_image(b"hello world")
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(good[: len(good) // 2])
    with pytest.raises(ImageError, match="limit"):
        load_image(_png(Image.new("L", (3000, 3000))), max_pixels=1_000_000)
    with pytest.raises(ImageError, match="no such file"):
        load_image("/nonexistent/file.png")


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PCX", "PPM", "SGI", "IM", "SPIDER", "MSP", "EPS", "QOI"])
def test_formats_outside_the_allowlist_are_refused_by_content(tmp_path, fmt: str) -> None:
    """A file of another format renamed .png is refused before any decoder of that format runs."""
    import io as _io

    im = Image.new("L" if fmt in ("MSP", "SPIDER") else "RGB", (32, 32), 128)
    if fmt == "EPS":  # Pillow writes EPS only through Ghostscript: a minimal header is enough to be sniffed
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
    else:
        buf = _io.BytesIO()
        try:
            im.convert("F" if fmt == "SPIDER" else im.mode).save(buf, fmt)
        except (KeyError, OSError, ValueError):
            pytest.skip(f"this Pillow cannot write {fmt}")
        data = buf.getvalue()
        assert Image.open(_io.BytesIO(data)).format  # Pillow itself would have opened it
    (tmp_path / "x.png").write_bytes(data)
    with pytest.raises(ImageError, match="judged by its content"):
        load_image(tmp_path / "x.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"])
def test_allowed_formats_load_whatever_their_name(tmp_path, fmt: str) -> None:
    Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / "x.bin", fmt)
    assert load_image(tmp_path / "x.bin").size == (20, 10)
