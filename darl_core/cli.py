"""Command-line options generated from a config dataclass (one ``--flag`` per field)."""

from __future__ import annotations

import argparse
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


def add_config_args(ap: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--field-name`` for every field of the dataclass ``cls`` (help: the field's comment)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        base = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        kind = {bool: _parse_bool, int: int, float: float}.get(base[0], str)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                        help=f"(default: {f.default})")


def config_from_args(cfg: T, args: argparse.Namespace) -> T:
    """``cfg`` with every field the command line set replaced."""
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(cfg)  # type: ignore[arg-type]
                             if getattr(args, f.name, None) is not None}
    return replace(cfg, **given)  # type: ignore[type-var]
