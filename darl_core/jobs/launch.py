"""Starting the training processes of a multi-GPU job: ``accelerate launch`` of ``darl_core.cli.train_rl``.

Storage-free: the worker (``worker.run_job``) gives it a config, a round callback and a cancel
flag. The launched processes train ``cfg`` together (see ``distributed``); the main one writes
metrics.jsonl, which is polled for new rounds; cancelling creates the run's stop file, which
the processes check every round. On Linux the launcher dies with the worker that started it
(``PR_SET_PDEATHSIG``), so a re-queued job never races an orphaned run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..train.checkpoint import latest_checkpoint
from ..train.rl import RLConfig

__all__ = ["launch_command", "train_in_processes"]


def launch_command(config_file: str | Path, processes: int, port: int, resume: bool = False) -> list[str]:
    """The ``accelerate launch`` command line that trains ``config_file`` with ``processes`` processes."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), "-m", "darl_core.cli.train_rl", "--config", str(config_file)]
    return cmd + (["--resume"] if resume else [])


def _die_with_parent() -> None:
    # Linux: the launcher gets SIGTERM when this worker dies (even by SIGKILL) and takes its
    # training processes down with it, so a re-queued job never races an orphaned run.
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_processes(cfg: RLConfig, processes: int, resume: bool, on_round: Callable[[dict[str, Any]], None],
                       cancel: threading.Event, poll_s: float = 1.0) -> Path:
    """Train ``cfg`` with ``processes`` processes (``accelerate launch``), reporting its rounds.

    The main training process writes metrics.jsonl; each new round in it goes to ``on_round``.
    Cancelling creates the run's stop file, which the training processes check every round.
    """
    out = Path(cfg.output).resolve()
    stop = out / "STOP"
    stop.unlink(missing_ok=True)
    cfg = replace(cfg, output=str(out), stop_file=str(stop))
    conf = out / "rl_config.json"
    conf.write_text(json.dumps(asdict(cfg), indent=2))
    ckpt = latest_checkpoint(out) if resume else None
    reported = int(ckpt.name.rsplit("-", 1)[-1]) if ckpt is not None else 0
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    metrics = out / "metrics.jsonl"
    offset = 0  # bytes of the log already read: each poll reads only what is new

    def report() -> None:
        nonlocal reported, offset
        if not metrics.is_file():
            return
        if metrics.stat().st_size < offset:
            offset = 0  # a resumed run truncated the log to its checkpoint
        with open(metrics, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        done = chunk.rfind(b"\n") + 1  # whole lines only: the last one may be being written
        offset += done
        for line in chunk[:done].decode().splitlines():
            rec = json.loads(line)
            if rec.get("round", 0) > reported:
                reported = rec["round"]
                on_round(rec)

    with open(out / "train.log", "ab") as log:
        proc = subprocess.Popen(launch_command(conf, processes, _free_port(), resume), cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                report()
                if cancel.is_set():
                    stop.touch()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    report()
    if proc.returncode != 0:
        tail = (out / "train.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{processes} training processes failed (exit {proc.returncode}); "
                           f"end of {out / 'train.log'}:\n{tail}")
    return out / "model"
