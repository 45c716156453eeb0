"""The restorer: a conditional pixel-space diffusion model as a diffusers pipeline.

Formulation (our choice, see the SFT issue's probe): the diffusion runs on the
*residual* between the clean image and the degraded input,

    cond = 2 * lq - 1                        (LQ in [-1, 1], concatenated to x_t)
    x0   = (2 * hq - 1 - cond) / residual_scale
    hq_hat = cond + residual_scale * x0_hat

so the low frequencies and colours come straight from the input and the
network only has to add back what the degradation removed. The UNet predicts
v (Salimans & Ho, 2022) under a cosine schedule; sampling is DDIM with
"trailing" timesteps, ending at abar = 1 (the final step is deterministic).

Two stages (optional, as DiffBIR): a small regression UNet (``stage1``,
trained for fidelity with an L1 loss) first restores the input, and the
diffusion runs on the residual *around stage 1's output*,

    cond = stage1(lq)                        (in [-1, 1])
    x0   = (2 * hq - 1 - cond) / residual_scale

so one DDIM step (or ``num_inference_steps=0``, stage 1 alone) gives stage
1's fidelity and more steps add detail that the regression averaged away.
A model without ``stage1`` is the single-stage design (cond = the LQ).

Inputs of any size are reflect-padded to a multiple of the UNet's total
down-sampling, and images larger than ``tile_size`` are denoised tile by tile
at every step (see ``tiling``). Grey inputs come back grey; an alpha channel
is carried through unchanged (resized with the image for x4 models).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from PIL import Image

from .defaults import DEFAULT_STEPS, DEFAULT_TILE
from .lora import merged_copy
from .restorer import Noise, Restorer, Trajectory, timestep_batch
from .tiling import tiled_apply

__all__ = ["DEFAULT_STEPS", "DEFAULT_TILE", "RestorationPipeline", "Trajectory", "build_stage1", "build_unet",
           "make_scheduler"]



def make_scheduler() -> DDIMScheduler:
    """The noise schedule every DARL restorer is trained and sampled with."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")


def build_unet(size: str = "small", seed: int = 0) -> UNet2DModel:
    """A freshly initialised conditional UNet (6 input channels: x_t and the LQ image).

    ``tiny`` is the test model (channels 8/16); ``small`` is the first two-stage model's (6.3 M, all
    levels at full resolution). ``fast`` (6.1 M) sees x_t and the conditioning pixel-unshuffled by 2
    (24 channels at half resolution; ``RestorationPipeline.unshuffle``) with one ResNet per level:
    0.31 s against small's 0.80 s for a 256x256 forward pass on 2 CPU cores (``bench/cpu_speed.py``).
    ``tiny_fast`` is its test model.
    """
    torch.manual_seed(seed)
    if size in ("fast", "tiny_fast"):
        tiny = size == "tiny_fast"
        levels = (8, 16) if tiny else (64, 128, 128, 128)
        return UNet2DModel(sample_size=8 if tiny else 64, in_channels=6 * 4, out_channels=3 * 4, layers_per_block=1,
                           block_out_channels=levels, norm_num_groups=8 if tiny else 32,
                           down_block_types=("DownBlock2D",) * (len(levels) - 1) + ("AttnDownBlock2D",),
                           up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(levels) - 1),
                           attention_head_dim=8 if tiny else 32)
    if size == "tiny":
        return UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                           block_out_channels=(8, 16), norm_num_groups=8,
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"))
    if size == "small":
        return UNet2DModel(sample_size=128, in_channels=6, out_channels=3, layers_per_block=2,
                           block_out_channels=(32, 64, 128, 128), norm_num_groups=32,
                           down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
                           attention_head_dim=32)
    raise ValueError(f"unknown UNet size {size!r} (tiny, small, fast, tiny_fast)")


def build_stage1(size: str = "small", seed: int = 0) -> UNet2DModel:
    """A freshly initialised stage-1 regression UNet (LQ in, residual out; its timestep is always 0).

    ``tiny`` is the test model; ``small`` (no attention, 4 levels) is the shipped one's.
    The last layer starts at zero, so an untrained stage 1 is the identity.
    """
    torch.manual_seed(seed)
    if size == "tiny":
        net = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(8, 16), norm_num_groups=8,
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    elif size == "small":  # 2.5 M parameters, 16 channels at full resolution: ~1.3 s a step of 12 x 96^2 on 2 cores
        net = UNet2DModel(sample_size=128, in_channels=3, out_channels=3, layers_per_block=1,
                          block_out_channels=(16, 32, 64, 128), norm_num_groups=8,
                          down_block_types=("DownBlock2D",) * 4, up_block_types=("UpBlock2D",) * 4)
    else:
        raise ValueError(f"unknown stage-1 size {size!r} (tiny, small)")
    torch.nn.init.zeros_(net.conv_out.weight)
    torch.nn.init.zeros_(net.conv_out.bias)
    return net


