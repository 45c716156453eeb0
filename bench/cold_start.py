"""Cold start of the command line: ``--help`` and a 256-px restore, each a fresh Python process.

    python bench/cold_start.py                      # this checkout
    python bench/cold_start.py --before 0d3940f     # and the code of a commit, in turns, in one run

A cold start is what a user of ``darl restore`` waits for before the first pixel: the imports (torch,
diffusers, our package), the model load and the restore. Each repeat runs every tree once, in turns,
so both see the same machine load; the table gives medians and the ratio old / new. The old tree runs
from a ``git archive`` of the commit with this checkout's ``models/`` beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extract(rev: str, dest: Path) -> Path:
    """The ``darl_core`` of commit ``rev`` in ``dest``, with this checkout's models beside it."""
    dest.mkdir(parents=True, exist_ok=True)
    tar = dest / "src.tar"
    with open(tar, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "darl_core"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    (dest / "models").symlink_to(ROOT / "models")
    return dest


def restore_module(tree: Path) -> str:
    """The restore command's module in ``tree`` (0.3: darl_core.restore; 0.4: darl_core.cli.restore)."""
    return "darl_core.cli.restore" if (tree / "darl_core" / "cli" / "restore.py").is_file() else "darl_core.restore"


def timed(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", restore_module(tree), *args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", metavar="REV", help="also time the code of this commit, in turns")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        lq = Path(tmp) / "in.png"
        Image.effect_noise((256, 256), 40).convert("RGB").save(lq)
        trees = {"new": ROOT}
        if args.before:
            trees = {"old": extract(args.before, Path(tmp) / "old"), "new": ROOT}
        cases = {"--help": ["--help"], "restore 256 px": [str(lq), str(Path(tmp) / "out.png")]}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for case, argv in cases.items():
                for name, tree in trees.items():
                    times.setdefault((case, name), []).append(timed(tree, argv))
    names = list(trees)
    print(f"cold start, median of {args.repeats} fresh processes per cell, trees in turns "
          f"({'old = ' + args.before if args.before else 'this checkout'}), {os.cpu_count()} CPUs\n")
    print("| command | " + " | ".join(f"{n} (s)" for n in names) + (" | old / new |" if args.before else " |"))
    print("|---|" + "---:|" * (len(names) + bool(args.before)))
    for case in cases:
        med = {n: statistics.median(times[(case, n)]) for n in names}
        ratio = f" | {med['old'] / med['new']:.1f}x" if args.before else ""
        print(f"| {case} | " + " | ".join(f"{med[n]:.2f}" for n in names) + ratio + " |")


if __name__ == "__main__":
    main()
