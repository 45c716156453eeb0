"""Do the app's time estimates hold? Each one against the time it really took, in one run.

    python bench/estimates.py                        # idle and beside a busy process: restores and a job
    python bench/estimates.py --loads idle --rounds 4 --out /tmp/est.json

Three estimates, as the app shows them:

1. the large-image warning's time, said before a restore starts (``estimate_seconds`` +
   ``score_seconds``: speeds measured on the earlier restores of this app), against the restore's wall time;
2. the progress bar's time left (``progress_at``, the whole restore: both models and the scores), read
   at every report with at least a fifth of the restore to go, against when the restore really ended;
3. a fine-tune job's time left (``finetune_tab.job_status``), polled while it runs, with at least one
   round to go, against when its last round really ended.

Each under two loads: ``idle``, and ``busy``: a second process multiplying matrices on one thread all the
time (what a background job or a second user does to a 2-core machine). The error of one estimate is
|said - real| / real; the table gives the medians. The restores use the app's default models at 2 steps
on held-out photos (256 to 512 px); the job is a quick run of the default method on one flagged sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUSY = ("import torch\ntorch.set_num_threads(1)\na = torch.rand(384, 384)\n"
        "while True:\n    a = (a @ a).clamp_(0, 1) / 384 + 0.5\n")
SIZES = ((256, 256), (384, 320), (512, 384), (448, 448))


def crops(folder: Path) -> list[str]:
    """Held-out photos (scikit-image's) cut to ``SIZES`` and degraded as the app's examples are."""
    import numpy as np

    from darl_core.data.clean import builtin_image
    from darl_core.evaluation.evalset import OUTSIDE, pillow_degrade

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, ((w, h), name) in enumerate(zip(SIZES, ("chelsea.png", "coffee.png", "rocket.jpg", "coffee.png"))):
        im = builtin_image(name)
        crop = im.crop((0, 0, min(w, im.size[0]), min(h, im.size[1]))).resize((w, h))
        path = folder / f"crop_{w}x{h}.png"
        pillow_degrade(crop, OUTSIDE, np.random.default_rng(i))[0].save(path)
        out.append(str(path))
    return out


def restores(ctx: Any, images: list[str]) -> list[dict[str, Any]]:
    """Each image restored once (after one warm-up restore that loads and times the models)."""
    from PIL import Image

    from ui import restore_service as rs

    rs.restore(ctx, images[0], steps=2, seed=99)  # loads both models; the speeds are then this machine's
    d_sft, d_rl = ctx.default_models()
    rows = []
    for k, path in enumerate(images):
        size = Image.open(path).size
        said = rs.estimate_seconds(ctx, [d_sft, d_rl], size, 2) + rs.score_seconds(ctx, size)
        seen: list[tuple[float, float]] = []

        def progress(f: float, text: str, seen: list[tuple[float, float]] = seen) -> None:
            if "left" in text:
                value = float(text.rsplit("about ", 1)[1].split()[0])
                seen.append((time.perf_counter(), value * (60 if " min left" in text else 1)))
        t0 = time.perf_counter()
        rs.restore(ctx, path, steps=2, seed=k, progress=progress)
        end = time.perf_counter()
        took = end - t0
        errors = [abs(v - (end - t)) / (end - t) for t, v in seen if end - t >= 0.2 * took]
        rows.append({"size": f"{size[0]}x{size[1]}", "seconds": took, "said_before": said,
                     "error_before": abs(said - took) / took, "time_left_errors": errors})
    return rows


def job(ctx: Any, image: str, rounds: int) -> dict[str, Any]:
    """A quick job on one flagged sample, run by the worker in a thread, its time left polled."""
    from darl_core.jobs.worker import run_worker
    from ui import finetune_tab
    from ui import restore_service as rs

    rs.flag(ctx, image, "artifacts")
    base = ctx.default_models()[0]
    jid = finetune_tab.launch_job(ctx, base, "darl_iqa", "darl", rounds, size="quick")
    thread = threading.Thread(target=run_worker, args=(ctx.store, "bench"), kwargs={"once": True}, daemon=True)
    thread.start()
    seen: list[tuple[float, float, float]] = []  # (epoch, seconds left said, progress)
    while thread.is_alive():
        st = finetune_tab.job_status(ctx, jid)
        if st["seconds_left"] is not None and st["progress"] < 1:
            seen.append((time.time(), st["seconds_left"], st["progress"]))
        time.sleep(0.5)
    metrics = ctx.store.metrics(jid)
    ends = [v for _, n, v in metrics if n == "round_end"]
    per_round = [v for _, n, v in metrics if n == "round_s"]
    if ctx.store.job(jid).state != "succeeded" or len(ends) != rounds:
        raise SystemExit(f"job #{jid} did not finish its {rounds} rounds: {ctx.store.job(jid).error}")
    last = ends[-1]
    errors = [abs(v - (last - t)) / (last - t) for t, v, p in seen if last - t >= statistics.median(per_round)]
    return {"rounds": rounds, "seconds_per_round": statistics.median(per_round), "time_left_errors": errors,
            "polls": len(seen)}


def measure(load: str, tmp: Path, rounds: int) -> dict[str, Any]:
    from storage import Store
    from ui import AppContext

    busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
    try:
        time.sleep(1.0 if busy else 0.0)
        ctx = AppContext(Store(directory=tmp / load / "data"))
        ctx.max_kept_pixels = 0  # every restore computed, none reused
        images = crops(tmp / "crops")
        rows = restores(ctx, images)
        ran = job(ctx, images[0], rounds) if rounds else None
    finally:
        if busy is not None:
            busy.terminate()
            busy.wait()
    return {"load": load, "restores": rows, "job": ran}


def table(results: list[dict[str, Any]]) -> str:
    med = statistics.median
    lines = ["| load | estimate | n | real, median s | median error |", "|---|---|---:|---:|---:|"]
    for r in results:
        rows = r["restores"]
        left = [e for row in rows for e in row["time_left_errors"]]
        lines.append(f"| {r['load']} | large-image warning (before the restore) | {len(rows)} | "
                     f"{med(row['seconds'] for row in rows):.1f} | {med(row['error_before'] for row in rows):.0%} |")
        lines.append(f"| {r['load']} | progress bar's time left | {len(left)} | "
                     f"{med(row['seconds'] for row in rows):.1f} | {med(left):.0%} |")
        if r["job"] and r["job"]["time_left_errors"]:
            j = r["job"]
            lines.append(f"| {r['load']} | job's time left ({j['rounds']} rounds) | {len(j['time_left_errors'])} | "
                         f"{j['seconds_per_round']:.1f} a round | {med(j['time_left_errors']):.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loads", default="idle,busy", help="comma-separated: idle, busy")
    ap.add_argument("--rounds", type=int, default=6, help="rounds of the timed job (0: no job)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "estimates.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="darl-estimates-") as d:
        results = [measure(load, Path(d), args.rounds) for load in args.loads.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
