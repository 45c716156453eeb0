"""The Restore tab looked at as a new user would, in a real headless Chromium (Debian's package) at a
1400x1000 window: the Restore button and the results in one view without scrolling, the progress bar's
time left against the time it really took, a stopped restore that keeps the SFT picture, and every
refusal (a ground truth of the wrong size, a number out of range) said at the moment of the mistake.
Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import re
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port
from PIL import Image

from storage import Store
from ui import CSS, AppContext, build_app, restore_service

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
VIEW = {"width": 1400, "height": 1000}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The app as app.py serves it (with its guard), a browser page on it, and a held-out example image."""
    from playwright.sync_api import sync_playwright
    from starlette.middleware import Middleware

    from ui.server import guard

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_factory.mktemp("restore-page")
    store = Store(directory=tmp / "data")
    ctx = AppContext(store)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                app_kwargs={"middleware": [Middleware(guard(ctx))]})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport=VIEW)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#restore-btn").wait_for(timeout=30_000)
            yield {"page": page, "ctx": ctx, "store": store, "tmp": tmp, "url": f"http://127.0.0.1:{port}/",
                   "images": restore_service.example_images(tmp / "examples")}
            browser.close()
    finally:
        demo.close()


def _set(page: Any, box: str, value: str) -> None:
    """Type ``value`` into a number field and leave it (Tab), as a person does."""
    field = page.locator(f"{box} input[type=number]")
    field.fill(value)
    field.press("Tab")


def _upload(page: Any, path: str) -> None:
    from playwright.sync_api import expect

    page.locator("#upload input[type=file]").set_input_files(path)
    expect(page.locator("#upload img")).to_have_count(1, timeout=30_000)


def _in_view(page: Any, selector: str) -> bool:
    """Whether the element lies wholly inside the window as it is now (no scrolling)."""
    box = page.locator(selector).bounding_box()
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEW["width"]
            and box["y"] + box["height"] <= VIEW["height"])


def test_restore_button_and_results_share_one_viewport(app: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = app["page"]
    _upload(page, app["images"][0])
    page.locator("#restore-btn").click()
    expect(page.locator("#difficulty")).to_contain_text("difficulty", timeout=120_000)
    expect(page.locator("#slider img").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "r1_one_viewport.png"))
    outside = [s for s in ("#restore-btn", "#stop-btn", "#slider-input", "#slider", "#scores") if not _in_view(page, s)]
    assert not outside, f"not in the 1400x1000 window after a restore: {outside}"
    assert page.evaluate("window.scrollY") == 0  # nothing scrolled to get there


