"""Bearer tokens for Live Stream: a static one, or OAuth Server-to-Server from Adobe IMS.

IMS answers ``client_credentials`` grants with ``access_token`` and ``expires_in`` (seconds,
about 24 h) and no refresh token, so a new token is simply asked for before the old one
runs out. Tokens are only needed when connecting, so ``token()`` is called once per
connection attempt: refresh traffic is bounded by the reconnect schedule.

Secrets (client secret, tokens) never appear in log lines, exception messages or reprs;
every token handed out joins the process's ``Secrets``, so whatever logs text scrubs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import orjson

from bridge.config import AuthSettings
from bridge.errors import AuthError, UpstreamLost
from bridge.httpclient import TOKEN_TIMEOUT_S
from bridge.logs import EventLog
from bridge.observability import Metrics
from bridge.secrets import Secrets

log = EventLog("bridge.auth")

# 5xx and these may go away by themselves (UpstreamLost); any other non-200 answer means
# the credentials or the endpoint will not work however often we ask (AuthError).
_RETRIABLE_4XX = frozenset({408, 429})
# IMS v2 reported expires_in in milliseconds; v3 in seconds. A value above 30 days
# cannot be seconds for a 24 h token.
_MS_THRESHOLD_S = 30 * 24 * 3600
# Never use a token closer than this to its expiry, even when a refresh just failed.
_EXPIRY_SAFETY_S = 30.0
# Set per request too, whatever client the provider was given.
_TOKEN_TIMEOUT = httpx.Timeout(TOKEN_TIMEOUT_S)


class TokenProvider(Protocol):
    """Where the upstream client gets its bearer token."""

    # False when invalidate() cannot bring a different token: a refused one stays refused.
    renewable: bool

    def token(self) -> str:
        """A valid bearer token (fetched or refreshed as needed; thread-safe)."""
        ...

    def invalidate(self) -> None:
        """The last token was refused (401): the next ``token()`` fetches a new one."""
        ...


class StaticToken:
    """A fixed token from the settings; it cannot be renewed."""

    renewable = False

    def __init__(self, token: str, secrets: Secrets | None = None) -> None:
        if not token:
            raise ValueError("empty access token")
        self._token = token
        if secrets is not None:
            secrets.add(token)

    def token(self) -> str:
        return self._token

    def invalidate(self) -> None:
        log.warning("auth.static_token_refused", hint="set OAuth credentials or a new token")

    def __repr__(self) -> str:
        return "StaticToken(***)"


class OAuthTokens:
    """OAuth Server-to-Server (client credentials) tokens from Adobe IMS, cached.

    A token is renewed once less than ``min(refresh_before_s, expires_in / 2)`` of its life
    remains. If renewing fails for a retriable reason while the cached token is still
    valid, the cached token is used (and the failure counted); credentials refused by IMS
    (400, 401, 403 and other non-retriable 4xx) raise ``AuthError`` at once.
    """

    renewable = True

    def __init__(
        self,
        settings: AuthSettings,
        http: httpx.Client,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        *,
        secrets: Secrets | None = None,
    ) -> None:
        if settings.client_id is None or settings.client_secret is None:
            raise ValueError("OAuth needs client_id and client_secret")
        self._settings = settings
        self._client_id = settings.client_id
        self._http = http
        self._metrics = metrics
        self._clock = clock
        self._secrets = secrets
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0  # clock() time the token dies
        self._refresh_at = 0.0  # clock() time to ask for a new one

    def __repr__(self) -> str:
        return f"OAuthTokens(client_id={self._client_id!r}, token_url={self._settings.token_url!r})"

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            try:
                return self._fetch(now)
            except UpstreamLost as exc:
                if self._token is not None and now < self._expires_at - _EXPIRY_SAFETY_S:
                    log.warning(
                        "auth.refresh_deferred",
                        error=str(exc),
                        expires_in_s=round(self._expires_at - now, 1),
                    )
                    return self._token
                raise

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires_at = self._refresh_at = 0.0

    def _fetch(self, now: float) -> str:
        secret = self._settings.client_secret
        assert secret is not None  # checked in __init__
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": secret.get_secret_value(),
            "scope": self._settings.scope,
        }
        try:
            answer = self._http.post(
                self._settings.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=_TOKEN_TIMEOUT,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            # Only the exception's type: its text could in theory echo the request.
            self._failed()
            raise UpstreamLost(f"token endpoint unreachable ({type(exc).__name__})") from None
        status = answer.status_code
        if status != 200:
            self._failed()
            code = _ims_error(answer)
            detail = f" ({code})" if code else ""
            if status >= 500 or status in _RETRIABLE_4XX:
                raise UpstreamLost(f"token endpoint answered {status}{detail}", status=status)
            if status in (400, 401, 403):
                raise AuthError(f"token endpoint refused the credentials: {status}{detail}")
            raise AuthError(f"token endpoint answered {status}{detail}: check token_url")
        try:
            body = orjson.loads(answer.content)
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 0))
        except Exception:  # any parser failure or odd shape: an unusable answer, no crash
            self._failed()
            raise UpstreamLost("token endpoint answered 200 without a usable token") from None
        if not isinstance(token, str) or not token or expires_in <= 0:
            self._failed()
            raise UpstreamLost("token endpoint answered 200 without a usable token")
        if self._secrets is not None:
            self._secrets.add(token)  # before anything could log it
        if expires_in > _MS_THRESHOLD_S:
            expires_in /= 1000.0
        margin = min(self._settings.refresh_before_s, expires_in / 2)
        self._token = token
        self._expires_at = now + expires_in
        self._refresh_at = now + expires_in - margin
        self._metrics.token_refreshes.labels(outcome="ok").inc()
        log.info("auth.token_fetched", expires_in_s=expires_in, refresh_in_s=expires_in - margin)
        return token

    def _failed(self) -> None:
        self._metrics.token_refreshes.labels(outcome="error").inc()


def _ims_error(answer: httpx.Response) -> str:
    """IMS's short error code (``invalid_client``...), never the free text or the body."""
    try:
        body = orjson.loads(answer.content)
    except Exception:  # orjson refuses deep nesting too; no code is just no code
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 64:
        return code
    return ""


def make_token_provider(
    settings: AuthSettings,
    http: httpx.Client,
    metrics: Metrics,
    *,
    secrets: Secrets | None = None,
) -> TokenProvider:
    """OAuth when client credentials are set, else the static access token; every token
    it hands out is added to ``secrets``."""
    if settings.client_id is not None and settings.client_secret is not None:
        return OAuthTokens(settings, http, metrics, secrets=secrets)
    assert settings.access_token is not None  # AuthSettings guarantees one or the other
    return StaticToken(settings.access_token.get_secret_value(), secrets)
