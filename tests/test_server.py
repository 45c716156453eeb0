"""The guard in front of every route (ui/server.py), over HTTP against the real app: the allow-list of
routes, Host and Origin, sessions bound to their client, forwarded headers and the login throttle.
Issue #39, findings 2, 6, 7, 8 and 9."""

from __future__ import annotations

import contextvars
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from helpers import free_port, record
from PIL import Image

from storage import Store
from ui import AppContext
from ui.server import LOOPBACK_NAMES, LoginThrottle, guard, served_hosts, trust_proxies


class Served:
    """A running app: its context, Gradio app, base URL and handler indices by name."""

    def __init__(self, ctx: AppContext, demo: Any, base: str, gate: LoginThrottle | None) -> None:
        self.ctx, self.demo, self.base, self.gate = ctx, demo, base, gate
        self.fn = {f.name: i for i, f in sorted(demo.fns.items(), reverse=True)}  # the first of each name


def _serve(tmp: Path, model: Path, users: dict[str, str] | None) -> Served:
    from starlette.middleware import Middleware

    from ui import build_app

    ctx = AppContext(Store(directory=tmp / "data"), auth=bool(users))
    ctx.store.register_checkpoint(str(model), "tiny")
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=1, max_size=128)
    gate = LoginThrottle(users) if users else None
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, auth=gate,
                app_kwargs={"middleware": [Middleware(guard(ctx, served_hosts("127.0.0.1", bool(users)), gate))]})
    return Served(ctx, demo, f"http://127.0.0.1:{port}", gate)


