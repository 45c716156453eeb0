"""A screenshot of a finished job's before and after, as the Fine-tune tab shows it (the README's picture).

    .venv/bin/python bench/payoff_screenshot.py --data runs/loop_gt/seed0/data --job 1 \\
        --out docs/loop/before_after.png

Serves the app on the data folder (its store and files; the store's own database), opens the Fine-tune
tab in Debian's Chromium (Playwright), chooses the job and photographs the "Before and after" box once
its pictures have loaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import free_port

from storage import Store
from ui import CSS, AppContext, build_app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the app's data folder holding the job")
    ap.add_argument("--job", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    ctx = AppContext(Store(directory=args.data))
    demo = build_app(ctx)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Fine-tune").click()
            page.locator("#job-id input").click()
            page.get_by_role("option", name=f"#{args.job} ").first.click()
            expect(page.locator("#payoff-summary")).to_contain_text("did it pay off", timeout=60_000)
            page.wait_for_function("() => [...document.querySelectorAll('#payoff-gallery img')]"
                                   ".filter(e => e.complete && e.naturalWidth > 0).length >= 4", timeout=60_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.locator("#payoff-box").screenshot(path=str(args.out))
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
