"""Number and slider fields whose refusals name the field and say its range.

Gradio checks a number or slider value before the handler runs; text, null, NaN or infinity there
fails inside Gradio (``float("abc")``, ``None < 0``) and the page got a bare "Error", and a value out
of range a "Value 9999 is greater than maximum value 50." that named neither the field nor the range.
These are Gradio's own fields (the page draws them as such) whose failed check is a message naming
the field and its range. A whole-number field (``precision=0``) also refuses a fraction, or a value
off its ``step`` (a tile size of 100 with step 8), instead of rounding it silently.

Sliders: Gradio's slider clamps a typed value to its range in the browser (9999 becomes 50 without a
word), so the Restore tab asks for its numbers with ``Number`` fields and ``check_on_leave``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

__all__ = ["Number", "Slider", "check_on_leave", "range_text"]


def _named(component: Any, payload: Any) -> gr.Error:
    what = component.label or "a number field"
    return gr.Error(f"{what}: {str(payload)[:40]!r} is not a usable number")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def range_text(lo: float | None, hi: float | None, whole: bool = False, step: float | None = None) -> str:
    """What a field takes, as its refusal says it: "a whole number from 0 to 50", "... in steps of 8"."""
    kind = "a whole number" if whole else "a number"
    if lo is not None and hi is not None:
        text = f"{kind} from {_num(lo)} to {_num(hi)}"
    elif lo is not None:
        text = f"{kind} of at least {_num(lo)}"
    elif hi is not None:
        text = f"{kind} of at most {_num(hi)}"
    else:
        text = kind
    return text + (f", in steps of {_num(step)}" if whole and step and step > 1 else "")


class Number(gr.Number):
    """``gr.Number`` whose refusals name the field and say its range."""

    is_template = True  # drawn by the page as gr.Number

    def preprocess(self, payload: Any) -> Any:  # type: ignore[override]
        whole = self.precision == 0
        what = f"{self.label or 'a number field'}: must be {range_text(self.minimum, self.maximum, whole, self.step)}"
        try:
            value = super().preprocess(payload)
        except gr.Error:  # out of range
            raise gr.Error(f"{what}; got {_num(payload)}") from None
        except (TypeError, ValueError, OverflowError):
            raise _named(self, payload) from None
        if whole and payload is not None:
            off = (float(payload) - (self.minimum or 0)) % (self.step or 1)
            if not float(payload).is_integer() or off:
                raise gr.Error(f"{what}; got {_num(payload)}")
        return value


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


def check_on_leave(*fields: gr.Number) -> None:
    """Refuse a value the moment the user leaves the field (or presses Enter), not at the next button:
    the field's own check runs then (``Number.preprocess``) and the page shows its message."""
    for f in fields:
        for event in (f.blur, f.submit):
            event(lambda value: None, f, None, api_visibility="private")
