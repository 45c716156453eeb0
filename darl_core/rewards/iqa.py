"""darl_iqa: a small learned no-reference IQA network, trained here, offline, without human scores.

The paper's reward is a learned IQA model. The offline classical ones fail as RL rewards here
(docs/results.md: NIQE prefers our restorer's speckle to the clean photo, PIQE prefers noise), and
the learned ones (MUSIQ, CLIPIQA, Q-Align) need weights that cannot be downloaded. So this project
trains its own, *opinion-unaware* in the sense of Liu et al., "RankIQA" (ICCV 2017) and Zhang et al.,
"dipIQ" (TIP 2017): no opinion scores, only orderings that are known by construction. For a clean
photo crop ``c`` and one distortion family at two strengths ``l1 < l2``, the network must score
``c > d(c, l1) > d(c, l2)``; the loss is the logistic (RankNet) loss on each score difference.

Families (each with a continuous strength, several applied together for the ``realistic`` one):
Gaussian and Poisson noise, Gaussian blur, down-and-up resizing, JPEG (the torch model and the real
codec), over-sharpening (unsharp mask), speckle (band-limited noise: the invented texture of an
over-eager diffusion restorer), colour blotches (low-frequency colour noise: its "watercolour"
patches), and ``darl_core.data.degrade``'s ``realistic`` preset against the clean crop.

Scores are relative: they compare versions of the *same* content, which is what an RL reward with
group-normalised advantages needs (every rollout of a group restores the same input). Across
different images the scale has no meaning, like NIQE's.

The photos ``reward_check.is_check_photo`` sets aside (1 in 8 of the training share) are never
used here: ``bench/reward_sanity.py`` judges every reward on them.

    python -m darl_core.rewards.iqa train --minutes 30 --output models/darl-iqa     # the shipped weights
    python -m darl_core.rewards.iqa score IMAGE [IMAGE ...]                         # higher is better
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_DIR", "FAMILIES", "IQAConfig", "TinyIQA", "apply_family", "load_iqa", "train_iqa"]

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "models" / "darl-iqa"


@dataclass
class IQAConfig:
    output: str = "models/darl-iqa"  # folder for model.safetensors, config.json, metrics.jsonl, README.md
    width: int = 16  # channels of the first layer (doubled at each of the 3 downsamplings, capped at 4x)
    patch: int = 96  # side of the training crops
    batch_size: int = 12  # clean crops per step (each with one family at two strengths: 3 images)
    steps: int = 100_000  # optimiser steps (the time box usually ends training first)
    max_minutes: float | None = 30.0  # stop after this much wall time (None: run all steps)
    lr: float = 1e-3  # AdamW learning rate (cosine decay over the time box or the steps)
    weight_decay: float = 1e-4  # AdamW weight decay
    margin_scale: float = 4.0  # the logistic loss acts on (score difference) x this
    rescale: tuple[float, float] = (1.0, 2.0)  # clean photos are down-scaled by a factor in this range
    families: tuple[str, ...] = ()  # families to train on (empty: all of FAMILIES)
    photos: bool = True  # the package photo corpus's training share (minus the check photos)
    builtin: bool = True  # plus the built-in training photos
    restorer: str | None = None  # a restorer whose own outputs are hard negatives (family "restored"; None: unused)
    bank_size: int = 192  # clean crops degraded and restored once for that family (at 2 and at 4 DDIM steps)
    init_from: str | None = None  # start from this trained folder's weights (None: fresh)
    val_every: int = 200  # every N steps log the ordering accuracy on fixed validation triples
    seed: int = 0  # seeds crops, families, strengths and noise
    threads: int = 0  # torch threads (0: torch's default)


def tiny_test() -> IQAConfig:
    """Seconds on a CPU: the tests' config."""
    return IQAConfig(width=4, patch=32, batch_size=2, steps=3, max_minutes=None, photos=False, val_every=2)


