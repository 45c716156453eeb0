"""DARL app: `make run` (or `.venv/bin/python app.py`).

Starts the store (SQLite under ./data by default, or DARL_DATABASE_URL),
applies migrations, registers the shipped models, starts one job worker
process beside the web server (restarted when it dies, stopped with the app on
Ctrl-C or SIGTERM), and serves the Gradio app.

Environment: DARL_DATA_DIR (data folder), DARL_DATABASE_URL (e.g.
postgresql+psycopg://user:pw@host/db), DARL_HOST / DARL_PORT (default
127.0.0.1:7860), DARL_AUTH ("user:password,user2:password2" turns on
login: the user is recorded on every change, and only a sample's, job's or
checkpoint's owner or an admin may change it), DARL_ADMINS ("ann,bob": the users
who may change anything), DARL_ALLOW_REMOTE=1 (serve a non-loopback host without
login: everyone who reaches it may change everything), DARL_ALLOWED_HOSTS ("darl.example,10.0.0.5": more
names a request's Host may carry, with login or DARL_ALLOW_REMOTE=1; without them the loopback names
only), DARL_TRUSTED_PROXIES ("127.0.0.1,10.0.0.0/8": the reverse proxies whose X-Forwarded-For names
the client; default none), DARL_MAX_JOBS_PER_USER (3) and DARL_MAX_JOB_HOURS_PER_USER (24: the
estimated training hours one user may have queued or running; admins are not capped),
DARL_MAX_BACKGROUND_RESTORES_PER_USER (2: restores expected to take over a minute run in the background, queued
or running at most this many per user), DARL_NO_WORKER=1 (do not
start a worker here, e.g. when workers run on GPU machines), DARL_PRECISION
(auto, fp32 or bf16; auto: bf16 autocast where the CPU has native bf16 or on a
GPU, else fp32).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from starlette.middleware import Middleware

from darl_core.models.loading import SHIPPED_MODELS, card_evaluation
from storage import Store, StoreUnavailable
from ui import CSS, AppContext, build_app
from ui.background_restores import BackgroundRunner
from ui.server import LOGIN_MESSAGE, LoginThrottle, guard, is_loopback, parse_users, served_hosts, trust_proxies


def register_shipped(store: Store) -> None:
    """Register the shipped models with the numbers their cards report (a parent before its children)."""
    ids: dict[str, int] = {}
    pending = list(SHIPPED_MODELS)
    while pending:  # a parent may itself have a parent: register whichever has its parent registered
        m = next((m for m in pending if m.parent is None or m.parent in ids), None)
        if m is None:
            raise ValueError(f"shipped models whose parent is not shipped: {[m.name for m in pending]}")
        pending.remove(m)
        ids[m.name] = store.register_checkpoint(str(m.path), m.name, parent_id=ids.get(m.parent or ""),
                                                evaluation=card_evaluation(m.path))


ROOT = Path(__file__).resolve().parent


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the child when ``parent`` dies (Linux; a kill -9
    of the app included), so the worker hands its job back instead of running on orphaned."""

    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux: the worker is orphaned as before
            return
        if os.getppid() != parent:  # the app died before the line above: go now
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class Supervisor:
    """Keeps one child process (the job worker) running: restarts it when it dies, with a growing pause
    when it keeps dying at once, and stops it with the app (``stop``: SIGTERM, then SIGKILL; a kill -9 of
    the app: the kernel's SIGTERM). The child finds this project's packages wherever the app was started
    from. With ``handover``, each child gets ``--worker-id`` and a restarted one ``--dead-worker`` naming the
    one that died, which takes its job back at once (not after the stale timeout)."""

    def __init__(self, cmd: list[str], check_s: float = 2.0, max_pause_s: float = 60.0, handover: bool = False,
                 trouble_restarts: int = 3, trouble_window_s: float = 600.0) -> None:
        self.cmd, self.check_s, self.max_pause_s, self.handover = cmd, check_s, max_pause_s, handover
        self.restarts = 0
        self.worker_id: str | None = None
        # ``trouble``: this many restarts within this many seconds is said on the page
        self.trouble_restarts, self.trouble_window_s = trouble_restarts, trouble_window_s
        self._restarted_at: deque[float] = deque(maxlen=max(1, trouble_restarts))  # time.monotonic() of each
        self.last_error = ""  # the last non-empty line the worker wrote to stderr
        self._stopping = threading.Event()
        self.proc = self._start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        cmd = list(self.cmd)
        if self.handover:
            dead, self.worker_id = self.worker_id, f"{socket.gethostname()}:app{os.getpid()}-{self.restarts}"
            cmd += ["--worker-id", self.worker_id] + (["--dead-worker", dead] if dead else [])
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent(os.getpid()))
        threading.Thread(target=self._relay, args=(proc,), daemon=True).start()
        return proc

    def _relay(self, proc: subprocess.Popen[bytes]) -> None:
        """Pass the child's stderr on to the app's, keeping its last non-empty line (``trouble`` shows it)."""
        if proc.stderr is None:  # not piped: nothing to relay
            return
        for raw in proc.stderr:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            if line := raw.decode(errors="replace").strip():
                self.last_error = line[:300]

    def trouble(self) -> str | None:
        """A line for the page when the worker keeps dying: ``trouble_restarts`` restarts within
        ``trouble_window_s`` seconds, with the last error line it wrote; None while it runs normally."""
        now = time.monotonic()
        recent = [t for t in self._restarted_at if now - t <= self.trouble_window_s]
        if len(recent) < self.trouble_restarts:
            return None
        minutes = max(1, round((now - recent[0]) / 60))
        last = f" Its last error: `{self.last_error}`." if self.last_error else ""
        return (f"⚠ The job worker keeps failing: restarted {len(recent)} times in the last {minutes} min, so queued "
                f"jobs do not run.{last} Tell the operator of this server (the app's log has the whole error; "
                f"`python -m darl_core.jobs.worker --once` shows it too).")

    def _watch(self) -> None:
        pause = self.check_s
        while not self._stopping.wait(self.check_s):
            code = self.proc.poll()  # also reaps it: no zombie
            if code is None:
                pause = self.check_s
                continue
            print(f"worker exited with {code}; restarting it in {pause:.0f} s", file=sys.stderr, flush=True)
            if self._stopping.wait(pause):
                return
            self.restarts += 1
            self._restarted_at.append(time.monotonic())
            self.proc = self._start()
            pause = min(2 * pause, self.max_pause_s)  # a worker that dies at once is not restarted in a loop

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()  # the worker re-queues nothing itself; a stale job is resumed by the next start
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gradio_cache(data_dir: Path) -> Path:
    """Point Gradio's cache (uploads, files sent to the browser) at the app's own folder ``{data}/gradio-cache``
    and empty it: what an earlier run left there goes at start (Gradio's hourly cleanup knows only the
    files of its own run). A cache named by GRADIO_TEMP_DIR is the operator's: used, never emptied."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return Path(os.environ["GRADIO_TEMP_DIR"])
    cache = data_dir / "gradio-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    return cache


def start_worker() -> Supervisor:
    sup = Supervisor([sys.executable, "-m", "darl_core.jobs.worker"], handover=True)
    atexit.register(sup.stop)
    # SIGTERM (a service manager, `kill`) ends the app like Ctrl-C does: through atexit, so the worker stops too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return sup


def main(argv: list[str] | None = None) -> None:
    """Serve the app; ``argv`` (the command line's arguments) takes only --help: settings are environment
    variables (the module docstring), and anything else is refused before anything starts."""
    argparse.ArgumentParser(prog="app.py", description=__doc__.split("\n\n")[0],
                            epilog=__doc__.split("\n\n", 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv or [])
    # DARL_HOST/PORT first, then Gradio's own GRADIO_SERVER_NAME/PORT, then local-only defaults.
    host = os.environ.get("DARL_HOST") or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = os.environ.get("DARL_PORT") or os.environ.get("GRADIO_SERVER_PORT") or "7860"
    users: dict[str, str] = {}
    try:
        if os.environ.get("DARL_AUTH"):
            users = parse_users(os.environ["DARL_AUTH"])
    except ValueError as e:
        sys.exit(f"error: {e}")
    admins = frozenset(a.strip() for a in os.environ.get("DARL_ADMINS", "").split(",") if a.strip())
    if admins - set(users) and users:
        sys.exit(f"error: DARL_ADMINS names {sorted(admins - set(users))}, who are not users of DARL_AUTH")
    if not users and not is_loopback(host) and os.environ.get("DARL_ALLOW_REMOTE") != "1":
        sys.exit(f"error: without login (DARL_AUTH) the app serves this machine only, and {host} is not a loopback "
                 f"address: set DARL_AUTH=user:password (and DARL_ADMINS), or DARL_ALLOW_REMOTE=1 to let everyone "
                 f"who reaches {host} change everything")
    proxies = os.environ.get("DARL_TRUSTED_PROXIES", "")
    try:
        trust_proxies(proxies)  # (the guard sets it again; here a bad entry stops the start before anything runs)
    except ValueError as e:
        sys.exit(f"error: {e}")
    open_to_others = bool(users) or os.environ.get("DARL_ALLOW_REMOTE") == "1"
    hosts = served_hosts(host, open_to_others, os.environ.get("DARL_ALLOWED_HOSTS", ""))
    if not open_to_others and os.environ.get("DARL_ALLOWED_HOSTS"):
        sys.exit("error: DARL_ALLOWED_HOSTS needs login (DARL_AUTH) or DARL_ALLOW_REMOTE=1: without them the app "
                 "answers requests for this machine's loopback names only")
    try:
        store = Store()
    except StoreUnavailable as e:
        sys.exit(f"error: {e}\nCheck DARL_DATABASE_URL, or unset it to use the embedded SQLite database.")
    register_shipped(store)
    store.sweep_temporary()  # blob writes a crash interrupted
    gradio_cache(store.dir)
    sup = start_worker() if os.environ.get("DARL_NO_WORKER") != "1" else None
    precision = os.environ.get("DARL_PRECISION", "auto")
    if precision not in ("auto", "fp32", "bf16"):
        sys.exit(f"error: DARL_PRECISION must be auto, fp32 or bf16, got {precision!r}")
    try:
        max_jobs = int(os.environ.get("DARL_MAX_JOBS_PER_USER", "3"))
        max_hours = float(os.environ.get("DARL_MAX_JOB_HOURS_PER_USER", "24"))
        max_restores = int(os.environ.get("DARL_MAX_BACKGROUND_RESTORES_PER_USER", "2"))
        if max_jobs < 1 or not max_hours > 0 or max_restores < 1:
            raise ValueError
    except ValueError:
        sys.exit("error: DARL_MAX_JOBS_PER_USER and DARL_MAX_BACKGROUND_RESTORES_PER_USER must be whole numbers >= 1 "
                 "and DARL_MAX_JOB_HOURS_PER_USER a number of hours > 0")
    ctx = AppContext(store, precision=precision, auth=bool(users), admins=admins, max_user_jobs=max_jobs,
                     max_user_hours=max_hours, max_user_restores=max_restores, worker_trouble=sup.trouble if sup is not None else None)
    runner = BackgroundRunner(ctx).start()  # restores of over a minute, outside the interactive queue
    atexit.register(runner.stop)
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1, max_size=128)
    # show_error: a value Gradio itself refuses (a path that was never uploaded, say) gets its message, not "Error"
    throttle = LoginThrottle(users) if users else None
    demo.launch(server_name=host, server_port=int(port), auth=throttle,
                auth_message=LOGIN_MESSAGE, max_file_size="25mb", show_error=True, css=CSS,
                app_kwargs={"middleware": [Middleware(guard(ctx, hosts, throttle, proxies))]})


if __name__ == "__main__":
    main(sys.argv[1:])
