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
