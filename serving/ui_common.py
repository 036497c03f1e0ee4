"""What every page under ``/ui/`` shares (serving/ui.py): the router, the templates and their filters, signed
sessions with CSRF tokens, the logged-in context and rendering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, Request
from jinja2 import Environment, FileSystemLoader, Undefined, select_autoescape
from starlette.responses import HTMLResponse, Response

from serving.app import UI_PREFIX, Runtime, current_runtime

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
