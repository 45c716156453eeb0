"""darl_core.models.loading: a folder, a Hub id or an adapter folder of any family, with errors that say what
to do; one map of families; a pixel restore that imports no latent family; 0.3's module names."""

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from darl_core.models.families import FAMILIES, family_of
from darl_core.models.loading import ModelLoadError, load_restorer

ROOT = Path(__file__).resolve().parent.parent


def test_missing_folder_and_offline_hub_id_fail_clearly(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_restorer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_restorer(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(ModelLoadError, match="huggingface-cli download"):
        load_restorer("someone/darl-not-cached")
    assert time.time() - t < 5
    # a mistyped folder under an existing one is said to be one, with the near names, not sent to the Hub
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "sft-blind-fast").mkdir(parents=True)
    (tmp_path / "models" / "sft-blind-fast" / "model_index.json").write_text("{}")
    t = time.time()
    with pytest.raises(ModelLoadError, match=r"models/sft-blnd-fast does not exist; did you mean models/sft-blind-fast\?"):
        load_restorer("models/sft-blnd-fast")
    assert time.time() - t < 1


def test_real_upscaler_id_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_restorer("stabilityai/stable-diffusion-x4-upscaler")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        load_restorer("CompVis/ldm-super-resolution-4x-openimages")


def test_one_map_of_families_serves_loading_and_from_pipe(tiny_model_dir: Path, tiny_sd_dir: Path,
                                                          tiny_ldm_dir: Path, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    from darl_core.models.latent import LatentRestorer

    for folder, pipeline_class in ((tiny_model_dir, "RestorationPipeline"),
                                   (tiny_sd_dir, "StableDiffusionUpscalePipeline"),
                                   (tiny_ldm_dir, "LDMSuperResolutionPipeline")):
        r = load_restorer(folder)
        assert type(r).__name__ == FAMILIES[pipeline_class].restorer and r.family == FAMILIES[pipeline_class].name
        assert r.network_scale == (1 if r.family != "pixel" else r.output_scale)  # latents: the input's size
    sd = LatentRestorer.from_pipe(DiffusionPipeline.from_pretrained(str(tiny_sd_dir)), noise_level=30)
    assert sd.family == "sd_upscale" and sd.noise_level == 30
    with pytest.raises(ValueError, match="not a latent pipeline"):
        LatentRestorer.from_pipe(load_restorer(tiny_model_dir))
    with pytest.raises(ValueError, match="DARL drives .*not a StableDiffusionPipeline"):
        family_of("StableDiffusionPipeline")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a StableDiffusionPipeline; DARL drives"):
        load_restorer(odd)


def test_a_pixel_restore_imports_no_latent_family_and_help_is_instant(tmp_path: Path) -> None:
    """``darl restore --help`` imports neither torch nor diffusers; restoring with the (pixel) default model
    never imports the latent families' module or pyiqa."""
    from PIL import Image

    t = time.time()
    out = subprocess.run([sys.executable, "-m", "darl_core.cli", "restore", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "--steps" in out.stdout and time.time() - t < 10  # (< 0.1 s idle; generous for a loaded CI machine)
    Image.new("RGB", (48, 40), (90, 120, 150)).save(tmp_path / "in.png")
    probe = ("import sys; from darl_core.cli.main import main; "
             f"main(['restore', {str(tmp_path / 'in.png')!r}, {str(tmp_path / 'out.png')!r}]); "
             "print(sorted(m for m in ('darl_core.models.latent', 'pyiqa', 'darl_core.rewards.registry', 'torch') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['torch']" and (tmp_path / "out.png").is_file()
    help_only = subprocess.run([sys.executable, "-c", "import sys, darl_core.cli.restore as r; "
                                "print('torch' in sys.modules)"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert help_only.stdout.strip() == "False"


def test_the_names_of_0_3_still_import_as_the_same_modules_with_a_warning() -> None:
    import darl_core.train.rl

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        import darl_core.rl as old
    assert old is darl_core.train.rl and "moved to darl_core.train.rl" in str(seen[0].message)
    from darl_core import RLConfig, load_restorer as top  # the package's own surface, loaded on first use

    assert top is load_restorer and RLConfig is darl_core.train.rl.RLConfig
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "darl_core.train_rl", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True)  # python -m with the old name
    assert "--preset" in out.stdout
