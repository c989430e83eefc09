"""The review web application: operators sign in, rate pairs blind; everyone signed in sees
the registry page. Starlette under uvicorn, templates and assets from this package only.

Security, in the order a request meets it: `Guard` (an ASGI middleware) answers 403 to any
client address outside the allowed networks before routing, and puts the same headers on
every response (a CSP that allows only this origin's stylesheet and script and no framing,
`nosniff`, no referrer, no caching). Sessions are a random id in an HttpOnly, SameSite=Strict
cookie, its sha256 and the state in the registry (appliance.review.store); every POST carries
the session's CSRF token in a hidden field and is refused without it. The rating form is a
plain HTML form (it works with JavaScript off); review.js only adds keyboard shortcuts. A page
never says which side is the new adapter: the rating page knows items by round and index, and
`new_is_a` is read only by the statistics and closed rounds.
"""

from __future__ import annotations

import hmac
import ipaddress
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.config import EnclaveConfig
from appliance.errors import EnclaveError
from appliance.paths import Layout
from appliance.review import store as rs
from appliance.review.errors import ReviewTokenError
from appliance.review.stats import CRITERIA

COOKIE = "enclave_review"
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
LOOPBACK = ("127.0.0.1/32", "::1/128")
CSRF_MSG = "The form's CSRF token is missing or wrong; reload the page."
BAD_TOKEN = "That token is not valid: unknown, already used, expired or revoked."
THROTTLED = "Too many refused sign-ins from this address; try again in {minutes} minute(s)."
# What a redirect back to the form may say: fixed texts by key, so a link cannot put words on the page.
NOTICES = {
    "scores": "Rate accuracy, helpfulness and tone of both answers (1 to 5).",
    "preference": "Choose which answer is better: A, tie or B.",
}
PREF_LABELS = {"A": "Answer A", "tie": "Tie", "B": "Answer B"}


