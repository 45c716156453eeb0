"""What the page's picture format does to a restoration: WebP at quality 80 (Gradio's default for an
image handed to it) against PNG (what the app uses), on one 256x256 restore with the default models.

    python bench/shown_fidelity.py [--image coffee.png] [--sft DIR] [--rl DIR]

For each picture the Restore tab shows (input, SFT, RL, difference map, zoom strip) and each format:
the encoding time (median of 5), the size, and PSNR of the decoded picture against the picture itself.
Then the texture the comparison is about: the mean absolute mixed second difference of the grey
image (what speckle raises), of SFT and RL as computed and as the page would draw them, beside
PSNR of SFT against RL (how large the difference being compared is).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from darl_core.data.clean import builtin_image
from darl_core.data.degrade import degrade, get_preset
from darl_core.data.images import pil_to_tensor, save_tensor

FORMATS: list[tuple[str, str, dict[str, object]]] = [  # (row name, Pillow format, save options)
    ("WebP q80 (Gradio's default)", "WEBP", {}),
    ("PNG, level 6 (Pillow's default)", "PNG", {}),
    ("PNG, level 1 (the app)", "PNG", {"compress_level": 1}),
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def texture(rgb: np.ndarray) -> float:
    """Mean |mixed second difference| of the grey image, in 8-bit levels: flat areas give ~0, speckle more."""
    g = rgb.astype(np.float64).mean(-1)
    return float(np.abs(g[1:, 1:] - g[:-1, 1:] - g[1:, :-1] + g[:-1, :-1]).mean())


def encode(im: Image.Image, fmt: str, opts: dict[str, object]) -> tuple[bytes, float]:
    times = []
    for _ in range(5):
        buf = io.BytesIO()
        t = time.perf_counter()
        im.save(buf, fmt, **opts)
        times.append(time.perf_counter() - t)
    return buf.getvalue(), statistics.median(times)


def main() -> None:
    from storage import Store
    from ui import AppContext
    from ui.compare import compare_views
    from ui.restore_service import restore

    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="coffee.png", help="a built-in photo (its top-left 256x256, degraded)")
    ap.add_argument("--sft", default=None, help="SFT model folder (default: the app's default)")
    ap.add_argument("--rl", default=None, help="RL model folder (default: the app's default)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    hq = pil_to_tensor(builtin_image(args.image))[None, :, :256, :256]
    save_tensor(degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))[0], tmp / "lq.png")
    ctx = AppContext(Store(directory=tmp / "data"))
    for m in filter(None, (args.sft, args.rl)):  # the app restores with registered (or shipped) models only
        ctx.store.register_checkpoint(m, Path(m).name)
    r = restore(ctx, str(tmp / "lq.png"), "blind", args.sft, args.rl)
    diff, _, zoom = compare_views(r)
    shown = {"input": r.input, "SFT": r.sft, "RL": r.rl, "difference map": diff, "zoom strip": zoom}
    decoded: dict[tuple[str, str], np.ndarray] = {}
    print("| picture | format | encode, ms | KiB | PSNR of the drawn picture, dB |")
    print("|---|---|---:|---:|---:|")
    for name, im in shown.items():
        for row, fmt, opts in FORMATS:
            data, sec = encode(im.convert("RGB"), fmt, opts)
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            decoded[(name, row)] = back
            print(f"| {name} {im.size[0]}x{im.size[1]} | {row} | {sec * 1000:.1f} | {len(data) / 1024:.1f} | "
                  f"{psnr(np.asarray(im.convert('RGB')), back):.2f} |")
    sft, rl = np.asarray(r.sft.convert("RGB")), np.asarray(r.rl.convert("RGB"))
    webp = FORMATS[0][0]
    print(f"\nSFT against RL: PSNR {psnr(sft, rl):.2f} dB (the difference the page is for)")
    print(f"texture (mean |mixed second difference|): SFT {texture(sft):.2f} computed, "
          f"{texture(decoded[('SFT', webp)]):.2f} drawn as WebP; RL {texture(rl):.2f} computed, "
          f"{texture(decoded[('RL', webp)]):.2f} drawn as WebP")


if __name__ == "__main__":
    main()
