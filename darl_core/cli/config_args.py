"""Command-line options generated from a config dataclass (one ``--flag`` per field)."""

from __future__ import annotations

import argparse
import functools
import inspect
import re
import typing
from dataclasses import fields, replace
from typing import Any, TypeVar

__all__ = ["add_config_args", "config_from_args"]

T = TypeVar("T")


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """The comment after each field of the dataclass ``cls`` in its source, with the comment lines
    that continue it (the house style: a one-line comment on every config field)."""
    out: dict[str, str] = {}
    last = None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s?(.*))?$", line)
        if m and not line.lstrip().startswith(("#", "def ", "@", "return")):
            last = m.group(1)
            out[last] = (m.group(2) or "").strip()
            continue
        c = re.match(r"\s+#\s?(.*)$", line)
        if c and last is not None:
            out[last] = f"{out[last]} {c.group(1).strip()}".strip()
        else:
            last = None
    return out


def add_config_args(ap: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--field-name`` for every field of the dataclass ``cls`` (help: the field's comment)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in fields(cls):
        text = comments.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if typing.get_origin(hints[f.name]) is typing.Literal:  # a closed set of words: argparse checks it
            kw: dict[str, Any] = {"choices": typing.get_args(hints[f.name])}
        else:
            hint = hints[f.name]
            options = [hint] if typing.get_origin(hint) is tuple else \
                [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            several = next((a for a in options if typing.get_origin(a) is tuple), None)
            base = typing.get_args(several)[0] if several else options[0]  # several: --distill-trajectory 2 2 4
            kw = {"type": {bool: _parse_bool, int: int, float: float}.get(base, str)}
            if several:
                kw["nargs"] = "+"
        ap.add_argument("--" + f.name.replace("_", "-"), default=None, help=f"{text} (default: {f.default})".strip(),
                        **kw)


def config_from_args(cfg: T, args: argparse.Namespace) -> T:
    """``cfg`` with every field the command line set replaced."""
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(cfg)  # type: ignore[arg-type]
                             if getattr(args, f.name, None) is not None}
    given = {k: (v[0] if len(v) == 1 else tuple(v)) if isinstance(v, list) else v for k, v in given.items()}
    return replace(cfg, **given)  # type: ignore[type-var]
