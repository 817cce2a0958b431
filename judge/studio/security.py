"""The studio's guards: access token, CSRF, same-origin posts and response headers.

The studio writes files, so every state-changing request must come from the studio's own pages:
- a session cookie (random, HttpOnly, SameSite=Strict) is set on the first page a browser opens;
- each page carries a CSRF token, an HMAC of that session under a secret made at start-up, which
  every POST must send back (form field `csrf_token` or header `X-CSRF-Token`);
- a POST whose Origin (or, lacking one, Referer) is another site is refused outright.
With an access token (for shared machines), every request needs it: once through `?token=` in the
URL the studio prints, which sets a cookie and redirects to the same page without it, or as a
bearer header. Pages are served with a strict Content-Security-Policy (no inline script, no
framing), so even a rubric whose text looks like HTML cannot run in the clinician's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

SESSION_COOKIE = "psyjudge_studio_session"
TOKEN_COOKIE = "psyjudge_studio_token"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with a form post,
    # which the same-origin check must refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class Guard:
    """Per-process secrets and the checks made on every request."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._secret = secrets.token_bytes(32)

    def csrf_for(self, session: str) -> str:
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, sent: str | None) -> bool:
        return bool(session) and bool(sent) and hmac.compare_digest(self.csrf_for(session or ""), sent or "")

    def token_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        sent = request.cookies.get(TOKEN_COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            sent = auth[7:].strip()
        return hmac.compare_digest(sent.encode(), self.token.encode())


def same_origin(request: Request) -> bool:
    """A POST from the studio's own page: Origin (or Referer) names the host the request was sent to.
    Browsers send Origin on every cross-site POST, so a missing one means a non-browser client, which
    still needs the CSRF token."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


Handler = Callable[[Request], Awaitable[Response]]


def guard_middleware(guard: Guard) -> Callable[[Request, Handler], Awaitable[Response]]:
    async def middleware(request: Request, call_next: Handler) -> Response:
        response = await _guarded(guard, request, call_next)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return middleware


async def _guarded(guard: Guard, request: Request, call_next: Handler) -> Response:
    if guard.token is not None:
        offered = request.query_params.get("token")
        if offered is not None and request.method == "GET":
            if not hmac.compare_digest(offered.encode(), guard.token.encode()):
                return PlainTextResponse("Wrong access token.", status_code=401)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(TOKEN_COOKIE, guard.token, httponly=True, samesite="strict")
            return redirect
        if not guard.token_ok(request):
            return PlainTextResponse("This studio needs its access token: open the address that `psyjudge studio` "
                                     "printed (it ends in ?token=...).", status_code=401)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if not same_origin(request):
            return PlainTextResponse("Refused: this request came from another site.", status_code=403)
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            await request.body()  # cached first: the endpoint reads the same form after this check
            form = await request.form(max_fields=50_000)
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not guard.csrf_ok(request.cookies.get(SESSION_COOKIE), sent):
            return PlainTextResponse("Refused: the form's security token is missing or out of date. Reload the "
                                     "page and try again; your edit was not applied.", status_code=403)
    response = await call_next(request)
    if request.method == "GET" and not request.cookies.get(SESSION_COOKIE):
        # A page that reads its session from request.state set this cookie's value into its forms.
        session = getattr(request.state, "session", None)
        if session:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
    return response


def session_of(request: Request) -> str:
    """The browser's session id, made now for a first visit (the middleware then sets the cookie)."""
    existing = request.cookies.get(SESSION_COOKIE)
    if existing:
        return existing
    if not getattr(request.state, "session", None):
        request.state.session = secrets.token_urlsafe(24)
    session: str = request.state.session
    return session
