"""darl_core.models.lora: adapters through peft, their folder format, and the base model with them off."""

import json
from pathlib import Path

import pytest
import torch

from darl_core.models.loading import load_restorer, save_lora
from darl_core.models.lora import adapters_disabled, add_lora, lora_state_dict


def test_lora_save_and_load(tiny_sd_dir: Path, tmp_path: Path) -> None:
    r = load_restorer(tiny_sd_dir)
    base_out = r.restore_tensor(torch.rand(1, 3, 8, 8), 2, generator=torch.Generator().manual_seed(1))
    add_lora(r.unet, 4, targets="attn")
    with torch.no_grad():
        for n, p in r.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a trained adapter: B is no longer zero
    lq = torch.rand(1, 3, 8, 8)
    want = r.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(1))
    save_lora(r, tmp_path / "lora", str(tiny_sd_dir))
    meta = json.loads((tmp_path / "lora" / "darl_lora.json").read_text())
    assert meta["base_model"] == str(tiny_sd_dir) and meta["rank"] == 4 and meta["family"] == "sd_upscale"
    with pytest.raises(ValueError, match="export"):
        r.save(tmp_path / "full")
    r.export(tmp_path / "exported")  # what the trainer writes: the adapter, naming the folder it was loaded from
    assert json.loads((tmp_path / "exported" / "darl_lora.json").read_text())["base_model"] == str(
        tiny_sd_dir.resolve())
    loaded = load_restorer(tmp_path / "lora")
    got = loaded.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, loaded.restore_tensor(lq, 2, generator=torch.Generator().manual_seed(2)))
    state, ref_state = lora_state_dict(loaded.unet), lora_state_dict(r.unet)
    assert state.keys() == ref_state.keys() and all(torch.equal(state[k], ref_state[k]) for k in state)
    with adapters_disabled(loaded.unet):  # the reference policy: the base model, no second copy
        torch.testing.assert_close(loaded.restore_tensor(torch.rand(1, 3, 8, 8) * 0 + lq, 2,
                                                         generator=torch.Generator().manual_seed(1)),
                                   load_restorer(tiny_sd_dir).restore_tensor(
                                       lq, 2, generator=torch.Generator().manual_seed(1)))
    assert base_out.shape == (1, 3, 32, 32)
