import io

import pytest
import torch
from PIL import Image

from darl_core.data.clean import builtin_image
from darl_core.data.degrade import PRESETS, degrade, get_preset, jpeg_compress, main
from darl_core.data.images import pil_to_tensor
from darl_core.rewards.registry import get_metric


@pytest.fixture(scope="module")
def hq() -> torch.Tensor:
    x = pil_to_tensor(builtin_image("astronaut.png"))
    return torch.stack([x[:, 100:164, 100:164], x[:, 200:264, 300:364], x[:, 0:64, 0:64]])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_same_seed_same_result_other_seed_differs(hq: torch.Tensor, name: str) -> None:
    cfg = get_preset(name)
    a = degrade(hq, cfg, torch.Generator().manual_seed(3))
    b = degrade(hq, cfg, torch.Generator().manual_seed(3))
    c = degrade(hq, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, torch.round(a * 255) / 255)  # 8-bit levels, like a real LQ file


def test_sizes(hq: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    assert degrade(hq, get_preset("blind"), g).shape == hq.shape
    assert degrade(hq, get_preset("sr4"), g).shape == (3, 3, 16, 16)


def test_each_preset_degrades(hq: torch.Tensor) -> None:
    psnr = get_metric("psnr")
    for name in ("denoise", "deblur", "jpeg"):
        lq = degrade(hq, get_preset(name), torch.Generator().manual_seed(1))
        assert float(psnr(lq, hq).max()) < 40, name


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="blind"):
        get_preset("nope")


def test_jpeg_matches_pillow_codec() -> None:
    im = builtin_image("chelsea.png")
    x = pil_to_tensor(im)[None]
    for q in (20, 75):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        ref = pil_to_tensor(Image.open(buf))[None]
        ours = jpeg_compress(x, torch.tensor([q]))
        assert float(get_metric("psnr")(ours, ref)) > 42  # same codec up to rounding / upsampling details
        assert float(get_metric("psnr")(ours, x)) < 40  # and it really is lossy


def test_cli_degrades_a_folder(tmp_path, hq: torch.Tensor) -> None:
    src, dst = tmp_path / "hq", tmp_path / "lq"
    src.mkdir()
    from darl_core.data.images import save_tensor

    for i in range(2):
        save_tensor(hq[i], src / f"im{i}.png")
    (src / "notes.txt").write_text("not an image")
    main([str(src), str(dst), "--preset", "jpeg", "--seed", "5"])
    first = sorted(p.read_bytes() for p in dst.iterdir())
    main([str(src), str(dst), "--preset", "jpeg", "--seed", "5"])
    assert sorted(p.name for p in dst.iterdir()) == ["im0.png", "im1.png"]
    assert sorted(p.read_bytes() for p in dst.iterdir()) == first


@pytest.mark.parametrize("poisson", [0.0, 1.0])
def test_noise_drawn_where_the_images_are_has_the_same_strength(poisson: float) -> None:
    # GPU training draws the noise fields with a generator on the images' device; the per-image
    # strengths still come from the CPU generator, so each image's noise level must match the CPU path.
    from dataclasses import replace

    cfg = replace(get_preset("denoise"), blur_prob=0.0, scales=(1,), noise_prob=1.0, poisson_prob=poisson,
                  jpeg_prob=0.0, gaussian_sigma=(2.0, 20.0), poisson_peak=(20.0, 200.0))
    flat = torch.full((16, 3, 64, 64), 0.5)
    cpu = degrade(flat, cfg, torch.Generator().manual_seed(7)) - flat
    dev = degrade(flat, cfg, torch.Generator().manual_seed(7), torch.Generator().manual_seed(1)) - flat
    again = degrade(flat, cfg, torch.Generator().manual_seed(7), torch.Generator().manual_seed(1)) - flat
    assert torch.equal(dev, again)  # both seeds fixed: the same LQ
    assert not torch.equal(dev, cpu)  # another noise field ...
    s_cpu, s_dev = cpu.flatten(1).std(1), dev.flatten(1).std(1)
    assert float(s_cpu.min()) > 1 / 255  # every image is noisy
    torch.testing.assert_close(s_dev, s_cpu, rtol=0.1, atol=0.5 / 255)  # ... of the same strength per image
