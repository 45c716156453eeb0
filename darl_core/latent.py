"""Latent diffusers super-resolution pipelines behind the ``Restorer`` interface.

Two families, loaded from a folder or a Hub id by ``pipeline.load_pipeline``:

* ``sd_upscale``: ``StableDiffusionUpscalePipeline`` (stabilityai/stable-diffusion-x4-upscaler).
  State: VAE latents times ``vae.config.scaling_factor`` at the LQ size; the
  UNet sees [x_t, noised LQ] (the LQ noise-augmented by ``low_res_scheduler``
  at ``noise_level``, which is also its class label) and a fixed prompt's
  embedding (encoded once; empty by default). No classifier-free guidance:
  one UNet forward per step, and the policy is what the RL step trains.
* ``ldm_sr``: ``LDMSuperResolutionPipeline`` (CompVis/ldm-super-resolution-4x-openimages).
  State: VQ-VAE latents at the LQ size; the UNet sees [x_t, LQ].

Both sample with our DDIM step (``sampler.ddim_step``) on a
``DDIMScheduler`` built from the pipeline's own scheduler config (x0 not
clipped), so rollouts carry log-probabilities in latent space. The clean
latent predicted at each step is decoded by the VAE for the reward.

LoRA (``lora.add_lora``) goes on the UNet; the RL reference policy is the
same UNet with its adapters disabled. A trained adapter is saved as a small
folder (``save_lora``: ``darl_lora.json`` naming the base model, plus
``lora.safetensors``) that ``load_pipeline`` loads on top of its base.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from .lora import add_lora, load_lora_state_dict, lora_state_dict
from .restorer import Noise, Restorer, timestep_batch
from .tiling import tiled_apply

__all__ = ["LORA_FILE", "LatentRestorer", "load_lora_folder", "random_sd_upscaler", "save_lora"]

LORA_FILE = "darl_lora.json"
_FAMILY = {"StableDiffusionUpscalePipeline": "sd_upscale", "LDMSuperResolutionPipeline": "ldm_sr"}


class LatentRestorer(Restorer):
    """A latent super-resolution pipeline as a DARL restorer (see the module docstring)."""

    def __init__(self, pipe: DiffusionPipeline, prompt: str = "", noise_level: int = 20):
        name = type(pipe).__name__
        if name not in _FAMILY:
            raise ValueError(f"{name} is not a supported latent pipeline ({', '.join(_FAMILY)})")
        self.family = _FAMILY[name]
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = pipe.vae if self.family == "sd_upscale" else pipe.vqvae
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # this VAE overflows in fp16 (diffusers upcasts it the same way)
        # Our DDIM step on the pipeline's own noise schedule (it does not clip x0).
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)
        self.prompt, self.noise_level = prompt, 0
        self.prompt_embeds: torch.Tensor | None = None
        if self.family == "sd_upscale":
            if not 0 <= noise_level <= pipe.config.max_noise_level:
                raise ValueError(f"noise_level must be in [0, {pipe.config.max_noise_level}], got {noise_level}")
            self.noise_level = noise_level
            with torch.no_grad():
                self.prompt_embeds = pipe.encode_prompt(prompt, pipe.text_encoder.device, 1, False)[0]

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        **kw: object) -> LatentRestorer:
        return cls(DiffusionPipeline.from_pretrained(str(source), dtype=dtype, **kw))

    def to(self, device: str | torch.device) -> LatentRestorer:
        # The text encoder stays where it is: the prompt was encoded once.
        self.unet.to(device)
        self.vae.to(device)
        if self.prompt_embeds is not None:
            self.prompt_embeds = self.prompt_embeds.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model_device

    # ------------------------------------------------------------ the Restorer interface
    def inference_modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae]

    @property
    def output_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def condition(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        img = lq.clamp(0, 1) * 2 - 1
        if self.family == "sd_upscale":  # (even level 0 adds a little noise, as the pipeline does)
            # The upscaler was trained on noise-augmented LQ inputs; the level is also its class label.
            z = Noise.of(noise).randn(tuple(img.shape)).to(img)
            level = torch.full((img.shape[0],), self.noise_level, dtype=torch.long)
            img = self.pipe.low_res_scheduler.add_noise(img, z, level.to(img.device))
        return img

    def latent_shape(self, cond: torch.Tensor) -> tuple[int, ...]:
        ch = self.vae.config.latent_channels if self.family == "sd_upscale" else self.unet.config.in_channels // 2
        return (cond.shape[0], ch, *cond.shape[2:])

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, tile_size: int | None = None,
                tile_overlap: int = 32, unet: torch.nn.Module | None = None) -> torch.Tensor:
        net = unet if unet is not None else self.unet
        dtype = next(net.parameters()).dtype

        def fn(z: torch.Tensor) -> torch.Tensor:
            b = z.shape[0]
            tt = timestep_batch(t, b, z.device)
            if self.family == "ldm_sr":
                return net(z, tt).sample
            emb = self.prompt_embeds.to(z.device, dtype).expand(b, -1, -1)
            label = torch.full((b,), self.noise_level, device=z.device, dtype=torch.long)
            return net(z, tt, encoder_hidden_states=emb, class_labels=label).sample
        return tiled_apply(fn, torch.cat([x_t, cond.to(x_t)], dim=1).to(dtype), tile_size, tile_overlap)

    @torch.no_grad()
    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        z = x0.to(self.vae.dtype)
        if self.family == "sd_upscale":
            img = self.vae.decode(z / self.vae.config.scaling_factor).sample
        else:
            img = self.vae.decode(z).sample  # VQ: quantised, as the pipeline does
        return ((img.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        img = (hq.clamp(0, 1) * 2 - 1).to(self.model_device, self.vae.dtype)
        if self.family == "sd_upscale":
            return self.vae.encode(img).latent_dist.mode() * self.vae.config.scaling_factor
        return self.vae.encode(img).latents

    def save(self, path: str | os.PathLike) -> None:
        if getattr(self.unet, "_darl_lora", None):
            raise ValueError("this restorer carries a LoRA: save it with latent.save_lora")
        self.pipe.save_pretrained(path)

    def __call__(self, image: Image.Image | list[Image.Image], num_inference_steps: int = 20,
                 **kw: Any) -> list[Image.Image]:
        """Restore Pillow images (see ``Restorer.restore_images``); the output is 4x larger."""
        return self.restore_images(image, num_inference_steps, **kw)


# ----------------------------------------------------------------------------- LoRA folders

def save_lora(restorer: Restorer, path: str | os.PathLike, base_model: str) -> None:
    """Write the UNet's adapter and the name of its base model (a folder or a Hub id)."""
    meta = getattr(restorer.unet, "_darl_lora", None)
    if not meta:
        raise ValueError("the restorer's UNet has no LoRA adapter")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state_dict(restorer.unet).items()},
              str(path / "lora.safetensors"))
    info = {"base_model": base_model, "family": restorer.family, **meta,
            "prompt": getattr(restorer, "prompt", ""), "noise_level": getattr(restorer, "noise_level", 0)}
    (path / LORA_FILE).write_text(json.dumps(info, indent=2))


