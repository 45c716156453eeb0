"""pyproject.toml: every console command points at a real main(), every package is listed."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_console_scripts_resolve_and_packages_are_complete() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = meta["project"]["scripts"]
    assert {"darl-restore", "darl-score", "darl-train-sft", "darl-train-rl", "darl-worker"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    listed = set(meta["tool"]["setuptools"]["packages"])
    on_disk = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/**/__init__.py")
               if not any(part.startswith(".") or part in ("tests", "runs", "data") for part in p.relative_to(ROOT).parts)}
    assert on_disk <= listed, on_disk - listed
    assert (ROOT / meta["project"]["license-files"][0]).is_file()
