"""The restorer families DARL drives: one record per family, read by loading (a folder's pipeline class
picks the restorer class) and by ``LatentRestorer.from_pipe`` (a diffusers pipeline object picks it).

Classes are named by module path, so this map imports nothing: a pixel model's restore never imports
the latent families' module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["FAMILIES", "Family", "family_of"]


@dataclass(frozen=True)
class Family:
    name: str  # the restorer's ``family`` (in adapter folders and the app)
    module: str  # the module of its restorer class
    restorer: str  # the restorer class
    scale: str  # what it does: "restoration" (x1) or "x4 super-resolution"

    def restorer_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.restorer)


# diffusers pipeline class (``_class_name`` in model_index.json) -> its family
FAMILIES: dict[str, Family] = {
    "RestorationPipeline": Family("pixel", "darl_core.models.pipeline", "RestorationPipeline", "restoration"),
    "StableDiffusionUpscalePipeline": Family("sd_upscale", "darl_core.models.latent", "SDUpscaleRestorer",
                                             "x4 super-resolution"),
    "LDMSuperResolutionPipeline": Family("ldm_sr", "darl_core.models.latent", "LDMSRRestorer", "x4 super-resolution"),
}


def family_of(pipeline_class: str) -> Family:
    """The family of a diffusers pipeline class; ValueError naming the supported ones otherwise."""
    try:
        return FAMILIES[pipeline_class]
    except KeyError:
        raise ValueError(f"DARL drives {', '.join(sorted(FAMILIES))}, not a {pipeline_class}") from None