def load_lora_folder(path: str | os.PathLike, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Restorer:
    """The base model of a ``save_lora`` folder with its adapter on (``adapters_disabled`` gives the base)."""
    from .pipeline import ModelLoadError, load_pipeline

    path = Path(path)
    try:
        info = json.loads((path / LORA_FILE).read_text())
        state = load_file(str(path / "lora.safetensors"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a complete DARL LoRA folder: {e}") from e
    restorer = load_pipeline(info["base_model"], device, dtype)
    if isinstance(restorer, LatentRestorer) and restorer.family == "sd_upscale" and (
            info.get("prompt", "") != restorer.prompt or info.get("noise_level", 20) != restorer.noise_level):
        restorer = LatentRestorer(restorer.pipe, info.get("prompt", ""), int(info.get("noise_level", 20))).to(device)
    add_lora(restorer.unet, int(info["rank"]), float(info["alpha"]), info["targets"])
    load_lora_state_dict(restorer.unet, {k: v.to(device) for k, v in state.items()})
    restorer.unet.to(device)
    return restorer


# ----------------------------------------------------------------------------- random models

def _tiny_clip(root: Path, hidden: int) -> tuple[object, object]:
    """A tiny CLIP text encoder and a character-level CLIP tokenizer, built offline."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77)
    enc = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                                       num_attention_heads=4, num_hidden_layers=2, bos_token_id=0, eos_token_id=1,
                                       pad_token_id=1, projection_dim=hidden))
    return enc, tok


def random_sd_upscaler(size: str = "tiny", seed: int = 0, workdir: str | os.PathLike | None = None
                       ) -> DiffusionPipeline:
    """A ``StableDiffusionUpscalePipeline`` with random weights.

    ``tiny``: channels 32/32/64, for CPU tests (as diffusers' own tests build it).
    ``x4``: the UNet and VAE of stabilityai/stable-diffusion-x4-upscaler at full size
    (configs as published in its unet/ and vae/ config.json): the real compute, for
    bench/gpu_scale.py. The text encoder is always tiny (its output width matches the
    UNet's cross-attention), since a restorer encodes its prompt once.
    """
    import tempfile

    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    if size == "tiny":
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=7, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, use_linear_projection=True, only_cross_attention=(True, True, False),
            num_class_embeds=100, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(32, 32, 64), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            layers_per_block=1, norm_num_groups=8, scaling_factor=0.08333)
    elif size == "x4":
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=7, out_channels=4, layers_per_block=2,
            block_out_channels=(256, 512, 512, 1024),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=1024, attention_head_dim=8, use_linear_projection=True,
            only_cross_attention=(True, True, True, False), num_class_embeds=1000)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            layers_per_block=2, scaling_factor=0.08333)
    else:
        raise ValueError(f"unknown size {size!r} (tiny, x4)")
    enc, tok = _tiny_clip(Path(workdir or tempfile.mkdtemp(prefix="darl-clip-")), unet.config.cross_attention_dim)
    # The published upscaler's schedules: DDIM-style v-prediction on scaled_linear betas, and the
    # DDPM schedule of the LQ noise augmentation.
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                          prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    low = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    return StableDiffusionUpscalePipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, low_res_scheduler=low,
                                          scheduler=sched, max_noise_level=350)
