"""What the web server adds around the Gradio app: one guard in front of every route, throttled logins,
and the start-up checks of where the app may listen.

``guard(ctx, hosts)`` is an ASGI middleware class (``demo.launch(app_kwargs={"middleware":
[Middleware(guard(ctx, hosts))]})``). Every request passes it, in this order:

1. **Host and Origin.** The ``Host`` header must name an address the app serves (``hosts``, from
   ``served_hosts``: without login the loopback names only), and an ``Origin`` header, when a browser sends
   one, must be that same host: a page of another site (DNS rebinding, a cross-site form) gets 403.
2. **An allow-list of routes** (``ROUTES``): the page, its files, the login, and the queue routes the page
   uses. Anything else (``/gradio_api/call/...``, ``/gradio_api/runs``, ``/gradio_api/openapi.json``,
   ``/monitoring``, ...) is answered 404 without reaching Gradio. ``POST /gradio_api/run/...`` (the page's
   unqueued events) runs only the handlers the app made unqueued (``queue=False``): everything else goes
   through the queue, its share and the models' one-at-a-time limit.
3. **Sessions belong to who opened them.** A browser session id (``session_hash``) is bound to the client
   that used it first: the logged-in user, else the browser's ``darl-client`` cookie (set with the page),
   else its address. Another client's request naming it (the queue, its messages, its heartbeat, the
   unqueued Stop, a cancel) gets 403, so knowing a session id stops nobody's restore.
4. Per route: ``/queue/join`` and ``/run``: a body over ``MAX_JOIN_BYTES`` is refused (413), an
   ``fn_index`` that is not a plain integer too (400, Gradio would read "2" as 2); a client may have
   ``ctx.max_pending`` requests queued or running, ``MODEL_SHARE`` of them restores (429 with the reason).
   ``/cancel`` sets the session's stop flags, so a restore ends at its next tile (Gradio would only drop
   its answer); with login only a logged-in user may cancel (401). ``/login``: the caller's address and
   device cookie go to ``LoginThrottle``, and a successful login gets a device cookie. The page itself: for
   a visitor who is not logged in, Gradio's embedded API schema (endpoints, absolute model paths) is
   emptied.

The client's address is the connection's peer; ``X-Forwarded-For`` is believed only from the proxies of
``DARL_TRUSTED_PROXIES`` (``trust_proxies``; uvicorn would otherwise believe it from 127.0.0.1).
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from .context import AppContext

__all__ = ["LOGIN_MESSAGE", "LoginThrottle", "MAX_JOIN_BYTES", "MODEL_SHARE", "ROUTES", "guard", "is_loopback",
           "parse_users", "served_hosts", "trust_proxies"]

MODEL_SHARE = 2  # restores one client may have queued or running at once
ADDRESS_SHARE = 4  # without login, the requests of all browsers at one address: this many clients' shares
MAX_JOIN_BYTES = 1 << 20  # a queue request is a few kB (files travel through /upload): larger ones are refused
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CLIENT_COOKIE = "darl-client"  # who a browser is without login (its sessions are bound to it)
DEVICE_COOKIE = "darl-device"  # a browser that logged in as a user before (LoginThrottle)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What the guard does on a route: "page" (the app's page: client cookie, schema emptied before login),
# "open" (Gradio's own checks suffice), "login", "join" / "run" (an event: its body, share and session),
# "cancel", "session" (a session's stream or heartbeat: bound to its client).
Rule = Literal["page", "open", "login", "join", "run", "cancel", "session"]

ROUTES: tuple[tuple[frozenset[str], re.Pattern[str], Rule], ...] = tuple(
    (frozenset(methods.split()), re.compile(pattern), rule) for methods, pattern, rule in (
        ("GET HEAD", r"/", "page"),
        ("GET HEAD", r"/(assets|static|svelte)/.+|/(favicon\.ico|robots\.txt|manifest\.json|theme\.css)"
                     r"|/gradio_api/theme\.css|/pwa_icon(/\d+)?", "open"),
        ("POST", r"/login/?", "login"),
        ("GET", r"/logout/?|/config/?|/gradio_api/(login_check|app_id|user|info|startup-events|upload_progress)/?",
         "open"),
        ("GET HEAD", r"/gradio_api/file=.+|/gradio_api/file/.+", "open"),
        ("POST", r"/gradio_api/upload", "open"),
        ("POST", r"/gradio_api/queue/join", "join"),
        ("POST", r"/gradio_api/run/[^/]+/?", "run"),
        ("POST", r"/gradio_api/cancel", "cancel"),
        ("POST", r"/gradio_api/component_server/?|/gradio_api/reset/?", "session"),
        ("GET", r"/gradio_api/queue/data|/gradio_api/heartbeat/[^/]+", "session"),
    ))


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


def served_hosts(host: str, open_to_others: bool, extra: str = "") -> frozenset[str] | None:
    """The host names a request's ``Host`` header may carry (None: any) for an app listening on ``host``.

    Without login (``open_to_others`` False) the loopback names only, whatever ``host`` is: a page of another
    site that a browser resolves to this machine (DNS rebinding) is refused. With login (or
    DARL_ALLOW_REMOTE=1): also ``host`` itself, or this machine's names and addresses when it listens on
    every interface, and the names of ``extra`` (DARL_ALLOWED_HOSTS, comma-separated; "*" accepts any)."""
    names = set(LOOPBACK_NAMES)
    if not open_to_others:
        return frozenset(names)
    wanted = [h.strip().lower() for h in extra.split(",") if h.strip()]
    if "*" in wanted:
        return None
    names.update(wanted)
    if host not in ("0.0.0.0", "::", ""):
        names.add(host.lower())
    else:
        me = socket.gethostname()
        names.update({me.lower(), socket.getfqdn().lower()})
        try:
            names.update(str(info[4][0]).lower() for info in socket.getaddrinfo(me, None))
        except OSError:
            pass
    return frozenset(names)


def trust_proxies(spec: str) -> None:
    """Believe ``X-Forwarded-For`` only from the proxies of ``spec`` (DARL_TRUSTED_PROXIES: comma-separated
    addresses or networks; empty: from nobody). uvicorn rewrites the client address before any middleware
    runs, by default from any request of 127.0.0.1 (a made-up header then picks the address the login
    throttle counts): it reads FORWARDED_ALLOW_IPS when the server starts, so this sets it before. A bad
    entry is a ValueError naming it."""
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    for e in entries:
        try:
            ipaddress.ip_network(e, strict=False)
        except ValueError:
            raise ValueError(f"DARL_TRUSTED_PROXIES entry {e!r} is not an address or network "
                             f"(write e.g. 127.0.0.1,10.0.0.0/8)") from None
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(entries) or "0.0.0.0/32"  # a network no peer is in


_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("darl_login_peer", default="?")
_DEVICE: contextvars.ContextVar[str] = contextvars.ContextVar("darl_login_device", default="")
_ISSUED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("darl_login_issued", default=None)

LOGIN_MESSAGE = ("After 5 wrong passwords for a user name from one address (20 from anywhere), each further try "
                 "from a browser that has not logged in as that user waits (1 s, then twice as long each time, at "
                 "most 5 minutes): a right password typed too soon is refused too. A browser that has logged in "
                 "as that user before is counted on its own.")


class LoginThrottle:
    """The login check (Gradio's ``auth`` callable). Passwords are compared in constant time. An attempt is
    counted under one or more keys; while any of them waits, it is refused without being checked:

    * (user, address), after ``free`` wrong passwords: a wait that doubles with each failure (``base_s``,
      2 x ``base_s``, ... at most ``max_s``);
    * the user from any address, after ``user_free``: the same, so rotating addresses gains nothing;
    * every user together: at most ``global_per_min`` wrong passwords a minute;
    * but a browser holding a device token of that user (``issue_device``: the guard's ``darl-device``
      cookie, given at each successful login) is counted on (user, device) alone: a stranger's guesses,
      from another address or the same shared one, never refuse the right password from the user's own
      browser. A right password resets the key's count.

    The address and device come from ``guard`` (Gradio calls this with the name and password only)."""

    def __init__(self, users: dict[str, str], free: int = 5, base_s: float = 1.0, max_s: float = 300.0,
                 user_free: int = 20, global_per_min: int = 600, clock: Callable[[], float] = time.monotonic) -> None:
        self.users, self.free, self.base_s, self.max_s, self.clock = dict(users), free, base_s, max_s, clock
        self.user_free, self.global_per_min = user_free, global_per_min
        self._state: dict[str, tuple[int, float]] = {}  # key -> (failures, refused until)
        self._devices: OrderedDict[str, str] = OrderedDict()  # device token -> its user
        self._recent: deque[float] = deque()  # times of wrong passwords of the last minute (unknown browsers)
        self._lock = threading.Lock()
        self.refused = 0  # attempts refused without checking the password (counted for the tests and logs)

    def issue_device(self, username: str) -> str:
        """A new device token of ``username`` (the oldest are forgotten past 100,000)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._devices[token] = username
            while len(self._devices) > 100_000:
                self._devices.popitem(last=False)
        return token

    def __call__(self, username: str, password: str) -> bool:
        now = self.clock()
        device = _DEVICE.get()
        with self._lock:
            if device and self._devices.get(device) == username:
                keys = [f"device\n{username}\n{device}"]
            else:
                keys = [f"addr\n{username}\n{_PEER.get()}", f"user\n{username}"]
                while self._recent and self._recent[0] < now - 60:
                    self._recent.popleft()
                if len(self._recent) >= self.global_per_min:
                    self.refused += 1
                    return False
            if any(now < self._state.get(k, (0, 0.0))[1] for k in keys):
                self.refused += 1
                return False
            known = self.users.get(username)
            ok = known is not None and hmac.compare_digest(password.encode(), known.encode())
            if ok:
                for k in keys:
                    self._state.pop(k, None)
                issued = _ISSUED.get()
                if issued is not None:  # the guard sets the device cookie on the answer
                    issued.append(username)
                return True
            if not keys[0].startswith("device"):
                self._recent.append(now)
            if len(self._state) > 100_000:  # made-up user names cannot grow this without bound
                self._state.clear()
            for k in keys:
                free = self.user_free if k.startswith("user") else self.free
                failures = self._state.get(k, (0, 0.0))[0] + 1
                wait = 0.0 if failures < free else min(self.max_s, self.base_s * 2 ** (failures - free))
                self._state[k] = (failures, now + wait)
            return False


def _cookies(scope: Scope) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                cookies[k] = v
    return cookies


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == name), None)


