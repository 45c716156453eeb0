"""Latent diffusers restorers (SD x4 upscaler, LDM super-resolution) behind the Restorer interface.

Tiny random configs of the same diffusers classes; the method and the trainer are the same as for
the pixel model.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler

from darl_core.models.latent import LatentRestorer, SDUpscaleRestorer
from darl_core.models.loading import ModelLoadError, load_restorer
from darl_core.models.lora import add_lora
from darl_core.models.pipeline import RestorationPipeline
from darl_core.train.rl import get_rl_preset, policy_losses, reference_means, train_rl
from darl_core.models.sampler import ddim_step, step_std


def test_ddim_step_matches_diffusers_on_the_upscaler_schedule() -> None:
    # The published x4 upscaler schedule: "leading" spacing with steps_offset 1, final abar = abar_0.
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                          prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t in sched.timesteps:
        out = torch.randn(2, 4, 8, 8, generator=g)
        ref = sched.step(out, t, x, eta=0.0).prev_sample
        ours = ddim_step(sched, out, int(t), x, eta=0.0)
        torch.testing.assert_close(ours.prev_sample, ref)
        assert ours.stochastic is False
        x = ref


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_ldm_dir"])
def test_latent_rollout_log_probs_and_decoded_rewards(fixture: str, request: pytest.FixtureRequest) -> None:
    r = load_restorer(request.getfixturevalue(fixture))
    assert isinstance(r, LatentRestorer) and r.output_scale == 4
    lq = torch.rand(2, 3, 12, 12)  # padded to the UNet's multiple inside, cropped back after decoding
    traj = r.rollout(lq, 3, eta=1.0, generator=torch.Generator().manual_seed(0))
    # stochastic steps are recorded (a last step ending at abar = 1 is not); the state is a latent
    # at the LQ size, the rewards see decoded x4 images
    want = [int(t) for t in r.scheduler.timesteps if step_std(r.scheduler, int(t), 1.0) > 0]
    assert traj.timesteps == want and len(want) == (3 if r.family == "sd_upscale" else 2)
    assert traj.x_t[0].shape == (2, 4 if r.family == "sd_upscale" else 3, 12, 12)
    assert len(traj.pred_image) == 3 and traj.final.shape == (2, 3, 48, 48)
    # the rollout's result is what a restore with the same noise gives (eta 1: same draws in the same order)
    torch.testing.assert_close(traj.final, r.restore_tensor(lq, 3, eta=1.0, generator=torch.Generator().manual_seed(0),
                                                            tile_size=None), atol=1e-4, rtol=0)
    # the old policy's log-probabilities are reproduced at the start of an update: ratio 1, KL 0
    add_lora(r.unet, 2, targets="attn")
    ref_means = reference_means(r, traj, 1.0, None, True)
    for k in range(len(want)):
        loss, kl, ratio, clipped = policy_losses(r, traj, k, torch.ones(2), 1.0, 1e-4, ref_means[k])
        torch.testing.assert_close(ratio, torch.ones(2), rtol=0, atol=1e-5)
        assert float(kl.detach().abs().max()) < 1e-8 and float(clipped.sum()) == 0
        loss.mean().backward()  # the gradient reaches the adapter only
    grads = [p.grad for n, p in r.unet.named_parameters() if p.requires_grad]
    assert grads and all("lora_" in n for n, p in r.unet.named_parameters() if p.requires_grad)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_restore_matches_the_diffusers_upscale_pipeline(tiny_sd_dir: Path) -> None:
    # Our sampler on the SD x4 family gives what StableDiffusionUpscalePipeline gives with the same
    # latents, the same LQ noise and no guidance.
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_sd_dir)
    r = LatentRestorer.from_pipe(pipe, noise_level=0)
    assert isinstance(r, SDUpscaleRestorer)
    lq = torch.rand(1, 3, 16, 16)
    ours = r.restore_tensor(lq, 4, generator=torch.Generator().manual_seed(0), tile_size=None)
    g = torch.Generator().manual_seed(0)  # we draw the LQ's noise, then the initial latents
    torch.randn(1, 3, 16, 16, generator=g)  # the LQ's noise draw, to advance the generator as we do
    latents = torch.randn(1, 4, 16, 16, generator=g)
    ref = pipe(prompt="", image=lq, num_inference_steps=4, guidance_scale=1.0, noise_level=0,
               latents=latents, generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(ours, ref.clamp(0, 1), atol=1e-4, rtol=0)


def _darl_tiny(tmp_path: Path, base: Path, **kw: object):
    # The `darl` preset itself; only the sizes shrink so that it runs in seconds on a CPU.
    return replace(get_rl_preset("darl"), output=str(tmp_path / "run"), base_model=str(base), rounds=2,
                   batch_size=2, pool_size=4, num_steps=3, val_every=0, ckpt_every=1, memory_min=2,
                   patch=96, **kw)


@pytest.mark.parametrize("family", ["pixel", "sd_upscale", "ldm_sr"])
def test_darl_preset_trains_every_family(family: str, tmp_path: Path, tiny_model_dir: Path, tiny_sd_dir: Path,
                                         tiny_ldm_dir: Path) -> None:
    base = {"pixel": tiny_model_dir, "sd_upscale": tiny_sd_dir, "ldm_sr": tiny_ldm_dir}[family]
    kw = {} if family == "pixel" else {"task": "sr4", "lora_rank": 4, "lora_targets": "attn",
                                       "gradient_checkpointing": True}
    cfg = _darl_tiny(tmp_path, base, **kw)
    model = train_rl(cfg)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2]
    assert all(r["reward"] < 0 for r in recs)  # NIQE (lower is better) enters with its sign flipped
    assert all("kl" in r and "loss_sft" in r and 0 < r["w_mean"] < 1 for r in recs)
    trained = load_restorer(model)
    assert trained.family == family
    if family == "pixel":
        before, after = load_restorer(base).unet.state_dict(), trained.unet.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
    else:
        assert (model / "darl_lora.json").is_file() and not (model / "unet").exists()  # the adapter only
        lora_b = [p for n, p in trained.unet.named_parameters() if "lora_B" in n]
        assert lora_b and any(float(p.detach().abs().max()) > 0 for p in lora_b)  # B starts at 0: it was updated
        out = trained.restore_tensor(torch.rand(1, 3, 24, 24), 3, generator=torch.Generator().manual_seed(0))
        assert out.shape == (1, 3, 96, 96)


def test_x4_model_refuses_a_same_size_pool(tmp_path: Path, tiny_sd_dir: Path) -> None:
    with pytest.raises(ValueError, match="output scale is 4"):
        train_rl(_darl_tiny(tmp_path, tiny_sd_dir, task="blind", lora_rank=2))


def test_unsupported_pipeline_class_is_named(tmp_path: Path, tiny_model_dir: Path) -> None:
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="StableDiffusionPipeline"):
        load_restorer(tmp_path / "m")
    assert isinstance(load_restorer(tiny_model_dir), RestorationPipeline)


def test_restore_cli_on_an_upscaler(tmp_path: Path, tiny_sd_dir: Path) -> None:
    from PIL import Image

    from darl_core.cli.restore import main

    Image.new("RGB", (20, 12), (120, 60, 30)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--model", str(tiny_sd_dir), "--steps", "2"]
    assert main(args + ["--tile", "16"]) == 2  # the default overlap (32) does not fit: a message, no traceback
    assert main(args + ["--tile", "16", "--tile-overlap", "4"]) == 0  # tiles in latent space
    assert Image.open(tmp_path / "out.png").size == (80, 48)  # x4, the odd size padded and cropped back


def test_fp16_upscaler_keeps_its_vae_in_fp32(tiny_sd_dir: Path) -> None:
    r = load_restorer(tiny_sd_dir, dtype=torch.float16)
    assert r.unet.dtype == torch.float16 and r.vae.dtype == torch.float32  # force_upcast, as diffusers does
    out = r.restore_tensor(torch.rand(1, 3, 8, 8), 2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32) and bool(torch.isfinite(out).all())
