"""Images and training data: loading and conversion, synthetic degradations, the built-in and package
photos, and the RL training pool.

Names load on first use (``import darl_core.data`` stays cheap); modules: ``images``, ``degrade``, ``clean``, ``photos``, ``pool``.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "IMAGE_FORMATS": "images",
    "IMAGE_SUFFIXES": "images",
    "ImageError": "images",
    "MAX_PIXELS": "images",
    "jpeg_roundtrip": "images",
    "load_image": "images",
    "load_rgb": "images",
    "pil_to_tensor": "images",
    "save_tensor": "images",
    "tensor_to_pil": "images",
    "to_rgb": "images",
    "DegradationConfig": "degrade",
    "PRESETS": "degrade",
    "degrade": "degrade",
    "get_preset": "degrade",
    "pillow_jpeg": "degrade",
    "HELDOUT_IMAGES": "clean",
    "PatchSampler": "clean",
    "TRAIN_IMAGES": "clean",
    "builtin_image": "clean",
    "dead_leaves": "clean",
    "folder_images": "clean",
    "heldout_pairs": "clean",
    "MANIFEST": "photos",
    "eval_images": "photos",
    "fetch": "photos",
    "manifest": "photos",
    "photos_dir": "photos",
    "split_of": "photos",
    "train_images": "photos",
    "PoolSample": "pool",
    "build_pool": "pool",
    "synthetic_pool": "pool",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
