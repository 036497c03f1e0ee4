"""Server-rendered pages under ``/ui/`` for the risk team and the planners, served by the same BentoML service.

Four pages, each a view over what the JSON API already serves (no second code path):

- ``/ui/queue``: the review queue of :meth:`serving.app.Runtime.flagged` (the serial-returner queue snapshot minus
  decided accounts), filtered by likely pattern, sized by capacity;
- ``/ui/accounts/{id}``: the account's snapshot row, its order and return timeline, the evidence behind each reason
  (its returns, refunds without the item, the accounts linked to it and what links them, the ring's members and
  their figures), earlier decisions, and a confirm/clear form stored through :meth:`Runtime.record_decision` (the
  same decision store and idempotency key as ``POST /v1/accounts/{id}/decision``: the form carries a decision_id
  made when the page was drawn, so a double click stores once);
- ``/ui/forecast``: the forecast of :meth:`Runtime.forecast` (the ``/v1/forecast`` path: champion model, history
  from the data folder, :func:`features.staffing.staffing_plan`) as a fan chart with past weeks and event markers,
  agents per channel and day, CSV downloads (the staffing CSV has ``aftersales staff``'s columns and format) and a
  sales-plan upload (the forecaster's ``plan`` argument, as ``aftersales forecast --plan``);
- ``/ui/merchants``: the merchant ranking of :meth:`Runtime.merchants` with each merchant's weekly complaint and
  late-delivery history from the data folder.

Plots are inline SVG drawn here; no script, stylesheet or font is fetched from anywhere, and every page reads
without JavaScript.

Authentication. With ``AFTERSALES_API_KEYS`` set, ``/ui/login`` takes an API key (checked in constant time against
every key) and the reviewer's name and sets a session cookie: HMAC-SHA256-signed, ``Secure``, ``HttpOnly``,
``SameSite=Strict``, path ``/ui``, 12 hours. The signing key is derived from the configured API keys, so every
worker accepts the same sessions and removing or rotating a key ends all sessions. Without API keys the login only
asks for the name (nothing is secret) and the signing key is random per process. Every form carries a CSRF token
bound to the session (HMAC of the session's random ID); a POST without a valid session and token writes nothing and
answers 403. :class:`serving.app.GuardMiddleware` leaves ``/ui/`` to this module's login (pages are browsed, not
called with an ``X-API-Key`` header) and lets its forms through; its body-size limit still applies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse, RedirectResponse, Response

from serving.app import RETURN_VOLUME, UI_PREFIX, ApiError, Runtime, current_runtime
from serving.schemas import DecisionIn, ForecastRequest, ForecastResponse

log = logging.getLogger("aftersales.serving.ui")

SESSION_COOKIE = "aftersales_ui"
SESSION_TTL_S = 12 * 3600
STAFFING_COLUMNS = ["date", "channel", "volume_p50", "volume_p90", "agents_p50", "agents_p90"]
PAST_DAYS = 56  # past weeks drawn before the origin on the fan chart
HISTORY_WEEKS = 26  # weeks of complaint and late-delivery history per merchant
FORECAST_CACHE = 16  # forecasts kept per worker, keyed by served generation, model version, origin and horizon
MAX_PLAN_BYTES = 2_000_000

templates = Environment(loader=FileSystemLoader(Path(__file__).with_name("templates")),
                        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


# --------------------------------------------------------------------------------------------------------------------
# Sessions and CSRF


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    sid: str
    reviewer: str | None  # None: not logged in (a visitor holding only a CSRF identity for the login form)
    expires: int

    @property
    def logged_in(self) -> bool:
        return self.reviewer is not None


class Sessions:
    """Signed session cookies and session-bound CSRF tokens (stdlib ``hmac``; no extra dependency)."""

    def __init__(self, api_keys: list[str]):
        self.keys = [k.encode() for k in api_keys if k]
        self.secret = (hashlib.sha256(b"aftersales-ui-session\0" + b"\0".join(sorted(self.keys))).digest()
                       if self.keys else secrets.token_bytes(32))

    @property
    def keys_required(self) -> bool:
        return bool(self.keys)

    def key_ok(self, given: str) -> bool:
        """True when ``given`` is one of the API keys (every key compared, in constant time)."""
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given.strip().encode(), key)
        return ok

    def _sign(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, reviewer: str | None) -> tuple[Session, str]:
        """A new session (fresh random ID) and its cookie value."""
        s = Session(secrets.token_urlsafe(18), reviewer, int(time.time()) + SESSION_TTL_S)
        body = _b64(json.dumps({"sid": s.sid, "who": s.reviewer, "exp": s.expires}, separators=(",", ":")).encode())
        return s, f"{body}.{self._sign(body)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged, altered or expired."""
        if not cookie or "." not in cookie:
            return None
        body, sig = cookie.rsplit(".", 1)
        if not hmac.compare_digest(sig.encode(), self._sign(body).encode()):
            return None
        try:
            d = json.loads(_unb64(body))
            s = Session(str(d["sid"]), d["who"], int(d["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return s if s.expires > time.time() else None

    def csrf(self, s: Session) -> str:
        return self._sign(f"csrf\0{s.sid}")

    def csrf_ok(self, s: Session | None, token: str | None) -> bool:
        return bool(s is not None and token and hmac.compare_digest(token.encode(), self.csrf(s).encode()))


_sessions: dict[tuple[str, ...], Sessions] = {}


def sessions_for(rt: Runtime) -> Sessions:
    keys = tuple(sorted(k for k in rt.settings.api_keys if k))
    if keys not in _sessions:
        _sessions[keys] = Sessions(list(keys))
    return _sessions[keys]


def set_session_cookie(response: Response, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_TTL_S, path=UI_PREFIX, secure=True, httponly=True,
                        samesite="strict")


class LoginRequired(Exception):
    """Raised by :func:`logged_in` for a page asked for without a valid session: answered with the login page."""

    def __init__(self, next_path: str):
        self.next_path = next_path


@dataclass
class Ctx:
    """What every page handler gets: the runtime, the session and the CSRF token of its forms."""

    rt: Runtime
    session: Session
    sessions: Sessions

    @property
    def csrf(self) -> str:
        return self.sessions.csrf(self.session)


async def logged_in(request: Request, rt: Runtime = Depends(current_runtime)) -> Ctx:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if s is None or not s.logged_in:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return Ctx(rt, s, sessions)


def _safe_next(path: str | None) -> str:
    """Only a path inside the pages (no scheme, no host): an open redirect would send reviewers anywhere."""
    if not path or not path.startswith(UI_PREFIX + "/") or path.startswith("//") or "\\" in path:
        return f"{UI_PREFIX}/queue"
    return path


def render(name: str, ctx: Ctx | None, status: int = 200, **values: Any) -> HTMLResponse:
    body = templates.get_template(name).render(
        prefix=UI_PREFIX, csrf=ctx.csrf if ctx else "", reviewer=ctx.session.reviewer if ctx else None,
        keys_required=ctx.sessions.keys_required if ctx else False, **values)
    return HTMLResponse(body, status_code=status, headers={
        "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                   "form-action 'self'; frame-ancestors 'none'"})


def error_page(ctx: Ctx | None, status: int, message: str) -> HTMLResponse:
    return render("error.html", ctx, status=status, status_code=status, message=message)


@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
async def index() -> RedirectResponse:
    return RedirectResponse(f"{UI_PREFIX}/queue", status_code=303)


_prefetched: set[int] = set()


def prefetch(rt: Runtime) -> None:
    """Read the data folder's evidence and compute the default forecast in a background thread, once per runtime.

    Started when someone opens the login page: those two take seconds on the first request of a worker (reading
    the data folder, forecasting every series), and are ready by the time the reviewer or planner has logged in.
    """
    if id(rt) in _prefetched:
        return
    _prefetched.add(id(rt))

    def run() -> None:
        for what, job in (("evidence", lambda: evidence_for(rt)),
                          ("forecast", lambda: served_forecast(rt, None, rt.served.model(RETURN_VOLUME).horizon))):
            try:
                job()
            except Exception as e:  # noqa: BLE001 — the page itself reports the problem when it is asked for
                log.info("ui: prefetch of the %s skipped (%s)", what, e)

    threading.Thread(target=run, name="ui-prefetch", daemon=True).start()


@router.get("/login")
async def login_page(request: Request, next: str | None = Query(None, max_length=500),
                     rt: Runtime = Depends(current_runtime)) -> HTMLResponse:
    prefetch(rt)
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    cookie = None
    if s is None:
        s, cookie = sessions.issue(None)
    resp = render("login.html", Ctx(rt, s, sessions), next=_safe_next(next), error=None)
    if cookie:
        set_session_cookie(resp, cookie)
    return resp


@router.post("/login")
async def login(request: Request, reviewer: str = Form("", max_length=128), api_key: str = Form("", max_length=512),
                csrf: str = Form("", max_length=128), next: str = Form("", max_length=500),
                rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if not sessions.csrf_ok(s, csrf):
        return error_page(None, 403, "The form's CSRF token does not match this browser's session: reload the "
                                     "login page and try again.")
    name = reviewer.strip()
    ctx = Ctx(rt, s, sessions)
    if not name:
        return render("login.html", ctx, status=400, next=_safe_next(next), error="reviewer: give your name; it is "
                      "stored with each decision you record")
    if sessions.keys_required and not sessions.key_ok(api_key):
        log.warning("ui: failed login for reviewer %r", name[:64])
        return render("login.html", ctx, status=401, next=_safe_next(next), error="api_key: not a valid API key")
    _, cookie = sessions.issue(name)  # a fresh session ID on login (no fixation)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(resp, cookie)
    return resp


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("", max_length=128),
                 rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if not sessions.csrf_ok(s, csrf):
        return error_page(None, 403, "CSRF token missing or invalid: nothing was done.")
    resp = RedirectResponse(f"{UI_PREFIX}/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path=UI_PREFIX, secure=True, httponly=True, samesite="strict")
    return resp


# --------------------------------------------------------------------------------------------------------------------
# The data folder's evidence: orders, returns, links and tickets, indexed once per worker


class Evidence:
    """The contract tables behind the pages' evidence, read from the data folder once and indexed by ID."""

    def __init__(self, data_dir: Path):
        from features.contract import load_dataset

        ds = load_dataset(data_dir, tables=["orders", "returns", "tickets", "account_links"])
        self.orders, self.returns, self.tickets = ds.orders, ds.returns, ds.tickets
        self.links = ds.tables.get("account_links", pd.DataFrame(columns=["account_id", "link_type", "link_value"]))
        self.end = max(self.orders["ordered_at"].max(), self.returns["requested_at"].max()) \
            if len(self.orders) else pd.Timestamp.now(tz="UTC")
        self._orders_by = self.orders.groupby("account_id", observed=True).indices
        self._returns_by = self.returns.groupby("account_id", observed=True).indices
        links = self.links.dropna(subset=["account_id", "link_value"])
        self._links_by = links.groupby("account_id", observed=True).indices
        self._holders = links.groupby(["link_type", "link_value"], observed=True)["account_id"].agg(
            lambda s: sorted(set(s.astype(str))))
        self.links = links
        self._merchant_history: dict[str, dict] | None = None

    def account_orders(self, account_id: str) -> pd.DataFrame:
        idx = self._orders_by.get(account_id)
        return self.orders.iloc[idx].sort_values("ordered_at") if idx is not None else self.orders.iloc[:0]

    def account_returns(self, account_id: str) -> pd.DataFrame:
        idx = self._returns_by.get(account_id)
        return self.returns.iloc[idx].sort_values("requested_at") if idx is not None else self.returns.iloc[:0]

    def linked(self, account_id: str, max_share: int) -> dict[str, list[str]]:
        """Accounts sharing an identifier with ``account_id`` -> the link types they share (identifiers held by
        more than ``max_share`` accounts are hubs, e.g. a warehouse address, and link nobody, as in training)."""
        idx = self._links_by.get(account_id)
        out: dict[str, set[str]] = {}
        if idx is None:
            return {}
        for lt, lv in self.links.iloc[idx][["link_type", "link_value"]].itertuples(index=False):
            holders = self._holders.get((lt, lv), [])
            if len(holders) > max_share:
                continue
            for other in holders:
                if other != account_id:
                    out.setdefault(other, set()).add(str(lt))
        return {k: sorted(v) for k, v in sorted(out.items())}

    def ring(self, account_id: str, max_share: int, limit: int = 200) -> list[str]:
        """The account's linked group: every account reachable through shared identifiers (breadth first)."""
        seen, frontier = {account_id}, [account_id]
        while frontier and len(seen) < limit:
            nxt = []
            for a in frontier:
                for other in self.linked(a, max_share):
                    if other not in seen:
                        seen.add(other)
                        nxt.append(other)
            frontier = nxt
        return sorted(seen)

    def merchant_history(self) -> dict[str, dict]:
        """Per merchant, the last :data:`HISTORY_WEEKS` weeks: complaint tickets and late deliveries per week."""
        if self._merchant_history is not None:
            return self._merchant_history
        end = self.end.tz_convert("UTC").normalize() if self.end.tzinfo else self.end.normalize()
        start = end - pd.Timedelta(weeks=HISTORY_WEEKS)

        def weekly(frame: pd.DataFrame, when: str) -> pd.DataFrame:
            f = frame[(frame[when] > start) & (frame[when] <= end + pd.Timedelta(days=1))]
            week = ((f[when] - start).dt.days // 7).clip(0, HISTORY_WEEKS - 1)
            return f.assign(week=week.to_numpy())

        t = self.tickets
        complaints = weekly(t[t["case_type"] == "complaint"], "created_at") if len(t) else t.assign(week=[])
        o = weekly(self.orders.dropna(subset=["delivered_at"]), "delivered_at")
        late = o["delivered_at"] > o["promised_delivery_at"]
        out: dict[str, dict] = {}
        c_counts = complaints.groupby(["merchant_id", "week"], observed=True).size()
        d_counts = o.groupby(["merchant_id", "week"], observed=True).size()
        l_counts = o[late.to_numpy()].groupby(["merchant_id", "week"], observed=True).size()
        for m in set(o["merchant_id"].astype(str)) | set(complaints["merchant_id"].dropna().astype(str)):
            c = [int(c_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            n = [int(d_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            lt = [int(l_counts.get((m, w), 0)) for w in range(HISTORY_WEEKS)]
            out[m] = {"complaints": c, "delivered": n, "late": lt,
                      "late_share": [x / y if y else 0.0 for x, y in zip(lt, n, strict=True)]}
        self._merchant_history = out
        return out


_evidence: dict[str, Evidence] = {}
_evidence_lock = threading.Lock()


def evidence_for(rt: Runtime) -> Evidence:
    """The data folder's evidence (read on first use, then kept per worker)."""
    from features.contract import ContractError

    key = str(rt.settings.data_dir)
    with _evidence_lock:
        if key not in _evidence:
            if not rt.settings.data_dir.is_dir():
                raise ApiError(503, f"evidence needs the data folder {key} (AFTERSALES_DATA_DIR), which does not "
                                    "exist on this server")
            try:
                _evidence[key] = Evidence(rt.settings.data_dir)
            except ContractError as e:
                raise ApiError(503, f"evidence needs a readable data folder: {e}") from None
        return _evidence[key]


# --------------------------------------------------------------------------------------------------------------------
# Inline SVG


def _num(x: float) -> str:
    return f"{x:.1f}"


def fan_chart(past: pd.Series, fc: pd.DataFrame, events: list[tuple[date, str]], plan_fc: pd.DataFrame | None = None,
              width: int = 920, height: int = 300) -> Markup:
    """P10-P90 band, P50 line and the past days before the origin; events as dashed lines (names in tooltips)."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 14, 28
    days = [*past.index, *fc["date"]]
    if not days:
        return Markup("<p>No data to draw.</p>")
    d0, d1 = min(days), max(days)
    span = max((d1 - d0).days, 1)
    top = max([*past.tolist(), *fc["p90"].tolist(), *(plan_fc["p90"].tolist() if plan_fc is not None else []), 1.0])

    def x(d) -> float:
        return pad_l + (d - d0).days / span * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - v / top) * (height - pad_t - pad_b)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="forecast fan chart" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart">']
    for i in range(5):
        v = top * i / 4
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{_num(y(v))}" y2="{_num(y(v))}" class="grid"/>'
                     f'<text x="{pad_l - 4}" y="{_num(y(v) + 4)}" text-anchor="end" class="axis">{v:,.0f}</text>')
    for d, name in events:
        if d0 <= d <= d1:
            parts.append(f'<line x1="{_num(x(d))}" x2="{_num(x(d))}" y1="{pad_t}" y2="{height - pad_b}" '
                         f'class="event"><title>{Markup.escape(name)} {d:%Y-%m-%d}</title></line>')

    def band(f: pd.DataFrame, cls: str) -> str:
        upper = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(f["date"], f["p90"], strict=True))
        lower = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(f["date"][::-1], f["p10"][::-1], strict=True))
        return f'<polygon points="{upper} {lower}" class="{cls}"/>'

    def line(ds, vs, cls: str) -> str:
        pts = " ".join(f"{_num(x(d))},{_num(y(v))}" for d, v in zip(ds, vs, strict=True))
        return f'<polyline points="{pts}" class="{cls}"/>'

    if len(fc):
        parts.append(band(fc, "band"))
        parts.append(line(fc["date"], fc["p50"], "p50"))
    if plan_fc is not None and len(plan_fc):
        parts.append(band(plan_fc, "band-plan"))
        parts.append(line(plan_fc["date"], plan_fc["p50"], "p50-plan"))
    if len(past):
        parts.append(line(past.index, past.to_numpy(), "past"))
    ticks = [t.date() for t in pd.date_range(d0, d1, freq="W-MON")]
    for d in ticks[:: max(1, len(ticks) // 10)]:
        parts.append(f'<text x="{_num(x(d))}" y="{height - 8}" text-anchor="middle" class="axis">{d:%m-%d}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def spark(values: list[float], width: int = 180, height: int = 32, fmt: str = "{:.0f}") -> Markup:
    """A small bar chart of weekly values (each bar's value in its tooltip)."""
    if not values:
        return Markup("")
    top = max(max(values), 1e-9)
    w = width / len(values)
    bars = "".join(
        f'<rect x="{_num(i * w)}" y="{_num(height - v / top * height)}" width="{_num(max(w - 1, 1))}" '
        f'height="{_num(v / top * height)}"><title>week {i + 1}: {fmt.format(v)}</title></rect>'
        for i, v in enumerate(values))
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
                  f'height="{height}" class="spark">{bars}</svg>')


def timeline(orders: pd.DataFrame, returns: pd.DataFrame, end: pd.Timestamp, width: int = 920,
             height: int = 120) -> Markup:
    """Orders (above the axis) and returns (below; refunds without the item in red) along the last year."""
    start = end - pd.Timedelta(days=365)
    span = (end - start).total_seconds()

    def x(t) -> float:
        return 10 + max(0.0, min(1.0, (t - start).total_seconds() / span)) * (width - 20)

    mid = height / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="order and return timeline" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="chart">',
             f'<line x1="10" x2="{width - 10}" y1="{mid}" y2="{mid}" class="grid"/>']
    for r in orders[orders["ordered_at"] >= start].itertuples(index=False):
        parts.append(f'<line x1="{_num(x(r.ordered_at))}" x2="{_num(x(r.ordered_at))}" y1="{mid - 4}" '
                     f'y2="{mid - 30}" class="order"><title>order {Markup.escape(r.order_id)} '
                     f'{r.ordered_at:%Y-%m-%d} {r.amount:,.2f}</title></line>')
    for r in returns[returns["requested_at"] >= start].itertuples(index=False):
        cls = "return-noitem" if r.item_returned is False else "return"
        parts.append(f'<line x1="{_num(x(r.requested_at))}" x2="{_num(x(r.requested_at))}" y1="{mid + 4}" '
                     f'y2="{mid + 30}" class="{cls}"><title>return {Markup.escape(r.return_id)} '
                     f'{r.requested_at:%Y-%m-%d} {Markup.escape(str(r.reason))} refund {r.refund_amount:,.2f}'
                     f'</title></line>')
    for d in pd.date_range(start.normalize(), end, freq="MS"):
        parts.append(f'<text x="{_num(x(d))}" y="{height - 4}" class="axis">{d:%Y-%m}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------------------------------------------------
# Pages: review queue and account


def _patterns() -> tuple[str, ...]:
    from features.accounts import PATTERNS

    return PATTERNS


@router.get("/queue")
def queue_page(pattern: str | None = Query(None, max_length=64),
               capacity: int | None = Query(None, ge=1, le=10_000),
               ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    rt = ctx.rt
    capacity = capacity or rt.settings.review_capacity
    try:
        q = rt.flagged(capacity)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    patterns = _patterns()
    if pattern and pattern not in patterns:
        return error_page(ctx, 400, f"pattern: unknown pattern '{pattern}'; one of {', '.join(patterns)}")
    rows = [a for a in q.accounts if not pattern or a.likely_pattern == pattern]
    counts = {p: sum(a.likely_pattern == p for a in q.accounts) for p in patterns}
    return render("queue.html", ctx, queue=q, rows=rows, pattern=pattern or "", capacity=capacity,
                  patterns=patterns, counts=counts)


_REASON_EVIDENCE = (  # which evidence section a reason's own wording points to (the reasons are this project's text)
    (("without the item", "refund without", "not received", "claims"), "no-item"),
    (("linked", "shar", "group", "ring"), "linked"),
    (("wardrob", "worn", "soon after delivery"), "returns"),
)


def _evidence_anchor(reason: str) -> str:
    low = reason.lower()
    for words, anchor in _REASON_EVIDENCE:
        if any(w in low for w in words):
            return anchor
    return "returns"


def _decisions(rt: Runtime, account_id: str) -> list[dict]:
    if rt.reviews is None:
        return []
    d = rt.reviews.list_decisions(settings=rt.settings, account_id=account_id)
    return d.sort_values("decided_at", ascending=False).to_dict("records")


def _account_record(rt: Runtime, account_id: str) -> tuple[dict, dict | None]:
    s = rt.served
    table = rt._accounts_table(s)  # the same snapshot the decision route checks accounts against
    rec = table.get(account_id)
    if rec is None:
        raise ApiError(404, f"account_id: unknown account '{account_id}' (not in {table.describe()})")
    queued = next((r for r in (s.snapshots.queue or []) if r["account_id"] == account_id), None)
    return rec, queued


@router.get("/accounts/{account_id}")
def account_page(account_id: str, msg: str | None = Query(None, max_length=300),
                 ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    from features.accounts import MAX_LINK_SHARE

    rt = ctx.rt
    try:
        rec, queued = _account_record(rt, account_id)
        ev = evidence_for(rt)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    from serving.app import _as_list

    reasons = _as_list((queued or {}).get("reasons")) or _as_list(rec.get("top_reason"))
    orders, returns = ev.account_orders(account_id), ev.account_returns(account_id)
    linked = ev.linked(account_id, MAX_LINK_SHARE)
    ring = ev.ring(account_id, MAX_LINK_SHARE)
    table = rt.served.snapshots.accounts
    members = [{"account_id": a, **(table.get(a) or {})} for a in ring]
    no_item = returns[returns["item_returned"].astype("boolean").eq(False).fillna(False).to_numpy()]
    year_ago = ev.end - pd.Timedelta(days=365)
    figures = {k: v for k, v in rec.items() if k not in ("top_reason", "as_of", "model_mode")}
    return render(
        "account.html", ctx, account_id=account_id, rec=rec, queued=queued, figures=figures,
        reasons=[(r, _evidence_anchor(r)) for r in reasons], orders=orders.tail(200).iloc[::-1],
        n_orders=len(orders), returns=returns.iloc[::-1], n_returns_year=int((returns["requested_at"] >= year_ago).sum()),
        no_item=no_item.iloc[::-1], linked=linked, members=members, links_shown=len(linked),
        decisions=_decisions(rt, account_id), decision_id=uuid.uuid4().hex, msg=msg,
        timeline=timeline(orders, returns, ev.end), spent=float(orders["amount"].sum()),
        refunded=float(returns["refund_amount"].sum()))


@router.post("/accounts/{account_id}/decision")
def decide(account_id: str, request: Request, decision: str = Form(..., max_length=32),
           note: str = Form("", max_length=2000), decision_id: str = Form(..., max_length=64),
           csrf: str = Form("", max_length=128), rt: Runtime = Depends(current_runtime)) -> Response:
    sessions = sessions_for(rt)
    s = sessions.read(request.cookies.get(SESSION_COOKIE))
    if s is None or not s.logged_in:
        return error_page(None, 401, "Not logged in: nothing was recorded. Log in and decide again.")
    ctx = Ctx(rt, s, sessions)
    if not sessions.csrf_ok(s, csrf):
        log.warning("ui: decision on %s refused: CSRF token mismatch (reviewer %r)", account_id, s.reviewer)
        return error_page(ctx, 403, "CSRF token missing or invalid: nothing was recorded. Reload the account page "
                                    "and decide again.")
    try:
        body = DecisionIn(decision=decision, reviewer=s.reviewer, note=note.strip() or None, decision_id=decision_id)
    except ValueError as e:
        return error_page(ctx, 400, f"invalid decision: {e}")
    try:
        out = rt.record_decision(account_id, body)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    msg = (f"Already recorded: {out.decision} by {out.reviewer} (this form was sent before; stored once)"
           if out.duplicate else f"Recorded: {out.decision} by {out.reviewer}")
    return RedirectResponse(f"{UI_PREFIX}/accounts/{account_id}?{_query(msg=msg)}", status_code=303)


def _query(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


# --------------------------------------------------------------------------------------------------------------------
# Planners' page


@dataclass(frozen=True)
class ServedForecast:
    """A forecast response and its tables (built once: 20 series x 60 days is 1,200 rows to convert)."""

    resp: ForecastResponse
    frame: pd.DataFrame  # date, series, p10, p50, p90
    staffing: pd.DataFrame  # STAFFING_COLUMNS
    channels: list[str]
    grid: list[tuple[date, list[tuple[int, int]]]]  # per day: (agents P50, agents P90) per channel


_forecasts: OrderedDict[tuple, ServedForecast] = OrderedDict()
_forecast_lock = threading.Lock()
_compute_lock = threading.Lock()


def served_forecast(rt: Runtime, origin: date | None, horizon: int) -> ServedForecast:
    """:meth:`Runtime.forecast` for every series (the ``/v1/forecast`` path), kept for the served generation."""
    s = rt.served
    model = s.model(RETURN_VOLUME)
    if origin is None:
        origin = rt._history(model.market).days[-1].date()
    key = (s.generation, s.versions(RETURN_VOLUME).get(RETURN_VOLUME), origin, horizon)
    with _forecast_lock:
        if key in _forecasts:
            _forecasts.move_to_end(key)
            return _forecasts[key]
    with _compute_lock:  # one forecast computed at a time: a second request for it waits, then finds it kept
        with _forecast_lock:
            if key in _forecasts:
                return _forecasts[key]
        return _compute_forecast(rt, key, origin, horizon)


def _compute_forecast(rt: Runtime, key: tuple, origin: date, horizon: int) -> ServedForecast:
    resp = rt.forecast(ForecastRequest(origin=origin, horizon=horizon))
    frame = pd.DataFrame([d.model_dump() for d in resp.forecast], columns=["date", "series", "p10", "p50", "p90"])
    staff = pd.DataFrame([d.model_dump() for d in resp.staffing], columns=STAFFING_COLUMNS)
    channels = list(dict.fromkeys(staff["channel"]))
    wide = staff.pivot_table(index="date", columns="channel", values=["agents_p50", "agents_p90"], aggfunc="first")
    p50, p90 = wide["agents_p50"][channels].to_numpy(), wide["agents_p90"][channels].to_numpy()
    grid = [(d, [(int(a), int(b)) for a, b in zip(r50, r90, strict=True)])
            for d, r50, r90 in zip(wide.index, p50, p90, strict=True)]
    out = ServedForecast(resp, frame, staff, channels, grid)
    with _forecast_lock:
        _forecasts[key] = out
        while len(_forecasts) > FORECAST_CACHE:
            _forecasts.popitem(last=False)
    return out


def component_weights(model: Any, series: str) -> pd.DataFrame | None:
    """The forecaster's component weights for ``series`` when the model exposes them, else None.

    An ensemble's ``weights_table()`` (one row per series, horizon band and kind of day, a column per component,
    and why) is shown for the picked series; a flat ``weights_`` mapping of component to weight as one row.
    """
    table = getattr(model, "weights_table", None)
    if callable(table):
        try:
            t = table()
        except Exception as e:  # noqa: BLE001 — an unfitted or older model: the page says there are none
            log.info("ui: weights_table() failed (%s)", e)
            return None
        if isinstance(t, pd.DataFrame) and not t.empty:
            if "series" in t.columns:
                t = t[t["series"].astype(str) == series].drop(columns="series")
            return t.reset_index(drop=True)
    w = getattr(model, "weights_", None)
    if isinstance(w, pd.Series):
        w = w.to_dict()
    if isinstance(w, dict) and w and all(isinstance(v, int | float) for v in w.values()):
        return pd.DataFrame([{str(k): float(v) for k, v in w.items()}])
    return None


def _plan_forecast(rt: Runtime, origin: date, horizon: int, plan: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The forecast with a sales plan (the forecaster's ``plan`` argument) and its staffing plan."""
    from features.staffing import staffing_plan

    model = rt.served.model(RETURN_VOLUME)
    history = rt._history(model.market)
    fc = model.forecast(history, origin=pd.Timestamp(origin), horizon=horizon, plan=plan)
    staff = staffing_plan(fc)
    fc = fc.assign(date=pd.to_datetime(fc["date"]).dt.date)
    staff = staff.assign(date=pd.to_datetime(staff["date"]).dt.date)
    return fc, staff[STAFFING_COLUMNS]


_event_cache: dict[tuple, list[tuple[date, str]]] = {}


def _events(rt: Runtime, market: str, start: date, end: date) -> list[tuple[date, str]]:
    """Holidays and shopping events (size 2 and up) between two days, names joined per day (kept per worker)."""
    key = (market, start, end, rt.settings.summer_sale, rt.settings.summer_sale_days)
    if key not in _event_cache:
        if len(_event_cache) > 256:
            _event_cache.clear()
        _event_cache[key] = _market_events(rt, market, start, end)
    return _event_cache[key]


def _market_events(rt: Runtime, market: str, start: date, end: date) -> list[tuple[date, str]]:
    from features.calendar import market_events

    ev = market_events(market, pd.Timestamp(start), pd.Timestamp(end), rt.settings)
    ev = ev[ev["size"] >= 2] if "size" in ev else ev
    out: dict[date, list[str]] = {}
    for d, name in zip(ev["date"], ev["name"], strict=True):
        out.setdefault(pd.Timestamp(d).date(), []).append(str(name))
    return [(d, ", ".join(dict.fromkeys(n))) for d, n in sorted(out.items())]


def _origin_param(origin: str | None) -> date | None:
    if not origin:
        return None
    try:
        return date.fromisoformat(origin)
    except ValueError:
        raise ApiError(400, f"origin: '{origin}' is not a date (YYYY-MM-DD)") from None


def _forecast_view(ctx: Ctx, series: str, horizon: int | None, origin: str | None,
                   plan: pd.DataFrame | None = None, plan_name: str | None = None,
                   plan_error: str | None = None) -> HTMLResponse:
    rt = ctx.rt
    try:
        model = rt.served.model(RETURN_VOLUME)
        horizon = min(horizon or model.horizon, model.horizon)
        sf = served_forecast(rt, _origin_param(origin), horizon)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    resp, fc = sf.resp, sf.frame
    names = list(dict.fromkeys(fc["series"]))
    if series not in names:
        return error_page(ctx, 400, f"series: unknown series '{series}'; this model forecasts {', '.join(names)}")
    staff = sf.staffing
    history = rt._history(model.market)
    origin_day = resp.origin
    past = history.y[series] if series in history.y else pd.Series(dtype=float)
    past = past[(past.index > pd.Timestamp(origin_day) - pd.Timedelta(days=PAST_DAYS))
                & (past.index <= pd.Timestamp(origin_day))]
    past.index = [d.date() for d in past.index]
    shown = fc[fc["series"] == series].reset_index(drop=True)
    plan_fc = plan_staff = None
    effect = None
    if plan is not None:
        try:
            pf, plan_staff = _plan_forecast(rt, origin_day, horizon, plan)
        except ValueError as e:
            plan_error = f"{plan_name}: {e}"
        else:
            plan_fc = pf[pf["series"] == series].reset_index(drop=True)
            effect = {
                "p50_without": float(shown["p50"].sum()), "p50_with": float(plan_fc["p50"].sum()),
                "agents_without": int(staff["agents_p90"].sum()), "agents_with": int(plan_staff["agents_p90"].sum()),
            }
            plan_staff = plan_staff.merge(staff[["date", "channel", "agents_p90"]], on=["date", "channel"],
                                          suffixes=("", "_without"))
    end = shown["date"].max() if len(shown) else origin_day
    events = _events(rt, model.market, (pd.Timestamp(origin_day) - pd.Timedelta(days=PAST_DAYS)).date(), end)
    channels, grid = sf.channels, sf.grid
    weights = component_weights(model, series)
    return render(
        "forecast.html", ctx, series=series, names=names, horizon=horizon, max_horizon=model.horizon,
        origin=origin_day, origin_param=origin or "", history_end=resp.history_end, notes=resp.notes,
        chart=fan_chart(past, shown, events, plan_fc), events=[e for e in events if e[0] > origin_day],
        channels=channels, grid=grid, weights=weights, model_versions=resp.model_versions,
        rows=shown, plan_fc=plan_fc, plan_staff=plan_staff, plan_name=plan_name, plan_error=plan_error,
        effect=effect, total_p50=float(shown["p50"].sum()))


@router.get("/forecast")
def forecast_page(series: str = Query("total", max_length=200), horizon: int | None = Query(None, ge=1, le=366),
                  origin: str | None = Query(None, max_length=10), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    return _forecast_view(ctx, series, horizon, origin)


@router.post("/forecast/plan")
def forecast_with_plan(request: Request, plan: UploadFile = File(...), series: str = Form("total", max_length=200),
                       horizon: int | None = Form(None, ge=1, le=366), origin: str = Form("", max_length=10),
                       csrf: str = Form("", max_length=128), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    from features.return_volume import PlanError, validate_plan

    if not ctx.sessions.csrf_ok(ctx.session, csrf):
        return error_page(ctx, 403, "CSRF token missing or invalid: the plan was not read.")
    raw = plan.file.read(MAX_PLAN_BYTES + 1)
    name = plan.filename or "plan.csv"
    if len(raw) > MAX_PLAN_BYTES:
        return _forecast_view(ctx, series, horizon, origin or None, plan_name=name,
                              plan_error=f"{name}: over {MAX_PLAN_BYTES:,} bytes; a plan is one row per day")
    try:
        frame = validate_plan(pd.read_csv(io.BytesIO(raw)), source=name)
    except (PlanError, ValueError, pd.errors.ParserError) as e:
        return _forecast_view(ctx, series, horizon, origin or None, plan_name=name, plan_error=str(e))
    return _forecast_view(ctx, series, horizon, origin or None, plan=frame, plan_name=name)


def _csv_response(frame: pd.DataFrame, name: str, float_format: str) -> Response:
    out = frame.assign(date=pd.to_datetime(frame["date"]).dt.strftime("%Y-%m-%d"))
    return Response(out.to_csv(index=False, float_format=float_format), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


def _requested_forecast(ctx: Ctx, horizon: int | None, origin: str | None) -> ServedForecast:
    """The served forecast for a download's query: the model's own horizon when none (or a longer one) is asked."""
    model = ctx.rt.served.model(RETURN_VOLUME)
    return served_forecast(ctx.rt, _origin_param(origin), min(horizon or model.horizon, model.horizon))


@router.get("/forecast/staffing.csv")
def staffing_csv(horizon: int | None = Query(None, ge=1, le=366), origin: str | None = Query(None, max_length=10),
                 ctx: Ctx = Depends(logged_in)) -> Response:
    """Agents per day and channel: the columns and number format of ``aftersales staff --out``."""
    try:
        sf = _requested_forecast(ctx, horizon, origin)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    return _csv_response(sf.staffing, f"staffing-{sf.resp.origin}-h{sf.resp.horizon}.csv", "%.2f")


@router.get("/forecast/forecast.csv")
def forecast_csv(horizon: int | None = Query(None, ge=1, le=366), origin: str | None = Query(None, max_length=10),
                 ctx: Ctx = Depends(logged_in)) -> Response:
    """Every series' P10/P50/P90: the columns and number format of ``aftersales forecast --out`` (feed it to
    ``aftersales staff --forecast``)."""
    try:
        sf = _requested_forecast(ctx, horizon, origin)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    return _csv_response(sf.frame, f"forecast-{sf.resp.origin}-h{sf.resp.horizon}.csv", "%.3f")


# --------------------------------------------------------------------------------------------------------------------
# Merchants


@router.get("/merchants")
def merchants_page(limit: int = Query(50, ge=1, le=5_000), ctx: Ctx = Depends(logged_in)) -> HTMLResponse:
    rt = ctx.rt
    try:
        ranking = rt.merchants(limit)
    except ApiError as e:
        return error_page(ctx, e.status, e.message)
    try:
        history = evidence_for(rt).merchant_history()
        history_problem = None
    except ApiError as e:
        history, history_problem = {}, e.message
    rows = []
    for m in ranking.merchants:
        h = history.get(m.merchant_id)
        rows.append({"m": m, "h": h,
                     "complaints": spark(h["complaints"]) if h else None,
                     "late": spark([100 * v for v in h["late_share"]], fmt="{:.0f}% late") if h else None,
                     "complaints_total": sum(h["complaints"]) if h else None,
                     "late_total": (sum(h["late"]) / max(sum(h["delivered"]), 1)) if h else None})
    return render("merchants.html", ctx, ranking=ranking, rows=rows, limit=limit, weeks=HISTORY_WEEKS,
                  history_problem=history_problem)


# --------------------------------------------------------------------------------------------------------------------
# Mounting


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    if request.method == "GET":
        return RedirectResponse(f"{UI_PREFIX}/login?{_query(next=exc.next_path)}", status_code=303)
    return error_page(None, 401, "Not logged in: nothing was done. Log in and try again.")


def mount_ui(app: FastAPI) -> None:
    """Add the pages to the FastAPI app the BentoML service mounts (``serving/service.py``)."""
    if any(getattr(r, "path", "").startswith(UI_PREFIX + "/") for r in app.routes):
        return
    app.include_router(router)
    app.add_exception_handler(LoginRequired, _login_required)


def _fmt(value: Any, digits: int = 2) -> str:
    """A figure for a table cell: numbers rounded, None/NaN as a dash, times as days."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT \
            or isinstance(value, Undefined):
        return "–"
    if type(value).__name__ in ("bool", "bool_"):  # Python or numpy
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, datetime | pd.Timestamp):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value.tzinfo else value.strftime("%Y-%m-%d")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


templates.filters["fmt"] = _fmt
def _pct(value: Any) -> str:
    """A share as a percentage; a dash when missing (e.g. a ring member not in the snapshot)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return "–"
    return f"{value:.0%}"


templates.filters["pct"] = _pct
