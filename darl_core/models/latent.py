"""Latent diffusers super-resolution pipelines behind the ``Restorer`` interface.

One class per family, as diffusers has one pipeline class per model; ``loading.load_restorer``
picks the class from a folder's (or Hub id's) pipeline class:

* ``SDUpscaleRestorer``: ``StableDiffusionUpscalePipeline`` (stabilityai/stable-diffusion-x4-upscaler).
  State: VAE latents times ``vae.config.scaling_factor`` at the LQ size; the
  UNet sees [x_t, noised LQ] (the LQ noise-augmented by ``low_res_scheduler``
  at ``noise_level``, which is also its class label) and a fixed prompt's
  embedding (encoded once; empty by default). No classifier-free guidance:
  one UNet forward per step, and the policy is what the RL step trains.
* ``LDMSRRestorer``: ``LDMSuperResolutionPipeline`` (CompVis/ldm-super-resolution-4x-openimages).
  State: VQ-VAE latents at the LQ size; the UNet sees [x_t, LQ].

``LatentRestorer`` holds what they share: the VAE, the device, tiling, saving.
Both sample with our DDIM step (``sampler.ddim_step``) on a
``DDIMScheduler`` built from the pipeline's own scheduler config (x0 not
clipped), so rollouts carry log-probabilities in latent space. The clean
latent predicted at each step is decoded by the VAE for the reward.

LoRA (``lora.add_lora``) goes on the UNet; the RL reference policy is the
same UNet with its adapters disabled. ``export`` of a restorer with a LoRA
writes the adapter folder (``lora.save_adapter``: ``darl_lora.json`` naming
the base model, plus ``lora.safetensors``) that ``loading`` loads on top of
its base.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from PIL import Image

from .lora import save_adapter
from .restorer import Noise, Restorer, timestep_batch
from .tiling import tiled_apply

__all__ = ["LDMSRRestorer", "LatentRestorer", "SDUpscaleRestorer"]


class LatentRestorer(Restorer):
    """What the latent families share (see the module docstring); ``from_pipe`` picks the family."""

    pipeline_class = ""  # the diffusers pipeline class this family drives

    def __init__(self, pipe: DiffusionPipeline) -> None:
        if type(pipe).__name__ != self.pipeline_class:
            raise ValueError(f"{type(self).__name__} drives a {self.pipeline_class}, not a {type(pipe).__name__}")
        self.pipe = pipe
        self.unet = pipe.unet
        self.vae = self._vae(pipe)
        if self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae.to(torch.float32)  # this VAE overflows in fp16 (diffusers upcasts it the same way)
        # Our DDIM step on the pipeline's own noise schedule (it does not clip x0).
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, thresholding=False)

    @staticmethod
    def from_pipe(pipe: DiffusionPipeline, **kw: Any) -> LatentRestorer:
        """The restorer of ``pipe``'s family (``families.FAMILIES``; ``kw``: the family's options, e.g.
        ``noise_level``)."""
        from .families import family_of

        cls = family_of(type(pipe).__name__).restorer_class()
        if not issubclass(cls, LatentRestorer):
            raise ValueError(f"{type(pipe).__name__} is not a latent pipeline: load it with load_restorer")
        return cls(pipe, **kw)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        **kw: object) -> LatentRestorer:
        return LatentRestorer.from_pipe(DiffusionPipeline.from_pretrained(str(source), dtype=dtype, **kw))

    def _vae(self, pipe: DiffusionPipeline) -> torch.nn.Module:
        return pipe.vae

    def _forward(self, net: torch.nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One UNet forward on z = [x_t, cond] (the family adds its extra inputs)."""
        return net(z, t).sample

    def to(self, device: str | torch.device) -> LatentRestorer:
        self.unet.to(device)
        self.vae.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.model_device

    def inference_modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae]

    @property
    def output_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def network_scale(self) -> int:
        return 1  # the UNet runs on latents of the input's size

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, cond: torch.Tensor, tile_size: int | None = None,
                tile_overlap: int = 32, unet: torch.nn.Module | None = None) -> torch.Tensor:
        net = unet if unet is not None else self.unet
        dtype = next(net.parameters()).dtype

        def fn(z: torch.Tensor) -> torch.Tensor:
            return self._forward(net, z, timestep_batch(t, z.shape[0], z.device))
        m = 2 ** (len(net.config.block_out_channels) - 1)
        return tiled_apply(fn, torch.cat([x_t, cond.to(x_t)], dim=1).to(dtype), tile_size, tile_overlap, m)

    def save(self, path: str | os.PathLike) -> None:
        if getattr(self.unet, "_darl_lora", None):
            raise ValueError("this restorer carries a LoRA: write it with export(), which saves the adapter")
        self.pipe.save_pretrained(path)

    def export(self, path: str | os.PathLike) -> None:
        """The whole pipeline, or with a LoRA the adapter folder (the adapter and its base's name)."""
        if not getattr(self.unet, "_darl_lora", None):
            return self.save(path)
        if not self.source:
            raise ValueError("this restorer was not loaded from a folder or Hub id: its adapter has no base to name")
        save_adapter(self.unet, path, self.adapter_info())

    def __call__(self, image: Image.Image | list[Image.Image], num_inference_steps: int = 20,
                 **kw: Any) -> list[Image.Image]:
        """Restore Pillow images (see ``Restorer.restore_images``); the output is 4x larger."""
        return self.restore_images(image, num_inference_steps, **kw)


