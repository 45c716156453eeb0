"""LoRA on a diffusers UNet through peft, for models whose class has no PEFT mixin.

The reference (SFT) policy of the RL loss is the same network with its
adapters switched off (``adapters_disabled``), so no second copy is kept.

A trained adapter is stored as a small folder (``save_adapter``): ``lora.safetensors`` and
``darl_lora.json`` (its rank, alpha, targets and the name of its base model); ``loading``
loads such a folder on top of its base.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from peft.tuners.tuners_utils import BaseTunerLayer

# peft is imported by the functions that need it (about 4 s on a 2-core CPU): a restore without an adapter
# never pays for it.

__all__ = ["LORA_FILE", "add_lora", "adapters_disabled", "load_lora_state_dict", "lora_state_dict", "merged_copy",
           "read_adapter", "save_adapter"]

LORA_FILE = "darl_lora.json"  # the file that marks an adapter folder (its metadata)

TARGETS = {"all": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
           "attn": ["to_q", "to_k", "to_v", "to_out.0"]}  # named sets of adapted layers


def add_lora(unet: torch.nn.Module, rank: int = 8, alpha: float | None = None,
             targets: str | list[str] = "all") -> torch.nn.Module:
    """Inject LoRA adapters into the attention and ResNet layers (``all``), or the attention
    projections only (``attn``), or the listed module names; only the adapters are trainable."""
    present = {n.split(".")[-1] for n, _ in unet.named_modules()} | {
        ".".join(n.split(".")[-2:]) for n, _ in unet.named_modules()}
    wanted = TARGETS[targets] if isinstance(targets, str) else list(targets)
    targets = [t for t in wanted if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA target layers {wanted} exists in this UNet")
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights="gaussian")
    unet.requires_grad_(False)
    inject_adapter_in_model(cfg, unet)
    for n, p in unet.named_parameters():
        p.requires_grad_("lora_" in n)
    unet._darl_lora = {"rank": rank, "alpha": alpha or rank, "targets": targets}
    return unet


def _tuner_layers(unet: torch.nn.Module) -> list[BaseTunerLayer]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[None]:
    """Run the base (reference) model: adapters off inside the block."""
    layers = _tuner_layers(unet)
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def load_lora_state_dict(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(unet, state)


def merged_copy(unet: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """``fresh`` (an adapter-free UNet of the same config) loaded with base + LoRA merged weights."""
    work = copy.deepcopy(unet)
    for m in _tuner_layers(work):
        m.merge()
    state = {}
    for k, v in work.state_dict().items():
        if "lora_" in k:
            continue
        state[k.replace(".base_layer", "")] = v
    fresh.load_state_dict(state)
    return fresh


def save_adapter(unet: torch.nn.Module, path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Write the UNet's adapter weights and ``info`` (the base model's name, ...) with its rank,
    alpha and targets as an adapter folder."""
    meta = getattr(unet, "_darl_lora", None)
    if not meta:
        raise ValueError("the UNet has no LoRA adapter")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state_dict(unet).items()},
              str(path / "lora.safetensors"))
    (path / LORA_FILE).write_text(json.dumps({**info, **meta}, indent=2))


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and the weights of an adapter folder (OSError or ValueError when incomplete)."""
    path = Path(path)
    return json.loads((path / LORA_FILE).read_text()), load_file(str(path / "lora.safetensors"))