PRESETS: dict[str, Callable[[], IQAConfig]] = {"default": IQAConfig, "tiny_test": tiny_test}


class TinyIQA(nn.Module):
    """Conv features at four scales, mean and standard deviation pooled, to one score (higher = better).

    Fully convolutional: any image of at least 32 px a side; the score of a large image is the score
    of the whole image (the pooling is global), not of a crop.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(w):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2)]
            c_in = c
        self.features = nn.ModuleList([nn.Sequential(*layers[4 * i: 4 * i + 4]) for i in range(4)])
        self.head = nn.Sequential(nn.Linear(2 * sum(w), 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B,) scores."""
        h = (x - 0.45) / 0.25
        pooled = []
        for block in self.features:
            h = block(h)
            # Mean and spread of every feature map at every scale: noise and speckle raise the spread of
            # fine-scale responses, blur lowers it; the mean carries colour and brightness context.
            pooled += [h.mean(dim=(2, 3)), h.flatten(2).std(dim=2)]
        return self.head(torch.cat(pooled, 1)).squeeze(1)


# ---- distortion families: (x (B,3,H,W) in [0,1], strength (B,) in [0,1], generator) -> distorted ----

def _gauss_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image isotropic Gaussian blur (sigma in pixels, 0 = none)."""
    k = 2 * math.ceil(3 * float(sigma.max().clamp(min=0.3))) + 1
    r = torch.arange(k, dtype=x.dtype) - k // 2
    g = torch.exp(-0.5 * (r[None] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    g = g / g.sum(1, keepdim=True)
    b, c, hh, ww = x.shape
    pad = k // 2
    mode = "reflect" if min(hh, ww) > pad else "replicate"
    y = F.pad(x.reshape(1, b * c, hh, ww), (pad, pad, 0, 0), mode=mode)
    y = F.conv2d(y, g.repeat_interleave(c, 0)[:, None, None, :], groups=b * c)
    y = F.pad(y, (0, 0, pad, pad), mode=mode)
    y = F.conv2d(y, g.repeat_interleave(c, 0)[:, None, :, None], groups=b * c)
    return y.reshape(b, c, hh, ww)


def _noise(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    sigma = (1.5 + 28.5 * s) / 255  # 1.5 .. 30 levels
    return x + torch.randn(x.shape, generator=g) * sigma[:, None, None, None]


def _poisson(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    peak = (600 * (1 - s) + 15 * s)[:, None, None, None]  # photons at white: 600 (mild) .. 15
    return torch.poisson(x.clamp(0, 1) * peak, generator=g) / peak


def _blur(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return _gauss_blur(x, 0.4 + 2.6 * s)


def _resize(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        f = 1.2 + 2.8 * float(s[i])
        small = F.interpolate(x[i: i + 1], size=(max(8, round(h / f)), max(8, round(w / f))), mode="bicubic",
                              antialias=True, align_corners=False)
        out.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(out)


def _jpeg(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from ..data.degrade import jpeg_compress, pillow_jpeg

    q = (90 - 80 * s).round().long()  # quality 90 .. 10
    real = torch.rand(x.shape[0], generator=g) < 0.5
    out = jpeg_compress(x, q)
    if real.any():
        idx = torch.nonzero(real).flatten()
        out[idx] = pillow_jpeg(x[idx], q[idx])
    return out


def _oversharpen(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    amount = (0.6 + 3.4 * s)[:, None, None, None]
    # The mask's radius is drawn too (sigma 0.7-3 px): sharpening tools use many, and with one radius
    # (1.5) the network missed wider halos.
    sigma = 0.7 + 2.3 * torch.rand(x.shape[0], generator=g)
    return x + amount * (x - _gauss_blur(x, sigma))


def _speckle(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = _gauss_blur(torch.randn(x.shape, generator=g), torch.full_like(s, 0.7))
    n = n / n.flatten(1).std(1)[:, None, None, None]
    return x + n * ((2 + 22 * s) / 255)[:, None, None, None]


def _blotches(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    low = torch.randn(b, 3, max(2, h // 16), max(2, w // 16), generator=g)
    low = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    return x + low * ((2 + 18 * s) / 255)[:, None, None, None]


def _realistic(x: torch.Tensor, s: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    from ..data.degrade import degrade, get_preset

    cfg = get_preset("realistic")
    # Strength scales the preset's ranges; the draws inside stay random per image.
    k = float(0.3 + 0.7 * s.mean())
    cfg = replace(cfg, blur_sigma=(0.2, 0.2 + 2.3 * k), gaussian_sigma=(1.0, 1.0 + 19 * k),
                  scale_range=(1.0, 1.0 + 2.0 * k), jpeg_quality=(int(95 - 65 * k), 95))
    return degrade(x, cfg, g)


FAMILIES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]] = {
    "noise": _noise, "poisson": _poisson, "blur": _blur, "resize": _resize, "jpeg": _jpeg,
    "oversharpen": _oversharpen, "speckle": _speckle, "blotches": _blotches, "realistic": _realistic,
}


def apply_family(name: str, x: torch.Tensor, strength: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One distortion family at per-image strengths in [0, 1], rounded to 8-bit levels like a file."""
    y = FAMILIES[name](x.float(), strength.float().clamp(0, 1), g)
    return torch.round(y.clamp(0, 1) * 255) / 255


