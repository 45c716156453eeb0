
from pathlib import Path

import pytest
import torch
from PIL import Image

from darl_core.data.clean import builtin_image
from darl_core.data.degrade import degrade, get_preset
from darl_core.data.images import pil_to_tensor, tensor_to_pil
from darl_core.models.loading import DEFAULT_MODEL, load_restorer
from darl_core.models.pipeline import RestorationPipeline, build_unet, make_scheduler
from darl_core.rewards.registry import get_metric


def test_tiled_equals_untiled_when_it_fits(tiny_pipe: RestorationPipeline) -> None:
    lq = torch.rand(1, 3, 40, 48)
    a = tiny_pipe.restore_tensor(lq, 3, generator=torch.Generator().manual_seed(0), tile_size=None)
    b = tiny_pipe.restore_tensor(lq, 3, generator=torch.Generator().manual_seed(0), tile_size=48)
    assert torch.equal(a, b)


def _seam_ratio(img: torch.Tensor, cols: list[int]) -> float:
    jump = (img[..., 1:] - img[..., :-1]).abs().mean(dim=(0, 1, 2))  # mean |difference| between columns
    return float(jump[[c - 1 for c in cols]].max() / jump.median())


def test_no_seam_on_a_larger_image() -> None:
    pipe = load_restorer()
    hq = pil_to_tensor(builtin_image("chelsea.png"))[None, :, :64, :160]
    lq = degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))
    # tiles of 96 at x = 0 and 64: their edges fall at columns 64 and 96
    blended = pipe.restore_tensor(lq, 4, generator=torch.Generator().manual_seed(0), tile_size=96, tile_overlap=32)
    untiled = pipe.restore_tensor(lq, 4, generator=torch.Generator().manual_seed(0), tile_size=None)
    assert _seam_ratio(blended, [64, 96]) < 2.0
    assert float(get_metric("psnr")(blended, untiled)) > 30  # tiling changes little


def test_save_load_round_trip(tmp_path, tiny_pipe: RestorationPipeline) -> None:
    tiny_pipe.register_to_config(residual_scale=0.25)
    tiny_pipe.save_pretrained(tmp_path / "m")
    loaded = load_restorer(tmp_path / "m")
    assert loaded.config.residual_scale == 0.25
    sa, sb = tiny_pipe.unet.state_dict(), loaded.unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    lq = torch.rand(1, 3, 16, 16)
    a = tiny_pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(1))
    b = loaded.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("model", [DEFAULT_MODEL.parent / "sft-blind", DEFAULT_MODEL.parent / "sft-blind-fast"],
                         ids=["sft-blind", "sft-blind-fast"])
def test_shipped_model_restores_a_small_image(model: Path) -> None:
    pipe = load_restorer(model)
    hq = pil_to_tensor(builtin_image("coffee.png"))[None, :, 100:196, 200:296]  # held-out photo
    lq = degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))
    out = pipe.restore_tensor(lq, generator=torch.Generator().manual_seed(0))
    assert out.shape == hq.shape
    # a random-init model of this architecture scores about 14 dB here
    assert float(get_metric("psnr")(out, hq)) > 25
    assert float(get_metric("ssim")(out, hq)) > 0.7


def test_any_size_grey_and_rgba(tiny_pipe: RestorationPipeline) -> None:
    grey = Image.new("L", (37, 21), 128)
    rgba = tensor_to_pil(torch.rand(3, 30, 19)).convert("RGBA")
    rgba.putalpha(77)
    a, b = tiny_pipe([grey, rgba], num_inference_steps=2)
    assert a.mode == "L" and a.size == (37, 21)
    assert b.mode == "RGBA" and b.size == (19, 30)
    assert b.getchannel("A").getextrema() == (77, 77)


def test_tiny_pipeline_expected_slice() -> None:
    """Diffusers-style regression check: the tiny seeded pipeline's output corner, recorded when the
    sampler was checked against DDIMScheduler.step (test_sampler.py). A change to the residual
    parameterisation, the schedule, padding or tiling moves these numbers."""
    pipe = RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), residual_scale=0.5)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    out = pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([0.846, 0.7377, 0.6795, 0.1758, 0.722, 0.0101, 0.5988, 0.2903, 0.9204, 0.2221,
                             0.955, 0.3559])
    torch.testing.assert_close(out[0, :, -2:, -2:].flatten(), expected, atol=1e-3, rtol=0)


def test_restore_reports_every_tile_and_stops_when_told() -> None:
    from darl_core.models.pipeline import build_stage1

    pipe = RestorationPipeline(build_unet("tiny", seed=0), make_scheduler(), 0.5, stage1=build_stage1("tiny", 1))
    lq = torch.rand(1, 3, 40, 40)
    seen: list[tuple[float, str]] = []
    out = pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(0), tile_size=24, tile_overlap=8,
                              callback=lambda f, s: seen.append((f, s)))
    ref = pipe.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(0), tile_size=24, tile_overlap=8)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # watching changes nothing
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == pytest.approx(1.0)
    assert "step 2/2, tile 4/4" in seen[-1][1] and seen[0][1].startswith("conditioning, tile 1/")
    assert sum("step 1/2" in s for _, s in seen) == 4  # 40 px in 24-px tiles overlapping by 8: 2 x 2 tiles

    class Stop(Exception):
        pass

    calls = []

    def stop_at_step_1(f: float, s: str) -> None:
        calls.append(s)
        if s.startswith("step 1/2"):
            raise Stop

    with pytest.raises(Stop):
        pipe.restore_tensor(lq, 2, tile_size=24, tile_overlap=8, callback=stop_at_step_1)
    assert calls[-1] == "step 1/2, tile 1/4"  # stopped after the first tile of the first step
