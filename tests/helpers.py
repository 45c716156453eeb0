"""Light test helpers (no torch import: spawned store-test processes import this)."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FIGURES = Path(__file__).resolve().parent.parent / "test-artifacts" / "reliability.json"


def record(section: str, **counts: int) -> None:
    """Add counts to the hostile-input and fault figures of this test run (test-artifacts/reliability.json,
    summed over the tests that report them; docs/testing.md's reliability section quotes them)."""
    FIGURES.parent.mkdir(exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    sec = data.setdefault(section, {})
    for k, v in counts.items():
        sec[k] = sec.get(k, 0) + int(v)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


TINY_MODELS = ("tiny_model_dir", "tiny_sd_dir", "tiny_ldm_dir")  # conftest's tiny model folders


def register_models(ctx: object, *paths: object) -> None:
    """Register model folders as checkpoints of ``ctx``'s store: a restore uses only registered (or shipped)
    models (``AppContext.check_model``)."""
    for p in paths:
        ctx.store.register_checkpoint(str(p), Path(str(p)).name)  # type: ignore[attr-defined]


def register_tiny(ctx: object, request: object) -> object:
    """``ctx`` with the tiny models the test (``request``: pytest's) asks for registered; returns ``ctx``."""
    register_models(ctx, *(request.getfixturevalue(n) for n in TINY_MODELS  # type: ignore[attr-defined]
                           if n in request.fixturenames))  # type: ignore[attr-defined]
    return ctx
