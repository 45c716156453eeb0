"""Number and slider fields whose refusals name the field.

Gradio checks a number or slider value before the handler runs; text, null, NaN or infinity there
fails inside Gradio (``float("abc")``, ``None < 0``) and the page got a bare "Error". These are
Gradio's own fields (the page draws them as such) whose failed check is a message naming the field.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

__all__ = ["Number", "Slider"]


def _named(component: Any, payload: Any) -> gr.Error:
    what = component.label or "a number field"
    return gr.Error(f"{what}: {str(payload)[:40]!r} is not a usable number")


class Number(gr.Number):
    """``gr.Number`` whose refusals name the field."""

    is_template = True  # drawn by the page as gr.Number

    def preprocess(self, payload: Any) -> Any:  # type: ignore[override]
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except (TypeError, ValueError, OverflowError):
            raise _named(self, payload) from None


class Slider(gr.Slider):
    """``gr.Slider`` whose refusals name the field."""

    is_template = True  # drawn by the page as gr.Slider

    def preprocess(self, payload: Any) -> Any:  # type: ignore[override]
        try:
            return super().preprocess(payload)
        except gr.Error as e:
            raise gr.Error(f"{self.label or 'a slider'}: {e.message}") from None
        except (TypeError, ValueError, OverflowError):
            raise _named(self, payload) from None
