"""The app process: it keeps its job worker alive and takes it down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _workers(pid: int) -> list[psutil.Process]:
    """The live job-worker children of ``pid`` (a killed one may be a zombie until it is reaped)."""
    out = []
    for c in psutil.Process(pid).children():
        try:
            if "darl_core.jobs.worker" in " ".join(c.cmdline()):
                out.append(c)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            pass
    return out


def test_the_supervisor_restarts_a_dead_worker_and_stops_it() -> None:
    sys.path.insert(0, str(ROOT))
    from app import Supervisor

    sup = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], check_s=0.2)
    try:
        first = sup.proc.pid
        os.kill(first, signal.SIGKILL)
        _wait(lambda: sup.restarts == 1 and sup.proc.pid != first, 10, "a restart")
        assert sup.proc.poll() is None
        assert not psutil.pid_exists(first)  # reaped: no zombie left behind
    finally:
        sup.stop()
    assert sup.proc.poll() is not None  # stopped with the app
    time.sleep(0.6)
    assert sup.restarts == 1  # and not restarted after the stop


def test_a_restarted_worker_is_told_which_worker_died() -> None:
    """Issue #39, finding 1: the restarted worker re-queued only jobs whose heartbeat was 120 s old, once, at
    its start (when the dead one's heartbeat was still fresh). Now it is named the dead worker, whose job
    it takes back at once (``run_worker(dead_workers=...)``, tests/test_worker.py)."""
    sys.path.insert(0, str(ROOT))
    from app import Supervisor

    sup = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], check_s=0.2, handover=True)
    try:
        first, first_id = sup.proc.pid, sup.worker_id
        assert psutil.Process(first).cmdline()[-2:] == ["--worker-id", first_id]
        os.kill(first, signal.SIGKILL)
        _wait(lambda: sup.restarts == 1 and sup.proc.pid != first, 10, "a restart")
        assert psutil.Process(sup.proc.pid).cmdline()[-4:] == ["--worker-id", sup.worker_id, "--dead-worker", first_id]
        assert sup.worker_id != first_id
    finally:
        sup.stop()


def test_a_worker_that_keeps_dying_is_said_on_the_fine_tune_tab(tmp_path: Path) -> None:
    """Issue #39: the supervisor restarted a worker that died at once (a missing package, a bad database
    URL) every minute, and nothing on the page said why queued jobs never ran. After 3 restarts within 10
    minutes the Fine-tune tab shows a warning with the last line the worker wrote to stderr."""
    sys.path.insert(0, str(ROOT))
    from app import Supervisor

    from storage import Store
    from ui import AppContext, build_app

    healthy = Supervisor([sys.executable, "-c", "import time; time.sleep(60)"], check_s=0.1)
    try:
        time.sleep(0.5)
        assert healthy.trouble() is None and healthy.restarts == 0
    finally:
        healthy.stop()
    dying = Supervisor([sys.executable, "-c", "import sys; print('loading', file=sys.stderr); "
                        "sys.exit('StoreUnavailable: cannot reach the database at db:5432')"],
                       check_s=0.1, max_pause_s=0.1)
    try:
        _wait(lambda: dying.restarts >= 2, 10, "two restarts")
        assert dying.trouble() is None  # two restarts: not yet a pattern
        _wait(lambda: dying.restarts >= 3 and dying.last_error.startswith("StoreUnavailable"), 10, "three restarts")
        said = dying.trouble()
    finally:
        dying.stop()
    assert said is not None and "The job worker keeps failing: restarted 3 times in the last 1 min" in said
    assert "Its last error: `StoreUnavailable: cannot reach the database at db:5432`" in said
    assert "Tell the operator" in said
    # the page: the Fine-tune tab's warning line carries it (empty without a supervisor, or while it runs)
    ctx = AppContext(Store(directory=tmp_path / "data"), worker_trouble=lambda: said)
    demo = build_app(ctx)
    line = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "worker-warning")
    assert line.value == said
    assert AppContext(ctx.store).worker_warning() == ""


def test_the_gradio_cache_is_the_apps_own_and_emptied_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #39, smaller: the Gradio cache was not emptied at start, contrary to the docs."""
    sys.path.insert(0, str(ROOT))
    from app import gradio_cache

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    left = tmp_path / "gradio-cache" / "abc123" / "upload.png"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"an earlier run's upload")
    cache = gradio_cache(tmp_path)
    assert cache == tmp_path / "gradio-cache" and cache.is_dir() and not any(cache.iterdir())
    import gradio.utils

    assert gradio.utils.get_upload_folder() == str(cache)  # Gradio writes there
    mine = tmp_path / "operator"
    (mine / "keep.png").parent.mkdir()
    (mine / "keep.png").write_bytes(b"x")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(mine))
    assert gradio_cache(tmp_path) == mine and (mine / "keep.png").exists()  # the operator's: never emptied