# ---- data ----

def _clean_photos(cfg: IQAConfig) -> list[torch.Tensor]:
    """uint8 (3, H, W) tensors of the training photos minus the check photos."""
    from ..data.clean import TRAIN_IMAGES, builtin_image
    from ..data.images import pil_to_tensor
    from .check import is_check_photo

    ims = []
    if cfg.photos:
        from ..data import photos

        ims += [im for i, (_, im) in enumerate(photos.train_images()) if not is_check_photo(i)]
    if cfg.builtin or not ims:
        ims += [builtin_image(n) for i, n in enumerate(TRAIN_IMAGES) if not is_check_photo(i)]
    out = []
    for im in ims:
        x = (pil_to_tensor(im) * 255).round().to(torch.uint8)
        if min(x.shape[1:]) >= cfg.patch:
            out.append(x)
    if not out:
        raise ValueError(f"no training photo has {cfg.patch} px a side")
    return out


def _crops(ims: list[torch.Tensor], n: int, cfg: IQAConfig, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        x = ims[int(torch.randint(len(ims), (1,), generator=g))]
        lo, hi = cfg.rescale
        h, w = x.shape[1:]
        f = min(lo + (hi - lo) * float(torch.rand(1, generator=g)), min(h, w) / cfg.patch)
        side = round(cfg.patch * f)  # a region that down-scales to the patch (cleaning the photo's own JPEG traces)
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        c = x[:, top: top + side, left: left + side].float() / 255
        if side != cfg.patch:
            c = F.interpolate(c[None], size=(cfg.patch, cfg.patch), mode="bicubic", antialias=True,
                              align_corners=False)[0].clamp(0, 1)
        if float(torch.rand(1, generator=g)) < 0.5:
            c = c.flip(-1)
        out.append(torch.round(c * 255) / 255)
    return torch.stack(out)


# Families whose strength is a range the draws stay inside, not a level: mild and strong are both
# worse than clean, but not ordered between themselves.
UNORDERED = {"realistic", "restored"}
Bank = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # clean crops, restored at 2 steps, at 4 steps


@torch.no_grad()
def _restored_bank(ims: list[torch.Tensor], cfg: IQAConfig, g: torch.Generator) -> Bank:
    """The "restored" family: clean crops, degraded (``realistic``) and restored by ``cfg.restorer``.

    A restorer that invents texture (speckle in flat areas) is what a reward must not prefer to the
    clean photo; its own outputs are the hardest negatives there are. Made once, before training.
    """
    from ..data.degrade import degrade, get_preset
    from ..models.loading import load_restorer

    pipe = load_restorer(cfg.restorer)
    clean = _crops(ims, cfg.bank_size, cfg, g)
    lq = degrade(clean, get_preset("realistic"), g)
    outs = []
    for steps in (2, 4):
        parts = [pipe.restore_tensor(lq[i: i + 16], steps, generator=torch.Generator().manual_seed(i), tile_size=None)
                 for i in range(0, len(lq), 16)]
        outs.append(torch.round(torch.cat(parts).clamp(0, 1) * 255) / 255)
    return clean, outs[0], outs[1]


def _triples(ims: list[torch.Tensor], cfg: IQAConfig, families: list[str], g: torch.Generator,
             bank: Bank | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, mild, strong, ordered): one family per clean crop at two strengths; ``ordered`` marks
    the crops whose mild version must also score above the strong one. Family "restored" takes a
    (clean, 2 steps, 4 steps) triple from ``bank``."""
    clean = _crops(ims, cfg.batch_size, cfg, g)
    fam = torch.randint(len(families), (cfg.batch_size,), generator=g)
    s1 = torch.rand(cfg.batch_size, generator=g) * 0.8
    s2 = (s1 + 0.15 + torch.rand(cfg.batch_size, generator=g) * 0.6).clamp(max=1.0)
    mild, strong = torch.empty_like(clean), torch.empty_like(clean)
    for k, name in enumerate(families):
        idx = torch.nonzero(fam == k).flatten()
        if len(idx) and name == "restored":
            if bank is None:
                raise ValueError('family "restored" needs a bank (IQAConfig.restorer)')
            j = torch.randint(len(bank[0]), (len(idx),), generator=g)
            clean[idx], mild[idx], strong[idx] = bank[0][j], bank[1][j], bank[2][j]
        elif len(idx):
            # Mild and strong share their random draws (noise field, blur radius, codec), so the pair
            # differs only in strength and "mild above strong" is about strength alone.
            state = g.get_state()
            mild[idx] = apply_family(name, clean[idx], s1[idx], g)
            g_strong = torch.Generator()
            g_strong.set_state(state)
            strong[idx] = apply_family(name, clean[idx], s2[idx], g_strong)
    ordered = torch.tensor([families[int(f)] not in UNORDERED for f in fam])
    return clean, mild, strong, ordered


def _rank_loss(better: torch.Tensor, worse: torch.Tensor, scale: float,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet's logistic loss: -log sigmoid(scale * (s_better - s_worse)), over the pairs in ``mask``."""
    loss = F.softplus(-scale * (better - worse))
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1)


