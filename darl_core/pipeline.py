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

Inputs of any size are reflect-padded to a multiple of the UNet's total
down-sampling, and images larger than ``tile_size`` are denoised tile by tile
at every step (see ``tiling``). Grey inputs come back grey; an alpha channel
is carried through unchanged (resized with the image for x4 models).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from PIL import Image
from tqdm.auto import tqdm

from .images import pil_to_tensor, tensor_to_pil, to_rgb
from .sampler import ddim_step
from .tiling import tiled_apply

__all__ = ["DEFAULT_MODEL", "DEFAULT_STEPS", "ModelLoadError", "RestorationPipeline", "Trajectory", "build_unet", "load_pipeline",
           "make_scheduler"]

DEFAULT_STEPS = 4  # DDIM steps: the shipped models were evaluated at this setting
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "sft-blind"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def make_scheduler() -> DDIMScheduler:
    """The noise schedule every DARL restorer is trained and sampled with."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True,
                         timestep_spacing="trailing")


def build_unet(size: str = "small", seed: int = 0) -> UNet2DModel:
    """A freshly initialised conditional UNet (6 input channels: x_t and the LQ image).

    ``tiny`` is the test model (channels 8/16); ``small`` is the shipped one.
    """
    torch.manual_seed(seed)
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
    raise ValueError(f"unknown UNet size {size!r} (tiny, small)")


@dataclass
class Trajectory:
    """A stochastic rollout, everything the RL update needs (tensors on the model's device)."""

    cond: torch.Tensor  # (B, 3, H, W) LQ in [-1, 1]
    timesteps: list[int]  # t of each recorded (stochastic) step
    step_index: list[int] = field(default_factory=list)  # position of each recorded step in the schedule
    x_t: list[torch.Tensor] = field(default_factory=list)  # state before each recorded step
    x_prev: list[torch.Tensor] = field(default_factory=list)  # sampled state after it
    log_prob: list[torch.Tensor] = field(default_factory=list)  # (B,) log p_old of each transition
    pred_image: list[torch.Tensor] = field(default_factory=list)  # x0_hat of every step as an image in [0, 1]
    final: torch.Tensor | None = None  # (B, 3, H, W) restored image in [0, 1]


class RestorationPipeline(DiffusionPipeline):
    """Conditional residual diffusion restorer (see the module docstring)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, residual_scale: float = 0.5,
                 upscale: int = 1):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(residual_scale=residual_scale, upscale=upscale)

    # ------------------------------------------------------------------ tensors
    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (the UNet's total down-sampling)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Diffusion target for a clean image ``hq`` in [0, 1]."""
        return (2 * hq - 1 - cond) / self.config.residual_scale

    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] for a (predicted) residual ``x0``."""
        return ((cond + self.config.residual_scale * x0 + 1) / 2).clamp(0, 1)

    def condition(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ batch in [0, 1] -> conditioning in [-1, 1], upsampled for x4 models."""
        if self.config.upscale > 1:
            lq = F.interpolate(lq, scale_factor=self.config.upscale, mode="bicubic", align_corners=False)
        return lq.clamp(0, 1) * 2 - 1

    def predict(self, x_t: torch.Tensor, t: int, cond: torch.Tensor, tile_size: int | None = None,
                tile_overlap: int = 32) -> torch.Tensor:
        """Model output (v) for state ``x_t`` at timestep ``t``, tiled when ``tile_size`` is set."""
        def fn(z: torch.Tensor) -> torch.Tensor:  # z = [x_t, cond] on the channel axis
            tt = torch.full((z.shape[0],), int(t), device=z.device, dtype=torch.long)
            return self.unet(z, tt).sample
        return tiled_apply(fn, torch.cat([x_t, cond], dim=1), tile_size, tile_overlap)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, (h, w)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        # Noise from a CPU generator: a seed gives the same restoration on every device.
        return torch.randn(shape, generator=generator).to(self.device, self.unet.dtype)

    @torch.no_grad()
    def restore_tensor(self, lq: torch.Tensor, num_inference_steps: int = DEFAULT_STEPS, eta: float = 0.0,
                       generator: torch.Generator | None = None, tile_size: int | None = 256,
                       tile_overlap: int = 32, progress: bool = False) -> torch.Tensor:
        """Restore a (B, 3, H, W) batch in [0, 1]; returns (B, 3, H*upscale, W*upscale) in [0, 1]."""
        if tile_size is not None and tile_size % self.multiple:
            raise ValueError(f"tile_size must be a multiple of {self.multiple}, got {tile_size}")
        cond, (h, w) = self._pad(self.condition(lq.to(self.device, self.unet.dtype)))
        self.scheduler.set_timesteps(num_inference_steps)
        x = self._noise(tuple(cond.shape), generator)
        x0 = x
        for t in tqdm(self.scheduler.timesteps, desc="restore", disable=not progress, leave=False):
            out = self.predict(x, int(t), cond, tile_size, tile_overlap)
            step = ddim_step(self.scheduler, out, int(t), x, eta=eta, generator=generator)
            x, x0 = step.prev_sample, step.pred_x0
        return self.to_image(x0, cond)[..., :h, :w].float()

    def rollout(self, lq: torch.Tensor, num_inference_steps: int, eta: float,
                generator: torch.Generator | None = None) -> Trajectory:
        """Stochastic rollout recording every stochastic step's transition and log-probability.

        ``pred_image[j]`` is x0_hat of step j as an image; the consequence of the
        transition recorded at ``step_index[k]`` is ``pred_image[step_index[k] + 1]``.
        """
        with torch.no_grad():
            cond, _ = self._pad(self.condition(lq.to(self.device, self.unet.dtype)))
            self.scheduler.set_timesteps(num_inference_steps)
            traj = Trajectory(cond=cond, timesteps=[])
            x = self._noise(tuple(cond.shape), generator)
            for j, t in enumerate(self.scheduler.timesteps):
                out = self.predict(x, int(t), cond).float()
                step = ddim_step(self.scheduler, out, int(t), x, eta=eta, generator=generator)
                if step.stochastic:
                    traj.timesteps.append(int(t))
                    traj.step_index.append(j)
                    traj.x_t.append(x)
                    traj.x_prev.append(step.prev_sample)
                    traj.log_prob.append(step.log_prob)
                traj.pred_image.append(self.to_image(step.pred_x0, cond))
                x = step.prev_sample
            traj.final = traj.pred_image[-1]
        return traj

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def __call__(self, image: Image.Image | list[Image.Image], num_inference_steps: int = DEFAULT_STEPS,
                 eta: float = 0.0, seed: int | None = 0, tile_size: int | None = 256,
                 tile_overlap: int = 32, progress: bool = False) -> list[Image.Image]:
        """Restore Pillow images of any size and mode; returns a list of Pillow images."""
        images = image if isinstance(image, list) else [image]
        results = []
        for im in images:
            grey = im.mode in ("1", "L", "LA", "I", "I;16", "F")
            rgb, alpha = to_rgb(im)
            g = torch.Generator().manual_seed(seed) if seed is not None else None
            out = self.restore_tensor(pil_to_tensor(rgb)[None], num_inference_steps, eta, g,
                                      tile_size, tile_overlap, progress)
            res = tensor_to_pil(out[0])
            if grey:
                res = res.convert("L")
            if alpha is not None:
                res.putalpha(alpha.resize(res.size, Image.Resampling.BICUBIC))
            results.append(res)
        return results


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> RestorationPipeline:
    """Load a restorer from a local folder or a Hugging Face repo id (cache first).

    Raises ``ModelLoadError`` with an actionable message when the folder is
    missing or incomplete, or the id is neither cached nor downloadable.
    """
    model = DEFAULT_MODEL if model is None else model
    path = Path(model).expanduser()
    try:
        if path.exists():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"{path} is not a DARL model folder (no model_index.json)")
            pipe = RestorationPipeline.from_pretrained(str(path), dtype=dtype)
        else:
            if str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
                raise ModelLoadError(f"model folder {model} does not exist")
            pipe = _from_hub(str(model), dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load model {model}: {e}") from e
    return pipe.to(device)


def _from_hub(repo_id: str, dtype: torch.dtype) -> RestorationPipeline:
    try:
        return RestorationPipeline.from_pretrained(repo_id, dtype=dtype, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the local cache: try the Hub unless we are told we are offline
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = (f"On a connected machine run `huggingface-cli download {repo_id} --local-dir DIR`, "
            f"copy DIR here and pass it as the model path.")
    if offline:
        raise ModelLoadError(f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {hint}")
    try:
        return RestorationPipeline.from_pretrained(repo_id, dtype=dtype)
    except Exception as e:  # network errors come in many classes; all mean the same to the user
        raise ModelLoadError(f"could not fetch model {repo_id!r} from the Hugging Face Hub "
                             f"(offline or no such repo: {type(e).__name__}). {hint}") from e
