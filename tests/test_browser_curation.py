"""Curation at scale in a real headless Chromium (Debian's package), driven by Playwright.

Import a zip of input / ground-truth pairs in one step and read what was imported and what was skipped; see
each model's scores as columns and sort by the worst PSNR; review with the keyboard (F flags, Z undoes);
export and find the file beside its button. On the Fine-tune tab: a job's curves drawn one panel per metric,
each with its own axes, and each run size's expected time beside it, following the chosen samples.
Screenshots go to test-artifacts/browser/ (docs/screenshots/hard_samples_scores.png comes from there).
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port
from PIL import Image

from storage import Store
from ui import CSS, AppContext, build_app, restore_service

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _pairs_zip(tmp_path: Path) -> Path:
    """Three crops of held-out photos degraded by Pillow and JPEG, with their clean crops, in lq/ and gt/ (noise
    added, the most to the first imported: sorted by the worst score it comes first, not last as by age); and a
    ground truth without its input."""
    examples = restore_service.example_images(tmp_path / "examples")  # 256 px degraded crops
    z = tmp_path / "pairs.zip"
    with zipfile.ZipFile(z, "w") as f:
        for i, path in enumerate(examples):
            lq = Image.open(path).convert("RGB").crop((64, 64, 160, 160))
            rng = np.random.default_rng(i)
            noisy = np.clip(np.asarray(lq, dtype=np.float32) + rng.normal(0, 28 - 12 * i, (96, 96, 3)), 0, 255)
            f.writestr(f"lq/photo{i}.png", _png(Image.fromarray(noisy.astype(np.uint8))))
            f.writestr(f"gt/photo{i}.png", _png(lq))
        f.writestr("gt/orphan.png", _png(Image.new("RGB", (96, 96), (90, 120, 30))))
    return z


@pytest.mark.slow
def test_bulk_import_then_sort_review_curves_and_estimates(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    store = Store(directory=tmp_path / "data")
    # a job with three rounds of curves logged on scales far apart (reward near -4, KL near 0.01)
    job = store.create_job({"preset": "darl", "reward": "niqe", "rounds": 3}, [])
    for r in (1, 2, 3):
        store.add_metrics(job, r, {"reward": -5.0 + r, "kl": 0.01 * r, "loss_sft": 0.3 / r})
    ctx = AppContext(store)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, css=CSS)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("tab", name="Hard samples").click()
            # 1. Bulk import: one step, one message naming what came in and what was skipped, and why
            page.get_by_text("Import pairs: a zip, or a folder").click()
            page.locator("#import-files input[type=file]").set_input_files(str(_pairs_zip(tmp_path)))
            expect(page.locator("#import-files").get_by_role("cell", name="pairs.zip")).to_be_visible(timeout=30_000)
            page.locator("#import-btn").click()
            msg = page.locator("#import-msg")
            expect(msg).to_contain_text("Imported 3 as flagged samples (3 with a ground truth)", timeout=240_000)
            expect(msg).to_contain_text("no pair (1): gt/orphan.png")
            # each model's scores are columns of the table, which lists the new samples at once
            table = page.locator("#samples-table")
            expect(table).to_contain_text("PSNR dB ↑ · sft-blind-fast", timeout=30_000)
            expect(table).to_contain_text("PSNR dB ↑ · darl-blind")
            expect(table).to_contain_text("ground truth (1 − SSIM)")
            # 2. Sort by the worst PSNR: the order the store's numbers give (the lowest of either model first)
            scores = store.model_scores()
            worst = sorted(scores, key=lambda sid: min(s.psnr for s in scores[sid].values()))
            assert worst != sorted(worst, reverse=True)  # not the newest-first order the table had
            page.locator("#sort-by input").click()
            page.get_by_role("option", name="worst PSNR first (the lowest of any model)").click()
            expect(table).to_contain_text("worst PSNR dB", timeout=30_000)
            first = page.locator("#samples-table .virtual-row").first.locator("[role=gridcell]").first
            expect(first).to_have_text(str(worst[0]), timeout=30_000)
            rows = page.locator("#samples-table .virtual-row")
            shown = [rows.nth(i).locator("[role=gridcell]").first.inner_text().strip() for i in range(rows.count())]
            assert shown == [str(s) for s in worst], (shown, worst)
            table.scroll_into_view_if_needed()
            # the guide's picture: the table scrolled to its right end, where each model's scores are
            page.evaluate("""() => { for (const e of document.querySelectorAll('#samples-table *'))
                if (e.scrollWidth > e.clientWidth + 10) e.scrollLeft = e.scrollWidth; }""")
            page.wait_for_timeout(500)
            table.screenshot(path=str(ARTIFACTS / "curation_samples_table.png"))
            page.screenshot(path=str(ARTIFACTS / "curation_1_imported_sorted.png"), full_page=True)
            # 3. The review, by keyboard: the worst first; F flags it (and moves on), Z undoes that flag
            expect(page.locator("#review-keys")).to_contain_text("F flag")
            page.locator("#review-start").click()
            expect(page.locator("#review-text")).to_contain_text(f"1 of 3: sample #{worst[0]}", timeout=30_000)
            page.locator("#review-text").click()  # focus on the page, not in a field
            page.keyboard.press("f")
            expect(page.locator("#samples-msg")).to_contain_text(f"Sample #{worst[0]} flagged (artifacts)",
                                                                 timeout=30_000)
            expect(page.locator("#review-text")).to_contain_text(f"2 of 3: sample #{worst[1]}")
            assert {r.sample_id: r.reason for r in store.flagged()}[worst[0]] == "artifacts"
            page.keyboard.press("z")
            expect(page.locator("#samples-msg")).to_contain_text(f"Undone: your flag of sample #{worst[0]} "
                                                                 f"(artifacts)", timeout=30_000)
            expect(page.locator("#review-text")).to_contain_text(f"1 of 3: sample #{worst[0]}")
            assert {r.sample_id: r.reason for r in store.flagged()}[worst[0]] == "imported"
            page.keyboard.press("s")
            expect(page.locator("#review-text")).to_contain_text(f"2 of 3: sample #{worst[1]}", timeout=30_000)
            # 4. The export: its file beside its button, with a line of its own
            page.locator("#export-btn").click()
            expect(page.locator("#samples-msg")).to_contain_text("Exported 3 samples", timeout=30_000)
            link, button = page.locator("#export-file"), page.locator("#export-btn")
            expect(link.get_by_role("cell", name="hard_samples.zip")).to_be_visible(timeout=30_000)
            lb, bb = link.bounding_box(), button.bounding_box()
            assert abs(lb["x"] - bb["x"]) < 40 and 0 <= lb["y"] - (bb["y"] + bb["height"]) < 60, (lb, bb)
            page.screenshot(path=str(ARTIFACTS / "curation_2_review_export.png"), full_page=True)

            # 5. Fine-tune: one panel per metric, each with its own axes and its line through the 3 rounds
            page.get_by_role("tab", name="Fine-tune").click()
            expect(page.locator("#curves-title")).to_contain_text("one panel per metric", timeout=30_000)
            page.wait_for_function("""() => [...document.querySelectorAll('#curves .curve-panel')]
                .filter(p => p.offsetParent !== null && p.querySelector('svg .mark-line path')).length >= 3""",
                                   timeout=60_000)
            panels = page.locator("#curves .curve-panel").evaluate_all("""els => els.filter(e => e.offsetParent !== null)
                .map(e => ({text: e.innerText, axes: e.querySelectorAll('svg .role-axis').length,
                            lines: [...e.querySelectorAll('svg .mark-line path')].map(p => p.getAttribute('d') || ''),
                            ticks: [...e.querySelectorAll('svg .role-axis-label text')].map(t => t.textContent)}))""")
            assert len(panels) == 3, panels
            for panel in panels:
                assert panel["axes"] >= 2 and len(panel["lines"]) == 1 and panel["lines"][0].count("L") >= 2, panel
            assert any("KL to the base" in p["text"] for p in panels) and any("reward" in p["text"] for p in panels)
            tick_sets = {tuple(p["ticks"]) for p in panels}
            assert len(tick_sets) == 3, tick_sets  # each panel its own y scale, not one shared axis
            page.screenshot(path=str(ARTIFACTS / "curation_3_curve_panels.png"), full_page=True)
            # 6. Each run size states its expected time for the chosen samples, before launching
            sizes = page.locator("#run-size label")
            expect(sizes.filter(has_text="quick test")).to_contain_text("≈", timeout=30_000)
            before = {s: sizes.filter(has_text=s).inner_text() for s in ("quick test", "full", "paper")}
            assert all("≈" in t and ("min" in t or " h" in t) for t in before.values()), before
            line = page.locator("#launch-estimate").inner_text()
            for size, text in zip(("quick", "full", "paper"), before.values()):
                assert f"{size} ≈ {text.rsplit('≈ ', 1)[1].strip()}" in line, (text, line)
            page.locator("#rounds input").fill("400")
            page.locator("#rounds input").press("Enter")
            expect(sizes.filter(has_text="full")).not_to_have_text(before["full"], timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "curation_4_estimates.png"), full_page=True)
            # the base picker's whole label, beside it
            expect(page.locator("#base-label")).to_contain_text("sft-blind-fast")
            browser.close()
    finally:
        demo.close()