def networks(extra: list[str] | tuple[str, ...] = ()) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Loopback (127.0.0.1 and ::1) and each `--allow` CIDR; a bad one raises ValueError."""
    return [ipaddress.ip_network(n, strict=False) for n in (*LOOPBACK, *extra)]


class Guard:
    """Refuse clients outside `allowed` (403, logged), and add the security headers."""

    def __init__(
        self, app: ASGIApp, allowed: list, on_refused: Callable[[str, str], None], extra: list | None = None
    ) -> None:
        self.app, self.allowed, self.on_refused = app, allowed, on_refused
        self.headers = [*HEADERS, *(extra or [])]

    def _ok(self, host: str | None) -> bool:
        try:
            addr = ipaddress.ip_address((host or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in n for n in self.allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *self.headers]
            await send(message)

        host = (scope.get("client") or (None, None))[0]
        if not self._ok(host):
            self.on_refused(str(host), scope.get("path", ""))
            await PlainTextResponse("403: this address may not use the review server\n", 403)(
                scope, receive, with_headers
            )
            return
        await self.app(scope, receive, with_headers)


def create_app(
    layout: Layout,
    cfg: EnclaveConfig,
    *,
    allow: list[str] | tuple[str, ...] = (),
    registry_view: Callable[[sqlite3.Connection], list[dict[str, Any]]] | None = None,
    tls: bool = False,
) -> ASGIApp:
    """The ASGI app for `enclave review serve` (and the tests, served by a real uvicorn).

    `tls`: served over HTTPS, so the session cookie is also `Secure` (over plain HTTP a
    browser would drop it) and browsers are told to keep to HTTPS (HSTS)."""
    env = Environment(
        loader=PackageLoader("appliance.review.web", "templates"), autoescape=select_autoescape()
    )
    rcfg = cfg.eval.review
    view = registry_view or (lambda conn: registry_data(conn, cfg.review_cadence_days))

    def db() -> sqlite3.Connection:
        return rs.connect(layout)

    def with_db(handler: Callable[[sqlite3.Connection, Request], Awaitable[Response]]):
        """A request's own registry connection, closed whatever the handler returns or raises."""

        async def endpoint(request: Request) -> Response:
            conn = db()
            try:
                return await handler(conn, request)
            finally:
                conn.close()

        return endpoint

    def render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx), status_code=status)

    def client(request: Request) -> str:
        return request.client.host if request.client else "-"

    def current(conn: sqlite3.Connection, request: Request) -> dict[str, Any] | None:
        return rs.session(conn, request.cookies.get(COOKIE))

    def with_cookie(resp: Response, sid: str) -> Response:
        age = int(rcfg.session_hours * 3600)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/", max_age=age, secure=tls)
        return resp

    async def checked_form(conn: sqlite3.Connection, request: Request, sess: dict[str, Any] | None):
        """The POSTed form, or None when its CSRF token is missing or not the session's."""
        form = await request.form()
        sent = form.get("csrf")
        if sess is None or not isinstance(sent, str) or not hmac.compare_digest(sent, sess["csrf"]):
            rs.log(
                conn,
                (sess or {}).get("operator") or "-",
                "refused",
                None,
                None,
                f"POST {request.url.path}: CSRF token missing or wrong (from {client(request)})",
            )
            return None
        return form

    def refused(conn, who: str, request: Request, why: str, status: int = 403) -> HTMLResponse:
        rs.log(
            conn,
            who,
            "refused",
            None,
            None,
            f"{request.method} {request.url.path}: {why} (from {client(request)})",
        )
        return render("error.html", status, message=why, operator=who if who != "-" else None, csrf=None)

    @with_db
    async def index(conn: sqlite3.Connection, request: Request) -> Response:
        sess = current(conn, request)
        if sess is None or sess["operator"] is None:
            if sess is None:
                sid, csrf = rs.new_session(conn, None, rcfg.session_hours)
                return with_cookie(render("signin.html", csrf=csrf, operator=None), sid)
            return render("signin.html", csrf=sess["csrf"], operator=None)
        op = sess["operator"]
        rounds = []
        for r in rs.rounds(conn, status="open"):
            mine = rs.slot_of(conn, r["id"], op, claim=False)
            done = len(rs.rated(conn, r["id"], op)) if mine is not None else 0
            rounds.append({**r, "mine": mine, "done": done})
        return render("index.html", operator=op, csrf=sess["csrf"], rounds=rounds)

    @with_db
    async def signin(conn: sqlite3.Connection, request: Request) -> Response:
        sess = current(conn, request)
        form = await checked_form(conn, request, sess)
        if form is None:
            return render("error.html", 403, message=CSRF_MSG, operator=None, csrf=None)
        wait = rs.signin_wait(
            conn,
            client(request),
            failures=rcfg.signin_failures,
            window=timedelta(minutes=rcfg.signin_window_minutes),
        )
        if wait:
            # Refused before the token is looked at: a valid one is not spent, and a guesser
            # learns nothing; the log says so once per attempt, with the address.
            rs.log(conn, "-", "sign-in throttled", None, None, f"retry in {wait} s (from {client(request)})")
            page = render("signin.html", 429, csrf=sess["csrf"], operator=None,
                          message=THROTTLED.format(minutes=max(1, -(-wait // 60))))  # fmt: skip
            page.headers["retry-after"] = str(wait)
            return page
        try:
            op = rs.redeem(conn, str(form.get("token") or ""), client=client(request))
        except ReviewTokenError:
            # Which of unknown, used, expired or revoked is in the log, not on the page.
            return render("signin.html", 403, csrf=sess["csrf"], operator=None, message=BAD_TOKEN)
        rs.end_session(conn, request.cookies.get(COOKIE, ""))
        sid, _csrf = rs.new_session(conn, op, rcfg.session_hours)  # a new id: no session fixation
        return with_cookie(RedirectResponse("/", 303), sid)

    @with_db
    async def signout(conn: sqlite3.Connection, request: Request) -> Response:
        sess = current(conn, request)
        if await checked_form(conn, request, sess) is None:
            return refused(conn, "-", request, "CSRF token missing or wrong")
        rs.end_session(conn, request.cookies.get(COOKIE, ""))
        rs.log(conn, sess["operator"] or "-", "sign-out", None, None, f"from {client(request)}")
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    def signed_in(conn, request: Request) -> dict[str, Any] | None:
        sess = current(conn, request)
        return sess if sess is not None and sess["operator"] is not None else None

    @with_db
    async def round_page(conn: sqlite3.Connection, request: Request) -> Response:
        sess = signed_in(conn, request)
        if sess is None:
            return RedirectResponse("/", 303)
        op, rid = sess["operator"], int(request.path_params["rid"])
        try:
            rnd = rs.get_round(conn, rid)
        except EnclaveError:
            return refused(conn, op, request, f"no review round {rid}", 404)
        if rnd["status"] != "open":
            return render("done.html", operator=op, csrf=sess["csrf"], rnd=rnd, closed=True, total=0)
        mine = rs.slot_of(conn, rid, op, claim=True)
        if mine is None:
            return refused(conn, op, request, f"round {rid}: every operator slot is taken", 409)
        done = rs.rated(conn, rid, op)
        todo = [i for i in mine if i not in done]
        if not todo:
            return render("done.html", operator=op, csrf=sess["csrf"], rnd=rnd, closed=False, total=len(mine))
        idx = todo[0]
        prompt, a, b = rs.item(layout, conn, rid, idx)
        rs.log(conn, op, "view", rid, idx)
        return render(
            "rate.html",
            operator=op,
            csrf=sess["csrf"],
            rnd=rnd,
            idx=idx,
            position=len(mine) - len(todo) + 1,
            total=len(mine),
            prompt=prompt,
            answers=[("a", "A", a), ("b", "B", b)],
            criteria=CRITERIA,
            prefs=PREF_LABELS,
            message=NOTICES.get(request.query_params.get("m", "")),
        )

    @with_db
    async def rate(conn: sqlite3.Connection, request: Request) -> Response:
        sess = signed_in(conn, request)
        form = await checked_form(conn, request, sess)
        if form is None:
            return render(
                "error.html", 403, message=CSRF_MSG, operator=(sess or {}).get("operator"), csrf=None
            )
        op, rid = sess["operator"], int(request.path_params["rid"])
        try:
            rnd = rs.get_round(conn, rid)
        except EnclaveError:
            return refused(conn, op, request, f"no review round {rid}", 404)
        if rnd["status"] != "open":
            return refused(conn, op, request, f"round {rid} is closed", 409)
        mine = rs.slot_of(conn, rid, op, claim=False) or []
        try:
            idx = int(str(form.get("item")))
        except ValueError:
            idx = -1
        if idx not in mine:
            return refused(conn, op, request, f"round {rid}: item {form.get('item')!r} is not one of yours")
        scores: dict[str, dict[str, int]] = {"a": {}, "b": {}}
        for side in ("a", "b"):
            for c in CRITERIA:
                v = str(form.get(f"{c}_{side}") or "")
                if v not in {"1", "2", "3", "4", "5"}:
                    return RedirectResponse(f"/round/{rid}?m=scores", 303)
                scores[side][c] = int(v)
        pref = str(form.get("preference") or "")
        if pref not in rs.PREFERENCES:
            return RedirectResponse(f"/round/{rid}?m=preference", 303)
        comment = str(form.get("comment") or "").strip()[:2000]
        rs.save_rating(layout, conn, rid, op, idx, scores, pref, comment)
        return RedirectResponse(f"/round/{rid}", 303)

    @with_db
    async def my_ratings(conn: sqlite3.Connection, request: Request) -> Response:
        sess = signed_in(conn, request)
        if sess is None:
            return RedirectResponse("/", 303)
        op, rid, whose = (
            sess["operator"],
            int(request.path_params["rid"]),
            request.path_params["operator"],
        )
        if whose != op:
            return refused(conn, op, request, f"round {rid}: the ratings of {whose} are theirs alone")
        rows = rs.ratings_of(conn, rid, op)
        try:
            closed = rs.get_round(conn, rid)["status"] == "closed"
        except EnclaveError:
            return refused(conn, op, request, f"no review round {rid}", 404)
        # Which side was the new version: told only once the round is closed.
        sides = rs.new_sides(conn, rid) if closed else {}
        for r in rows:
            r["new_side"] = ("A" if sides[r["idx"]] else "B") if closed else None
        rs.log(conn, op, "view-own-ratings", rid)
        return render(
            "ratings.html",
            operator=op,
            csrf=sess["csrf"],
            rid=rid,
            rows=rows,
            criteria=CRITERIA,
            closed=closed,
        )

    @with_db
    async def registry_page(conn: sqlite3.Connection, request: Request) -> Response:
        sess = signed_in(conn, request)
        if sess is None:
            return RedirectResponse("/", 303)
        data = view(conn)
        rs.log(conn, sess["operator"], "view-registry")
        if request.url.path.endswith(".json"):
            return JSONResponse(data)
        names: dict[str, list[dict[str, Any]]] = {}
        for v in data:
            names.setdefault(v["name"], []).append(v)
        return render("registry.html", operator=sess["operator"], csrf=sess["csrf"], names=names)

    def on_refused(host: str, path: str) -> None:
        conn = db()
        try:
            rs.log(conn, "-", "refused", None, None, f"{path}: address {host} not allowed")
        finally:
            conn.close()

    static = resources.files("appliance.review.web") / "static"
    app = Starlette(
        routes=[
            Route("/", index),
            Route("/signin", signin, methods=["POST"]),
            Route("/signout", signout, methods=["POST"]),
            Route("/round/{rid:int}", round_page),
            Route("/round/{rid:int}/rate", rate, methods=["POST"]),
            Route("/round/{rid:int}/ratings/{operator}", my_ratings),
            Route("/registry", registry_page),
            Route("/registry.json", registry_page),
            Mount("/static", StaticFiles(directory=str(static)), name="static"),
        ]
    )
    extra = [(b"strict-transport-security", b"max-age=31536000")] if tls else []
    return Guard(app, networks(allow), on_refused, extra)


def registry_data(conn: sqlite3.Connection, cadence_days: int | None = None) -> list[dict[str, Any]]:
    """Every adapter version as `enclave adapters show --json` gives it, plus its review rounds
    and, for production, when its review is due: what the registry page shows."""
    from appliance.adapters import registry as reg
    from appliance.eval import store as eval_store

    out = []
    for rec in reg.list_adapters(conn):
        d = rec.model_dump()
        d["history"] = [h for h in reg.history(conn, rec.name) if h["version"] == rec.version]
        ev = eval_store.latest(conn, rec.name, rec.version) or eval_store.latest(
            conn, rec.name, rec.version, complete=False
        )
        d["evaluation"] = (
            None
            if ev is None
            else {k: ev[k] for k in ("ran_at", "ran_by", "suite_hash", "complete", "passed", "production")}
            | {"failures": ev["report"].get("verdict", {}).get("failures", [])}
        )
        d["reviews"] = [
            {k: r[k] for k in ("id", "against", "status", "created", "closed", "classification", "result")}
            for r in rs.rounds(conn, name=rec.name, version=rec.version)
        ]
        d["review_due"] = (
            (datetime.fromisoformat(rec.stage_changed) + timedelta(days=cadence_days)).date().isoformat()
            if rec.stage == "production" and cadence_days is not None
            else None
        )
        out.append(d)
    return out
