"""Synthetic degradations: (LQ, HQ) pairs from clean images.

Everything is written in torch so the same code runs on the CPU for the
data loader and on a GPU inside the training loop. Randomness comes only
from the ``torch.Generator`` passed in (a CPU generator, so a seed gives the
same LQ on every device). On a GPU, pass ``noise_generator`` too (a generator
on the images' device): the image-sized noise fields (Gaussian, Poisson, the
noise after compression) are then drawn there instead of on the CPU and
copied over, which made the CPU the bottleneck of GPU training (1.6 steps/s
on an H200); the per-image strengths still come from ``generator``.

Operations (each optional, with a probability in the config):
  * Gaussian blur, isotropic or anisotropic (rotated covariance);
  * down-sampling by a factor from ``scales`` with a random interpolation
    mode, resized back to the input size when ``keep_size`` is set;
  * Gaussian (colour or grey) and Poisson (shot) noise;
  * JPEG compression: YCbCr 4:2:0, 8x8 DCT and quantisation with the
    standard tables of ITU-T T.81 Annex K scaled as libjpeg scales them
    by quality (the lossless entropy-coding stage is left out);
  * ``real_jpeg_prob`` of the compressions go through the real codec
    (Pillow's libjpeg, on the CPU) instead of the torch model of it;
  * optional noise *after* compression (a re-scanned or re-encoded file);
  * down-sampling by a continuous factor (``scale_range``) as well as by
    the fixed ``scales``;
  * an optional second pass of the same operations, milder, in the style
    of Real-ESRGAN's second-order degradation (Wang et al., 2021).
Every strength (blur width, scale, noise level, quality) is drawn per sample.
The result is always rounded to 8-bit levels, as a real LQ image file is.

CLI: ``python -m darl_core.data.degrade IN_DIR OUT_DIR --preset blind --seed 0``.
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["DegradationConfig", "PRESETS", "degrade", "get_preset", "pillow_jpeg"]


@dataclass(frozen=True)
class DegradationConfig:
    blur_prob: float = 0.7  # probability that an image is blurred
    blur_sigma: tuple[float, float] = (0.2, 2.0)  # range of the blur std (pixels)
    aniso_prob: float = 0.4  # share of blurs that are anisotropic
    kernel_size: int = 13  # odd side of the blur kernel
    scales: tuple[int, ...] = (1, 2, 4)  # down-sampling factors to pick from (1 = none)
    keep_size: bool = True  # resize back to the input size after down-sampling
    noise_prob: float = 0.7  # probability of adding noise
    gaussian_sigma: tuple[float, float] = (1.0, 15.0)  # Gaussian noise std, in 0..255 levels
    gray_noise_prob: float = 0.3  # share of Gaussian noise that is the same in all channels
    poisson_prob: float = 0.3  # share of noisy images that get Poisson instead of Gaussian noise
    poisson_peak: tuple[float, float] = (40.0, 400.0)  # photons at full white (lower = noisier)
    jpeg_prob: float = 0.7  # probability of JPEG compression
    jpeg_quality: tuple[int, int] = (35, 95)  # JPEG quality range (libjpeg scale, 1..100)
    second_order_prob: float = 0.0  # probability of a second, milder pass (Real-ESRGAN style)
    real_jpeg_prob: float = 0.0  # share of JPEG compressions done by Pillow's real codec (CPU)
    post_noise_prob: float = 0.0  # probability of mild Gaussian noise after the JPEG step
    post_noise_sigma: tuple[float, float] = (1.0, 5.0)  # its std range, in 0..255 levels
    scale_range: tuple[float, float] | None = None  # with keep_size: a continuous down-scale factor
                                                    # drawn from this range replaces ``scales``


def blind() -> DegradationConfig:
    """Mixed blur, down-sampling, noise and JPEG; output has the input's size."""
    return DegradationConfig()


def blind_hard() -> DegradationConfig:
    """The blind mix with a Real-ESRGAN-style second-order pass."""
    return replace(blind(), second_order_prob=0.5)


def denoise() -> DegradationConfig:
    """Gaussian or Poisson noise only."""
    return DegradationConfig(blur_prob=0.0, scales=(1,), noise_prob=1.0,
                             gaussian_sigma=(5.0, 30.0), jpeg_prob=0.0)


def deblur() -> DegradationConfig:
    """Gaussian blur with a little noise, as a camera would add."""
    return DegradationConfig(blur_prob=1.0, blur_sigma=(0.8, 3.0), scales=(1,),
                             noise_prob=0.5, gaussian_sigma=(0.5, 3.0), jpeg_prob=0.0)


