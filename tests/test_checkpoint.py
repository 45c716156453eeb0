"""darl_core.train.checkpoint: a crash at any point leaves the previous complete checkpoint as ``latest``."""

from pathlib import Path

import pytest
import torch

from darl_core.train.checkpoint import atomic_dir, atomic_write_text, latest_checkpoint, save_checkpoint


def _write(text: str):
    def write(p: Path) -> None:
        p.mkdir(parents=True, exist_ok=True)
        (p / "weights.txt").write_text(text)
    return write


def test_checkpoints_are_numbered_latest_points_at_the_newest_and_old_ones_are_pruned(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        path = save_checkpoint(tmp_path, step, _write(f"w{step}"), {"step": step}, keep=2)
        assert path.name == f"checkpoint-{step:07d}" and latest_checkpoint(tmp_path) == path
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000003"]
    state = torch.load(latest_checkpoint(tmp_path) / "train_state.pt", weights_only=False)
    assert state == {"step": 3} and (latest_checkpoint(tmp_path) / "pipeline" / "weights.txt").read_text() == "w3"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_a_writer_that_fails_leaves_the_last_complete_checkpoint(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path, 1, _write("w1"), {"step": 1})

    def crash(p: Path) -> None:
        _write("half")(p)
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, crash, {"step": 2})
    assert latest_checkpoint(tmp_path) == good and not (tmp_path / "checkpoint-0000002").exists()
    assert not list(tmp_path.glob(".tmp-*"))  # no half-written folder is left behind
    # a `latest` naming a folder without its train state (a torn copy) counts as no checkpoint
    atomic_write_text(tmp_path / "latest", "checkpoint-0000009")
    assert latest_checkpoint(tmp_path) is None


def test_atomic_dir_replaces_a_folder_whole(tmp_path: Path) -> None:
    final = tmp_path / "model"
    atomic_dir(final, _write("old"))
    atomic_dir(final, _write("new"))
    assert (final / "weights.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["model"]