def _user(scope: Scope, gradio_app: Any) -> str | None:
    cookies = _cookies(scope)
    cid = getattr(gradio_app, "cookie_id", None)
    tokens = getattr(gradio_app, "tokens", {}) or {}
    token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
    return tokens.get(token) if token else None


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _client(scope: Scope, gradio_app: Any) -> str:
    """Who sends a request, for the queue's share: the logged-in user, else the browser's client cookie (each
    local browser its own share), else the peer address. Without login the address also has a cap of its own
    (``ADDRESS_SHARE`` shares), so minting cookies does not mint shares."""
    user = _user(scope, gradio_app)
    if user:
        return f"user:{user}"
    cookie = _cookies(scope).get(CLIENT_COOKIE)
    return f"client:{cookie}" if cookie else f"addr:{_address(scope)}"


def _owner(scope: Scope, gradio_app: Any) -> str:
    """Who a session belongs to: the logged-in user, else the browser's client cookie, else the address."""
    user = _user(scope, gradio_app)
    if user:
        return f"user:{user}"
    cookie = _cookies(scope).get(CLIENT_COOKIE)
    return f"client:{cookie}" if cookie else f"addr:{_address(scope)}"


def _pending(gradio_app: Any) -> list[Any]:
    """Every request of the Gradio queue now waiting or running."""
    queue = gradio_app.get_blocks()._queue
    events = [e for q in queue.event_queue_per_concurrency_id.values() for e in q.queue]
    events += [e for job in queue.active_jobs if job for e in job]
    return events


