"""Randomly initialised models of every restorer family, built offline, as diffusers' tests build them.

The tests' fixtures and the GPU benchmark (``bench/gpu_scale.py``, the published x4 upscaler's
architecture with random weights) use them; nothing here is a trained model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from .pipeline import RestorationPipeline, build_unet, make_scheduler

__all__ = ["random_ldm_sr", "random_sd_upscaler", "tiny_pixel_pipeline"]


def tiny_pixel_pipeline(seed: int = 0) -> RestorationPipeline:
    """Our pixel restorer with the tiny UNet (channels 8/16), single stage."""
    return RestorationPipeline(build_unet("tiny", seed=seed), make_scheduler(), residual_scale=0.5)


def random_ldm_sr(seed: int = 0) -> DiffusionPipeline:
    """A tiny ``LDMSuperResolutionPipeline`` (VQ-VAE x4, UNet2DModel on [x_t, LQ])."""
    from diffusers import LDMSuperResolutionPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    vq = VQModel(block_out_channels=(16, 16, 32), in_channels=3, out_channels=3, latent_channels=3,
                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                 layers_per_block=1, norm_num_groups=8, num_vq_embeddings=64)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                          clip_sample=False)
    return LDMSuperResolutionPipeline(vqvae=vq, unet=unet, scheduler=sched)


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