_PARENT = """
import sys, time
sys.path.insert(0, {root!r})
from app import Supervisor
sup = Supervisor([sys.executable, "-c", {child!r}], check_s=0.2)
print(sup.proc.pid, flush=True)
time.sleep(1.0)
print(sup.proc.poll(), sup.restarts, flush=True)
time.sleep(60)
"""


def test_the_worker_starts_from_another_folder_and_dies_with_the_app(tmp_path: Path) -> None:
    """Issue #39, smaller findings: run from another folder the worker failed (No module named 'darl_core')
    and was restarted forever; a kill -9 of the app left its worker running (3 of 3)."""
    child = "import darl_core.jobs.worker, time; time.sleep(60)"
    app = subprocess.Popen([sys.executable, "-c", _PARENT.format(root=str(ROOT), child=child)], cwd=tmp_path,
                           stdout=subprocess.PIPE, text=True)
    try:
        worker = int(app.stdout.readline())
        assert app.stdout.readline().split() == ["None", "0"]  # running after 1 s, never restarted
        app.kill()  # kill -9
        app.wait()
        _wait(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE, 10,
              "the orphaned worker to stop")
    finally:
        app.kill()


@pytest.mark.slow
def test_sigterm_stops_the_app_and_its_worker(tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, DARL_DATA_DIR=str(tmp_path / "data"), DARL_PORT=str(port), PYTHONPATH=str(ROOT))
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                return False
        _wait(up, 180, "the app to answer")
        workers = _workers(app.pid)
        assert len(workers) == 1
        worker = workers[0]
        worker.kill()  # a dead worker is replaced
        _wait(lambda: [c.pid for c in _workers(app.pid)] not in ([], [worker.pid]), 30, "a new worker")
        new = _workers(app.pid)[0]
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
        _wait(lambda: not new.is_running() or new.status() == psutil.STATUS_ZOMBIE, 15, "the worker to stop")
    finally:
        if app.poll() is None:
            app.kill()


@pytest.mark.parametrize("env, message", [
    ({"DARL_HOST": "0.0.0.0"}, "without login (DARL_AUTH) the app serves this machine only"),
    ({"DARL_HOST": "192.168.1.5", "DARL_ADMINS": "root"}, "not a loopback address"),
    ({"DARL_AUTH": "ann"}, "DARL_AUTH entry 'ann': write user:password"),
    ({"DARL_AUTH": "ann:pw", "DARL_ADMINS": "root"}, "DARL_ADMINS names ['root'], who are not users"),
])
def test_the_app_refuses_to_serve_others_without_login(env: dict[str, str], message: str,
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import app

    for k in ("DARL_HOST", "DARL_AUTH", "DARL_ADMINS", "DARL_ALLOW_REMOTE", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DARL_DATA_DIR", str(tmp_path))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as e:
        app.main()
    assert message in str(e.value)
    assert not (tmp_path / "darl.db").exists()  # refused before the store was opened


def test_help_explains_the_settings_and_stray_arguments_start_nothing(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """`app.py --help` prints the environment settings and exits; a flag the app does not take (a user
    guessing `--port`) is an error, not a server started with it silently ignored."""
    sys.path.insert(0, str(ROOT))
    import app

    monkeypatch.setenv("DARL_DATA_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        app.main(["--help"])
    assert e.value.code == 0 and "DARL_DATA_DIR" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        app.main(["--port", "7931"])
    assert e.value.code == 2 and "unrecognized arguments: --port 7931" in capsys.readouterr().err
    assert not (tmp_path / "darl.db").exists()  # nothing was started