def _event_client(event: Any) -> str:
    """``_client`` of a queued event."""
    if event.username:
        return f"user:{event.username}"
    cookies = getattr(getattr(event, "request", None), "cookies", None) or {}
    return f"client:{cookies[CLIENT_COOKIE]}" if cookies.get(CLIENT_COOKIE) else _event_address(event)


def _event_address(event: Any) -> str:
    client = getattr(getattr(event, "request", None), "client", None)
    return f"addr:{client.host}" if client else "addr:?"


def _host_port(netloc: str) -> tuple[str, str]:
    """("name", "port") of a Host header or an origin's netloc ("[::1]:80" -> ("::1", "80"))."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        name, _, rest = netloc[1:].partition("]")
        return name, rest.lstrip(":")
    name, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    return name, port


def _route(method: str, path: str) -> Rule | None:
    return next((rule for methods, pattern, rule in ROUTES if method in methods and pattern.fullmatch(path)), None)


def guard(ctx: AppContext, hosts: Iterable[str] | None = LOOPBACK_NAMES,
          throttle: LoginThrottle | None = None, proxies: str = "") -> type:
    """The middleware class for ``app_kwargs={"middleware": [Middleware(guard(ctx, hosts, throttle, proxies))]}``:
    ``hosts`` the names a ``Host`` header may carry (``served_hosts``; None: any), ``throttle`` the login
    check that issues device tokens, ``proxies`` the peers whose ``X-Forwarded-For`` is believed
    (``trust_proxies``, called here: make the guard before the server starts)."""
    trust_proxies(proxies)
    allowed = None if hosts is None else frozenset(h.lower() for h in hosts)
    sessions: OrderedDict[str, str] = OrderedDict()  # session id -> the client that used it first
    lock = threading.Lock()

    def bind(session: str, owner: str) -> bool:
        """Bind ``session`` to ``owner`` if it is new; whether ``owner`` is its client."""
        with lock:
            first = sessions.setdefault(session, owner)
            sessions.move_to_end(session)
            while len(sessions) > 100_000:
                sessions.popitem(last=False)
        return first == owner

    joining: dict[str, list[str | None]] = {}  # client -> the concurrency ids of its joins not yet queued
    joining_at: dict[str, int] = {}  # address -> its joins not yet queued

    class Guard:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app
            self.sessions = sessions  # (for the tests)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "websocket":  # the page uses none
                return await send({"type": "websocket.close", "code": 1008})
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            path, method = scope.get("path", ""), scope.get("method", "")
            gradio_app = scope.get("app")
            problem = self.foreign(scope)
            if problem:
                return await _json(send, 403, {"detail": problem})
            rule = _route(method, path)
            if rule is None:
                return await _json(send, 404, {"detail": f"{method} {path[:100]} is not a route of this app"})
            if rule == "page":
                send = _client_cookie(scope, send)
                if getattr(gradio_app, "auth", None) and _user(scope, gradio_app) is None:
                    send = _strip_api_info(send)
                return await self.app(scope, receive, send)
            if rule == "login":
                _PEER.set(_address(scope))  # for LoginThrottle, called inside this request
                _DEVICE.set(_cookies(scope).get(DEVICE_COOKIE, ""))
                issued: list[str] = []
                _ISSUED.set(issued)
                return await self.app(scope, receive, _device_cookie(send, issued, throttle))
            if rule == "open":
                return await self.app(scope, receive, send)
            owner = _owner(scope, gradio_app)
            user = _user(scope, gradio_app)
            body = b""
            if method == "POST":
                body, receive = await _read(receive, MAX_JOIN_BYTES + 1)
                if len(body) > MAX_JOIN_BYTES:
                    return await _json(send, 413, {"detail": f"a request of the page may be {MAX_JOIN_BYTES // 1024} "
                                                             f"KiB at most; send files through /gradio_api/upload"})
            session = _session(scope, path, body)
            if rule == "cancel":
                # Gradio answers /cancel without a login check: with login on, only a logged-in user may
                # cancel, only their own session's (an admin: any), and a refused one never reaches Gradio
                if getattr(gradio_app, "auth", None) and user is None:
                    return await _json(send, 401, {"detail": "Not authenticated"})
                if not isinstance(session, str):
                    return await _json(send, 400, {"detail": "session_hash missing"})
                if not (user in ctx.admins and ctx.auth) and not bind(session, owner):
                    return await _json(send, 403, {"detail": "that is not your request to cancel"})
                ctx.stop_session(session)
                return await self.app(scope, receive, send)
            if isinstance(session, str) and not bind(session, owner):
                return await _json(send, 403, {"detail": "that session belongs to another client: reload the page"})
            if rule in ("join", "run"):
                fn_index = _field(body, "fn_index")
                if type(fn_index) is not int:
                    return await _json(send, 400, {"detail": "fn_index must be an integer"})
                refusal = self.refusal(scope, gradio_app, fn_index, queued=rule == "join")
                if refusal:
                    status = 400 if refusal.startswith("there is no handler") else 429 if rule == "join" else 403
                    return await _json(send, status, {"detail": refusal})
                if rule == "join":
                    # Counted from the check until Gradio's queue holds the event: joins sent together are
                    # checked one after another (one event loop, no await between check and count), so
                    # concurrent requests cannot all pass a share that only the queue's events would show.
                    who, tag = _client(scope, gradio_app), self.concurrency(gradio_app, fn_index)
                    addr = f"addr:{_address(scope)}"
                    joining.setdefault(who, []).append(tag)
                    joining_at[addr] = joining_at.get(addr, 0) + 1
                    try:
                        return await self.app(scope, receive, send)
                    finally:
                        joining[who].remove(tag)
                        joining_at[addr] -= 1
            return await self.app(scope, receive, send)

        @staticmethod
        def concurrency(gradio_app: Any, fn_index: int) -> str | None:
            fn = getattr(gradio_app.get_blocks(), "fns", {}).get(fn_index) if hasattr(gradio_app, "get_blocks") else None
            return getattr(fn, "concurrency_id", None)

        def foreign(self, scope: Scope) -> str | None:
            """Why a request comes from another site (its Host or Origin), or None."""
            host = _header(scope, b"host")
            if host is None:
                return "a request must name its Host"
            name, port = _host_port(host)
            if allowed is not None and name not in allowed:
                return (f"Host {host[:80]!r} is not an address this app serves: open it at one of "
                        f"{', '.join(sorted(allowed))} (or add the name to DARL_ALLOWED_HOSTS, with login on)")
            origin = _header(scope, b"origin")
            if origin is not None:
                parts = urlsplit(origin)
                o_name, o_port = _host_port(parts.netloc)
                if not parts.netloc or o_name != name or (o_port and port and o_port != port):
                    return f"a page of {origin[:80]!r} may not send requests to this app"
            return None

        def refusal(self, scope: Scope, gradio_app: Any, fn_index: int, queued: bool) -> str | None:
            try:
                events = _pending(gradio_app)
                fns = gradio_app.get_blocks().fns
            except AttributeError:  # a Gradio without these internals: no share enforced (the tests notice)
                return None
            fn = fns.get(fn_index)
            if fn is None:  # Gradio itself would raise on it (a 500 and a traceback): said here, as a 4xx
                return f"there is no handler {fn_index} in this app"
            if not queued:
                if fn is None or fn.queue is not False:
                    return ("that handler runs through the queue only (POST /gradio_api/queue/join), where it "
                            "waits its turn for the models")
                return None
            who = _client(scope, gradio_app)
            mine = [e.concurrency_id for e in events if _event_client(e) == who] + joining.get(who, [])
            if not who.startswith("user:"):  # without login: the address's cap over all its browsers
                addr = f"addr:{_address(scope)}"
                here = sum(1 for e in events if not e.username and _event_address(e) == addr) + joining_at.get(addr, 0)
                if here >= ADDRESS_SHARE * ctx.max_pending:
                    return (f"this address already has {here} requests waiting or running (at most "
                            f"{ADDRESS_SHARE * ctx.max_pending} for all its browsers); wait for them to finish")
            if len(mine) >= ctx.max_pending:
                return (f"you already have {len(mine)} requests waiting or running (at most {ctx.max_pending}); "
                        f"wait for them to finish")
            if fn is not None and fn.concurrency_id == "models":
                models = [t for t in mine if t == "models"]
                if len(models) >= MODEL_SHARE:
                    return (f"you already have {len(models)} restores waiting or running (at most {MODEL_SHARE}); "
                            f"stop one or wait for it")
            return None

    return Guard


def _session(scope: Scope, path: str, body: bytes) -> Any:
    """The session id a request names: in its path (heartbeat), query (queue/data) or body."""
    if "/heartbeat/" in path:
        return path.rsplit("/", 1)[-1]
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if "session_hash" in query:
        return query["session_hash"][0]
    return _field(body, "session_hash")


def _add_cookie(message: Message, name: str, value: str, max_age: int | None = None) -> Message:
    cookie = f"{name}={value}; Path=/; HttpOnly; SameSite=Strict" + (f"; Max-Age={max_age}" if max_age else "")
    return {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}


def _client_cookie(scope: Scope, send: Send) -> Send:
    """A ``send`` that gives a browser without one its ``darl-client`` cookie (with the page)."""
    if _cookies(scope).get(CLIENT_COOKIE):
        return send

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = _add_cookie(message, CLIENT_COOKIE, secrets.token_urlsafe(24))
        await send(message)

    return wrapped


def _device_cookie(send: Send, issued: list[str], throttle: LoginThrottle | None) -> Send:
    """A ``send`` that gives a successful login a device token of its user (``LoginThrottle.issue_device``)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and issued and throttle is not None:
            message = _add_cookie(message, DEVICE_COOKIE, throttle.issue_device(issued[-1]), 365 * 86400)
        await send(message)

    return wrapped


def _field(body: bytes, name: str) -> Any:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # (a body of 50,000 nested lists is not JSON we read)
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
