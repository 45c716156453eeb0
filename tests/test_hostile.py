"""The hostile-input and stranger suite: what an attacker or a careless user sends, and what must hold.

Every refusal is a message that names what is wrong (never a bare "Error"), nothing that should be
refused is stored, no request costs more than its budget, and with login on nobody changes what is
not theirs. The counts go to test-artifacts/reliability.json (``helpers.record``), which docs/testing.md's
reliability section quotes.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import free_port, record, register_tiny
from PIL import Image
from sqlalchemy import text

from storage import Store
from ui import (
    AppContext,
    UserError,
    finetune_tab,
    models_tab,
    restore_service,
    samples_tab,
)
from ui.server import LoginThrottle, guard, is_loopback, parse_users
from ui.upload import ImageUpload


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> AppContext:
    # the tiny models the test uses are registered: a restore takes registered (or shipped) models only
    return register_tiny(AppContext(Store(directory=tmp_path / "data")), request)


def _png(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def _rows(store: Store) -> tuple[int, int, int, int]:
    with store.engine.connect() as c:
        return tuple(int(c.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one())  # type: ignore[return-value]
                     for t in ("samples", "flags", "jobs", "events"))


# ----------------------------------------------------------------------------- bad arguments


def test_every_handler_names_its_bad_argument(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    img = _png(tmp_path / "a.png")
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    restore_service.flag(ctx, img, "artifacts")
    m = str(tiny_model_dir)
    nan, inf = float("nan"), float("inf")
    cases: list[tuple[str, Any, str]] = [
        ("restore steps text", lambda: restore_service.restore(ctx, img, steps="abc"), "steps"),
        ("restore steps NaN", lambda: restore_service.restore(ctx, img, steps=nan), "steps"),
        ("restore steps 51", lambda: restore_service.restore(ctx, img, steps=51), "steps"),
        ("restore seed NaN", lambda: restore_service.restore(ctx, img, seed=nan), "seed"),
        ("restore seed inf", lambda: restore_service.restore(ctx, img, seed=inf), "seed"),
        ("restore seed 1e30", lambda: restore_service.restore(ctx, img, seed=10**30), "seed"),
        ("restore seed -1", lambda: restore_service.restore(ctx, img, seed=-1), "seed"),
        ("restore tile text", lambda: restore_service.restore(ctx, img, tile="x"), "tile size"),
        ("restore tile 65", lambda: restore_service.restore(ctx, img, tile=72 + 1), "tile size"),
        ("restore task None", lambda: restore_service.restore(ctx, img, task=None), "task"),
        ("restore task list", lambda: restore_service.restore(ctx, img, task=["blind"]), "task"),
        ("restore image int", lambda: restore_service.restore(ctx, 12), "image"),
        ("restore image dict", lambda: restore_service.restore(ctx, {"path": "/etc/passwd"}), "image"),
        ("restore image missing", lambda: restore_service.restore(ctx, str(tmp_path / "none.png")), "none.png"),
        ("score metrics None", lambda: restore_service.score(ctx, img, None), "metrics"),
        ("flag reason list", lambda: restore_service.flag(ctx, img, ["x"]), "reason"),
        ("flag note int", lambda: restore_service.flag(ctx, img, "artifacts", note=5), "note"),
        ("flag note 10 MB", lambda: restore_service.flag(ctx, img, "artifacts", note="x" * 10_000_000), "note"),
        ("flag task None", lambda: restore_service.flag(ctx, img, "artifacts", task=None), "task"),
        ("flag difficulty text", lambda: restore_service.flag(ctx, img, "artifacts", difficulty_value="hard"),
         "difficulty"),
        ("job id text", lambda: finetune_tab.job_status(ctx, "abc"), "job"),
        ("job id 1.5", lambda: finetune_tab.job_status(ctx, 1.5), "job"),
        ("job id huge", lambda: finetune_tab.job_status(ctx, 10**40), "job"),
        ("cancel id injection", lambda: finetune_tab.cancel_job(ctx, "1; DROP TABLE jobs"), "job"),
        ("launch rounds text", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", "many"), "rounds"),
        ("launch rounds 1e5", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 100_000), "rounds"),
        ("launch processes 64", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 2, processes=64),
         "processes"),
        ("launch processes NaN", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 2, processes=nan),
         "processes"),
        ("launch hardest -1", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 2, hardest_k=-1),
         "extra hard samples"),
        ("launch preset None", lambda: finetune_tab.launch_job(ctx, m, "niqe", None, 2), "method"),
        ("launch size None", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 2, size=None), "run size"),
        ("launch reward None", lambda: finetune_tab.launch_job(ctx, m, None, "darl", 2), "reward"),
        ("launch base /etc", lambda: finetune_tab.launch_job(ctx, "/etc", "niqe", "darl", 2), "base model"),
        ("launch samples text", lambda: finetune_tab.launch_job(ctx, m, "niqe", "darl", 2, "a,b"), "sample"),
        ("promote text", lambda: models_tab.promote(ctx, "x"), "checkpoint"),
        ("promote missing", lambda: models_tab.promote(ctx, 999), "checkpoint"),
        ("delete text", lambda: models_tab.delete(ctx, "x", True), "checkpoint"),
        ("unflag text", lambda: samples_tab.unflag(ctx, "abc"), "sample"),
        ("unflag many text", lambda: samples_tab.unflag_many(ctx, ["abc"]), "sample"),
        ("tag ids text", lambda: samples_tab.tag_samples(ctx, ["x"], "t"), "sample"),
        ("tag bad name", lambda: samples_tab.tag_samples(ctx, [1], "<script>"), "tag"),
    ]
    before = _rows(ctx.store)
    unnamed = []
    for label, call, name in cases:
        with pytest.raises(UserError) as e:
            call()
        if name.lower() not in str(e.value).lower():
            unnamed.append((label, str(e.value)))
    assert not unnamed, unnamed
    assert _rows(ctx.store) == before  # nothing written by a refused call
    record("arguments", tried=len(cases), refused_with_message=len(cases) - len(unnamed),
           errors_without_message=len(unnamed), rows_wrongly_stored=sum(_rows(ctx.store)) - sum(before))


# ----------------------------------------------------------------------------- uploads


def _upload(path: Path) -> str | None:
    """What a handler receives for an uploaded file (Gradio's preprocessing of our upload component)."""
    from gradio.data_classes import ImageData

    return ImageUpload().preprocess(ImageData(path=str(path), orig_name=path.name))


def test_uploads_are_decoded_by_our_loader_only(ctx: AppContext, tmp_path: Path) -> None:
    # A 16-bit mid-grey PNG: gr.Image clipped it to RGB (mean 254.6); ours hands the file over untouched
    # and the loader scales 16 to 8 bits.
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 48), 32896, dtype=np.uint16)).save(grey16)
    assert Image.open(grey16).mode == "I;16"
    assert _upload(grey16) == str(grey16)
    msg = restore_service.flag(ctx, _upload(grey16), "artifacts")
    stored = np.asarray(Image.open(ctx.store.flagged()[0].lq_path), dtype=np.float64)
    assert "#1" in msg and abs(stored.mean() - 128.0) < 0.5, stored.mean()

    # Formats Pillow reads but we do not, renamed .png: refused by content with our message, not stored.
    tried = refused = 0
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for fmt, mode in (("ICO", "RGB"), ("TGA", "RGB"), ("PCX", "RGB"), ("PPM", "RGB"), ("SGI", "RGB"),
                      ("XBM", "1"), ("DDS", "RGB"), ("QOI", "RGB"), ("IM", "RGB"), ("JPEG2000", "RGB"),
                      ("SPIDER", "F"), ("MSP", "1"), ("EPS", "RGB"), ("ICNS", "RGB")):
        buf = io.BytesIO()
        try:
            rgb.convert(mode).save(buf, fmt)
        except (KeyError, OSError, ValueError):
            continue  # this Pillow cannot write it: nothing to try
        path = tmp_path / f"{fmt.lower()}.png"
        path.write_bytes(buf.getvalue())
        tried += 1
        before = _rows(ctx.store)
        with pytest.raises(UserError, match="judged by its content"):
            restore_service.flag(ctx, _upload(path), "artifacts")
        assert _rows(ctx.store) == before
        refused += 1
    assert tried >= 10, tried

    # A 144-megapixel PNG of 100 KB: refused from its header, before any decoding (fast, no memory).
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 2_000_000
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="image is 144,000,000 pixels; the limit is 16,000,000"):
        restore_service.flag(ctx, _upload(bomb), "artifacts")
    assert time.perf_counter() - t0 < 1.0

    # A JPEG whose EXIF block is garbage: decoded (orientation ignored) or refused with a message.
    jpg = io.BytesIO()
    rgb.save(jpg, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + bytes(40))
    (tmp_path / "exif.jpg").write_bytes(jpg.getvalue())
    try:
        restore_service.flag(ctx, _upload(tmp_path / "exif.jpg"), "artifacts")
    except UserError as e:
        assert "exif.jpg" in str(e)

    # An image sent around the page as a data: URL is refused with a message (test_data_url_images_are_
    # refused_and_leave_nothing_in_the_cache), good base64 or bad.
    from gradio.data_classes import ImageData
    import gradio as gr

    for data in (base64.b64encode(grey16.read_bytes()).decode(), "@@@@"):
        with pytest.raises(gr.Error, match="send it as a file"):
            ImageUpload().preprocess(ImageData(url="data:image/png;base64," + data))
    record("uploads", tried=tried + 5, refused_with_message=refused + 3, crashes=0, rows_wrongly_stored=0)


