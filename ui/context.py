"""What every tab shares: the store, a model cache, upload limits. No Gradio here."""

from __future__ import annotations

import functools
import inspect
import io
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from darl_core.data.images import IMAGE_SUFFIXES, ImageError, load_image
from darl_core.models.loading import DEFAULT_MODEL, SHIPPED_MODELS, load_restorer
from darl_core.models.restorer import Restorer
from darl_core.models.restorer import Precision
from storage import Store

from .speed import SpeedMeter

__all__ = ["AppContext", "SHIPPED", "SHIPPED_RL", "UserError", "caller", "int_arg", "user_errors", "user_messages", "user_warnings"]

T = TypeVar("T")

# The models that come with the app (darl_core.models.loading names them), by path: always in the pickers,
# registered again at every start.
SHIPPED: dict[str, str] = {str(m.path): m.label for m in SHIPPED_MODELS}
SHIPPED_RL = next(m.path for m in SHIPPED_MODELS if m.name == "darl-blind")  # the RL side's default


class UserError(ValueError):
    """A problem with the user's input or request; its message is shown in the page."""


def int_arg(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or a UserError naming the argument (for text, NaN, infinity,
    fractions, None and numbers out of range, from the page or from a request sent around it)."""
    try:
        if isinstance(value, bool) or value is None or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a whole number between {lo} and {hi}, got {str(value)[:40]!r}") from None
    if not lo <= v <= hi:
        digits = str(v)
        raise UserError(f"{name} must be between {lo} and {hi}, got "
                        f"{digits if len(digits) <= 24 else f'a {len(digits.lstrip(chr(45)))}-digit number'}")
    return v


def _devices() -> int:
    """Training processes this machine can run: one per GPU, or its CPU cores without a GPU."""
    import torch

    return torch.cuda.device_count() or max(1, os.cpu_count() or 1)


def caller(request: Any) -> str:
    """The logged-in user making a request (a ``gr.Request``), or "anonymous" without login."""
    return (getattr(request, "username", None) or "anonymous") if request is not None else "anonymous"


def user_errors(handler: Callable[..., T]) -> Callable[..., T]:
    """A Gradio handler whose ``UserError`` becomes the page's error message (``gr.Error``); any
    other exception is a bug and stays one. The signature is kept (Gradio reads it)."""

    @functools.wraps(handler)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return handler(*args, **kwargs)
        except UserError as e:
            import gradio as gr  # only the handlers need Gradio; the rest of this module does not

            raise gr.Error(str(e)) from None
    return wrapped


def _toast(e: UserError, outputs: int, line: tuple[int, str] | None = None) -> Any:
    """A refusal shown as a warning toast, the ``outputs`` components left as they were, except the
    message line ``line`` = (its index, its lead word), which says why."""
    import gradio as gr

    gr.Warning(str(e), duration=15)
    out: list[Any] = [gr.skip() for _ in range(outputs)]
    if line is not None:
        out[line[0]] = f"**{line[1]}:** {e}"
    return tuple(out) if outputs > 1 else out[0]


def user_messages(outputs: int | None, at: Any, lead: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like ``user_errors`` for a handler whose output ``at`` (of ``outputs``) is a message line: in the
    page a ``UserError`` becomes a warning toast and that line ("**{lead}:** why"), the other outputs stay
    as they were (an error would leave bare "Error" boxes on them once the toast is gone). A request
    from gradio_client (header ``x-gradio-user: api``) still gets the error itself.

    ``outputs=None``: the handler returns dicts keyed by component, and ``at`` is the message line's
    component; a refusal then sets that line alone."""

    def refused(e: UserError, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import gradio as gr

        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        headers = getattr(request, "headers", None) or {}
        if request is None or headers.get("x-gradio-user") == "api":
            raise gr.Error(str(e)) from None
        if outputs is None:
            gr.Warning(str(e), duration=15)
            return {at: f"**{lead}:** {e}"}
        return _toast(e, outputs, (at, lead))

    def deco(handler: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(handler):  # a handler that shows its outputs as they come
            @functools.wraps(handler)
            def streamed(*args: Any, **kwargs: Any) -> Any:
                try:
                    yield from handler(*args, **kwargs)
                except UserError as e:
                    yield refused(e, args, kwargs)
            return streamed

        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except UserError as e:
                return refused(e, args, kwargs)
        return wrapped
    return deco


def user_warnings(outputs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Like ``user_errors``, for handlers whose outputs are lists the user keeps working with: a
    ``UserError`` becomes a warning toast and the ``outputs`` components stay as they were (an error
    would cover each of them with an "Error" box until the next refresh)."""

    def deco(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return handler(*args, **kwargs)
            except UserError as e:
                return _toast(e, outputs)
        return wrapped
    return deco


@dataclass
class AppContext:
    store: Store  # the SQL store (samples, flags, jobs, checkpoints)
    metrics: tuple[str, ...] = ("niqe", "piqe")  # no-reference metrics in the score table
    max_upload_bytes: int = 25 * 1024 * 1024  # larger files are refused before decoding
    max_pixels: int = 16_000_000  # larger images are refused (and decompression bombs)
    device: str = "cpu"  # where the restorers run
    precision: Precision = "auto"  # inference arithmetic (Restorer.set_precision; DARL_PRECISION in app.py)
    max_models: int = 4  # restorers kept loaded (least recently used dropped first)
    max_kept_pixels: int = 32_000_000  # recent restorations kept for reuse (same image, model, settings): 0 = none
    max_rounds: int = 5000  # a job may ask for at most this many RL rounds
    max_user_jobs: int = 3  # queued or running jobs one user may have (DARL_MAX_JOBS_PER_USER; admins: no cap)
    max_user_hours: float = 24.0  # and their estimated hours of training, left (DARL_MAX_JOB_HOURS_PER_USER)
    max_processes: int = field(default_factory=lambda: _devices())  # and this many training processes
    max_work: float = 400.0  # a restore may cost at most this many megapixel-passes (tiles' pixels x passes)
    max_tile_passes: int = 100_000  # and this many tile evaluations (small tiles on a large image)
    max_user_restores: int = 2  # and background restores queued or running (DARL_MAX_BACKGROUND_RESTORES_PER_USER)
    max_pending: int = 16  # queued or running requests one client may have (a user; without login a browser,
                           # and 4x this for all browsers at one address)
    auth: bool = False  # users log in (DARL_AUTH): changes are checked against owners and admins
    admins: frozenset[str] = frozenset()  # users who may change anything (DARL_ADMINS)
    _models: OrderedDict[str, Restorer] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Recent restorations by (restorer, image, steps, seed, tile), least recently used first: the same
    # request again (a ground truth added, one model changed) reuses them instead of restoring again.
    _kept: OrderedDict[tuple[Any, ...], tuple[Any, Image.Image]] = field(default_factory=OrderedDict)
    # Measured restore speed: seconds per megapixel per network pass, per model path (for estimates).
    speed: SpeedMeter = field(default_factory=SpeedMeter)  # restores under 64x64 not counted, median of recent
    # Measured scoring speed: seconds per megapixel of one image scored by the table's metrics (None: not yet).
    score_speed: float | None = None
    # Stop flags of running restores, by browser session: the Stop button sets one, the restore
    # checks it after every tile and stops there.
    stop_flags: dict[str, threading.Event] = field(default_factory=dict)
    stop_users: dict[str, str] = field(default_factory=dict)  # whose restore each stop flag belongs to
    keep_files_s: float = 6 * 3600  # the app's temporary folders (downloads, exports) and uploads go after this
    # the worker's supervisor's warning when the worker keeps dying (app.Supervisor.trouble), None without one
    worker_trouble: Callable[[], str | None] | None = None

    def worker_warning(self) -> str:
        """The line the Fine-tune tab shows about the job worker: empty while it runs (or none is supervised)."""
        return (self.worker_trouble() or "") if self.worker_trouble is not None else ""

    def start_session(self, session: str, user: str = "anonymous") -> threading.Event:
        """The stop flag of a restore that a browser session (``session``, of ``user``) starts now."""
        flag = self.stop_flags[session] = threading.Event()
        self.stop_users[session] = user
        return flag

    def end_session(self, session: str) -> None:
        """The session's restore is over (finished, stopped or failed)."""
        self.stop_flags.pop(session, None)
        self.stop_users.pop(session, None)

    def stop_session(self, session: str, user: str | None = None) -> bool:
        """End the running restore of a browser session at its next tile (Stop, a cancelled request, a
        closed page); with ``user``, only if the restore is theirs (an admin's stops any; without login
        everyone is "anonymous"). False when nothing was stopped."""
        flag = self.stop_flags.get(session)
        owner = self.stop_users.get(session)
        if flag is None or (user is not None and user != owner and not (self.auth and user in self.admins)):
            return False
        flag.set()
        return True

    def scratch(self, prefix: str) -> Path:
        """A new temporary folder under ``{data}/tmp`` for files handed to the browser; folders older than
        ``keep_files_s`` are removed first (Gradio has copied their files to its own cache by then)."""
        root = self.store.dir / "tmp"
        root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.keep_files_s
        for old in root.iterdir():
            try:
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
            except OSError:  # removed by another thread, or in use: tried again next time
                pass
        return Path(tempfile.mkdtemp(prefix=prefix, dir=root))

    def pipeline(self, path: str) -> Restorer:
        """A loaded restorer, cached by its resolved folder (every spelling of a path is one entry), at
        most ``max_models`` of them, the least recently used dropped first."""
        p = Path(path).expanduser()
        key = str(p.resolve()) if p.exists() else str(path)  # a Hub id stays as it is
        with self._lock:
            if key not in self._models:
                pipe = load_restorer(key, self.device)
                pipe.set_precision(self.precision)
                if hasattr(pipe, "set_progress_bar_config"):  # diffusers pipelines; latent restorers have none
                    pipe.set_progress_bar_config(disable=True)
                self._models[key] = pipe
                while len(self._models) > max(1, self.max_models):
                    self._models.popitem(last=False)
            self._models.move_to_end(key)
            return self._models[key]

    def kept(self, key: tuple[Any, ...], restorer: Any) -> Image.Image | None:
        """The restoration ``keep`` stored under ``key`` by this very ``restorer`` object (a reloaded
        model is another object), or None."""
        with self._lock:
            hit = self._kept.get(key)
            if hit is None or hit[0] is not restorer:
                return None
            self._kept.move_to_end(key)
            return hit[1]

    def keep(self, key: tuple[Any, ...], restorer: Any, image: Image.Image) -> None:
        """Store a restoration for ``kept``; the least recently used go first past ``max_kept_pixels``."""
        size = image.size[0] * image.size[1]
        with self._lock:
            if size > self.max_kept_pixels:
                return
            self._kept[key] = (restorer, image)  # the restorer too: its id() is in the key and must not be reused
            self._kept.move_to_end(key)
            while sum(im.size[0] * im.size[1] for _, im in self._kept.values()) > self.max_kept_pixels:
                self._kept.popitem(last=False)

    def require_owner(self, user: str, target: str, what: str) -> None:
        """Raise UserError unless ``user`` may change ``target`` ("sample:3", "job:1", "checkpoint:4"):
        without login everyone may (the app then serves this machine only); with login an admin may, and
        otherwise only an owner (``Store.owners``: who flagged the sample, launched the job, made the
        checkpoint). The check runs in the handler, so a request sent around the page gets it too."""
        if not self.auth or user in self.admins:
            return
        try:
            owners = self.store.owners(target)
        except (KeyError, ValueError):
            raise UserError(f"there is no {what}") from None
        if not owners:
            raise UserError(f"{what} was not made by a user of this app: only an admin (DARL_ADMINS) may change "
                            f"it (you are logged in as {user})")
        if user not in owners:
            raise UserError(f"{what} belongs to {', '.join(sorted(owners))}: only they or an admin (DARL_ADMINS) "
                            f"may change it (you are logged in as {user})")

    def sees(self, user: str) -> str | None:
        """Whose samples ``user`` may see, download, export and train on: None (everyone's) without login or
        for an admin, else ``user`` (the samples on which their own flag stands): the owner rule of
        ``require_owner``, for reading."""
        return None if not self.auth or user in self.admins else user

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, path) of the shipped models and every registered checkpoint whose folder exists,
        promoted first; the promoted one's label says "(default RL)" (in both pickers: it is the RL side's default)."""
        ckpts = self.store.checkpoints()
        promoted = {c.path for c in ckpts if c.promoted}
        out = [(f"{label}{' (default RL)' if path in promoted else ''}", path) for path, label in SHIPPED.items()]
        seen = {p for _, p in out}
        for c in sorted(ckpts, key=lambda c: not c.promoted):
            if c.path not in seen and Path(c.path).exists():
                ev = ", ".join(f"{k} {v:.4g}" for k, v in list(c.evaluation.items())[:3])
                out.append((f"{c.name}{' (default RL)' if c.promoted else ''}{' — ' + ev if ev else ''}", c.path))
                seen.add(c.path)
        return out

    def check_model(self, label: str, path: Any) -> str:
        """``path`` when a restore may use it: a shipped model or a registered checkpoint (``model_choices``,
        what the pickers list); anything else is refused with one message, whether or not such a folder
        exists on the server (a request sent around the page learns nothing of the server's files)."""
        if not isinstance(path, str) or path not in {p for _, p in self.model_choices()}:
            raise UserError(f"{label} model: {str(path)[:80]!r} is not one of this app's models; choose one from the "
                            f"{label} picker (the shipped models and the checkpoints the Models tab lists)")
        return path

    @staticmethod
    def model_note(path: str | None) -> str:
        """The caveat a shipped model's entry carries (``ShippedModel.note``), shown beside a picker while that
        model is chosen; empty for other models."""
        return next((m.note for m in SHIPPED_MODELS if path is not None and str(m.path) == str(path)), "")

    def default_models(self) -> tuple[str, str]:
        """(SFT, RL) defaults: the shipped pair, or the promoted checkpoint as the RL side."""
        promoted = [c.path for c in self.store.checkpoints() if c.promoted and Path(c.path).exists()]
        return str(DEFAULT_MODEL), promoted[0] if promoted else str(SHIPPED_RL)

    def open_upload(self, path: str | os.PathLike | None, what: str = "image") -> Image.Image:
        """Validate and decode an uploaded file; raises UserError with a clear message."""
        if path is None or str(path) == "":
            raise UserError(f"no {what} was uploaded")
        if not isinstance(path, (str, os.PathLike)):
            raise UserError(f"{what}: {str(path)[:40]!r} is not an uploaded file")
        p = Path(path)
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{p.name}: unsupported file type {p.suffix or '(none)'}; "
                            f"allowed: {', '.join(sorted(IMAGE_SUFFIXES))}")
        try:
            size = p.stat().st_size
        except OSError as e:
            raise UserError(f"{p.name}: cannot read the upload ({e.strerror})") from None
        if size > self.max_upload_bytes:
            raise UserError(f"{p.name}: {size / 2**20:.1f} MiB is over the {self.max_upload_bytes / 2**20:.0f} MiB "
                            f"upload limit")
        if size == 0:
            raise UserError(f"{p.name}: the file is empty")
        try:
            return load_image(p.read_bytes(), self.max_pixels)
        except ImageError as e:
            raise UserError(f"{p.name}: {e}") from None


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
