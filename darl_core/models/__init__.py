"""The restorers: the restorer interface, our pixel diffusion pipeline, the latent diffusers families,
LoRA, the DDIM sampler with log-probabilities, tiling, and loading from a folder or the Hub.

Names load on first use (``import darl_core.models`` stays cheap); modules: ``loading``, ``pipeline``, ``restorer``, ``latent``, ``lora``, ``sampler``, ``tiling``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_MODEL": "loading",
    "FAMILIES": "loading",
    "ModelLoadError": "loading",
    "SHIPPED_MODELS": "loading",
    "ShippedModel": "loading",
    "card_evaluation": "loading",
    "load_lora_folder": "loading",
    "load_pipeline": "loading",
    "load_restorer": "loading",
    "save_lora": "loading",
    "DEFAULT_STEPS": "pipeline",
    "DEFAULT_TILE": "pipeline",
    "RestorationPipeline": "pipeline",
    "Trajectory": "pipeline",
    "build_stage1": "pipeline",
    "build_unet": "pipeline",
    "make_scheduler": "pipeline",
    "Noise": "restorer",
    "Precision": "restorer",
    "Restorer": "restorer",
    "cpu_bf16_supported": "restorer",
    "laplacian": "restorer",
    "schedule_timesteps": "restorer",
    "timestep_batch": "restorer",
    "LDMSRRestorer": "latent",
    "LatentRestorer": "latent",
    "SDUpscaleRestorer": "latent",
    "LORA_FILE": "lora",
    "adapters_disabled": "lora",
    "add_lora": "lora",
    "load_lora_state_dict": "lora",
    "lora_state_dict": "lora",
    "merged_copy": "lora",
    "read_adapter": "lora",
    "save_adapter": "lora",
    "DDIMStepOutput": "sampler",
    "ddim_step": "sampler",
    "gaussian_log_prob": "sampler",
    "prev_timestep": "sampler",
    "step_std": "sampler",
    "STRETCH": "tiling",
    "tile_hook": "tiling",
    "tile_layout": "tiling",
    "tile_starts": "tiling",
    "tiled_apply": "tiling",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