@pytest.fixture(scope="module")
def anon(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    app = _serve(tmp_path_factory.mktemp("anon"), tiny_model_dir, None)
    yield app
    app.demo.close()


@pytest.fixture(scope="module")
def login(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Served]:
    app = _serve(tmp_path_factory.mktemp("login"), tiny_model_dir, {"ann": "a-pw", "bob": "b-pw"})
    yield app
    app.demo.close()


def _image(s: requests.Session, base: str, tmp: Path, size: int = 192) -> dict[str, Any]:
    path = tmp / f"in{size}.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    with open(path, "rb") as f:
        up = s.post(base + "/gradio_api/upload", files={"files": f}, timeout=30).json()[0]
    return {"path": up, "meta": {"_type": "gradio.FileData"}, "orig_name": path.name}


def _restore(app: Served, image: dict[str, Any], steps: int = 50) -> list[Any]:
    model = str(app.ctx.store.checkpoints()[-1].path)
    return [image, None, "blind", model, model, steps, 0, 64]


def _join(s: requests.Session, app: Served, session: str, fn: str, data: list[Any]) -> requests.Response:
    return s.post(f"{app.base}/gradio_api/queue/join", json={"data": data, "fn_index": app.fn[fn], "session_hash": session,
                                                              "event_data": None, "trigger_id": None}, timeout=30)


def _wait(cond: Any, timeout_s: float = 60.0) -> bool:
    end = time.time() + timeout_s
    while not cond() and time.time() < end:
        time.sleep(0.05)
    return bool(cond())

def _idle(app: Served, timeout_s: float = 180.0) -> bool:
    """Wait until the app runs and queues nothing (an earlier test's restore would record its real speed over
    a test's measured one, or count against a share)."""
    q = app.demo._queue

    def quiet() -> bool:
        queued = sum(len(x.queue) for x in q.event_queue_per_concurrency_id.values())
        return not app.ctx.stop_flags and not queued and not any(j for j in q.active_jobs if j)
    return _wait(quiet, timeout_s)



@pytest.mark.slow
def test_only_the_routes_the_page_uses_are_served(anon: Served, tmp_path: Path) -> None:
    """Finding 2: /call/ and /call/v2/ skipped the share and the body limit; /run/ ran a queued handler (a
    restore) outside the queue, beside the queued one."""
    page = requests.Session()
    assert page.get(anon.base + "/", timeout=30).status_code == 200
    assert page.get(anon.base + "/config", timeout=30).status_code == 200
    image = _image(page, anon.base, tmp_path, 64)
    restore = _restore(anon, image, steps=2)
    refused = {}
    for route in ("/gradio_api/call/restore", "/gradio_api/call/v2/restore", "/call/restore", "/gradio_api/api/restore",
                  "/gradio_api/run/restore"):
        r = page.post(anon.base + route, json={"data": restore, "session_hash": "x1"}, timeout=30)
        refused[route] = r.status_code
    # the page's unqueued events come through /run with an fn_index: a queued handler is refused there
    r = page.post(anon.base + "/gradio_api/run/predict", json={"data": restore, "fn_index": anon.fn["on_restore"],
                                                               "session_hash": "x2", "event_data": None}, timeout=30)
    refused["run/predict on_restore"] = r.status_code
    assert "through the queue only" in r.text, r.text
    assert set(refused.values()) <= {400, 403, 404}, refused  # 400: /run without an fn_index
    assert anon.ctx.stop_flags == {}  # no restore started
    # what the page does: its unqueued Stop through /run (allowed), a restore through the queue
    r = page.post(anon.base + "/gradio_api/run/predict", json={"data": [], "fn_index": anon.fn["on_stop"],
                                                               "session_hash": "x3", "event_data": None}, timeout=30)
    assert r.status_code == 200, r.text
    assert _join(page, anon, "x3", "on_restore", restore).status_code == 200
    record("guard", routes_refused=len(refused))


@pytest.mark.slow
def test_a_foreign_host_or_origin_is_refused(anon: Served, tmp_path: Path) -> None:
    """Finding 7: a foreign Host (DNS rebinding) and a cross-site Origin were served, CORS echoed the origin."""
    port = anon.base.rsplit(":", 1)[1]
    s = requests.Session()
    tries = 0
    for headers in ({"Host": f"evil.example:{port}"}, {"Origin": f"http://evil.example:{port}"},
                    {"Origin": "null"}, {"Origin": f"http://localhost:{int(port) + 1}"}):
        for method, path in (("GET", "/"), ("GET", "/config"), ("POST", "/gradio_api/queue/join")):
            r = s.request(method, anon.base + path, headers=headers, json={"fn_index": anon.fn["on_stop"],
                                                                           "data": [], "session_hash": "f"}, timeout=30)
            tries += 1
            assert r.status_code == 403, (headers, path, r.status_code)
            assert "evil" not in r.headers.get("access-control-allow-origin", ""), r.headers
        png = tmp_path / "x.png"
        Image.new("RGB", (8, 8)).save(png)
        with open(png, "rb") as f:  # a cross-site form's multipart upload
            assert s.post(anon.base + "/gradio_api/upload", files={"files": f}, headers=headers,
                          timeout=30).status_code == 403
        tries += 1
    # the app's own page: by its loopback names, with its own origin
    for name in ("127.0.0.1", "localhost"):
        assert s.get(f"http://{name}:{port}/config", headers={"Origin": f"http://{name}:{port}"},
                     timeout=30).status_code == 200
    # without login only the loopback names, wherever the app listens; with login its address and the extras
    assert served_hosts("0.0.0.0", False, "darl.example") == LOOPBACK_NAMES
    assert served_hosts("192.168.1.4", True, "darl.example") == LOOPBACK_NAMES | {"192.168.1.4", "darl.example"}
    assert served_hosts("0.0.0.0", True, "*") is None
    record("guard", foreign_requests=tries, foreign_served=0)


@pytest.mark.slow
def test_a_session_is_its_clients_own(anon: Served, tmp_path: Path) -> None:
    """Finding 8: knowing a session id let anyone stop its restore (run/predict on Stop, cancel, the unload
    handler through its heartbeat) or read its messages."""
    victim, stranger = requests.Session(), requests.Session()
    victim.get(anon.base + "/", timeout=30)
    stranger.get(anon.base + "/", timeout=30)  # each browser gets its own client cookie with the page
    assert victim.cookies.get("darl-client") and victim.cookies.get("darl-client") != stranger.cookies.get("darl-client")
    session = uuid.uuid4().hex
    assert _idle(anon), "an earlier test's restore is still running"
    for _, path in anon.ctx.model_choices():  # measured fast: the restore stays interactive (under a minute)
        anon.ctx.speed[path] = 0.01
    restore = _restore(anon, _image(victim, anon.base, tmp_path, 256), steps=50)
    assert _join(victim, anon, session, "on_restore", restore).status_code == 200
    assert _wait(lambda: session in anon.ctx.stop_flags, 120), ("the restore did not start", anon.ctx.store.background_restores() if hasattr(anon.ctx.store, "background_restores") else None, dict(anon.ctx.speed), anon.ctx.score_speed, [(e.fn_index, e.session_hash) for e in anon.demo._queue.event_queue_per_concurrency_id.get("models").queue] if hasattr(anon.demo, "_queue") else None)
    flag = anon.ctx.stop_flags[session]
    attempts = {
        "run/predict on Stop": lambda s: s.post(anon.base + "/gradio_api/run/predict", timeout=30, json={
            "data": [], "fn_index": anon.fn["on_stop"], "session_hash": session, "event_data": None}),
        "cancel": lambda s: s.post(anon.base + "/gradio_api/cancel", timeout=30, json={
            "session_hash": session, "fn_index": anon.fn["on_restore"], "event_id": "x"}),
        "queue/data": lambda s: s.get(anon.base + "/gradio_api/queue/data", params={"session_hash": session},
                                      timeout=5, stream=True),
        "heartbeat opened and closed": lambda s: s.get(f"{anon.base}/gradio_api/heartbeat/{session}", timeout=5,
                                                       stream=True),
        "queue/join in the session": lambda s: _join(s, anon, session, "on_stop", []),
    }
    codes = {}
    for what, attempt in attempts.items():
        for who in (stranger, requests.Session()):  # another browser, and a client with no cookie at all
            r = attempt(who)
            codes[what] = r.status_code
            r.close()  # (a heartbeat closed: Gradio would run the unload handler on it)
            assert r.status_code == 403, (what, r.status_code)
    time.sleep(1.0)
    assert not flag.is_set() and session in anon.ctx.stop_flags, "a stranger stopped the restore"
    # the victim's own Stop ends it at its next tile
    r = victim.post(anon.base + "/gradio_api/run/predict", timeout=30, json={
        "data": [], "fn_index": anon.fn["on_stop"], "session_hash": session, "event_data": None})
    assert r.status_code == 200 and _wait(lambda: session not in anon.ctx.stop_flags, 20)
    record("guard", session_attacks=2 * len(attempts), session_attacks_served=0)


@pytest.mark.slow
def test_login_page_and_unknown_routes_carry_no_schema(login: Served) -> None:
    """Finding 6: /gradio_api/runs (and /runs/) served the page with its API schema and model paths to a
    visitor who is not logged in."""
    anon = requests.Session()
    model = str(login.ctx.store.checkpoints()[-1].path)
    for path in ("/gradio_api/runs", "/gradio_api/runs/", "/runs", "/gradio_api/openapi.json", "/gradio_api/info",
                 "/monitoring", "/gradio_api/run-history/buckets", "/?view=api"):
        r = anon.get(login.base + path, timeout=30)
        assert r.status_code in (401, 404) or "named_endpoints\": {}" in r.text, (path, r.status_code)
        assert model not in r.text and "/launch_job" not in r.text, path


@pytest.mark.slow
def test_logins_count_the_peer_and_the_users_browser(login: Served) -> None:
    """Finding 9: a made-up X-Forwarded-For from 127.0.0.1 gave every guess a fresh address (200 guesses in
    1.1 s), and a stranger's wrong guesses from a shared address locked the real user out."""
    assert login.gate is not None
    ann = requests.Session()
    r = ann.post(login.base + "/login", data={"username": "ann", "password": "a-pw"}, timeout=30)
    assert r.status_code == 200 and ann.cookies.get("darl-device"), r.headers
    stranger = requests.Session()
    t0, refused0 = time.time(), login.gate.refused
    for i in range(40):  # the same address as ann's, each with another forwarded address
        stranger.post(login.base + "/login", data={"username": "ann", "password": f"guess{i}"},
                      headers={"X-Forwarded-For": f"10.9.{i}.1"}, timeout=30)
    took = time.time() - t0
    refused = login.gate.refused - refused0
    assert refused >= 35, refused  # checked 5 times, then refused unchecked
    # ann, on her browser, is not locked out by the stranger's guesses from her own address
    again = requests.Session()
    again.cookies.set("darl-device", ann.cookies.get("darl-device"))
    assert again.post(login.base + "/login", data={"username": "ann", "password": "a-pw"}, timeout=30).status_code == 200
    # a device cookie of ann's is no key for bob
    bob = requests.Session()
    bob.cookies.set("darl-device", ann.cookies.get("darl-device"))
    assert bob.post(login.base + "/login", data={"username": "bob", "password": "nope"}, timeout=30).status_code != 200
    record("login", forwarded_guesses=40, forwarded_guesses_checked=40 - refused,
           owner_locked_out=0, guess_ms=int(1000 * took / 40))


def test_forwarded_headers_are_believed_from_configured_proxies_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")
    trust_proxies("")
    import os

    assert "127.0.0.1" not in _TrustedHosts(os.environ["FORWARDED_ALLOW_IPS"])
    trust_proxies("10.0.0.0/8, 127.0.0.1")
    hosts = _TrustedHosts(os.environ["FORWARDED_ALLOW_IPS"])
    assert "127.0.0.1" in hosts and "10.2.3.4" in hosts and "192.168.0.1" not in hosts
    with pytest.raises(ValueError, match="DARL_TRUSTED_PROXIES entry 'proxy.lan'"):
        trust_proxies("proxy.lan")


def test_a_strangers_guesses_never_refuse_the_users_own_browser() -> None:
    contextvars.copy_context().run(_strangers_guesses)  # (the login's context variables stay in this test)


def _strangers_guesses() -> None:
    from ui import server

    now = [0.0]
    gate = LoginThrottle({"ann": "s3cret"}, free=5, user_free=20, global_per_min=1000, clock=lambda: now[0])
    issued: list[str] = []
    server._ISSUED.set(issued)
    assert gate("ann", "s3cret") and issued == ["ann"]
    device = gate.issue_device("ann")
    server._PEER.set("192.0.2.7")  # ann's office: one shared address
    assert not any(gate("ann", f"guess{i}") for i in range(200))  # a colleague's guesses
    assert gate("ann", "s3cret") is False  # from a browser that never logged in as ann: refused unchecked
    server._DEVICE.set(device)
    assert gate("ann", "s3cret") is True  # from ann's own browser: in at once
    server._DEVICE.set(gate.issue_device("bob"))  # another user's device is an unknown browser for ann
    assert gate("ann", "s3cret") is False
    # rotating addresses gains nothing past the user's own count (20 checked), and the global rate caps all users
    server._DEVICE.set("")
    checked = 0
    for i in range(100):
        server._PEER.set(f"198.51.100.{i}")
        before = gate.refused
        gate("ann", f"x{i}")
        checked += gate.refused == before
    assert checked == 15  # 20 checked wrong passwords for ann in all (5 from the office): then every address waits
    flood = LoginThrottle({"a": "p"}, free=1000, user_free=1000, global_per_min=30, clock=lambda: now[0])
    for i in range(100):
        flood(f"user{i}", "x")
    assert flood.refused == 70


@pytest.mark.slow
def test_joins_sent_together_cannot_pass_the_share_and_odd_bodies_are_4xx(anon: Served, tmp_path: Path) -> None:
    """The attacker pass after round 2: 30 joins sent at once by one client were all accepted (the share counted
    only what Gradio's queue already held); a body of nested lists and an unknown fn_index gave 500s."""
    from concurrent.futures import ThreadPoolExecutor

    client = requests.Session()
    client.get(anon.base + "/", timeout=30)
    image = _image(client, anon.base, tmp_path, 64)
    assert _idle(anon), "an earlier test's restore is still running"
    for _, path in anon.ctx.model_choices():  # measured fast: every restore stays interactive
        anon.ctx.speed[path] = 0.01
    session = uuid.uuid4().hex
    with ThreadPoolExecutor(30) as pool:
        codes = list(pool.map(lambda _: _join(client, anon, session, "on_restore", _restore(anon, image, 50)).status_code,
                              range(30)))
    assert codes.count(200) <= 2 and codes.count(429) == 30 - codes.count(200), codes  # MODEL_SHARE restores
    anon.ctx.stop_session(session)  # (end what was accepted)
    nested = b'{"fn_index": 2, "data": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    r = client.post(anon.base + "/gradio_api/queue/join", data=nested, timeout=30,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, (r.status_code, r.text[:200])
    r = client.post(anon.base + "/gradio_api/queue/join", timeout=30, json={
        "data": [], "fn_index": 999, "session_hash": uuid.uuid4().hex, "event_data": None})
    assert r.status_code == 400 and "no handler 999" in r.text, (r.status_code, r.text[:200])


@pytest.mark.slow
def test_without_login_each_local_browser_has_its_own_share(anon: Served, tmp_path: Path) -> None:
    """Round 2, smaller: without login all local users shared one allowance (a second browser got 429 "you already
    have 30 requests"). Each browser (its client cookie) has its own share; the address a cap over all of them."""
    a, b = requests.Session(), requests.Session()
    for s in (a, b):
        s.get(anon.base + "/", timeout=30)
    image = _image(a, anon.base, tmp_path, 256)
    assert _idle(anon), "an earlier test's restore is still running"
    for _, path in anon.ctx.model_choices():  # measured fast: every restore stays interactive
        anon.ctx.speed[path] = 0.01
    sa, sb = uuid.uuid4().hex, uuid.uuid4().hex
    try:
        first = [_join(a, anon, sa, "on_restore", _restore(anon, image, 50)).status_code for _ in range(3)]
        assert first == [200, 200, 429], first  # a's share of restores is full ...
        assert _join(b, anon, sb, "on_restore", _restore(anon, image, 50)).status_code == 200  # ... b's is its own
        # new cookies do not mint new shares past the address's cap (ADDRESS_SHARE shares: 4 here, with 1 each)
        from ui.server import ADDRESS_SHARE

        anon.ctx.max_pending = 1
        codes = []
        for _ in range(3):
            c = requests.Session()
            c.get(anon.base + "/", timeout=30)
            r = _join(c, anon, uuid.uuid4().hex, "on_restore", _restore(anon, image, 2))
            codes.append((r.status_code, "this address already has" in r.text))
        assert ADDRESS_SHARE == 4 and codes[0] == (200, False) and codes[-1] == (429, True), codes
    finally:
        anon.ctx.max_pending = 16
        anon.ctx.stop_session(sa)
        anon.ctx.stop_session(sb)