def jpeg() -> DegradationConfig:
    """JPEG compression artefacts only."""
    return DegradationConfig(blur_prob=0.0, scales=(1,), noise_prob=0.0,
                             jpeg_prob=1.0, jpeg_quality=(10, 60))


def realistic() -> DegradationConfig:
    """What photos meet in the wild, for the shipped restorer: wider blur, continuous rescaling,
    noise before and after compression, half of the JPEGs from the real codec, and a
    second-order pass on a third of the images."""
    return DegradationConfig(blur_prob=0.8, blur_sigma=(0.2, 2.5), scale_range=(1.0, 3.0),
                             noise_prob=0.8, gaussian_sigma=(1.0, 20.0), jpeg_prob=0.8,
                             jpeg_quality=(30, 95), real_jpeg_prob=0.5, post_noise_prob=0.2,
                             second_order_prob=0.3)


def sr4() -> DegradationConfig:
    """x4 super-resolution: mild blur, down-sampling by 4 (output is 4x smaller)."""
    return DegradationConfig(blur_prob=0.5, blur_sigma=(0.2, 1.2), scales=(4,), keep_size=False,
                             noise_prob=0.3, gaussian_sigma=(0.5, 5.0), jpeg_prob=0.3,
                             jpeg_quality=(70, 95))


PRESETS = {"blind": blind, "blind_hard": blind_hard, "realistic": realistic, "denoise": denoise,
           "deblur": deblur, "jpeg": jpeg, "sr4": sr4}


def get_preset(name: str) -> DegradationConfig:
    """The degradation config of a named task preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown task preset {name!r}; choose one of {sorted(PRESETS)}") from None


def output_scale(cfg: DegradationConfig) -> int:
    """How many times smaller the LQ is than the HQ (1 when the size is kept)."""
    return 1 if cfg.keep_size else max(cfg.scales)


# ----------------------------------------------------------------------------- helpers

def _uniform(g: torch.Generator, lo: float, hi: float, n: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _gaussian_kernels(sx: torch.Tensor, sy: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size, size) normalised Gaussian kernels with a rotated covariance."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = c * xx + s * yy  # coordinates along the kernel's principal axes
    v = -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sx[:, None, None]) ** 2 + (v / sy[:, None, None]) ** 2))
    return k / k.sum(dim=(1, 2), keepdim=True)


def _blur(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator, strength: float) -> torch.Tensor:
    b, ch = x.shape[:2]
    apply = torch.rand(b, generator=g) < cfg.blur_prob
    sx = _uniform(g, cfg.blur_sigma[0], cfg.blur_sigma[1] * strength, b)
    aniso = torch.rand(b, generator=g) < cfg.aniso_prob
    sy = torch.where(aniso, _uniform(g, cfg.blur_sigma[0], cfg.blur_sigma[1] * strength, b), sx)
    theta = _uniform(g, 0.0, math.pi, b)
    if not apply.any():
        return x
    size = cfg.kernel_size
    k = _gaussian_kernels(sx, sy, theta, size)
    delta = torch.zeros(size, size)
    delta[size // 2, size // 2] = 1.0
    k = torch.where(apply[:, None, None], k, delta)  # identity kernel where no blur is drawn
    w = k.repeat_interleave(ch, dim=0)[:, None].to(x)  # (B*C, 1, k, k), one kernel per image
    pad = size // 2
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    xp = F.pad(x.reshape(1, b * ch, *x.shape[-2:]), (pad,) * 4, mode=mode)
    return F.conv2d(xp, w, groups=b * ch).reshape_as(x)


_MODES = ("bilinear", "bicubic", "area")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kw = {} if mode == "area" else {"align_corners": False}
    if mode == "bicubic":
        kw["antialias"] = True
    return F.interpolate(x, size=size, mode=mode, **kw)


def _downsample(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    scale_idx = torch.randint(len(cfg.scales), (b,), generator=g)
    down_mode = torch.randint(len(_MODES), (b,), generator=g)
    up_mode = torch.randint(2, (b,), generator=g)  # bilinear or bicubic back up
    if not cfg.keep_size:
        s = max(cfg.scales)  # fixed factor: the batch keeps one output size
        return _resize(x, (h // s, w // s), _MODES[int(down_mode[0])])
    factors = _uniform(g, *cfg.scale_range, b) if cfg.scale_range is not None else None
    out = []
    for i in range(b):
        s = float(factors[i]) if factors is not None else cfg.scales[int(scale_idx[i])]
        xi = x[i : i + 1]
        if s > 1.01:
            xi = _resize(xi, (max(1, round(h / s)), max(1, round(w / s))), _MODES[int(down_mode[i])])
            xi = _resize(xi, (h, w), _MODES[int(up_mode[i])])
        out.append(xi)
    return torch.cat(out)


def _noise(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator, strength: float,
           ng: torch.Generator | None = None) -> torch.Tensor:
    b = x.shape[0]
    apply = (torch.rand(b, generator=g) < cfg.noise_prob).float()
    poisson = (torch.rand(b, generator=g) < cfg.poisson_prob).float()
    gray = torch.rand(b, generator=g) < cfg.gray_noise_prob
    sigma = _uniform(g, cfg.gaussian_sigma[0], cfg.gaussian_sigma[1] * strength, b) / 255.0
    peak = _uniform(g, cfg.poisson_peak[0] / strength, cfg.poisson_peak[1], b)
    if ng is None:  # everything from the CPU generator: the same LQ on every device
        n = torch.randn(x.shape, generator=g)
    else:  # the noise field where the images are
        n = torch.randn(x.shape, generator=ng, device=x.device, dtype=x.dtype)
    n = torch.where(gray.to(n.device)[:, None, None, None], n[:, :1].expand_as(n), n)
    gauss = n.to(x) * sigma.to(x)[:, None, None, None]
    if ng is None:
        lam = (x.detach().cpu().clamp(0, 1) * peak[:, None, None, None])
        shot = (torch.poisson(lam, generator=g) / peak[:, None, None, None]).to(x) - x.clamp(0, 1)
    else:
        pk = peak.to(x)[:, None, None, None]
        shot = torch.poisson(x.detach().clamp(0, 1) * pk, generator=ng) / pk - x.clamp(0, 1)
    p = poisson.to(x)[:, None, None, None]
    a = apply.to(x)[:, None, None, None]
    return x + a * ((1 - p) * gauss + p * shot)


# Standard JPEG quantisation tables, ITU-T T.81 (ISO/IEC 10918-1) Annex K, Tables K.1 and K.2.
_LUMA_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_CHROMA_Q = torch.full((8, 8), 99.0)
_CHROMA_Q[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                                 dtype=torch.float32)


def _dct_matrix() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float()  # orthonormal DCT-II: coeffs = D @ block @ D.T


_DCT = _dct_matrix()


def _quality_tables(quality: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """libjpeg's quality scaling of a base table, per image: (B, 8, 8)."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    return torch.floor((table[None] * scale[:, None, None] + 50) / 100).clamp(1, 255)


