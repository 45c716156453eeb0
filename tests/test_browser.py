"""End to end in a real headless Chromium (Debian's package), driven by Playwright.

Upload a damaged file and be told at once; give a ground truth first and see it kept for the next
image and cleared (said) when that image is replaced; start a long restore and stop it from the page; load a
clickable example and roll a random seed;
upload an image and see the input/SFT and SFT/RL sliders, the difference map, the 1:1 zoom that
follows a click, the readable score table and "no ground truth given"; flag the sample, find it in
the hard-samples tab, view it, filter by part of its reason, open it in Restore; launch a quick
two-round job, watch its progress reach 100 %, its time per round, its curves draw and its
restored training input, its before and after (drawn, with numbers, again after a reload, one image opened
in Restore with the base and new models as the two sides); compare two jobs on one plot; click a job row, reload, and find it still
chosen; promote the trained model and find it the RL default, at once and on a new page load;
delete it (after a confirmation) and find it gone from the pickers. Screenshots of each stage go
to test-artifacts/browser/ (docs/screenshots' come from there).
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

from darl_core.jobs.worker import run_worker
from storage import Store
from ui import CSS, AppContext, build_app, restore_service

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"



def _curves(page: Any) -> list[str]:
    """The SVG paths of the lines the training-curves panels have drawn (vega's line marks; one panel a metric)."""
    return page.locator("#curves svg .mark-line path").evaluate_all("els => els.map(e => e.getAttribute('d') || '')")


def _expect_lines(page: Any, rounds: int, legend: str = "reward", timeout_s: float = 60) -> None:
    """Wait until at least two panels have drawn their curve through ``rounds`` points (a line path "M x,y L x,y
    ..." has one "L" per point after the first), each panel with its own axes, and ``legend`` (a panel's
    title) in the plot's text."""
    deadline = time.monotonic() + timeout_s
    while True:
        paths = _curves(page)
        drawn = [d for d in paths if d.count("L") >= rounds - 1 and "NaN" not in d]
        text = page.locator("#curves").inner_text()
        axes = page.locator("#curves .curve-panel").evaluate_all(
            "els => els.filter(e => e.offsetParent !== null).map(e => e.querySelectorAll('svg .role-axis').length)")
        if len(drawn) >= 2 and legend in text and "Infinity" not in text and sum(a >= 2 for a in axes) >= 2:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the plot drew no curves of {rounds} rounds: paths {paths}, text {text!r}")
        page.wait_for_timeout(500)


def _expect_pictures(page: Any, selector: str, n: int, timeout_s: float = 60) -> None:
    """Wait until at least ``n`` images under ``selector`` have loaded with pixels (not just their tags)."""
    deadline = time.monotonic() + timeout_s
    while True:
        drawn = page.locator(f"{selector} img").evaluate_all(
            "els => els.filter(e => e.complete && e.naturalWidth > 0).length")
        if drawn >= n:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector}: {drawn} pictures drawn, expected at least {n}")
        page.wait_for_timeout(500)


def _row(page: Any, table: str, text: str) -> Any:
    """A body cell of the row of ``table`` (elem_id) that shows ``text``: clicking it selects the row."""
    return page.locator(f"#{table} .virtual-row", has_text=text).first.locator("[role=gridcell]").nth(1)


