"""Background restores: a restore expected to take over a minute leaves the interactive queue.

One accepted request (a 4000x4000 image at 10 steps, say, under the work budget) used to hold the models
for about 90 minutes while every other client's 128-px restore waited behind it. Now ``submit_if_long``
stores such a request (``storage.BackgroundRestore``, migration 0011) and the Restore tab answers at once;
``BackgroundRunner``, a thread of the app, runs the stored requests one at a time with models of its own
(never the objects the interactive restores use), reporting progress, seeing a cancel at the next tile,
and keeping the result's files for download. Only their owner, or an admin, sees, cancels or downloads
them (``AppContext.require_owner``), and a user may have ``AppContext.max_user_restores`` queued or running.

Why a thread of the app, not the job worker: the worker trains one fine-tune job at a time for hours, so a
restore would wait behind training, and it knows nothing of uploads; the app has the upload checks, the
model registry and the estimates. The thread beats every few seconds; a restore whose beat stops (the app
was stopped) is queued again by the next runner and starts over (a restore has nothing to resume from).
No Gradio here: the tab's area is ``background_area``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from storage import BackgroundRestore

from .context import AppContext, UserError, int_arg
from .restore_service import (RestoreStopped, check_budget, estimate_seconds, gt_size_problem, request_numbers,
                              restore)

__all__ = ["AFTER_S", "HEADERS", "BackgroundRunner", "cancel", "choices", "queued_text", "result_files", "rows",
           "submit_if_long"]

AFTER_S = 60.0  # a restore expected to take longer than this runs in the background
BEAT_S = 5.0  # a running background restore's heartbeat period
STALE_AFTER_S = 12 * BEAT_S  # a running one whose beat is this old lost its app: queued again
HEADERS = ["#", "state", "progress", "image", "steps", "queued at", "note"]


def submit_if_long(ctx: AppContext, image_path: str, task: str = "blind", sft_model: str | None = None,
                   rl_model: str | None = None, steps: int = 10, seed: int = 0, tile: int = 256,
                   gt_path: str | None = None, user: str = "anonymous", after_s: float = AFTER_S) -> int | None:
    """The id of the background restore this request was queued as, when it is expected to take over
    ``after_s`` seconds (``estimate_seconds``, from this app's measured speed); None when it is short
    enough for the interactive queue (nothing stored). Refuses what ``restore`` would refuse before any
    model runs (the same messages), and a user's restore over their cap of queued or running ones."""
    # 1. the request's own checks, before anything is stored
    steps, seed, tile = request_numbers(task, steps, seed, tile)
    im = ctx.open_upload(image_path)
    d_sft, d_rl = ctx.default_models()
    sft, rl = ctx.check_model("SFT", sft_model or d_sft), ctx.check_model("RL", rl_model or d_rl)
    seconds = estimate_seconds(ctx, [sft, rl], im.size, steps)
    if seconds <= after_s:
        return None
    check_budget(ctx, im.size, steps, tile)
    if gt_path:
        gt = ctx.open_upload(gt_path, "ground truth")
        if problem := gt_size_problem(im.size, gt.size):
            raise UserError(problem)
    # 2. the per-user cap (admins have none, as for fine-tune jobs)
    if not (ctx.auth and user in ctx.admins):
        active = ctx.store.active_restores(user)
        if len(active) >= ctx.max_user_restores:
            raise UserError(f"you have {len(active)} background restores queued or running "
                            f"(#{', #'.join(str(r.id) for r in active)}); at most {ctx.max_user_restores} per user: "
                            f"wait for one to finish or cancel one under \"Background restores\"")
    # 3. the upload is copied into the app's data folder (Gradio's cache is emptied hourly), then stored
    root = ctx.store.dir / "restores"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="r-", dir=root))
    image = folder / f"input{Path(image_path).suffix.lower()}"
    shutil.copyfile(image_path, image)
    gt_copy = None
    if gt_path:
        gt_copy = folder / f"gt{Path(gt_path).suffix.lower()}"
        shutil.copyfile(gt_path, gt_copy)
    rel = lambda p: str(p.relative_to(ctx.store.dir)) if p is not None else None  # noqa: E731
    return ctx.store.create_restore({"folder": rel(folder), "image": rel(image), "gt": rel(gt_copy), "task": task,
                                     "sft": sft, "rl": rl, "steps": steps, "seed": seed, "tile": tile,
                                     "width": im.size[0], "height": im.size[1], "estimate_s": round(seconds, 1)},
                                    user)


def queued_text(ctx: AppContext, restore_id: int) -> str:
    """What the page says when a request went to the background."""
    r = ctx.store.background_restore(restore_id).request
    return (f"**Queued as background restore #{restore_id}**: this {r['width']}x{r['height']} image at {r['steps']} "
            f"steps is expected to take about {max(1, round(r['estimate_s'] / 60))} min on this machine, longer than "
            f"a page waits, so it runs in the background and the page stays free for other restores. Follow it, "
            f"cancel it and download the result under \"Background restores\" below.")


def rows(ctx: AppContext, user: str) -> list[list[Any]]:
    """The table of ``user``'s background restores (everyone's for an admin or without login), newest first."""
    out = []
    for r in ctx.store.background_restores(ctx.sees(user)):
        q = r.request
        note = (r.error or "").splitlines()[0][:200] if r.state == "failed" else r.message
        if r.state == "queued":
            note = note or f"expected to take about {max(1, round(q['estimate_s'] / 60))} min"
        out.append([r.id, r.state, f"{100 * r.progress:.0f} %", f"{q['width']}x{q['height']}", q["steps"],
                    r.created_at.strftime("%Y-%m-%d %H:%M"), note])
    return out