def _jpeg_plane(p: torch.Tensor, qt: torch.Tensor) -> torch.Tensor:
    """DCT-quantise-IDCT of a (B, H, W) plane (H, W multiples of 8) in 0..255 levels."""
    b, h, w = p.shape
    d = _DCT.to(p)
    blocks = (p - 128.0).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    qt = qt.to(p)[:, None, None]
    coef = torch.round(coef / qt) * qt
    rec = d.T @ coef @ d
    return rec.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128.0


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG round trip of (B, 3, H, W) images in [0, 1] at per-image qualities."""
    b, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    v = F.pad(x.clamp(0, 1) * 255.0, (0, pw, 0, ph), mode="replicate")
    r, gch, bl = v[:, 0], v[:, 1], v[:, 2]
    # JFIF full-range RGB -> YCbCr
    y = 0.299 * r + 0.587 * gch + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * gch + 0.5 * bl + 128.0
    cr = 0.5 * r - 0.418688 * gch - 0.081312 * bl + 128.0
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # 4:2:0 subsampling
    y = _jpeg_plane(y, _quality_tables(quality, _LUMA_Q))
    lq = _quality_tables(quality, _CHROMA_Q)
    cb = _jpeg_plane(chroma[:, 0], lq)
    cr = _jpeg_plane(chroma[:, 1], lq)
    chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0] - 128.0, chroma[:, 1] - 128.0
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    rgb = torch.round(rgb.clamp(0, 255)) / 255.0
    return rgb[:, :, :h, :w]


def pillow_jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG round trip of (B, 3, H, W) images in [0, 1] through Pillow's libjpeg (4:2:0), per-image qualities."""
    from .images import jpeg_roundtrip, pil_to_tensor, tensor_to_pil

    return torch.stack([pil_to_tensor(jpeg_roundtrip(tensor_to_pil(a), q))
                        for a, q in zip(x.detach().float().cpu(), quality.tolist())]).to(x)


