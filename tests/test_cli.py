"""Command lines and configs: help from the field comments, one unknown-field check for every entry."""

from __future__ import annotations

import importlib
import json
from dataclasses import fields
from pathlib import Path

import pytest

from darl_core.cli.config_args import field_comments
from darl_core.train.rl import RLConfig, get_rl_preset
from darl_core.train.sft import SFTConfig


@pytest.mark.parametrize("cls", [RLConfig, SFTConfig])
def test_every_config_field_has_its_comment_as_help(cls: type, capsys: pytest.CaptureFixture[str]) -> None:
    comments = field_comments(cls)
    assert all(comments.get(f.name) for f in fields(cls)), [f.name for f in fields(cls) if not comments.get(f.name)]
    # a comment continued on the next line is joined to its field
    assert "batch statistics while short" in field_comments(RLConfig)["advantage"]
    cli = importlib.import_module("darl_core.cli.train_rl" if cls is RLConfig else "darl_core.cli.train_sft")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    name = "clip_range" if cls is RLConfig else "lr"
    assert f"{' '.join(comments[name].split())} (default:" in text


def test_one_unknown_field_check_for_jobs_and_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = RLConfig.from_dict({"rounds": 3, "lr": 0.5}, get_rl_preset("sft"))
    assert (cfg.rounds, cfg.lr, cfg.method) == (3, 0.5, "sft")
    with pytest.raises(ValueError, match=r"unknown config fields \['roundz'\]"):
        RLConfig.from_dict({"roundz": 3})
    (tmp_path / "c.json").write_text(json.dumps({"roundz": 3}))
    with pytest.raises(SystemExit):
        importlib.import_module("darl_core.cli.train_rl").main(["--config", str(tmp_path / "c.json")])
    assert "unknown config fields ['roundz']" in capsys.readouterr().err


def test_a_field_that_takes_several_values_takes_them_on_the_command_line() -> None:
    """``--distill-trajectory 2 2 4`` gives a tuple; one value stays a plain int; other fields are untouched."""
    import argparse

    from darl_core.cli.config_args import add_config_args, config_from_args
    ap = argparse.ArgumentParser()
    add_config_args(ap, SFTConfig)
    teacher = SFTConfig(distill_from="teacher")  # (distill_trajectory needs one)
    several = config_from_args(teacher, ap.parse_args(["--distill-trajectory", "2", "2", "4", "--lr", "1e-4"]))
    assert several.distill_trajectory == (2, 2, 4) and several.lr == 1e-4
    assert config_from_args(teacher, ap.parse_args(["--distill-trajectory", "2"])).distill_trajectory == 2
    assert config_from_args(SFTConfig(), ap.parse_args([])) == SFTConfig()
    with pytest.raises(SystemExit):
        ap.parse_args(["--distill-trajectory", "two"])
