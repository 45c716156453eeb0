"""Time from upload to both restorations shown, through the real app over HTTP (gradio_client).

    python bench/app_latency.py [--users 1,4] [--repeats 3] [--steps 2] [--sft DIR] [--rl DIR] [--browser]

Starts the app in-process on a free port (shipped models, a temporary
store), then for each user count sends that many 256x256 restore requests
at once and records each request's latency (upload, queue, SFT and RL
restores at the app's default steps, scoring, download of the result).
``--sft`` / ``--rl`` choose the pair (default: the app's defaults), e.g.
``--sft models/sft-blind-fast`` for the faster SFT model.
Restores run one at a time (the app's queue concurrency limit for model
work), so with 4 users the later ones wait in the queue.

``--browser`` measures what a person waits for instead: in Debian's chromium
(Playwright), the image uploaded once, from the click on Restore to both
restorations drawn on the page (the SFT-RL slider's images loaded; the page
shows them before it scores them) and to the scores shown too, a new seed
each time so every result is new. The browser runs on the same cores.
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

from darl_core.data.clean import builtin_image
from darl_core.data.degrade import degrade, get_preset
from darl_core.data.images import pil_to_tensor, save_tensor
from darl_core.models.pipeline import DEFAULT_STEPS


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
    ap.add_argument("--browser", action="store_true", help="click to restorations drawn, in chromium (one user)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    hq = pil_to_tensor(builtin_image("coffee.png"))[None, :, :256, :256]
    save_tensor(degrade(hq, get_preset("blind"), torch.Generator().manual_seed(0))[0], tmp / "lq.png")
    # max_kept_pixels 0: every request restores (the app reuses the restorations of a repeated request)
    ctx = AppContext(Store(directory=tmp / "data"), max_kept_pixels=0)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    d_sft, d_rl = ctx.default_models()
    sft, rl = str(Path(args.sft).resolve()) if args.sft else d_sft, str(Path(args.rl).resolve()) if args.rl else d_rl
    for m in {sft, rl} - {d_sft, d_rl}:  # the app restores with registered (or shipped) models only
        ctx.store.register_checkpoint(m, Path(m).name)

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

    if args.browser:
        try:
            in_browser(port, tmp / "lq.png", sft, rl, args.steps, args.repeats)
            ran = sorted(Path(m).name for m in ctx.speed)  # the models the page's restores used
            if ran != sorted({Path(sft).name, Path(rl).name}):
                sys.exit(f"the page restored with {ran}, not the pair asked for")
        finally:
            demo.close()
        return

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


def in_browser(port: int, image: Path, sft: str, rl: str, steps: int, repeats: int) -> None:
    """Click on Restore to both restorations drawn, in chromium, ``repeats`` times after a warm-up."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    drawn = """([old]) => {  // the SFT-RL slider shows new images, both loaded
        const imgs = [...document.querySelectorAll('#slider img')];
        return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0) && imgs[0].src !== old;
    }"""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#upload input[type=file]").set_input_files(str(image))
        expect(page.locator("#upload img")).to_have_count(1, timeout=30_000)
        for picker, path in (("#sft-picker", sft), ("#rl-picker", rl)):  # a folder path is a valid custom value
            box = page.locator(f"{picker} input")
            box.fill(path)
            box.press("Enter")
        page.locator("#steps input[type=number]").fill(str(steps))
        page.locator("#steps input[type=number]").press("Enter")
        lat, full, inside = [], [], []
        for i in range(repeats + 1):  # the first loads both models
            page.locator("#seed input").fill(str(i))
            page.locator("#seed input").press("Tab")
            old = page.locator("#slider img").first.get_attribute("src") if i else ""
            t0 = time.perf_counter()
            page.locator("#restore-btn").click()
            page.wait_for_function(drawn, arg=[old or ""], timeout=300_000, polling=20)
            dt = time.perf_counter() - t0
            # the scores come last (the line was emptied when the first restoration was shown); a click
            # before they are there would be dropped, as a person's would
            expect(page.locator("#difficulty")).to_contain_text("both restorations took", timeout=120_000)
            dt_all = time.perf_counter() - t0
            m = re.search(r"both restorations took ([0-9.]+) s", page.locator("#difficulty").inner_text())
            if i:
                lat.append(dt)
                full.append(dt_all)
                inside.append(float(m.group(1)) if m else float("nan"))
        browser.close()
    print(f"256x256 upload in chromium, {steps} steps, SFT {Path(sft).name}, RL {Path(rl).name}, {len(lat)} clicks: "
          f"click -> both restorations drawn median {statistics.median(lat):.2f} s (max {max(lat):.2f}); "
          f"-> scores shown too {statistics.median(full):.2f} s (max {max(full):.2f}); "
          f"the two restorations: median {statistics.median(inside):.2f} s")


if __name__ == "__main__":
    main()
