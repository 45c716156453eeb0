"""Run by tests/test_multiprocess.py under ``accelerate launch``: train a config, then save this
process's weights (``on_finish`` is called on every process) as weights-rank{R}.pt in its output."""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from darl_core.train.rl import get_rl_preset, train_rl

torch.set_num_threads(1)
given = json.loads(Path(sys.argv[1]).read_text())
cfg = replace(get_rl_preset(given.pop("preset")), **given)
rank = int(os.environ.get("RANK", "0"))


def on_finish(restorer: object) -> None:
    torch.save(restorer.unet.state_dict(), Path(cfg.output) / f"weights-rank{rank}.pt")


train_rl(cfg, callbacks={"on_finish": on_finish})