def unshuffle_factor(unet: torch.nn.Module) -> int:
    """Space-to-depth factor of a pixel denoiser, read off its channels: a UNet with 6 u^2 inputs and
    3 u^2 outputs sees [x_t, cond] pixel-unshuffled by u (u = 1: at full resolution)."""
    cin, cout = unet.config.in_channels, unet.config.out_channels
    u = math.isqrt(cin // 6)
    if cin != 6 * u * u or cout != 3 * u * u:
        raise ValueError(f"a pixel denoiser needs 6*u^2 input and 3*u^2 output channels, got {cin} and {cout}")
    return u


def weights_digest(net: torch.nn.Module) -> str:
    """A digest of a network's parameter values, recomputed only when a parameter changed (in place,
    reloaded, moved or cast): two loaded copies of the same weights have the same digest."""
    params = list(net.parameters())
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cached = getattr(net, "_darl_digest", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.blake2b(digest_size=16)
    for p in params:
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    net._darl_digest = (key, h.hexdigest())
    return net._darl_digest[1]


class Stage1Cache:
    """The last few stage-1 restorations, keyed by stage 1's weights and the input. The app restores each
    upload with an SFT model and its RL fine-tune; RL trains the denoiser only, so both share stage 1
    and the second restore reuses the first's (one network pass less; stage 1 is deterministic)."""

    def __init__(self, size: int = 2) -> None:
        self.size, self.items = size, OrderedDict()

    @staticmethod
    def key(net: torch.nn.Module, c: torch.Tensor, tile_size: int | None, tile_overlap: int) -> tuple:
        h = hashlib.blake2b(c.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(), digest_size=16)
        autocast = torch.is_autocast_enabled(c.device.type)
        return weights_digest(net), str(c.device), autocast, tuple(c.shape), h.hexdigest(), tile_size, tile_overlap

    def get(self, key: tuple) -> torch.Tensor | None:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def clear(self) -> None:
        self.items.clear()

    def put(self, key: tuple, value: torch.Tensor) -> None:
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)


STAGE1_CACHE = Stage1Cache()  # shared by every loaded pipeline of this process (inference only)


class RestorationPipeline(DiffusionPipeline, Restorer):
    """Conditional residual diffusion restorer (see the module docstring); the "pixel" family."""

    model_cpu_offload_seq = "stage1->unet"
    _optional_components = ["stage1"]
    family = "pixel"
    fixed_condition = True  # stage 1 is deterministic (and the RL trainer never trains it)

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, residual_scale: float = 0.5,
                 upscale: int = 1, stage1: UNet2DModel | None = None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, stage1=stage1)
        self.register_to_config(residual_scale=residual_scale, upscale=upscale)

    def regress(self, lq: torch.Tensor, tile_size: int | None = 256, tile_overlap: int = 32,
                net: torch.nn.Module | None = None) -> torch.Tensor:
        """Stage 1: LQ batch in [0, 1] (at output size) -> its regression restoration in [-1, 1].

        Identity without a stage 1. Tiled like the denoiser, so memory does not grow with the image.
        ``net`` replaces the model's own stage 1 (the trainer passes the one it optimises).
        """
        c = lq.clamp(0, 1) * 2 - 1
        cached = net is None and not torch.is_grad_enabled()  # inference with the model's own stage 1
        net = net if net is not None else self.stage1
        if net is None:
            return c
        if cached:
            key = STAGE1_CACHE.key(net, c, tile_size, tile_overlap)
            hit = STAGE1_CACHE.get(key)
            if hit is not None:
                return hit.clone()
        dtype = next(net.parameters()).dtype

        def fn(z: torch.Tensor) -> torch.Tensor:
            return net(z, timestep_batch(0, z.shape[0], z.device)).sample
        h, w = c.shape[-2:]
        m = 2 ** (len(net.config.block_out_channels) - 1)
        pad = (0, (-w) % m, 0, (-h) % m)
        cp = F.pad(c, pad, mode="replicate") if any(pad) else c
        if tile_size is not None and tile_size % m:
            tile_size += m - tile_size % m
        r = tiled_apply(fn, cp.to(dtype), tile_size, tile_overlap, m)[..., :h, :w].float()
        out = (c + r).clamp(-1, 1)
        if cached:
            STAGE1_CACHE.put(key, out.clone())
        return out

    # ------------------------------------------------------------------ the Restorer interface
    @property
    def output_scale(self) -> int:
        return int(self.config.upscale)

    @property
    def has_stage1(self) -> bool:
        return self.stage1 is not None

    @property
    def unshuffle(self) -> int:
        """Space-to-depth factor of the denoiser (``unshuffle_factor`` of ``self.unet``)."""
        return unshuffle_factor(self.unet)

    @property
    def multiple(self) -> int:
        return super().multiple * self.unshuffle

    def inference_modules(self) -> list[torch.nn.Module]:
        return [self.unet] + ([self.stage1] if self.stage1 is not None else [])

    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Diffusion target for a clean image ``hq`` in [0, 1]."""
        return (2 * hq - 1 - cond) / self.config.residual_scale

    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] for a (predicted) residual ``x0``."""
        return ((cond + self.config.residual_scale * x0 + 1) / 2).clamp(0, 1)

    def condition(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        """LQ batch in [0, 1] -> conditioning in [-1, 1] (upsampled for x4 models): stage 1's
        restoration when the model has one, else the LQ itself."""
        if self.config.upscale > 1:
            lq = F.interpolate(lq, scale_factor=self.config.upscale, mode="bicubic", align_corners=False)
        with torch.no_grad():
            return self.regress(lq)

    def latent_shape(self, cond: torch.Tensor) -> tuple[int, ...]:
        return tuple(cond.shape)

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, tile_size: int | None = None,
                tile_overlap: int = 32, unet: torch.nn.Module | None = None) -> torch.Tensor:
        """Model output (v) for state ``x_t`` at timestep(s) ``t``, tiled when ``tile_size`` is set."""
        net = unet if unet is not None else self.unet
        dtype = next(net.parameters()).dtype
        u = unshuffle_factor(net)  # of the net that runs: a distillation teacher may differ from self.unet

        def fn(z: torch.Tensor) -> torch.Tensor:  # z = [x_t, cond] on the channel axis
            if u == 1:
                return net(z, timestep_batch(t, z.shape[0], z.device)).sample
            out = net(F.pixel_unshuffle(z, u), timestep_batch(t, z.shape[0], z.device)).sample
            return F.pixel_shuffle(out, u)
        m = 2 ** (len(net.config.block_out_channels) - 1) * u
        return tiled_apply(fn, torch.cat([x_t, cond], dim=1).to(dtype), tile_size, tile_overlap, m)

    def save(self, path: str | os.PathLike) -> None:
        self.save_pretrained(path)

    def export(self, path: str | os.PathLike) -> None:
        """The pipeline; with a LoRA, the adapter merged into a plain pipeline (small pixel models:
        the app loads it as it is, with no base to find)."""
        if not getattr(self.unet, "_darl_lora", None):
            return self.save(path)
        unet = self.unet
        fresh = merged_copy(unet, type(unet).from_config(unet.config).to(unet.device, unet.dtype))
        RestorationPipeline(fresh, self.scheduler, self.config.residual_scale, self.config.upscale,
                            stage1=self.stage1).save_pretrained(path)

    @torch.no_grad()
    def __call__(self, image: Image.Image | list[Image.Image], num_inference_steps: int = DEFAULT_STEPS,
                 eta: float = 0.0, seed: int | None = 0, tile_size: int | None = 256,
                 tile_overlap: int = 32, progress: bool = False,
                 callback: Callable[[float, str], None] | None = None,
                 self_ensemble: bool = False) -> list[Image.Image]:
        """Restore Pillow images of any size and mode; returns a list of Pillow images
        (``callback``: per-tile progress; ``self_ensemble``: 0 steps only; see ``Restorer.restore_tensor``)."""
        return self.restore_images(image, num_inference_steps, eta, seed, tile_size, tile_overlap, progress,
                                   callback, self_ensemble)
