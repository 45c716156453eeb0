"""What the web server adds around the Gradio app: throttled logins, a per-client share of the queue,
cancellation that reaches the computation, no API schema on the login page, and the start-up checks
of where the app may listen.

``guard(ctx)`` is an ASGI middleware class (``demo.launch(app_kwargs={"middleware": [Middleware(guard(ctx))]})``):

* ``POST .../queue/join``: a client (the logged-in user, else the address) may have at most
  ``ctx.max_pending`` requests queued or running, and at most ``MODEL_SHARE`` of them on the models
  (restores); one more is answered 429 with the reason, so one client cannot fill the queue. A body
  over ``MAX_JOIN_BYTES`` (413) or an ``fn_index`` that is not a plain integer (400, Gradio would read
  "2" as 2) is refused, so a request cannot hide which handler it calls.
* ``POST .../cancel`` (the page's own cancel, closing a tab, a raw request): Gradio abandons the
  request but its thread would compute on; the session's stop flags are set, so a restore ends at
  its next tile. With login on, Gradio would take anyone's cancel: a visitor who is not logged in gets
  401, a user cancelling another user's session 403, and neither reaches Gradio.
* ``POST /login``: the caller's address goes to ``LoginThrottle`` (which Gradio calls with the name and
  password only).
* the login page: Gradio embeds the API schema (endpoint names, parameters, absolute model paths) in
  every page, the login page too; for a visitor who is not logged in it is replaced by an empty one.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .context import AppContext

__all__ = ["LOGIN_MESSAGE", "LoginThrottle", "MAX_JOIN_BYTES", "MODEL_SHARE", "guard", "is_loopback", "parse_users"]

MODEL_SHARE = 2  # restores one client may have queued or running at once
MAX_JOIN_BYTES = 1 << 20  # a queue request is a few kB (files travel through /upload): larger ones are refused
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_users(spec: str) -> dict[str, str]:
    """``"ann:pw1,bob:pw2"`` (DARL_AUTH) -> {"ann": "pw1", "bob": "pw2"}; ValueError naming a bad entry."""
    users: dict[str, str] = {}
    for pair in (p for p in spec.split(",") if p.strip()):
        name, sep, password = pair.partition(":")
        if not sep or not name.strip() or not password:
            raise ValueError(f"DARL_AUTH entry {pair.split(':')[0].strip()!r}: write user:password")
        users[name.strip()] = password
    if not users:
        raise ValueError("DARL_AUTH is set but names no user: write user:password,user2:password2")
    return users


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` serves this machine only."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("darl_login_peer", default="?")

LOGIN_MESSAGE = ("After 5 wrong passwords for a user name from one address, each further try waits (1 s, then "
                 "twice as long each time, at most 5 minutes): a right password typed too soon is refused too.")


class LoginThrottle:
    """The login check (Gradio's ``auth`` callable): after ``free`` wrong passwords for a user name from one
    address, every further attempt of that pair is refused, right or wrong, until a wait that doubles with
    each failure (``base_s``, 2 x ``base_s``, ... at most ``max_s``) has passed. A right password resets
    the count. Counting per address too means a stranger guessing ann's password does not lock ann out
    of her own machine. Passwords are compared in constant time. The address comes from ``guard``."""

    def __init__(self, users: dict[str, str], free: int = 5, base_s: float = 1.0, max_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.users, self.free, self.base_s, self.max_s, self.clock = dict(users), free, base_s, max_s, clock
        self._state: dict[str, tuple[int, float]] = {}  # user name -> (failures, refused until)
        self._lock = threading.Lock()
        self.refused = 0  # attempts refused without checking the password (counted for the tests and logs)

    def __call__(self, username: str, password: str) -> bool:
        now = self.clock()
        key = f"{username}\n{_PEER.get()}"
        with self._lock:
            failures, until = self._state.get(key, (0, 0.0))
            if now < until:
                self.refused += 1
                return False
            known = self.users.get(username)
            ok = known is not None and hmac.compare_digest(password.encode(), known.encode())
            if ok:
                self._state.pop(key, None)
                return True
            failures += 1
            wait = 0.0 if failures < self.free else min(self.max_s, self.base_s * 2 ** (failures - self.free))
            if len(self._state) > 100_000:  # made-up user names cannot grow this without bound
                self._state.clear()
            self._state[key] = (failures, now + wait)
            return False


def _client(scope: Scope, gradio_app: Any) -> str:
    """Who sends a request: the logged-in user, else the peer address."""
    user = _user(scope, gradio_app)
    if user:
        return f"user:{user}"
    client = scope.get("client")
    return f"addr:{client[0]}" if client else "addr:?"


def _user(scope: Scope, gradio_app: Any) -> str | None:
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                cookies[k] = v
    cid = getattr(gradio_app, "cookie_id", None)
    tokens = getattr(gradio_app, "tokens", {}) or {}
    token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
    return tokens.get(token) if token else None


def _pending(gradio_app: Any) -> list[Any]:
    """Every request of the Gradio queue now waiting or running."""
    queue = gradio_app.get_blocks()._queue
    events = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    events += [e for job in queue.active_jobs if job for e in job]
    return events


def _event_client(event: Any) -> str:
    if event.username:
        return f"user:{event.username}"
    client = getattr(getattr(event, "request", None), "client", None)
    return f"addr:{client.host}" if client else "addr:?"


def guard(ctx: AppContext) -> type:
    """The middleware class for ``app_kwargs={"middleware": [Middleware(guard(ctx))]}``."""

    class Guard:
        def __init__(self, app: ASGIApp):
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            path, method = scope.get("path", ""), scope.get("method", "")
            gradio_app = scope.get("app")
            if method == "POST" and path.rstrip("/").endswith("/login"):
                client = scope.get("client")
                _PEER.set(client[0] if client else "?")  # for LoginThrottle, called inside this request
            elif method == "POST" and path.endswith("/queue/join") and gradio_app is not None:
                body, receive = await _read(receive, MAX_JOIN_BYTES + 1)
                if len(body) > MAX_JOIN_BYTES:
                    return await _json(send, 413, {"detail": f"a queue request may be {MAX_JOIN_BYTES // 1024} KiB at "
                                                             f"most; send files through /gradio_api/upload"})
                fn_index = _field(body, "fn_index")
                if type(fn_index) is not int:  # noqa: E721 (Gradio would also take "2" or 2.0: the share must see it)
                    return await _json(send, 400, {"detail": "fn_index must be an integer"})
                refusal = self.refusal(scope, gradio_app, fn_index)
                if refusal:
                    return await _json(send, 429, {"detail": refusal})
            elif method == "POST" and path.endswith("/cancel"):
                # Gradio answers /cancel without a login check: with login on, only a logged-in user may
                # cancel, and only a restore of their own (the stop flag knows whose it is).
                user = _user(scope, gradio_app) if gradio_app is not None else None
                if gradio_app is not None and getattr(gradio_app, "auth", None) and user is None:
                    return await _json(send, 401, {"detail": "Not authenticated"})
                body, receive = await _read(receive, MAX_JOIN_BYTES + 1)
                session = _field(body, "session_hash")
                if not isinstance(session, str):
                    return await _json(send, 400, {"detail": "session_hash missing"})
                if getattr(gradio_app, "auth", None) and not self.owns(gradio_app, session, user or ""):
                    # not forwarded: Gradio would drop the other user's answer while its computation went on
                    return await _json(send, 403, {"detail": "that is not your request to cancel"})
                ctx.stop_session(session, user or "anonymous")
            elif (method == "GET" and gradio_app is not None and getattr(gradio_app, "auth", None)
                  and not path.startswith(("/gradio_api", "/assets", "/static", "/favicon"))
                  and _user(scope, gradio_app) is None):
                return await self.app(scope, receive, _strip_api_info(send))
            return await self.app(scope, receive, send)

        def owns(self, gradio_app: Any, session: str, user: str) -> bool:
            """Whether every request of a browser session, running or waiting, is ``user``'s (an admin's: any)."""
            if user in ctx.admins:
                return True
            if ctx.stop_users.get(session, user) != user:
                return False
            try:
                events = _pending(gradio_app)
            except AttributeError:
                return False
            return all(e.username == user for e in events if e.session_hash == session)

        def refusal(self, scope: Scope, gradio_app: Any, fn_index: int) -> str | None:
            try:
                events = _pending(gradio_app)
                fns = gradio_app.get_blocks().fns
            except AttributeError:  # a Gradio without these internals: no share enforced (the tests notice)
                return None
            who = _client(scope, gradio_app)
            mine = [e for e in events if _event_client(e) == who]
            if len(mine) >= ctx.max_pending:
                return (f"you already have {len(mine)} requests waiting or running (at most {ctx.max_pending}); "
                        f"wait for them to finish")
            fn = fns.get(fn_index)
            if fn is not None and fn.concurrency_id == "models":
                models = [e for e in mine if e.concurrency_id == "models"]
                if len(models) >= MODEL_SHARE:
                    return (f"you already have {len(models)} restores waiting or running (at most {MODEL_SHARE}); "
                            f"stop one or wait for it")
            return None

    return Guard


def _field(body: bytes, name: str) -> Any:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return data.get(name) if isinstance(data, dict) else None


async def _read(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The request body (at most its first ``limit`` bytes: a longer one is refused by the caller) and a
    ``receive`` that hands it on unchanged."""
    chunks, more, total = [], True, 0
    messages: list[Message] = []
    while more:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        if total < limit:
            chunks.append(message.get("body", b""))
        total += len(message.get("body", b""))
        if total >= limit:
            break  # enough to refuse it; the rest is never read
        more = message.get("more_body", False)

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return b"".join(chunks)[:limit], replay


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)


def _strip_api_info(send: Send) -> Send:
    """A ``send`` that empties the embedded API schema of an HTML page (buffered: pages are small)."""
    start: Message | None = None
    passthrough = False  # not an HTML page: every message goes on unchanged
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal start, passthrough
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            if not headers.get(b"content-type", b"").startswith(b"text/html"):
                start, passthrough = None, True
                await send(message)
                return
            start = message
            return
        if passthrough or start is None:
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = _API_INFO.sub(b'window.gradio_api_info = {"named_endpoints": {}, "unnamed_endpoints": {}};</script>',
                             b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped
