"""End to end in a real headless Chromium (Debian's package), driven by Playwright.

Upload an image, see the SFT/RL slider, flag the sample, find it in the
hard-samples tab, launch a one-round job and watch its progress reach 100 %.
Screenshots of each stage go to test-artifacts/browser/.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from helpers import free_port

from darl_core.worker import run_worker
from storage import Store
from ui import AppContext, build_app

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"



@pytest.mark.slow
def test_upload_slider_flag_list_launch_progress(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    from test_ui import _img

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    store = Store(directory=tmp_path / "data")
    demo = build_app(AppContext(store))
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    stop = threading.Event()

    def worker() -> None:  # the worker process of `make run`, as a thread here
        while not stop.is_set():
            if run_worker(store, "browser-test", once=True) == 0:
                time.sleep(0.5)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    image = _img(tmp_path / "upload.png", (96, 96))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#upload input[type=file]").set_input_files(image)
            page.locator("#restore-btn").click()
            expect(page.locator("#slider img").first).to_be_visible(timeout=120_000)
            expect(page.locator("#difficulty")).to_contain_text("difficulty", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1_restored.png"), full_page=True)

            page.locator("#flag-box").get_by_text("Flag as hard").first.click()
            page.locator("#flag-btn").click()
            expect(page.locator("#flag-msg")).to_contain_text("Flagged as hard sample #1", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "2_flagged.png"), full_page=True)

            page.get_by_role("tab", name="Hard samples").click()
            expect(page.locator("#samples-table")).to_contain_text("artifacts", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "3_hard_samples.png"), full_page=True)

            page.get_by_role("tab", name="Fine-tune").click()
            page.locator("#rounds input").fill("1")
            page.locator("#launch-btn").click()
            expect(page.locator("#launch-msg")).to_contain_text("Job #1 queued", timeout=30_000)
            expect(page.locator("#job-status")).to_contain_text("100%", timeout=300_000)
            expect(page.locator("#job-status")).to_contain_text("succeeded")
            page.screenshot(path=str(ARTIFACTS / "4_job_done.png"), full_page=True)
            browser.close()
    finally:
        stop.set()
        thread.join(timeout=60)
        demo.close()
    assert store.job(1).state == "succeeded"