def test_data_url_images_are_refused_and_leave_nothing_in_the_cache(tmp_path: Path) -> None:
    """Issue #39: an image sent as a data: URL was written to Gradio's cache under a name without a suffix,
    which the loader always refuses, and the file stayed there. Now it is refused before anything is written."""
    import gradio as gr
    from gradio.data_classes import ImageData

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "PNG")
    up = ImageUpload()
    up.GRADIO_CACHE = str(tmp_path / "cache")
    with pytest.raises(gr.Error, match="data: URL is not accepted; send it as a file"):
        up.preprocess(ImageData(url="data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()))
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.rglob("*")) == []
    # a file upload still reaches the handler as its path, undecoded
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    assert up.preprocess(ImageData(path=str(tmp_path / "a.png"))) == str(tmp_path / "a.png")


def test_a_metric_that_cannot_be_built_here_is_said_not_raised(ctx: AppContext, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #39, smaller: score with clipiqa answered with a Python error (ModuleNotFoundError)."""
    from darl_core.rewards import registry as rewards

    def missing(name: str, device: str) -> Any:
        raise ModuleNotFoundError("No module named 'pkg_resources'", name="pkg_resources")

    monkeypatch.setattr(rewards, "_cached_metric", missing)  # what clipiqa's import does in this environment
    out = restore_service.score(ctx, _png(tmp_path / "a.png", (64, 64)), "clipiqa")
    assert out["clipiqa"].startswith("error: metric 'clipiqa' cannot be built here: it needs the module "
                                     "'pkg_resources'"), out


def test_a_difficulty_measured_on_another_image_is_not_stored(ctx: AppContext, tmp_path: Path) -> None:
    a, b = _png(tmp_path / "a.png", seed=1), _png(tmp_path / "b.png", seed=2)
    key_a = restore_service.image_key(Image.open(a))
    restore_service.flag(ctx, b, "artifacts", difficulty_value=0.8, difficulty_kind="proxy", measured_on=key_a)
    restore_service.flag(ctx, a, "artifacts", difficulty_value=0.7, difficulty_kind="proxy", measured_on=key_a)
    assert {r.sample_id: r.difficulty for r in ctx.store.flagged()} == {1: None, 2: 0.7}  # b: 1, a: 2


def test_a_uniform_image_is_said_before_the_restore(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (90, 90, 90)).save(flat)
    said: list[str] = []
    r = restore_service.restore(ctx, str(flat), sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=1,
                            progress=lambda f, s: said.append(f"progress {s}"), warn=lambda w: said.append(w))
    assert "uniform" in said[0]  # before any progress of the restore
    assert any("n/a" in str(cell) and "uniform" in str(cell) for row in r.scores for cell in row)
    assert not any("unreliable" in w for w in said)  # 200 px a side: large enough for NIQE


def test_an_image_too_small_for_niqe_is_said_in_the_app_not_only_the_log(ctx: AppContext, tmp_path: Path,
                                                                         tiny_model_dir: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(small)
    said: list[str] = []
    restore_service.restore(ctx, str(small), sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=1,
                        progress=lambda f, s: None, warn=said.append)
    assert [w for w in said if "160x120: NIQE is unreliable below 192 px" in w]
    assert restore_service.small_image_warning(Image.new("RGB", (120, 160)), ("piqe",)) is None  # PIQE has no such limit


# ----------------------------------------------------------------------------- budgets and cancellation


def test_one_request_has_a_work_budget(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    # The report's request: 16 MP at 50 steps with tiles of 64 (~15,400 tiles per pass) is refused at once.
    with pytest.raises(UserError, match="megapixel-passes"):
        restore_service.check_budget(ctx, (4000, 4000), 50, 64)
    restore_service.check_budget(ctx, (512, 512), 8, 256)  # the app's usual request passes
    # a pixel-space x4 model diffuses at 4x the input's size: 16 times the pixels (more with the overlaps)
    assert restore_service.work((256, 256), 8, 256, (4, 4))[0] >= 16 * restore_service.work((256, 256), 8, 256)[0]
    with pytest.raises(UserError, match="megapixel-passes"):
        restore_service.check_budget(ctx, (1000, 1000), 20, 256, (4, 4))
    restore_service.check_budget(ctx, (1000, 1000), 20, 256, (1, 1))
    ctx.max_work = 0.5
    big = _png(tmp_path / "big.png", (256, 256))
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="one request may do at most"):
        restore_service.restore(ctx, big, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir), steps=50)
    assert time.perf_counter() - t0 < 2.0 and not ctx._models  # refused before any model was loaded
    # A batch shares one budget: images past it are skipped with the reason.
    ctx.max_work = 0.1
    paths = [_png(tmp_path / f"b{i}.png", (96, 96), seed=i) for i in range(3)]
    rows, _, _ = restore_service.restore_batch(ctx, paths, sft_model=str(tiny_model_dir), rl_model=str(tiny_model_dir),
                                           steps=2, tile=64)
    assert rows[0][1].startswith("ok") and all("budget" in r[1] for r in rows[1:]), rows
    assert "(0.1 megapixel-passes; this image adds 0.098 to 0.098)" in rows[1][1]  # small budgets still read as numbers


def test_a_stopped_session_ends_its_restore_between_steps(ctx: AppContext, tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    stop = ctx.stop_flags["session-1"] = threading.Event()
    tiles: list[str] = []

    def progress(f: float, s: str) -> None:
        tiles.append(s)
        if len(tiles) == 3:
            assert ctx.stop_session("session-1")  # what the cancel route and a closed page do
    with pytest.raises(restore_service.RestoreStopped):
        restore_service.restore(ctx, _png(tmp_path / "s.png", (160, 160)), sft_model=str(tiny_model_dir),
                            rl_model=str(tiny_model_dir), steps=20, tile=64, progress=progress, stop=stop)
    assert len(tiles) <= 5  # it stopped at the next tile, not after 2 x 20 steps x 9 tiles
    assert not ctx.stop_session("nobody")


def test_temporary_folders_are_removed_when_old(ctx: AppContext) -> None:
    old = ctx.scratch("darl-restore-")
    (old / "restored_sft.png").write_bytes(b"x")
    stale = time.time() - ctx.keep_files_s - 60
    import os

    os.utime(old, (stale, stale))
    new = ctx.scratch("darl-restore-")
    assert not old.exists() and new.exists()


# ----------------------------------------------------------------------------- logins and owners


def test_logins_are_throttled() -> None:
    now = [0.0]
    gate = LoginThrottle({"ann": "s3cret"}, free=5, base_s=1.0, max_s=300.0, user_free=1000, clock=lambda: now[0])
    results = [gate("ann", f"guess{i}") for i in range(200)]  # 200 wrong passwords at once
    assert not any(results) and gate.refused == 195  # after 5 tries, every attempt waits
    assert gate("ann", "s3cret") is False  # the right one too, until the wait has passed
    now[0] += 1.5
    assert gate("ann", "nope") is False and gate("ann", "s3cret") is False  # the wait doubles: now 2 s
    now[0] += 2.5
    assert gate("ann", "s3cret") is True and gate("ann", "s3cret") is True  # and resets on success
    assert gate("mallory", "s3cret") is False
    # the count is per user name and address: a stranger's guesses do not lock ann out at her own address
    from ui import server

    token = server._PEER.set("203.0.113.9")
    assert not any(gate("ann", f"x{i}") for i in range(20))
    server._PEER.reset(token)
    assert gate("ann", "s3cret") is True
    assert parse_users("ann:pw, bob:p:w") == {"ann": "pw", "bob": "p:w"}
    for bad in ("ann", ":pw", "ann:", ","):
        with pytest.raises(ValueError, match="DARL_AUTH"):
            parse_users(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_only_owners_and_admins_change_things(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    ctx.auth, ctx.admins = True, frozenset({"root"})
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    restore_service.flag(ctx, _png(tmp_path / "a.png"), "artifacts", user="ann")
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "", "ann")
    made = ctx.store.register_checkpoint(str(tmp_path / "made"), "made", job_id=job)
    shipped = ctx.store.register_checkpoint(str(tmp_path / "hand"), "hand")  # no job: nobody's
    for call in (lambda: samples_tab.unflag(ctx, 1, "bob"), lambda: samples_tab.unflag_many(ctx, [1], "bob"),
                 lambda: samples_tab.tag_samples(ctx, [1], "x", user="bob"),
                 lambda: finetune_tab.cancel_job(ctx, job, "bob"), lambda: models_tab.promote(ctx, made, "bob"),
                 lambda: models_tab.delete_preview(ctx, made, "bob")):
        with pytest.raises(UserError, match="belongs to ann: only they or an admin"):
            call()
    with pytest.raises(UserError, match="was not made by a user of this app: only an admin"):
        models_tab.promote(ctx, shipped, "ann")
    # bob flags the same image: his flag is his own sample (#2); withdrawing it leaves ann's sample alone
    assert "#2" in restore_service.flag(ctx, str(tmp_path / "a.png"), "blur", user="bob")
    assert ctx.store.owners("sample:1") == {"ann"} and ctx.store.owners("sample:2") == {"bob"}
    assert "unflagged" in samples_tab.unflag(ctx, 2, "bob")
    assert ctx.store.owners("sample:1") == {"ann"} and [r.sample_id for r in ctx.store.flagged()] == [1]
    with pytest.raises(UserError, match="belongs to ann"):
        samples_tab.unflag(ctx, 1, "bob")
    assert ctx.store.flagged()[0].sample_id == 1 and not ctx.store.job(job).cancel_requested
    # the owner and an admin may; each change is recorded with its user
    samples_tab.tag_samples(ctx, [1], "mine", user="ann")
    models_tab.promote(ctx, made, "ann")
    models_tab.promote(ctx, shipped, "root")
    finetune_tab.cancel_job(ctx, job, "root")
    samples_tab.unflag(ctx, 1, "ann")
    log = [(e.user, e.action, e.target) for e in reversed(ctx.store.events())]
    assert log == [("ann", "tag", "sample:1"), ("ann", "promote", f"checkpoint:{made}"),
                   ("root", "promote", f"checkpoint:{shipped}"), ("root", "cancel", f"job:{job}")]
    assert [row[1:4] for row in models_tab.list_events(ctx)[:2]] == [  # the Models tab shows the log
        ["root", "cancel", f"job #{job}"], ["root", "promote", f"checkpoint #{shipped}"]]
    assert ctx.store.owners("sample:1") == set()  # ann's flag is withdrawn
    # without login (the app then serves only this machine), the one local user may do everything
    ctx.auth = False
    models_tab.promote(ctx, made, "anonymous")


def test_a_second_users_flag_never_reaches_the_first_users_sample(ctx: AppContext, tmp_path: Path,
                                                                   tiny_model_dir: Path) -> None:
    """Issue #39, finding 5: bob downloaded ann's sample (view and export had no owner check), flagged the
    same bytes, became a co-owner, removed her tag and attached his ground truth to her sample."""
    import json
    import zipfile

    ctx.auth, ctx.admins = True, frozenset({"root"})
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    lq, truth, fake = _png(tmp_path / "lq.png"), _png(tmp_path / "gt.png", seed=1), _png(tmp_path / "fake.png", seed=2)
    restore_service.flag(ctx, lq, "artifacts", gt_path=truth, user="ann")
    samples_tab.tag_samples(ctx, [1], "mine", user="ann")
    # bob can neither see, restore nor export ann's sample
    with pytest.raises(UserError, match="belongs to another user"):
        samples_tab.sample_files(ctx, 1, "bob")
    with pytest.raises(UserError, match="belongs to another user"):
        samples_tab.restore_sample(ctx, 1, user="bob")
    with pytest.raises(UserError, match="no flagged samples match"):
        samples_tab.export_zip(ctx, user="bob")
    assert samples_tab.list_flagged(ctx, user="bob") == ([], [])
    # he flags the same bytes with his own ground truth: his own sample; ann's keeps her tag and her truth
    assert "#2" in restore_service.flag(ctx, lq, "blur", gt_path=fake, user="bob")
    with pytest.raises(UserError, match="belongs to ann"):
        samples_tab.tag_samples(ctx, [1], "mine", remove=True, user="bob")
    mine = ctx.store.sample(1)
    assert mine.tags == ",mine," and Image.open(ctx.store.path(mine.gt_path)).tobytes() == Image.open(truth).tobytes()
    # her jobs and exports use her ground truth; bob's job trains on his own sample only
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "psnr", "darl", 2, "", "ann")
    assert ctx.store.job(job).sample_ids == [1]
    with zipfile.ZipFile(samples_tab.export_zip(ctx, user="ann")) as z:
        rows = [json.loads(line) for line in z.read("metadata.jsonl").decode().splitlines()]
        assert [r["sample"] for r in rows] == [1] and z.read("gt/000001.png") == ctx.store.path(mine.gt_path).read_bytes()
    assert ctx.store.job(finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "", "bob")).sample_ids == [2]
    with pytest.raises(UserError, match="not flagged by you"):
        finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "1", "bob")
    assert len(samples_tab.list_flagged(ctx, user="root")[1]) == 2  # an admin sees both


def test_one_user_cannot_fill_the_worker(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Issue #39, finding 4: one user queued ten 5000-round full jobs (one estimated at 164 h) in 1.1 s."""
    ctx.auth, ctx.admins = True, frozenset({"root"})
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    for user in ("ann", "bob", "root"):
        restore_service.flag(ctx, _png(tmp_path / f"{user}.png", seed=len(user) + ord(user[0])), "blur", user=user)
    base = str(tiny_model_dir)
    hours = finetune_tab.expected_minutes(ctx, "darl", 5000, 1)[0]["full"] / 60  # this machine's estimate
    ctx.max_user_hours = hours / 2
    with pytest.raises(UserError, match=rf"about {hours:.1f} h.* more than the {hours / 2:g} h each user may have "
                                        r"queued \(DARL_MAX_JOB_HOURS_PER_USER\)"):
        finetune_tab.launch_job(ctx, base, "niqe", "darl", 5000, "", "ann")  # one job over the hours
    t0 = time.time()
    done, refused = 0, []
    for _ in range(10):
        try:
            finetune_tab.launch_job(ctx, base, "niqe", "darl", 2, "", "ann", size="quick")
            done += 1
        except UserError as e:
            refused.append(str(e))
    took = time.time() - t0
    assert done == ctx.max_user_jobs == 3 and len(refused) == 7
    assert "at most 3 per user, DARL_MAX_JOBS_PER_USER" in refused[0]
    finetune_tab.launch_job(ctx, base, "niqe", "darl", 2, "", "bob", size="quick")  # another user's own share
    finetune_tab.cancel_job(ctx, ctx.store.active_jobs("ann")[0].id, "ann")
    ctx.store.transition(ctx.store.active_jobs("ann")[0].id, "cancelled")  # (a queued job's cancel ends it)
    finetune_tab.launch_job(ctx, base, "niqe", "darl", 2, "", "ann", size="quick")  # a place is free again
    for _ in range(5):  # an admin is not capped
        finetune_tab.launch_job(ctx, base, "niqe", "darl", 2, "", "root", size="quick")
    record("jobs", launches_tried=10, launches_refused=len(refused), launch_ms=int(1000 * took / 10))


# ----------------------------------------------------------------------------- over HTTP


def _call(s: requests.Session, base: str, session: str, fn_index: int, data: list[Any]) -> tuple[int, str]:
    """POST one event to the queue as the page does and read its messages to the end: (HTTP status of the
    join, every message of the event as text)."""
    r = s.post(f"{base}/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                       "event_data": None, "trigger_id": None}, timeout=30)
    if r.status_code != 200:
        return r.status_code, r.text
    event = r.json()["event_id"]
    out = []
    with s.get(f"{base}/gradio_api/queue/data", params={"session_hash": session}, stream=True, timeout=120) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data:"):
                msg = json.loads(line[5:])
                out.append(msg)
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event:
                    break
    return 200, json.dumps(out)


@pytest.mark.slow
def test_strangers_over_http(tmp_path: Path, tiny_model_dir: Path) -> None:
    from starlette.middleware import Middleware

    from ui import build_app

    ctx = AppContext(Store(directory=tmp_path / "data"), auth=True, admins=frozenset({"root"}))
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    restore_service.flag(ctx, _png(tmp_path / "a.png"), "artifacts", user="ann")
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "", "ann")
    made = ctx.store.register_checkpoint(str(tmp_path / "made"), "made", job_id=job)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1, max_size=128)
    port = free_port()
    gate = LoginThrottle({"ann": "a-pw", "bob": "b-pw", "root": "r-pw"})
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=gate,
                app_kwargs={"middleware": [Middleware(guard(ctx))]})
    base = f"http://127.0.0.1:{port}"
    try:
        # Not logged in: the login page carries no API schema (no endpoint, no model path); the queue says 401.
        anon = requests.Session()
        page = anon.get(base + "/", timeout=30).text
        assert '"auth_required": true' in page.replace("\\", "") or "auth_required" in page
        assert "named_endpoints\": {}" in page and str(tiny_model_dir) not in page and "/launch_job" not in page
        assert _call(anon, base, "anon", 2, [None] * 8)[0] == 401
        # 40 wrong passwords for bob: the throttle refuses most without looking.
        for i in range(40):
            anon.post(base + "/login", data={"username": "bob", "password": f"x{i}"}, timeout=30)
        assert gate.refused >= 30
        gate._state.clear()  # (the test goes on as bob, logged in properly)

        bob = requests.Session()
        assert bob.post(base + "/login", data={"username": "bob", "password": "b-pw"}, timeout=30).status_code == 200
        assert "named_endpoints\": {\"/restore\"" in bob.get(base + "/", timeout=30).text.replace(" ", "").replace(
            "\":{", "\": {")  # logged in: the schema is there
        # Every handler of the page, posted by bob with fn_index: the ones that change something get ann's
        # sample 1, job and checkpoint; the rest get empty inputs (they may refuse, they must not change).
        before = (ctx.store.flagged()[0].tags, ctx.store.job(job).cancel_requested,
                  [(c.id, c.promoted) for c in ctx.store.checkpoints()])
        targets: dict[str, list[Any]] = {
            "on_unflag": [1] + [None] * 8, "on_unflag_many": [[1]] + [None] * 8, "on_tag": [[1], "evil"] + [None] * 8,
            "pick": [job], "on_cancel": [job], "on_promote": [made], "on_ask": [made], "on_confirm": [made]}
        refused_by_owner = stranger_calls = 0
        session = uuid.uuid4().hex
        for i, fn in sorted(demo.fns.items()):
            if fn.name in ("on_restore", "on_batch", "on_view_restore"):
                continue  # the models' queue: covered by the share test below
            data = (targets.get(fn.name, []) + [None] * len(fn.inputs))[: len(fn.inputs)]  # (the filters after)
            status, text_ = _call(bob, base, session, i, data)
            # refused by the owner check, or earlier: ann's samples are not among the choices bob's page was given
            refused_by_owner += "belongs to ann" in text_ or "is not in the list of choices" in text_
            stranger_calls += 1
        after = (ctx.store.flagged()[0].tags, ctx.store.job(job).cancel_requested,
                 [(c.id, c.promoted) for c in ctx.store.checkpoints()])
        changes = [k for k in range(3) if after[k] != before[k]] + [e.id for e in ctx.store.events() if e.user == "bob"]
        assert not changes and ctx.store.flagged()[0].sample_id == 1 and ctx.store.owners("sample:1") == {"ann"}
        # unflag, unflag many, tag twice, cancel, promote, delete: refused by the owner check itself
        assert refused_by_owner >= 7, refused_by_owner

        # ann unflags her own sample through the page's handler: allowed, and recorded as ann (the request
        # reached the handler; it used to come after *filters and was never passed: "anonymous").
        ann = requests.Session()
        ann.post(base + "/login", data={"username": "ann", "password": "a-pw"}, timeout=30)
        fn = {f.name: i for i, f in sorted(demo.fns.items(), reverse=True)}
        mine = uuid.uuid4().hex
        _call(ann, base, mine, fn["listing"], [None] * 8)  # the page lists the samples first (the picker's choices)
        status, text_ = _call(ann, base, mine, fn["on_unflag"], [1] + [None] * 8)
        assert status == 200 and "unflagged" in text_, text_
        assert ctx.store.flagged() == [] and ctx.store.owners("sample:1") == set()
        with ctx.store.engine.connect() as c:
            assert c.execute(text("SELECT \"user\", flagged FROM flags ORDER BY id DESC LIMIT 1")).one() == ("ann", False)

        # A value Gradio's own field check refuses is named (it was a bare "Error").
        _, text_ = _call(ann, base, uuid.uuid4().hex, 2, [None, None, "blind", str(tiny_model_dir),
                                                         str(tiny_model_dir), "abc", 0, 64])
        assert "Steps (0\\u201350): 'abc' is not a usable number" in text_, text_  # the JSON escapes the dash

        # Path traversal on the file routes: nothing outside the app's files is served.
        served = 0
        payloads = [f"{base}{route}{p}" for route in ("/gradio_api/file=", "/file=", "/gradio_api/file/")
                    for p in ("/etc/passwd", "../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd",
                              "%2e%2e/%2e%2e/etc/passwd", str(ctx.store.dir / "darl.db"), str(tiny_model_dir / "unet"),
                              "....//....//etc/passwd", "/proc/self/environ")]
        for url in payloads:
            r = bob.get(url, timeout=30)
            served += r.status_code == 200 and ("root:" in r.text or "SQLite" in r.text or "PATH=" in r.text)
        assert served == 0

        # The models' queue: bob may have 2 restores waiting or running; the third is refused with the reason.
        lq = _png(tmp_path / "slow.png", (192, 192))
        up = bob.post(base + "/gradio_api/upload", files={"files": open(lq, "rb")}, timeout=30).json()[0]
        image = {"path": up, "meta": {"_type": "gradio.FileData"}, "orig_name": "slow.png"}
        restore = [image, None, "blind", str(tiny_model_dir), str(tiny_model_dir), 50, 0, 64]
        codes = []
        for k in range(3):
            r = bob.post(f"{base}/gradio_api/queue/join", json={"data": restore, "fn_index": 2, "event_data": None,
                                                                 "session_hash": f"share-{k}", "trigger_id": None})
            codes.append((r.status_code, r.text))
        assert [c for c, _ in codes] == [200, 200, 429] and "at most 2" in codes[2][1], codes
        # A padded request cannot hide which handler it calls (the share was skipped for bodies over 1 MiB).
        padded = bob.post(f"{base}/gradio_api/queue/join", json={"data": restore, "fn_index": 2, "event_data": None,
                                                                  "session_hash": "share-9", "trigger_id": None,
                                                                  "pad": "x" * (2 << 20)}, timeout=30)
        assert padded.status_code == 413, padded.text
        for disguised in ("2", 2.0):  # Gradio reads these as 2 too: refused, or they would pass the share
            r = bob.post(f"{base}/gradio_api/queue/join", json={"data": restore, "fn_index": disguised,
                                                                 "event_data": None, "session_hash": "share-8",
                                                                 "trigger_id": None}, timeout=30)
            assert r.status_code == 400, (disguised, r.text)
        # Cancelling the running one stops its computation (not only the answer): its stop flag is set and
        # the restore ends at its next tile, so the second runs.
        deadline = time.time() + 60
        while "share-0" not in ctx.stop_flags and time.time() < deadline:
            time.sleep(0.05)
        assert "share-0" in ctx.stop_flags
        # Someone else's cancel of bob's session: refused without login (401), ignored from another user.
        cancel = {"session_hash": "share-0", "fn_index": 2, "event_id": "made-up"}
        assert anon.post(f"{base}/gradio_api/cancel", json=cancel, timeout=30).status_code == 401
        assert ann.post(f"{base}/gradio_api/cancel", json=cancel, timeout=30).status_code == 403  # not forwarded
        time.sleep(1.0)
        assert "share-0" in ctx.stop_flags and not ctx.stop_flags["share-0"].is_set()
        bob.post(f"{base}/gradio_api/cancel", json={"session_hash": "share-0", "fn_index": 2,
                                                    "event_id": json.loads(codes[0][1])["event_id"]}, timeout=30)
        t0 = time.time()
        while "share-0" in ctx.stop_flags and time.time() - t0 < 10:
            time.sleep(0.05)
        assert "share-0" not in ctx.stop_flags, "the cancelled restore kept computing"
        ctx.stop_session("share-1")
        record("http", payloads_tried=len(payloads), payloads_served=served, stranger_calls=stranger_calls,
               stranger_changes=len(changes), queue_share_refusals=sum(c == 429 for c, _ in codes))
    finally:
        for k in range(3):
            ctx.stop_session(f"share-{k}")
        demo.close()


