"""Time from upload to both restorations shown, through the real app over HTTP (gradio_client).

    python bench/app_latency.py [--users 1,4] [--repeats 3] [--steps 2] [--sft DIR] [--rl DIR]

Starts the app in-process on a free port (shipped models, a temporary
store), then for each user count sends that many 256x256 restore requests
at once and records each request's latency (upload, queue, SFT and RL
restores at the app's default steps, scoring, download of the result).
``--sft`` / ``--rl`` choose the pair (default: the app's defaults), e.g.
``--sft models/sft-blind-fast`` for the faster SFT model.
Restores run one at a time (the app's queue concurrency limit for model
work), so with 4 users the later ones wait in the queue.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from darl_core.data import builtin_image  # noqa: E402
from darl_core.degrade import degrade, get_preset  # noqa: E402
from darl_core.images import pil_to_tensor, save_tensor  # noqa: E402
from darl_core.pipeline import DEFAULT_STEPS  # noqa: E402


def main() -> None:
    import torch
    from gradio_client import Client, handle_file

    from storage import Store
    from ui import AppContext, build_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="1,4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--sft", default=None, help="SFT model folder (default: the app's default)")
    ap.add_argument("--rl", default=None, help="RL model folder (default: the app's default)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    hq = pil_to_tensor(builtin_image("coffee.png"))[None, :, :256, :256]
    save_tensor(degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))[0], tmp / "lq.png")
    ctx = AppContext(Store(directory=tmp / "data"))
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    d_sft, d_rl = ctx.default_models()
    sft, rl = str(Path(args.sft).resolve()) if args.sft else d_sft, str(Path(args.rl).resolve()) if args.rl else d_rl

    inside: list[float] = []  # the restorations' own time, as the page reports it ("both restorations took")

    def one() -> float:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        t0 = time.perf_counter()
        out = c.predict(handle_file(str(tmp / "lq.png")), None, "blind", sft, rl, args.steps, 0, 256,
                        api_name="/restore")
        dt = time.perf_counter() - t0
        m = re.search(r"both restorations took ([0-9.]+) s", str(out[4]))
        inside.append(float(m.group(1)) if m else float("nan"))
        return dt

    try:
        one()  # warm-up: loads both models
        inside.clear()
        print(f"256x256 upload -> both restorations shown, {args.steps} steps, {torch.get_num_threads()} threads, "
              f"SFT {Path(sft).name}, RL {Path(rl).name}")
        for n in (int(u) for u in args.users.split(",")):
            lat = []
            for _ in range(args.repeats):
                with ThreadPoolExecutor(n) as ex:
                    lat += list(ex.map(lambda _: one(), range(n)))
            mine = inside[:]
            inside.clear()
            print(f"{n} user(s) at once: median {statistics.median(lat):.2f} s, max {max(lat):.2f} s "
                  f"over {len(lat)} requests (of it the two restorations: median {statistics.median(mine):.2f} s)")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
