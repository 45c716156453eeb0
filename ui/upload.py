"""The image upload component: Gradio's Image, with the decoding left to our loader.

``gr.Image`` opens every upload with Pillow before a handler runs: it converts 16-bit PNGs to RGB by
clipping (a mid-grey 16-bit image arrived almost white), decodes any format Pillow knows whatever the
file's name, decodes a decompression bomb before our pixel limit is checked, and answers a file it
cannot read with a bare "Error". ``ImageUpload`` hands the handler the uploaded file's path untouched,
so ``AppContext.open_upload`` decides everything: format by content, the pixel limit from the header
before decoding, high bit depths scaled, and a message for every rejection.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
import gradio as gr
from gradio.data_classes import ImageData

__all__ = ["ImageUpload", "MAX_INLINE_BYTES"]

MAX_INLINE_BYTES = 25 * 1024 * 1024  # a base64 "data:" image (sent around the page) may decode to this much


class ImageUpload(gr.Image):
    """``gr.Image`` whose value reaches the handler as the uploaded file's path, not decoded (whatever ``type``
    says: it is always a path). Its constructor is gr.Image's own (Gradio reads the signature for the page)."""

    is_template = True  # the page draws it with Gradio's own Image component (as gr.templates' variants)

    def preprocess(self, payload: ImageData | None) -> str | None:  # type: ignore[override]
        """The upload's path (Gradio has already checked it is an upload of this app), or a "data:" URL
        written to a file; no decoding here. Refusals are ``gr.Error`` with a message, never a bare error."""
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            head, _, data = payload.url.partition(",")
            if ";base64" not in head:
                raise gr.Error("image: a data: URL must be base64-encoded")
            if len(data) * 3 // 4 > MAX_INLINE_BYTES:
                raise gr.Error(f"image: over the {MAX_INLINE_BYTES // 2**20} MiB upload limit")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise gr.Error("image: the data: URL is not valid base64") from None
            Path(self.GRADIO_CACHE).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("wb", dir=self.GRADIO_CACHE, prefix="darl-inline-", delete=False) as f:
                f.write(raw)
            return f.name
        if payload.path is None:
            raise gr.Error("image: the upload carries no file")
        return str(Path(payload.path))
