"""The image upload component: Gradio's Image, with the decoding left to our loader.

``gr.Image`` opens every upload with Pillow before a handler runs: it converts 16-bit PNGs to RGB by
clipping (a mid-grey 16-bit image arrived almost white), decodes any format Pillow knows whatever the
file's name, decodes a decompression bomb before our pixel limit is checked, and answers a file it
cannot read with a bare "Error". ``ImageUpload`` hands the handler the uploaded file's path untouched,
so ``AppContext.open_upload`` decides everything: format by content, the pixel limit from the header
before decoding, high bit depths scaled, and a message for every rejection.
"""

from __future__ import annotations

from pathlib import Path
import gradio as gr
from gradio.data_classes import ImageData

__all__ = ["ImageUpload"]


class ImageUpload(gr.Image):
    """``gr.Image`` whose value reaches the handler as the uploaded file's path, not decoded (whatever ``type``
    says: it is always a path). Its constructor is gr.Image's own (Gradio reads the signature for the page)."""

    is_template = True  # the page draws it with Gradio's own Image component (as gr.templates' variants)

    def preprocess(self, payload: ImageData | None) -> str | None:  # type: ignore[override]
        """The upload's path (Gradio has already checked it is an upload of this app); no decoding here. An
        image sent as a "data:" URL is refused before anything is written (the loader tells formats by the
        file's name, which such an image has none of, so it was always refused, yet its bytes stayed in
        Gradio's cache). Refusals are ``gr.Error`` with a message, never a bare error."""
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            raise gr.Error("image: an image sent as a data: URL is not accepted; send it as a file (drop it on "
                           "the upload box, or with gradio_client: handle_file(path))")
        if payload.path is None:
            raise gr.Error("image: the upload carries no file")
        return str(Path(payload.path))
