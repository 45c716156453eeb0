"""Atomic training checkpoints shared by the SFT and RL trainers.

A checkpoint is a folder ``checkpoint-{step:07d}`` holding ``pipeline/`` (a
loadable diffusers folder, the weights people use) and ``train_state.pt``
(everything needed to resume exactly). It is written under a temporary name
in the same parent folder and renamed into place, then ``latest`` (a text
file with the folder's name) is replaced atomically, so a crash at any point
leaves the previous complete checkpoint as ``latest``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["atomic_dir", "atomic_write_text", "latest_checkpoint", "prune_checkpoints", "save_checkpoint"]


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder with ``write(tmp)`` next to ``final``, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        write(tmp)
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(out_dir: Path, step: int, write_pipeline: Callable[[Path], None],
                    train_state: dict[str, object], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; returns its folder."""
    def write(tmp: Path) -> None:
        write_pipeline(tmp / "pipeline")
        torch.save(train_state, tmp / "train_state.pt")

    final = atomic_dir(out_dir / f"checkpoint-{step:07d}", write)
    atomic_write_text(out_dir / "latest", final.name)
    prune_checkpoints(out_dir, keep)
    return final


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The last complete checkpoint in ``out_dir``, or None."""
    marker = out_dir / "latest"
    if not marker.is_file():
        return None
    path = out_dir / marker.read_text().strip()
    return path if (path / "train_state.pt").is_file() else None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and stale temporary folders."""
    latest = latest_checkpoint(out_dir)
    for p in out_dir.glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    ckpts = sorted(out_dir.glob("checkpoint-*"))
    for p in ckpts[: max(len(ckpts) - keep, 0)]:
        if latest is None or p != latest:
            shutil.rmtree(p, ignore_errors=True)