def test_another_users_job_shows_nothing_of_theirs(ctx: AppContext, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The attacker pass after round 2: with login, bob picked ann's job and got her training input (her
    sample's picture), her job's log and its before and after. A job is its user's, as her samples are."""
    ctx.auth, ctx.admins = True, frozenset({"root"})
    ctx.store.register_checkpoint(str(tiny_model_dir), "tiny")
    restore_service.flag(ctx, _png(tmp_path / "a.png"), "artifacts", user="ann")
    job = finetune_tab.launch_job(ctx, str(tiny_model_dir), "niqe", "darl", 2, "", "ann")
    assert [j for _, j in finetune_tab.job_choices(ctx, "ann")] == [job] and finetune_tab.job_choices(ctx, "bob") == []
    assert finetune_tab.list_jobs(ctx, "bob") == [] and finetune_tab.initial_job(ctx, job, "bob") is None
    with pytest.raises(UserError, match=f"job #{job} belongs to another user"):
        finetune_tab.require_job_view(ctx, job, "bob")
    for user in ("ann", "root"):  # the owner and an admin see it
        finetune_tab.require_job_view(ctx, job, user)
    assert [row[0] for row in finetune_tab.list_jobs(ctx, "root")] == [job]
    ctx.auth = False  # without login (this machine only) everyone sees every job
    assert finetune_tab.job_choices(ctx, "bob") and finetune_tab.require_job_view(ctx, job, "bob") is None


def test_a_score_request_scores_each_metric_once_and_a_few_at_most(ctx: AppContext, tmp_path: Path) -> None:
    """The attacker pass after round 2: "niqe," repeated 200 times scored NIQE 200 times (14 s for a 200-px
    image; a 1 MiB body holds 200,000 repeats)."""
    image = _png(tmp_path / "a.png", (64, 64))
    assert list(restore_service.score(ctx, image, "piqe," * 200 + "PIQE")) == ["piqe"]
    with pytest.raises(UserError, match="9 names; at most 8"):
        restore_service.score(ctx, image, "psnr,ssim,piqe,niqe,brisque,gmsd,vif,fsim,mad")
