"""The evaluation CLI: tables over all pairs and the hardest quartile, for x1 and x4 restorers."""

import csv
from pathlib import Path

import pytest
import torch

from darl_core.evaluation.evaluate import evaluate, main
from darl_core.data.images import tensor_to_pil


def _pairs(root: Path, scale: int, n: int = 4, side: int = 96) -> Path:
    g = torch.Generator().manual_seed(0)
    for d in ("lq", "gt"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        gt = torch.rand(3, side, side, generator=g).clamp(0, 1)
        gt = torch.nn.functional.avg_pool2d(gt[None], 3, 1, 1)[0]  # some structure, not pure noise
        lq = torch.nn.functional.interpolate(gt[None], scale_factor=1 / scale, mode="bicubic", antialias=True)[0]
        lq = (lq + 0.05 * torch.randn(lq.shape, generator=g)).clamp(0, 1)
        tensor_to_pil(gt).save(root / "gt" / f"{i}.png")
        tensor_to_pil(lq).save(root / "lq" / f"{i}.png")
    return root


def test_tables_for_a_pixel_model(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    data = _pairs(tmp_path / "data", 1)
    main(["--models", f"a={tiny_model_dir}", f"b={tiny_model_dir}", "--data", str(data), "--steps", "2",
          "--out", str(tmp_path / "out")])
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [(r["model"], r["subset"], r["n"]) for r in rows] == [
        ("input", "all", "4"), ("input", "hardest quartile", "1"), ("a", "all", "4"), ("a", "hardest quartile", "1"),
        ("b", "all", "4"), ("b", "hardest quartile", "1")]
    a, b = rows[2], rows[4]
    assert all(a[m] == b[m] for m in ("psnr", "ssim", "niqe", "piqe"))  # the same model, the same seeds
    assert a["psnr"] != rows[0]["psnr"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "### hardest quartile (n = 1)" in md and "NIQE ↓" in md and "PIQE ↓" in md
    assert "hardest quartile" in capsys.readouterr().out


def test_x4_model_on_x4_pairs_and_a_clear_error_on_x1_pairs(tmp_path: Path, tiny_sd_dir: Path,
                                                           tiny_model_dir: Path) -> None:
    rows, per_image = evaluate({"sdx4": str(tiny_sd_dir)}, data=str(_pairs(tmp_path / "x4", 4)), steps=2)
    assert {r["model"] for r in rows} == {"input", "sdx4"} and len(per_image) == 8
    assert all(0 < float(r["ssim"]) <= 1 for r in rows)  # the input row is the bicubic up-sampled LQ
    with pytest.raises(SystemExit, match="output scale is 4"):
        main(["--models", f"sdx4={tiny_sd_dir}", "--data", str(_pairs(tmp_path / "x1", 1)), "--steps", "2",
              "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--models", f"x={tmp_path / 'nope'}", "--out", str(tmp_path / "o")])


def test_heldout_check_scores_restorations_and_inputs_of_the_pillow_pairs(tiny_pipe) -> None:
    from darl_core.data.clean import HELDOUT_IMAGES, builtin_image
    from darl_core.evaluation.evalset import independent_pairs
    from darl_core.evaluation.evaluate import heldout_check
    from darl_core.rewards.registry import get_metric

    got = heldout_check(tiny_pipe, steps=1, crops=2, size=64)
    pairs = independent_pairs(size=64, per_image=1, images=[(n, builtin_image(n)) for n in HELDOUT_IMAGES])[:2]
    psnr = get_metric("psnr")
    want_input = sum(float(psnr(lq[None], hq[None])) for _, lq, hq, _ in pairs) / 2
    assert got["heldout_input_psnr"] == pytest.approx(want_input)
    want = sum(float(psnr(tiny_pipe.restore_tensor(lq[None], 1, generator=torch.Generator().manual_seed(i)), hq[None]))
               for i, (_, lq, hq, _) in enumerate(pairs)) / 2
    assert got["heldout_psnr"] == pytest.approx(want) and 0 < got["heldout_ssim"] <= 1