# ---- training, saving, loading ----

def train_iqa(cfg: IQAConfig, callbacks: dict[str, Callable[..., None]] | None = None) -> Path:
    """Train; returns the output folder (``model.safetensors``, ``config.json``, ``metrics.jsonl``)."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    callbacks = callbacks or {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    families = list(cfg.families or FAMILIES)
    if cfg.restorer and "restored" not in families:
        families.append("restored")
    unknown = set(families) - set(FAMILIES) - ({"restored"} if cfg.restorer else set())
    if unknown:
        raise ValueError(f"unknown distortion families {sorted(unknown)}; choose from {sorted(FAMILIES)}"
                         f" (and 'restored' with a restorer)")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    ims = _clean_photos(cfg)
    # Fixed validation triples (another seed): accuracy = share of the 3 pairs per triple ordered right.
    # (without the "restored" family: the accuracy stays comparable between runs with and without it)
    val = _triples(ims, replace(cfg, batch_size=64), [f for f in families if f != "restored"],
                   torch.Generator().manual_seed(cfg.seed + 999))
    bank = _restored_bank(ims, cfg, g) if cfg.restorer else None
    net = TinyIQA(cfg.width)
    if cfg.init_from:
        net.load_state_dict(load_iqa(cfg.init_from).state_dict())
        net.requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log_path = out / "metrics.jsonl"
    log_path.write_text("")

    def log(rec: dict[str, object]) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    t0 = time.time()
    bar = tqdm(total=cfg.steps, desc="darl_iqa", unit="step", dynamic_ncols=True)
    step = 0
    while step < cfg.steps:
        elapsed = time.time() - t0
        if cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes:
            break
        # Cosine decay over whichever ends first: the steps or the time box.
        frac = max(step / cfg.steps, elapsed / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        clean, mild, strong, ordered = _triples(ims, cfg, families, g, bank)
        s = net(torch.cat([clean, mild, strong]))
        sc, sm, ss = s.chunk(3)
        loss = (_rank_loss(sc, sm, cfg.margin_scale) + _rank_loss(sm, ss, cfg.margin_scale, ordered.float())
                + _rank_loss(sc, ss, cfg.margin_scale)) / 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps):
            rec = {"step": step, "loss": loss.item(), "val_accuracy": _accuracy(net, val),
                   "elapsed_s": round(time.time() - t0, 1)}
            log(rec)
            if "on_log" in callbacks:
                callbacks["on_log"](rec)
    bar.close()
    net.eval()
    final = {"step": step, "val_accuracy": _accuracy(net, val), "elapsed_s": round(time.time() - t0, 1),
             "final": True}
    log(final)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"architecture": "TinyIQA", "width": cfg.width,
                                                 "train_config": asdict(cfg), "steps_done": step,
                                                 "families": families}, indent=2) + "\n")
    return out


@torch.no_grad()
def _accuracy(net: TinyIQA, val: tuple[torch.Tensor, ...]) -> float:
    """Share of the validation pairs ordered right (clean > mild, clean > strong, mild > strong where ordered)."""
    was = net.training
    net.eval()
    sc, sm, ss = (net(v) for v in val[:3])
    net.train(was)
    o = val[3]
    right = (sc > sm).sum() + (sc > ss).sum() + (sm > ss)[o].sum()
    return float(right) / (2 * len(sc) + int(o.sum()))


def load_iqa(folder: str | Path | None = None, device: str | torch.device = "cpu") -> TinyIQA:
    """The network of a trained folder (default: the shipped ``models/darl-iqa``), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_DIR
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"no darl_iqa weights in {folder} (train them: python -m darl_core.rewards.iqa train)")
    info = json.loads((folder / "config.json").read_text())
    net = TinyIQA(int(info["width"]))
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return net.to(device).eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="darl_iqa: train the learned no-reference IQA network, or score images.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on the package photos with synthetic distortions")
    t.add_argument("--preset", default="default", choices=sorted(PRESETS))
    t.add_argument("--output")
    t.add_argument("--minutes", type=float, help="time box (default: the preset's)")
    t.add_argument("--steps", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--restorer", help="a restorer whose outputs are hard negatives (family 'restored')")
    t.add_argument("--init-from", help="start from this trained folder")
    s = sub.add_parser("score", help="score images (higher is better; compare versions of one picture)")
    s.add_argument("images", nargs="+")
    s.add_argument("--model", default=None, help="trained folder (default: models/darl-iqa)")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        cfg = PRESETS[a.preset]()
        for key, val in (("output", a.output), ("max_minutes", a.minutes), ("steps", a.steps), ("seed", a.seed),
                         ("threads", a.threads), ("restorer", a.restorer), ("init_from", a.init_from)):
            if val is not None:
                cfg = replace(cfg, **{key: val})
        print(f"written to {train_iqa(cfg)}")
    else:
        from ..data.images import load_image, pil_to_tensor

        net = load_iqa(a.model)
        for p in a.images:
            x = pil_to_tensor(load_image(p))[None]
            print(f"{float(net(x)[0]):8.3f}  {p}")


if __name__ == "__main__":
    main()