def test_pickers_say_each_models_full_label(app: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page, store, tmp = app["page"], app["store"], app["tmp"]
    # a registered checkpoint's label carries its held-out numbers: longer than the picker is wide
    folder = tmp / "my-finetune-with-a-long-name"
    shutil.copytree(Path(__file__).resolve().parent.parent / "models" / "darl-blind", folder)
    store.register_checkpoint(str(folder), folder.name, evaluation={"heldout_psnr": 27.4321, "heldout_psnr_base": 27.1})
    page.reload()
    page.locator("#rl-picker input").click()
    page.get_by_role("option", name=re.compile(folder.name)).click()
    labels = page.locator("#model-labels")
    expect(labels).to_contain_text(f"RL: {folder.name} — heldout_psnr 27.43, heldout_psnr_base 27.1", timeout=30_000)
    expect(labels).to_contain_text("SFT: sft-blind-fast")
    picker = page.locator("#rl-picker input").bounding_box()
    full = page.locator("#model-labels").get_by_text(re.compile("heldout_psnr_base")).bounding_box()
    assert _in_view(page, "#model-labels") and full["width"] > 0 and picker["width"] < 400


def test_refusals_come_at_the_mistake_and_say_the_range(app: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page, tmp = app["page"], app["tmp"]
    page.reload()
    _upload(page, app["images"][1])  # 256x256
    # a ground truth of the wrong size: refused at upload, naming the size it must have, and emptied
    wrong = tmp / "wrong_size_gt.png"
    Image.new("RGB", (100, 80), (120, 110, 100)).save(wrong)
    page.locator("#gt-upload input[type=file]").set_input_files(str(wrong))
    expect(page.get_by_text(re.compile(r"Not usable: the ground truth must have the input's size 256x256.*got 100x80"))
           .first).to_be_visible(timeout=30_000)
    expect(page.locator("#gt-upload img")).to_have_count(0, timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "r2_ground_truth_refused.png"))
    # numbers out of range are refused as the field is left, the range said, the value left as typed
    for box, value, said in (("#steps", "9999", "Steps (0–50): must be a whole number from 0 to 50; got 9999"),
                             ("#steps", "-3", "Steps (0–50): must be a whole number from 0 to 50; got -3"),
                             ("#tile", "100", "from 64 to 1024, in steps of 8; got 100"),
                             ("#seed", "-1", "Seed: must be a whole number from 0 to 4294967295; got -1")):
        _set(page, box, value)
        expect(page.get_by_text(said).first).to_be_visible(timeout=30_000)
        assert page.locator(f"{box} input[type=number]").input_value() == value  # not clamped
    page.screenshot(path=str(ARTIFACTS / "r3_number_refused.png"))
    # ... and Restore with one still out of range restores nothing: the same refusal
    for toast in page.locator(".toast-close").all():
        toast.click()
    _set(page, "#seed", "0")
    _set(page, "#tile", "256")
    page.locator("#restore-btn").click()
    expect(page.get_by_text("Steps (0–50): must be a whole number from 0 to 50; got -3").first).to_be_visible(
        timeout=30_000)
    expect(page.locator("#slider-input img")).to_have_count(0)
    _set(page, "#steps", "2")


def test_time_left_holds_against_the_time_taken(app: dict[str, Any]) -> None:
    """The progress bar's time left, read off the page while a restore runs, against when it really
    ended: the whole restore (both models and the scores), not the model running now."""

    page = app["page"]
    page.reload()
    _upload(page, app["images"][2])
    _set(page, "#steps", "3")
    _set(page, "#tile", "64")  # small tiles: a restore of some seconds, with many progress reports
    page.locator("#restore-btn").click()
    seen: list[tuple[float, float]] = []  # (when, seconds left said)
    start = time.monotonic()
    while not page.locator("#difficulty").inner_text().startswith("difficulty"):
        text = page.locator("#scores").inner_text()
        if m := re.search(r"about (\d+) (s|min) left", text):
            seen.append((time.monotonic(), float(m.group(1)) * (60 if m.group(2) == "min" else 1)))
        assert time.monotonic() - start < 300, "the restore did not end"
        page.wait_for_timeout(200)
    end = time.monotonic()
    page.screenshot(path=str(ARTIFACTS / "r4_estimate_done.png"))
    took = end - start
    # every estimate said with at least a fifth of the restore still to go (the last seconds are rounding)
    errors = [abs(said - (end - t)) / (end - t) for t, said in seen if end - t >= max(0.2 * took, 3.0)]
    assert len(errors) >= 3, f"too few estimates shown: {seen}, restore took {took:.1f} s"
    assert statistics.median(errors) <= 0.5, f"time left off by a median {statistics.median(errors):.0%}: {seen}"


def test_stopped_restore_keeps_the_sft_picture(app: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    page = app["page"]
    page.reload()
    _upload(page, app["images"][0])
    _set(page, "#steps", "6")
    _set(page, "#tile", "64")  # a slow RL side: time to press Stop once the SFT picture is there
    page.locator("#restore-btn").click()
    sft = page.locator("#slider-input img[src*='restored_sft']")
    expect(sft).to_have_count(1, timeout=180_000)
    page.locator("#stop-btn").click()
    expect(page.locator("#difficulty")).to_contain_text("Stopped after the SFT restoration", timeout=60_000)
    page.wait_for_timeout(1000)  # anything that would clear it has had its chance
    expect(sft).to_have_count(1)
    assert sft.evaluate("e => e.complete && e.naturalWidth > 0")  # drawn, not a broken image
    expect(page.locator("#slider img")).to_have_count(0)  # no RL picture: it was not finished
    page.screenshot(path=str(ARTIFACTS / "r5_stopped_keeps_sft.png"))
    assert not app["ctx"].stop_flags or _wait_flags(app["ctx"])


def _wait_flags(ctx: AppContext) -> bool:
    """True once the stopped restore's flag is gone (the handler clears it as it returns)."""
    deadline = time.time() + 10
    while ctx.stop_flags and time.time() < deadline:
        time.sleep(0.1)
    return not ctx.stop_flags