def choices(ctx: AppContext, user: str) -> list[tuple[str, int]]:
    """(label, id) of the background restores ``user`` may see, for the picker."""
    return [(f"#{r.id} · {r.state} · {r.request['width']}x{r.request['height']}", r.id)
            for r in ctx.store.background_restores(ctx.sees(user))]


def _owned(ctx: AppContext, restore_id: Any, user: str) -> BackgroundRestore:
    if restore_id is None or restore_id == "":
        raise UserError("choose a background restore first")
    rid = int_arg("background restore", restore_id, 1, 2**31 - 1)
    ctx.require_owner(user, f"restore:{rid}", f"background restore #{rid}")  # only its owner or an admin
    try:
        return ctx.store.background_restore(rid)
    except KeyError:
        raise UserError(f"there is no background restore #{rid}") from None


def cancel(ctx: AppContext, restore_id: Any, user: str = "anonymous") -> str:
    """Cancel a background restore (queued: at once; running: at its next tile); its owner or an admin only."""
    r = _owned(ctx, restore_id, user)
    if r.state not in ("queued", "running"):
        raise UserError(f"background restore #{r.id} is {r.state} already: nothing to cancel")
    was = ctx.store.cancel_restore(r.id, user)
    return (f"Background restore #{r.id} cancelled." if was == "queued" else
            f"Background restore #{r.id} stops at its next tile.")


def result_files(ctx: AppContext, restore_id: Any, user: str = "anonymous") -> list[str]:
    """The finished restore's files (SFT and RL restorations, as PNGs); its owner or an admin only."""
    r = _owned(ctx, restore_id, user)
    if r.state != "succeeded":
        why = f": {(r.error or '').splitlines()[0][:200]}" if r.state == "failed" else ""
        raise UserError(f"background restore #{r.id} is {r.state}{why}; only a finished one has a result")
    files = [ctx.store.path(f) for f in r.files]
    if not all(f.is_file() for f in files):
        raise UserError(f"the result of background restore #{r.id} was removed (results are kept "
                        f"{ctx.keep_files_s / 3600:.0f} h); restore the image again")
    return [str(f) for f in files]


class BackgroundRunner:
    """Runs the stored background restores, one at a time, in a thread of the app (``start``), with a model
    cache of its own: a restore here never shares a network object with the interactive queue's."""

    def __init__(self, ctx: AppContext, poll_s: float = 1.0, beat_s: float = BEAT_S,
                 stale_after_s: float = STALE_AFTER_S) -> None:
        # the app's settings and measured speed (shared: these restores improve the estimates), its own models
        self.ctx = replace(ctx, _models=OrderedDict(), _lock=threading.Lock(), _kept=OrderedDict(), max_kept_pixels=0,
                           max_models=min(ctx.max_models, 2), stop_flags={}, stop_users={})
        self.poll_s, self.beat_s, self.stale_after_s = poll_s, beat_s, stale_after_s
        self.id = f"{socket.gethostname()}:app{os.getpid()}-{id(self):x}"
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundRunner:
        self._thread = threading.Thread(target=self._loop, name="darl-background-restores", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        last_recovery = -float("inf")
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_recovery >= self.stale_after_s / 3:
                    self.ctx.store.recover_restores(self.stale_after_s)
                    self._sweep()
                    last_recovery = time.monotonic()
                r = self.ctx.store.claim_restore(self.id)
            except Exception as e:  # noqa: BLE001 - a busy or unreachable database: try again, never die
                print(f"background restores: {type(e).__name__}: {e}; trying again", flush=True)
                r = None
            if r is None:
                self._stopping.wait(self.poll_s)
                continue
            self.run(r)

    def _sweep(self) -> None:
        """Remove the folders of restores that finished over ``keep_files_s`` ago (their downloads go too)."""
        cutoff = time.time() - self.ctx.keep_files_s
        for r in self.ctx.store.background_restores(limit=1000):
            folder = r.request.get("folder")
            if r.finished_at is not None and r.finished_at.timestamp() < cutoff and folder:
                shutil.rmtree(self.ctx.store.path(folder), ignore_errors=True)

    def run(self, r: BackgroundRestore) -> str:
        """Run one claimed background restore to its end; returns the state it ended in."""
        store, q = self.ctx.store, r.request
        stop, done = threading.Event(), threading.Event()
        last = [0.0]

        def beat() -> None:  # also while no tile reports (loading the models, scoring the result)
            while not done.wait(self.beat_s):
                try:
                    if store.restore_beat(r.id, self.id):
                        stop.set()
                except Exception as e:  # noqa: BLE001 - a busy database: beat again next period
                    print(f"background restore #{r.id}: heartbeat failed ({e}); trying again", flush=True)

        def progress(f: float, text: str) -> None:
            if time.monotonic() - last[0] >= 1.0 or f >= 0.95:
                last[0] = time.monotonic()
                if store.restore_beat(r.id, self.id, f, text):
                    stop.set()

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        state, files, error = "failed", [], None
        try:
            result = restore(self.ctx, str(store.path(q["image"])), q["task"], q["sft"], q["rl"], q["steps"],
                             q["seed"], q["tile"], str(store.path(q["gt"])) if q.get("gt") else None,
                             progress=progress, stop=stop)
            folder = store.path(q["folder"])
            for label, f in zip(("sft", "rl"), result.files):
                shutil.copyfile(f, folder / f"restored_{label}.png")
                files.append(f"{q['folder']}/restored_{label}.png")
            state = "succeeded"
        except RestoreStopped:
            state = "cancelled"
        except UserError as e:  # what the request's user should know (a model deleted since, say)
            error = str(e)
        except Exception as e:  # noqa: BLE001 - this restore fails; the runner lives on
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
        finally:
            done.set()
            thread.join()
        store.finish_restore(r.id, self.id, state, files, error)  # (not written when it was taken back meanwhile)
        return state
