"""Package attributes that import their module on first use, and the old flat module names.

``import darl_core`` (or one of its subpackages) imports nothing heavy: a restore with a pixel model then
never loads the VAE families or pyiqa (a ``darl restore --help`` answers in well under 2 s). Each package
lists its public names and the module that defines them; ``lazy_exports`` gives the package the module
``__getattr__`` and ``__dir__`` of PEP 562 that import the module when a name is first read.

Until 0.5 the flat module names of 0.3 (``darl_core.rl``, ``darl_core.worker``, ...) still import: a finder
maps each to its module in the role subpackages (the same module object, so state and monkeypatching are
shared), with a DeprecationWarning that names the new path. ``python -m darl_core.train_rl`` runs too.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import CodeType, ModuleType
from typing import Any

__all__ = ["MOVED", "install_moved_finder", "lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name -> the submodule (relative) that defines it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
            setattr(sys.modules[package], name, value)  # next time a plain attribute
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


# 0.3's flat modules -> where they live now (release 0.4 moved them into role subpackages).
MOVED = {
    "restorer": "models.restorer", "pipeline": "models.pipeline", "latent": "models.latent",
    "loading": "models.loading", "lora": "models.lora", "sampler": "models.sampler", "tiling": "models.tiling",
    "testing": "models.testing", "iqa": "rewards.iqa", "difficulty": "rewards.difficulty",
    "reward_check": "rewards.check", "degrade": "data.degrade", "images": "data.images", "photos": "data.photos",
    "pool": "data.pool", "evalset": "evaluation.evalset", "evaluate": "evaluation.evaluate",
    "payoff": "evaluation.payoff", "rl": "train.rl", "train_sft": "train.sft", "checkpoint": "train.checkpoint",
    "distributed": "train.distributed", "allocator": "train.allocator", "launch": "jobs.launch",
    "worker": "jobs.worker", "restore": "cli.restore", "score": "cli.score", "train_rl": "cli.train_rl",
}  # (darl_core.rewards, .data and .cli kept their names: they are packages now that re-export the old surface)


class _MovedLoader(importlib.abc.Loader):
    """Imports the new module and registers it under the old name too; gives runpy the new module's code."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{self.old} moved to {self.new}; the old name works until darl 0.5", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported."""

    def get_code(self, fullname: str) -> CodeType:
        """``python -m <old name>``: run the new module as ``__main__`` (its relative imports need its package)."""
        warnings.warn(f"{self.old} moved to {self.new}: run python -m {self.new}", DeprecationWarning, stacklevel=2)
        return compile(f"import runpy; runpy.run_module({self.new!r}, run_name='__main__', alter_sys=True)",
                       f"<{self.old}>", "exec")

    def is_package(self, fullname: str) -> bool:
        return False


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        head, _, name = fullname.rpartition(".")
        if head != "darl_core" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(fullname, f"darl_core.{MOVED[name]}"))


def install_moved_finder() -> None:
    """Let the old flat names import (once per interpreter)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