def _jpeg(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator, quality_lo: int) -> torch.Tensor:
    b = x.shape[0]
    apply = torch.rand(b, generator=g) < cfg.jpeg_prob
    quality = torch.randint(quality_lo, cfg.jpeg_quality[1] + 1, (b,), generator=g)
    # Drawn only when used, so the presets without it keep their random streams (and their data).
    real = torch.rand(b, generator=g) < cfg.real_jpeg_prob if cfg.real_jpeg_prob > 0 else torch.zeros(b, dtype=torch.bool)
    if not apply.any():
        return x
    out = jpeg_compress(x, quality)
    if (real & apply).any():
        idx = torch.nonzero(real & apply).flatten()
        out[idx.to(out.device)] = pillow_jpeg(x[idx.to(x.device)], quality[idx])
    return torch.where(apply.to(x.device)[:, None, None, None], out, x)


def _post_noise(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator,
                ng: torch.Generator | None = None) -> torch.Tensor:
    b = x.shape[0]
    apply = torch.rand(b, generator=g) < cfg.post_noise_prob
    sigma = _uniform(g, *cfg.post_noise_sigma, b) / 255.0
    if not apply.any():
        return x
    field = (torch.randn(x.shape, generator=g) if ng is None
             else torch.randn(x.shape, generator=ng, device=x.device, dtype=x.dtype))
    n = field.to(x) * (sigma * apply).to(x)[:, None, None, None]
    return (x + n).clamp(0, 1)


def _one_pass(x: torch.Tensor, cfg: DegradationConfig, g: torch.Generator, strength: float,
              quality_lo: int, ng: torch.Generator | None) -> torch.Tensor:
    x = _blur(x, cfg, g, strength)
    x = _downsample(x, cfg, g)
    x = _noise(x, cfg, g, strength, ng).clamp(0, 1)
    x = _jpeg(x, cfg, g, quality_lo)
    return _post_noise(x, cfg, g, ng) if cfg.post_noise_prob > 0 else x


def degrade(hq: torch.Tensor, cfg: DegradationConfig, generator: torch.Generator,
            noise_generator: torch.Generator | None = None) -> torch.Tensor:
    """Degrade a batch of clean images (B, 3, H, W) in [0, 1]; same seed, same result.

    The output has the input's size unless the config down-samples without
    ``keep_size`` (then it is ``output_scale(cfg)`` times smaller).
    ``noise_generator`` (on ``hq``'s device): draw the image-sized noise with it,
    where the images are, instead of on the CPU (see the module docstring).
    """
    if noise_generator is not None and noise_generator.device.type != hq.device.type:
        raise ValueError(f"noise_generator is on {noise_generator.device}, the images on {hq.device}")
    if hq.ndim != 4 or hq.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(hq.shape)}")
    x = _one_pass(hq.float(), cfg, generator, 1.0, cfg.jpeg_quality[0], noise_generator)
    second = torch.rand(hq.shape[0], generator=generator) < cfg.second_order_prob
    if second.any():
        mild = replace(cfg, scales=(1,), keep_size=True, scale_range=None)  # the second pass never changes the size
        y = _one_pass(x, mild, generator, 0.5, (cfg.jpeg_quality[0] + cfg.jpeg_quality[1]) // 2, noise_generator)
        x = torch.where(second.to(x.device)[:, None, None, None], y, x)
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def seed_for(name: str, seed: int) -> int:
    """A per-file seed that does not depend on the order files are listed in."""
    return (zlib.crc32(name.encode()) + 1_000_003 * seed) % (2**63)


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    from .images import IMAGE_SUFFIXES, load_rgb, pil_to_tensor, save_tensor

    ap = argparse.ArgumentParser(description="Degrade every image of a folder with a task preset.")
    ap.add_argument("input", type=Path, help="folder of clean (HQ) images")
    ap.add_argument("output", type=Path, help="folder for the degraded (LQ) images, written as PNG")
    ap.add_argument("--preset", default="blind", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    files = sorted(p for p in args.input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        ap.error(f"no images in {args.input}")
    cfg = get_preset(args.preset)
    args.output.mkdir(parents=True, exist_ok=True)
    for p in tqdm(files, desc=f"degrade ({args.preset})", unit="img"):
        g = torch.Generator().manual_seed(seed_for(p.name, args.seed))
        lq = degrade(pil_to_tensor(load_rgb(p))[None], cfg, g)
        save_tensor(lq[0], args.output / (p.stem + ".png"))


if __name__ == "__main__":
    main()
