"""Loading restorers: from a folder or a Hugging Face Hub id, of any family, with or without a LoRA.

``load_restorer`` reads a folder's ``model_index.json`` (or a Hub repo's, cache first) and builds
the family its pipeline class names (``FAMILIES``): our pixel ``RestorationPipeline``, the Stable
Diffusion x4 upscaler or LDM super-resolution. A folder holding a DARL adapter
(``lora.LORA_FILE``) loads its base model and puts the adapter on. Every failure the user can act
on is a ``ModelLoadError`` that says what to do.

The models that ship with the project are named here once (``SHIPPED_MODELS``), with the
evaluation numbers their cards report (``card_evaluation``).
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .families import FAMILIES, family_of
from .lora import LORA_FILE, add_lora, load_lora_state_dict, read_adapter, save_adapter
from .restorer import Restorer

__all__ = ["DEFAULT_MODEL", "FAMILIES", "ModelLoadError", "SHIPPED_MODELS", "ShippedModel", "card_evaluation",
           "load_lora_folder", "load_pipeline", "load_restorer", "save_lora"]

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODEL = MODELS_DIR / "sft-blind-fast"  # the default SFT restorer: what a restore uses when no model is named


@dataclass(frozen=True)
class ShippedModel:
    name: str  # its name in the registry and the pickers
    path: Path  # its folder in the repo
    label: str  # what the pickers show (short: a narrow dropdown cuts longer ones; the Models tab says the rest)
    parent: str | None = None  # the name of the model it was trained from
    note: str = ""  # a caveat the app shows beside the model whenever it is chosen


SHIPPED_MODELS = (  # in the order the pickers list them
    ShippedModel("sft-blind-fast", DEFAULT_MODEL, "sft-blind-fast (default SFT)", parent="sft-blind"),
    ShippedModel("darl-blind", MODELS_DIR / "darl-blind", "darl-blind (shipped RL)",
                 parent="sft-blind-v1",
                 note="**This RL model is not better than SFT.** It descends from the first SFT model and scores "
                      "27.61 dB on the independent evaluation set at 2 steps, below `sft-blind-fast` (28.66 dB) "
                      "and below the degraded input itself (28.06 dB). No RL fine-tune of the default SFT model has "
                      "yet passed the bar for shipping (reward up by more than twice its seed spread with PSNR, "
                      "flat-area texture and a second no-reference metric no worse; docs/results.md, section 2f)."),
    ShippedModel("sft-blind", MODELS_DIR / "sft-blind", "sft-blind (SFT, slower)"),
    ShippedModel("sft-blind-v1", MODELS_DIR / "sft-blind-v1", "sft-blind-v1 (first SFT)"),
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def card_evaluation(model_dir: str | os.PathLike) -> dict[str, float]:
    """The numbers a model's card reports (``evaluation.json`` beside its README), if any."""
    f = Path(model_dir) / "evaluation.json"
    if not f.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(f.read_text())["metrics"].items()}


def load_restorer(model: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Restorer:
    """Load a restorer from a local folder or a Hugging Face repo id (cache first).

    The family follows the folder's pipeline class (``FAMILIES``); a folder holding a DARL LoRA
    (``darl_lora.json``) loads its base model and the adapter. The restorer's ``source`` is the
    resolved folder or the Hub id (an exported adapter names it as its base). Raises
    ``ModelLoadError`` with an actionable message when the folder is missing or incomplete, the
    class is not supported, or the id is neither cached nor downloadable.
    """
    model = DEFAULT_MODEL if model is None else model
    path = Path(model).expanduser()
    try:
        if path.exists():
            if (path / LORA_FILE).is_file():
                return load_lora_folder(path, device, dtype)
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(f"{path} is not a DARL model folder (no model_index.json)")
            restorer = _build(str(path), dtype)
            restorer.source = str(path.resolve())
        else:
            if str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
                raise ModelLoadError(f"model folder {model} does not exist")
            if path.parent.is_dir():  # "models/sft-blnd": a mistyped local folder, not a Hub id "owner/name"
                near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()
                                                             if (p / "model_index.json").is_file()], n=3)
                raise ModelLoadError(f"model folder {model} does not exist"
                                     + (f"; did you mean {', '.join(str(path.parent / n) for n in near)}?" if near else "")
                                     + f" (a Hugging Face repo id is tried only when no local folder {path.parent}/ "
                                     f"exists)")
            restorer = _from_hub(str(model), dtype)
            restorer.source = str(model)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load model {model}: {e}") from e
    return restorer.to(device)


load_pipeline = load_restorer  # the name of earlier releases


def _build(source: str, dtype: torch.dtype, **kw: object) -> Restorer:
    """The restorer of the family that ``source``'s model_index.json names (``families.FAMILIES``)."""
    from diffusers import DiffusionPipeline  # (reads model_index.json; imported here: the CLI's --help is instant)

    name = DiffusionPipeline.load_config(source, **kw).get("_class_name")
    try:
        family = family_of(str(name))
    except ValueError as e:
        raise ModelLoadError(f"{source} holds a {name}; {e}") from None
    return family.restorer_class().from_pretrained(source, dtype=dtype, **kw)


def _from_hub(repo_id: str, dtype: torch.dtype) -> Restorer:
    try:
        return _build(repo_id, dtype, local_files_only=True)
    except (OSError, ValueError):
        pass  # not in the local cache: try the Hub unless we are told we are offline
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    hint = (f"On a connected machine run `huggingface-cli download {repo_id} --local-dir DIR`, "
            f"copy DIR here and pass it as the model path.")
    if offline:
        raise ModelLoadError(f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set. {hint}")
    try:
        return _build(repo_id, dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # network errors come in many classes; all mean the same to the user
        raise ModelLoadError(f"could not fetch model {repo_id!r} from the Hugging Face Hub "
                             f"(offline or no such repo: {type(e).__name__}). {hint}") from e


# ----------------------------------------------------------------------------- LoRA folders

def save_lora(restorer: Restorer, path: str | os.PathLike, base_model: str) -> None:
    """Write the restorer's adapter as a folder that names ``base_model`` (a folder or a Hub id)
    as its base; ``Restorer.export`` does this for a restorer with a LoRA and a known source."""
    save_adapter(restorer.unet, path, {**restorer.adapter_info(), "base_model": base_model})


def load_lora_folder(path: str | os.PathLike, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Restorer:
    """The base model of an adapter folder with its adapter on (``adapters_disabled`` gives the base)."""
    path = Path(path)
    try:
        info, state = read_adapter(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a complete DARL LoRA folder: {e}") from e
    restorer = load_restorer(info["base_model"], device, dtype)
    if restorer.family == "sd_upscale" and (
            info.get("prompt", "") != restorer.prompt or info.get("noise_level", 20) != restorer.noise_level):
        source = restorer.source
        restorer = type(restorer)(restorer.pipe, info.get("prompt", ""), int(info.get("noise_level", 20))).to(device)
        restorer.source = source
    add_lora(restorer.unet, int(info["rank"]), float(info["alpha"]), info["targets"])
    load_lora_state_dict(restorer.unet, {k: v.to(device) for k, v in state.items()})
    restorer.unet.to(device)
    return restorer