@pytest.mark.slow
def test_upload_slider_flag_list_launch_progress(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    store = Store(directory=tmp_path / "data")
    ctx = AppContext(store)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    from starlette.middleware import Middleware

    from ui.server import guard

    # as app.py, with its guard: every route the page uses must be on the guard's allow-list
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS,
                app_kwargs={"middleware": [Middleware(guard(ctx))]})
    stop = threading.Event()

    def worker() -> None:  # the worker process of `make run`, as a thread here
        while not stop.is_set():
            if run_worker(store, "browser-test", once=True) == 0:
                time.sleep(0.5)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    image = restore_service.example_images(tmp_path / "examples")[0]  # a held-out photo, degraded by Pillow and JPEG
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            refused: list[tuple[int, str]] = []  # requests of the page the guard refused (none may be)
            page.on("response", lambda r: refused.append((r.status, r.url)) if r.status in (403, 404) else None)
            page.goto(f"http://127.0.0.1:{port}/")
            # the shipped RL side carries its caveat in the page: it is not better than SFT
            expect(page.locator("#rl-note")).to_contain_text("not better than SFT", timeout=30_000)
            # a file the loader refuses is said at upload, and not left on the page as a broken image
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
            others = restore_service.example_images(tmp_path / "examples")
            page.locator("#gt-upload input[type=file]").set_input_files(others[2])  # a ground truth first
            expect(page.locator("#gt-upload img")).to_have_count(1, timeout=30_000)
            page.locator("#upload input[type=file]").set_input_files(str(broken))
            expect(page.get_by_text("Not usable: broken.png").first).to_be_visible(timeout=30_000)
            expect(page.locator("#upload img")).to_have_count(0, timeout=30_000)
            # the ground truth given first waits for its image; replacing that image then clears it, said so
            page.locator("#upload input[type=file]").set_input_files(others[1])
            expect(page.locator("#upload img")).to_have_count(1, timeout=30_000)
            page.wait_for_timeout(1000)
            expect(page.locator("#gt-upload img")).to_have_count(1)
            page.locator("#upload input[type=file]").set_input_files(image)
            expect(page.get_by_text("The ground truth was cleared").first).to_be_visible(timeout=30_000)
            expect(page.locator("#gt-upload img")).to_have_count(0, timeout=30_000)
            page.locator("#restore-btn").click()
            # the SFT restoration is seen while the RL model still runs: the topmost thing drawn on the
            # input ⟷ SFT slider is its picture, not a progress panel (the one progress bar is on the scores)
            page.wait_for_function("""() => {
                const img = document.querySelector('#slider-input img');
                if (!img || !document.querySelector('#scores').innerText.includes('RL model')) return false;
                img.scrollIntoView({block: 'center'});
                const r = img.getBoundingClientRect();
                const top = document.elementFromPoint(r.x + r.width * 0.25, r.y + r.height * 0.5);
                return top !== null && top.tagName === 'IMG';
            }""", timeout=120_000, polling=50)
            page.screenshot(path=str(ARTIFACTS / "1b_sft_shown_while_rl_runs.png"), full_page=True)
            expect(page.locator("#slider img").first).to_be_visible(timeout=120_000)
            expect(page.locator("#difficulty")).to_contain_text("difficulty", timeout=30_000)
            # the difficulty says its scale and how it was measured; each score row says which way is better
            expect(page.locator("#difficulty")).to_contain_text("0 = easy … 1 = hard")
            expect(page.locator("#difficulty")).to_contain_text("no-reference proxy")
            expect(page.locator("#scores")).to_contain_text("lower ↓")
            expect(page.locator("#scores")).to_contain_text("best")
            expect(page.locator("#difficulty")).to_contain_text("no ground truth given")
            # input ⟷ SFT and SFT ⟷ RL, the difference map and the 1:1 zoom, which follows a click on the input
            expect(page.locator("#slider-input img").first).to_be_visible()
            expect(page.locator("#slider-input")).to_contain_text("input (left) ⟷ SFT (right)")  # sides named
            expect(page.locator("#slider")).to_contain_text("SFT (left) ⟷ RL (right)")
            expect(page.locator("#diff-map img")).to_be_visible()
            expect(page.locator("#diff-caption")).to_contain_text("mean difference")
            expect(page.locator("#zoom img")).to_be_visible()
            # what the page draws is lossless: PNG files, not Gradio's default WebP
            drawn = [page.locator(f"{s} img").first.get_attribute("src") for s in
                     ("#slider", "#slider-input", "#input-view", "#diff-map", "#zoom")]
            assert all(src.endswith(".png") for src in drawn), drawn
            before = page.locator("#zoom img").get_attribute("src")
            page.locator("#input-view img").click(position={"x": 4, "y": 4})  # the top-left corner
            page.wait_for_function("b => document.querySelector('#zoom img').getAttribute('src') !== b", arg=before,
                                   timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "1_restored.png"), full_page=True)

            page.locator("#flag-btn").click()
            expect(page.locator("#flag-msg")).to_contain_text("Flagged as hard sample #1", timeout=30_000)
            expect(page.locator("#flag-msg")).to_contain_text("no ground truth")
            page.screenshot(path=str(ARTIFACTS / "2_flagged.png"), full_page=True)

            page.get_by_role("tab", name="Hard samples").click()
            expect(page.locator("#samples-table")).to_contain_text("artifacts", timeout=30_000)
            expect(page.locator("#samples-table")).to_contain_text("no-reference proxy (NIQE)")  # the kind, marked
            tile = page.locator("#samples-gallery button.thumbnail-item").first
            assert tile.bounding_box()["width"] <= 230  # one flagged sample is a thumbnail, not the page's width
            tile.click()  # a tile chooses its sample
            expect(page.locator("#sample-id input")).to_have_value("#1 artifacts", timeout=30_000)
            expect(page.locator("#view-lq img")).to_be_visible(timeout=30_000)  # the sample view shows it
            expect(page.locator("#sample-view-text")).to_contain_text("no ground truth")
            # the reason filter: part of a reason, any case, on Enter
            page.locator("#reason-filter input").fill("zzz")
            page.locator("#reason-filter input").press("Enter")
            expect(page.locator("#samples-table")).not_to_contain_text("artifacts", timeout=30_000)
            page.locator("#reason-filter input").fill("ARTI")
            page.locator("#reason-filter input").press("Enter")
            expect(page.locator("#samples-table")).to_contain_text("artifacts", timeout=30_000)
            page.locator("#samples-gallery button.thumbnail-item").first.click()
            expect(page.locator("#sample-id input")).to_have_value("#1 artifacts", timeout=30_000)
            page.locator("#view-restore").click()  # the sample restored by both models, beside its input
            expect(page.locator("#view-sft img")).to_be_visible(timeout=120_000)
            expect(page.locator("#view-rl img")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "3_hard_samples.png"), full_page=True)
            # "Open in Restore" brings the sample to the Restore tab
            page.locator("#open-in-restore").click()
            expect(page.locator("#restore-btn")).to_be_visible(timeout=30_000)
            expect(page.locator("#upload img")).to_be_visible(timeout=30_000)
            page.wait_for_function("() => window.scrollY === 0", timeout=30_000)  # from the top, where the image is
            # a new image clears the last results: no flag can carry another image's difficulty
            expect(page.locator("#difficulty")).not_to_contain_text("difficulty", timeout=30_000)
            expect(page.locator("#diff-caption")).not_to_contain_text("mean difference")

            page.get_by_role("tab", name="Fine-tune").click()
            # first visit, no job yet: nothing chosen, and no "job #0"
            expect(page.locator("#job-id input")).to_have_value("")
            expect(page.locator("#curves")).to_contain_text("no job chosen", timeout=30_000)
            assert "#0" not in page.locator("#job-status").inner_text()
            page.locator("#rounds input").fill("2")
            # the CPU study's setting is the default run size, and the form says what each size costs here
            expect(page.locator("#run-size input[value=full]")).to_be_checked()
            expect(page.locator("#launch-estimate")).to_contain_text("quick ≈", timeout=30_000)
            expect(page.locator("#launch-estimate")).to_contain_text("full ≈")
            page.locator("#run-size input[value=quick]").check()  # seconds a round here, not minutes
            page.locator("#launch-btn").click()
            expect(page.locator("#launch-msg")).to_contain_text("Job #1 queued", timeout=30_000)
            expect(page.locator("#jobs-table")).to_contain_text("darl_anchored (quick)", timeout=30_000)
            expect(page.locator("#job-status")).to_contain_text("100%", timeout=600_000)
            expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=300_000)  # after its check
            expect(page.locator("#job-status")).to_contain_text("s a round")
            _expect_lines(page, rounds=2)  # the curves draw, live, in the page that watched the job
            # the picture to watch: the job's training input and its restoration after the last round
            expect(page.locator("#job-sample img")).to_be_visible(timeout=30_000)
            expect(page.locator("#job-sample-caption")).to_contain_text("after round 2")
            page.screenshot(path=str(ARTIFACTS / "4_job_done.png"), full_page=True)
            # did it pay off: the job's sample and the held-out crops restored by the base and the new model,
            # the pictures drawn, the numbers there (the held-out crops have a truth: PSNR)
            summary = page.locator("#payoff-summary")
            expect(summary).to_contain_text("did it pay off", timeout=120_000)
            expect(summary).to_contain_text("the job's own samples, 1:")
            expect(summary).to_contain_text("held-out crops (photos no model trained on), 8: reward")
            expect(summary).to_contain_text("PSNR")
            _expect_pictures(page, "#payoff-gallery", 4)
            expect(page.locator("#payoff-table")).to_contain_text("sample 1")
            expect(page.locator("#payoff-table")).to_contain_text("→")
            page.screenshot(path=str(ARTIFACTS / "4b_before_after.png"), full_page=True)
            # ... kept in the store: after a reload the page shows it again for the same job
            page.reload()
            page.get_by_role("tab", name="Fine-tune").click()
            expect(page.locator("#job-id input")).to_have_value(re.compile(r"^#1 "), timeout=30_000)
            expect(page.locator("#payoff-summary")).to_contain_text("the job's own samples, 1:", timeout=60_000)
            _expect_pictures(page, "#payoff-gallery", 4)
            # open one in Restore: its input, with the job's base model as the SFT side and its new one as RL
            page.locator("#payoff-open").click()
            expect(page.locator("#upload img")).to_be_visible(timeout=30_000)
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(r"^job-1-darl_anchored"), timeout=30_000)
            expect(page.locator("#sft-picker input")).to_have_value(re.compile(r"^sft-blind-fast"))
            page.get_by_role("tab", name="Fine-tune").click()

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
            # tables sort from their header menu: by job id ascending, the first job comes first
            header = page.locator("#jobs-table th[data-testid=header-0]")
            for order, first in (("Sort ascending", "darl_anchored (quick)"), ("Sort descending", "sft")):
                header.hover()
                header.locator("button[aria-label='Open cell menu']").click()
                page.get_by_role("menuitem", name=order).click()
                expect(page.locator("#jobs-table .virtual-row").first).to_contain_text(first, timeout=10_000)
            # both jobs on one plot
            page.get_by_text("Compare jobs: one curve per job").click()
            for label in (f"#{other} · sft · niqe", "#1 · darl_anchored · darl_iqa + 20*psnr"):
                page.locator("#compare-jobs input").click()
                page.get_by_role("option", name=label).click()
            page.keyboard.press("Escape")
            page.wait_for_function("() => document.querySelectorAll('#compare-plot svg .mark-line path').length >= 2",
                                   timeout=30_000)
            expect(page.locator("#compare-plot")).to_contain_text(f"job #{other} · sft")
            page.screenshot(path=str(ARTIFACTS / "5_job_chosen_after_reload.png"), full_page=True)

            # Promote the trained model: the RL picker shows it at once, and on a new page load
            trained = next(c for c in store.checkpoints() if c.job_id == 1)
            page.get_by_role("tab", name="Models").click()
            _row(page, "models-table", trained.name).click()
            expect(page.locator("#ckpt-id input")).to_have_value(f"#{trained.id} {trained.name}", timeout=30_000)
            page.locator("#promote-btn").click()
            expect(page.locator("#models-msg")).to_contain_text("is now the default RL model", timeout=30_000)
            page.get_by_role("tab", name="Restore").click()
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(rf"^{trained.name} \(default RL\)"),
                                                                   timeout=30_000)
            page.reload()
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(rf"^{trained.name} \(default RL\)"),
                                                                   timeout=30_000)
            expect(page.locator("#rl-note")).not_to_contain_text("not better than SFT")  # the caveat is darl-blind's
            page.screenshot(path=str(ARTIFACTS / "6_promoted_is_the_default.png"), full_page=True)

            # Delete it (once another model is the default): a question first, then it leaves every picker
            page.get_by_role("tab", name="Models").click()
            _row(page, "models-table", "sft-blind-fast").click()  # the job's base, registered by the worker
            expect(page.locator("#ckpt-id input")).to_have_value(re.compile(r"sft-blind-fast"), timeout=30_000)
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
            expect(page.locator("#rl-picker input")).to_have_value(re.compile(r"^sft-blind-fast .*\(default RL\)"),
                                                                   timeout=30_000)
            page.locator("#rl-picker input").click()
            options = page.get_by_role("option").all_inner_texts()
            assert options and not any(trained.name in o for o in options), options
            page.keyboard.press("Escape")

            # The clickable examples (held-out photos degraded by Pillow and JPEG) and a random seed
            page.get_by_text("Examples: held-out photos").scroll_into_view_if_needed()
            page.locator(".gallery-item, button.gallery-item, [data-testid=examples] button").first.click()
            expect(page.locator("#upload img")).to_be_visible(timeout=30_000)
            page.locator("#dice").click()
            expect(page.locator("#seed input")).not_to_have_value("0", timeout=30_000)
            # A long restore (50 steps of small tiles) shows its progress per tile and stops at the Stop button
            for box, value in (("#steps", "50"), ("#tile", "64")):
                page.locator(f"{box} input[type=number]").fill(value)
                page.locator(f"{box} input[type=number]").press("Enter")
            page.locator("#restore-btn").click()
            expect(page.locator("#scores").get_by_text(re.compile(r"SFT model: step .* tile"))).to_be_visible(
                timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "8_long_restore_progress.png"), full_page=True)
            page.locator("#stop-btn").click()
            expect(page.get_by_text("ended with the Stop button").first).to_be_visible(timeout=60_000)
            deadline = time.time() + 10  # the handler clears its flag as it returns, just after the message
            while ctx.stop_flags and time.time() < deadline:
                time.sleep(0.1)
            assert not ctx.stop_flags  # the restore ended: nothing runs on
            assert not refused, refused  # the Stop (an unqueued event) and every other request passed the guard
            browser.close()
    finally:
        stop.set()
        thread.join(timeout=60)
        demo.close()
    assert store.job(1).state == "succeeded"
    assert trained.id not in {c.id for c in store.checkpoints()}