class SDUpscaleRestorer(LatentRestorer):
    """``StableDiffusionUpscalePipeline``: noise-augmented LQ, a fixed prompt, KL-VAE latents."""

    family = "sd_upscale"
    pipeline_class = "StableDiffusionUpscalePipeline"

    def __init__(self, pipe: DiffusionPipeline, prompt: str = "", noise_level: int = 20) -> None:
        super().__init__(pipe)
        if not 0 <= noise_level <= pipe.config.max_noise_level:
            raise ValueError(f"noise_level must be in [0, {pipe.config.max_noise_level}], got {noise_level}")
        self.prompt, self.noise_level = prompt, noise_level
        with torch.no_grad():
            self.prompt_embeds = pipe.encode_prompt(prompt, pipe.text_encoder.device, 1, False)[0]

    def to(self, device: str | torch.device) -> SDUpscaleRestorer:
        # The text encoder stays where it is: the prompt was encoded once.
        super().to(device)
        self.prompt_embeds = self.prompt_embeds.to(device)
        return self

    def condition(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        # The upscaler was trained on noise-augmented LQ inputs (even level 0 adds a little noise, as
        # the pipeline does); the level is also its class label.
        img = lq.clamp(0, 1) * 2 - 1
        z = Noise.of(noise).randn(tuple(img.shape)).to(img)
        level = torch.full((img.shape[0],), self.noise_level, dtype=torch.long)
        return self.pipe.low_res_scheduler.add_noise(img, z, level.to(img.device))

    def latent_shape(self, cond: torch.Tensor) -> tuple[int, ...]:
        return (cond.shape[0], self.vae.config.latent_channels, *cond.shape[2:])

    def _forward(self, net: torch.nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b, dtype = z.shape[0], next(net.parameters()).dtype
        emb = self.prompt_embeds.to(z.device, dtype).expand(b, -1, -1)
        label = torch.full((b,), self.noise_level, device=z.device, dtype=torch.long)
        return net(z, t, encoder_hidden_states=emb, class_labels=label).sample

    @torch.no_grad()
    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((img.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        img = (hq.clamp(0, 1) * 2 - 1).to(self.model_device, self.vae.dtype)
        return self.vae.encode(img).latent_dist.mode() * self.vae.config.scaling_factor

    def adapter_info(self) -> dict[str, Any]:
        return {**super().adapter_info(), "prompt": self.prompt, "noise_level": self.noise_level}


class LDMSRRestorer(LatentRestorer):
    """``LDMSuperResolutionPipeline``: the LQ concatenated as it is, VQ-VAE latents."""

    family = "ldm_sr"
    fixed_condition = True  # the LQ image itself
    pipeline_class = "LDMSuperResolutionPipeline"

    def _vae(self, pipe: DiffusionPipeline) -> torch.nn.Module:
        return pipe.vqvae

    def condition(self, lq: torch.Tensor, noise: Noise | None = None) -> torch.Tensor:
        return lq.clamp(0, 1) * 2 - 1

    def latent_shape(self, cond: torch.Tensor) -> tuple[int, ...]:
        return (cond.shape[0], self.unet.config.in_channels // 2, *cond.shape[2:])

    @torch.no_grad()
    def to_image(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode(x0.to(self.vae.dtype)).sample  # VQ: quantised, as the pipeline does
        return ((img.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def to_x0(self, hq: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        img = (hq.clamp(0, 1) * 2 - 1).to(self.model_device, self.vae.dtype)
        return self.vae.encode(img).latents
