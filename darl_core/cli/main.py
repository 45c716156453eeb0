"""``darl``: one command for everything the project does from a shell.

    darl restore photo.jpg out.png               # restore an image (or a folder)
    darl score out.png --ref clean.png           # IQA scores
    darl train-rl --preset darl --output runs/darl
    darl worker --once                           # run one queued job of the app, then exit
    darl <command> --help                        # a command's own options

A command imports its module only when it runs, so ``darl --help`` and ``darl <command> --help`` answer
at once (the models and metrics load when there is work to do).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

__all__ = ["COMMANDS", "main"]

# command -> (module whose main(argv) runs it, one line for the list)
COMMANDS: dict[str, tuple[str, str]] = {
    "restore": ("darl_core.cli.restore", "restore an image or a folder of images"),
    "score": ("darl_core.cli.score", "score images with IQA metrics (offline ones work out of the box)"),
    "degrade": ("darl_core.data.degrade", "make degraded copies of clean images (a task's recipe)"),
    "evaluate": ("darl_core.evaluation.evaluate", "evaluation table of restorers on held-out pairs"),
    "train-sft": ("darl_core.cli.train_sft", "supervised fine-tuning of a restorer"),
    "train-rl": ("darl_core.cli.train_rl", "difficulty-adaptive RL fine-tuning (docs/method.md)"),
    "train-iqa": ("darl_core.rewards.iqa", "train darl_iqa, the learned no-reference metric"),
    "photos": ("darl_core.data.photos", "fetch or list the package photo corpus"),
    "worker": ("darl_core.jobs.worker", "run the background job worker against a store"),
    "storage": ("storage.__main__", "inspect and apply the store's migrations"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    return f"usage: darl <command> [options]\n\ncommands:\n{rows}\n\n'darl <command> --help' shows a command's options."


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = [c for c in COMMANDS if c.startswith(name[:3])]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        print(f"darl: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    run: Callable[[list[str]], int | None] = importlib.import_module(COMMANDS[name][0]).main
    sys.argv[0] = f"darl {name}"  # argparse's prog in usage lines
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
