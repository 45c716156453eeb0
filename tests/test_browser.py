"""End to end in a real headless Chromium (Debian's package), driven by Playwright.

Upload an image, see the SFT/RL slider and the readable score table, flag the
sample, find it in the hard-samples tab, launch a two-round job, watch its
progress reach 100 % and its training curves draw; click a job row, reload, and
find it still chosen; promote the trained model and find it the RL default, at
once and on a new page load; delete it (after a confirmation) and find it gone
from the pickers. Screenshots of each stage go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

from darl_core.worker import run_worker
from storage import Store
from ui import AppContext, build_app

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"



def _curves(page: Any) -> list[str]:
    """The SVG paths of the lines the training-curves plot has drawn (vega's line marks)."""
    return page.locator("#curves svg .mark-line path").evaluate_all("els => els.map(e => e.getAttribute('d') || '')")


def _expect_lines(page: Any, rounds: int, legend: str = "reward", timeout_s: float = 60) -> None:
    """Wait until the plot has drawn at least two curves through ``rounds`` points each (a line path
    "M x,y L x,y ..." has one "L" per point after the first) with ``legend`` in its legend, and the
    legend inside the plot's box (not clipped off below it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        paths = _curves(page)
        drawn = [d for d in paths if d.count("L") >= rounds - 1 and "NaN" not in d]
        text = page.locator("#curves").inner_text()
        labels = page.locator("#curves svg .role-legend-label text")
        label, block = labels.first.bounding_box() if labels.count() else None, page.locator("#curves").bounding_box()
        shown = label is not None and block is not None and label["y"] + label["height"] <= block["y"] + block["height"]
        if len(drawn) >= 2 and legend in text and "Infinity" not in text and shown:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the plot drew no curves of {rounds} rounds: paths {paths}, text {text!r}")
        page.wait_for_timeout(500)


def _row(page: Any, table: str, text: str) -> Any:
    """A body cell of the row of ``table`` (elem_id) that shows ``text``: clicking it selects the row."""
    return page.locator(f"#{table} .virtual-row", has_text=text).first.locator("[role=gridcell]").nth(1)


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
            # the difficulty says its scale and how it was measured; each score row says which way is better
            expect(page.locator("#difficulty")).to_contain_text("0 = easy … 1 = hard")
            expect(page.locator("#difficulty")).to_contain_text("no-reference proxy")
            expect(page.locator("#scores")).to_contain_text("lower ↓")
            expect(page.locator("#scores")).to_contain_text("best")
            page.screenshot(path=str(ARTIFACTS / "1_restored.png"), full_page=True)

            page.locator("#flag-box").get_by_text("Flag as hard").first.click()
            page.locator("#flag-btn").click()
            expect(page.locator("#flag-msg")).to_contain_text("Flagged as hard sample #1", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "2_flagged.png"), full_page=True)

            page.get_by_role("tab", name="Hard samples").click()
            expect(page.locator("#samples-table")).to_contain_text("artifacts", timeout=30_000)
            expect(page.locator("#samples-table")).to_contain_text("no-reference proxy (NIQE)")  # the kind, marked
            page.locator("#samples-gallery button.thumbnail-item").first.click()  # a tile chooses its sample
            expect(page.locator("#sample-id input")).to_have_value("#1 artifacts", timeout=30_000)
            page.keyboard.press("Escape")  # close the preview the click opened
            page.screenshot(path=str(ARTIFACTS / "3_hard_samples.png"), full_page=True)

            page.get_by_role("tab", name="Fine-tune").click()
            # first visit, no job yet: nothing chosen, and no "job #0"
            expect(page.locator("#job-id input")).to_have_value("")
            expect(page.locator("#curves")).to_contain_text("no job chosen", timeout=30_000)
            assert "#0" not in page.locator("#job-status").inner_text()
            page.locator("#rounds input").fill("2")
            page.locator("#launch-btn").click()
            expect(page.locator("#launch-msg")).to_contain_text("Job #1 queued", timeout=30_000)
            expect(page.locator("#job-status")).to_contain_text("100%", timeout=600_000)
            expect(page.locator("#job-status")).to_contain_text("succeeded")
            _expect_lines(page, rounds=2)  # the curves draw, live, in the page that watched the job
            page.screenshot(path=str(ARTIFACTS / "4_job_done.png"), full_page=True)

            # A second, finished job (written straight to the store: 3 rounds of curves); click its row
            stop.set()
            thread.join(timeout=60)
            other = store.create_job({"preset": "sft", "reward": "niqe"}, [1])
            assert store.claim_job("seeded").id == other
            for r in (1, 2, 3):
                store.add_metrics(other, r, {"reward": -5.0 + r, "kl": 0.01 * r, "loss_sft": 0.1 / r})
            store.transition(other, "succeeded")
            expect(page.locator("#jobs-table")).to_contain_text("sft", timeout=30_000)
            _row(page, "jobs-table", "sft").click()
            expect(page.locator("#job-id input")).to_have_value(f"#{other} · sft · niqe", timeout=30_000)
            expect(page.locator("#job-status")).to_contain_text(f"job #{other}: succeeded", timeout=30_000)
            _expect_lines(page, rounds=3)
            # ... and it is still the chosen job after a reload, its curves drawn in the new page
            page.reload()
            page.get_by_role("tab", name="Fine-tune").click()
            expect(page.locator("#job-id input")).to_have_value(f"#{other} · sft · niqe", timeout=30_000)
            expect(page.locator("#job-status")).to_contain_text(f"job #{other}: succeeded", timeout=30_000)
            _expect_lines(page, rounds=3)
            page.screenshot(path=str(ARTIFACTS / "5_job_chosen_after_reload.png"), full_page=True)

            # Promote the trained model: the RL picker shows it at once, and on a new page load
            trained = next(c for c in store.checkpoints() if c.job_id == 1)
            page.get_by_role("tab", name="Models").click()
            _row(page, "models-table", trained.name).click()
            expect(page.locator("#ckpt-id input")).to_have_value(f"#{trained.id} {trained.name}", timeout=30_000)
            page.locator("#promote-btn").click()
            expect(page.locator("#models-msg")).to_contain_text("is now the default RL model", timeout=30_000)
            page.get_by_role("tab", name="Restore").click()
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(rf"^{trained.name} \(default\)"),
                                                                   timeout=30_000)
            page.reload()
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(rf"^{trained.name} \(default\)"),
                                                                   timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "6_promoted_is_the_default.png"), full_page=True)

            # Delete it (once another model is the default): a question first, then it leaves every picker
            page.get_by_role("tab", name="Models").click()
            _row(page, "models-table", "sft-blind").click()
            expect(page.locator("#ckpt-id input")).to_have_value(re.compile(r"sft-blind"), timeout=30_000)
            page.locator("#promote-btn").click()
            expect(page.locator("#models-msg")).to_contain_text("is now the default", timeout=30_000)
            _row(page, "models-table", trained.name).click()
            expect(page.locator("#ckpt-id input")).to_have_value(f"#{trained.id} {trained.name}", timeout=30_000)
            page.locator("#delete-btn").click()
            expect(page.locator("#delete-question")).to_contain_text(f"Delete checkpoint #{trained.id}", timeout=30_000)
            assert trained.path in {c.path for c in store.checkpoints()}  # asking deletes nothing
            page.screenshot(path=str(ARTIFACTS / "7_delete_asks_first.png"), full_page=True)
            page.locator("#delete-yes").click()
            expect(page.locator("#models-msg")).to_contain_text("deleted, with its files", timeout=30_000)
            page.get_by_role("tab", name="Restore").click()
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(r"^sft-blind .*\(default\)"),
                                                                   timeout=30_000)
            page.locator("#rl-picker input").click()
            options = page.get_by_role("option").all_inner_texts()
            assert options and not any(trained.name in o for o in options), options
            browser.close()
    finally:
        stop.set()
        thread.join(timeout=60)
        demo.close()
    assert store.job(1).state == "succeeded"
    assert trained.id not in {c.id for c in store.checkpoints()}
