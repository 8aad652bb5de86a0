"""Token providers: static tokens and OAuth Server-to-Server against a local token endpoint."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bridge.auth import OAuthTokens, StaticToken, make_token_provider
from bridge.config import AuthSettings
from bridge.errors import AuthError, UpstreamLost
from bridge.observability import Metrics
from tests.testutil import free_port

SECRET = "s3cr3t-client-secret-value"


class TokenEndpoint:
    """A tiny IMS stand-in: answers each POST with the next scripted (status, body)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any]] = []
        self.requests: list[dict[str, list[str]]] = []
        self.issued = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = parse_qs(self.rfile.read(length).decode())
                endpoint.requests.append(form)
                status, body = endpoint.next_answer()
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ims/token/v3"

    def next_answer(self) -> tuple[int, Any]:
        if self.script:
            return self.script.pop(0)
        self.issued += 1
        return 200, {
            "access_token": f"tok-{self.issued}",
            "token_type": "bearer",
            "expires_in": 86399,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    ep = TokenEndpoint()
    yield ep
    ep.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def settings_for(endpoint: TokenEndpoint, **kw: Any) -> AuthSettings:
    return AuthSettings(
        token_url=endpoint.url, client_id="my-client", client_secret=SECRET, scope="a,b", **kw
    )


def count(metrics: Metrics, outcome: str) -> float:
    return float(metrics.token_refreshes.labels(outcome=outcome)._value.get())


def test_fetches_with_client_credentials_form(endpoint: TokenEndpoint, http: httpx.Client) -> None:
    """The token request is a client_credentials form with id, secret and scope."""
    metrics = Metrics()
    tokens = OAuthTokens(settings_for(endpoint), http, metrics)
    assert tokens.token() == "tok-1"
    assert endpoint.requests == [
        {
            "grant_type": ["client_credentials"],
            "client_id": ["my-client"],
            "client_secret": [SECRET],
            "scope": ["a,b"],
        }
    ]
    assert count(metrics, "ok") == 1


def test_token_is_cached_then_refreshed_before_expiry(
    endpoint: TokenEndpoint, http: httpx.Client
) -> None:
    """The token is reused until less than min(refresh_before_s, expires_in/2) remains."""
    clock = Clock()
    tokens = OAuthTokens(settings_for(endpoint, refresh_before_s=3600), http, Metrics(), clock)
    assert tokens.token() == "tok-1"
    clock.now += 86399 - 3600 - 1
    assert tokens.token() == "tok-1"
    clock.now += 2
    assert tokens.token() == "tok-2"
    assert len(endpoint.requests) == 2


def test_short_lived_token_refreshes_at_half_life(
    endpoint: TokenEndpoint, http: httpx.Client
) -> None:
    """With expires_in shorter than 2 x refresh_before_s, renewal happens at half its life."""
    endpoint.script = [(200, {"access_token": "short", "expires_in": 600})]
    clock = Clock()
    tokens = OAuthTokens(settings_for(endpoint, refresh_before_s=3600), http, Metrics(), clock)
    assert tokens.token() == "short"
    clock.now += 299
    assert tokens.token() == "short"
    clock.now += 2
    assert tokens.token() == "tok-1"


def test_invalidate_forces_a_new_token(endpoint: TokenEndpoint, http: httpx.Client) -> None:
    """After invalidate() the next token() asks the endpoint again."""
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    assert tokens.token() == "tok-1"
    tokens.invalidate()
    assert tokens.token() == "tok-2"


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refused_credentials_raise_auth_error(
    endpoint: TokenEndpoint, http: httpx.Client, status: int
) -> None:
    """400/401/403 from the token endpoint raise AuthError naming the status, not the secret."""
    endpoint.script = [
        (status, {"error": "invalid_client", "error_description": f"bad secret {SECRET}"})
    ]
    metrics = Metrics()
    tokens = OAuthTokens(settings_for(endpoint), http, metrics)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    assert str(status) in str(caught.value)
    assert "invalid_client" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert count(metrics, "error") == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retriable(
    endpoint: TokenEndpoint, http: httpx.Client, status: int
) -> None:
    """5xx and 429 from the token endpoint raise UpstreamLost (retriable)."""
    endpoint.script = [(status, b"oops")]
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    with pytest.raises(UpstreamLost) as caught:
        tokens.token()
    assert caught.value.status == status
    assert tokens.token() == "tok-1"  # the next call tries again


def test_unreachable_endpoint_is_retriable(http: httpx.Client) -> None:
    """A token endpoint nobody listens on raises UpstreamLost without the secret in it."""
    port = free_port()
    settings = AuthSettings(
        token_url=f"http://127.0.0.1:{port}/token", client_id="c", client_secret=SECRET
    )
    with pytest.raises(UpstreamLost) as caught:
        OAuthTokens(settings, http, Metrics()).token()
    assert SECRET not in str(caught.value)


def test_failed_refresh_keeps_a_still_valid_token(
    endpoint: TokenEndpoint, http: httpx.Client
) -> None:
    """A refresh that fails with a 5xx falls back to the cached token while it is valid."""
    clock = Clock()
    metrics = Metrics()
    tokens = OAuthTokens(settings_for(endpoint, refresh_before_s=3600), http, metrics, clock)
    assert tokens.token() == "tok-1"
    clock.now += 86399 - 1800
    endpoint.script = [(503, b"down")]
    assert tokens.token() == "tok-1"
    assert count(metrics, "error") == 1
    assert tokens.token() == "tok-2"


def test_answer_without_token_is_retriable(endpoint: TokenEndpoint, http: httpx.Client) -> None:
    """A 200 whose body lacks access_token raises UpstreamLost."""
    endpoint.script = [(200, {"token_type": "bearer"}), (200, b"not json")]
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    with pytest.raises(UpstreamLost):
        tokens.token()
    with pytest.raises(UpstreamLost):
        tokens.token()


def test_expires_in_milliseconds_is_understood(endpoint: TokenEndpoint, http: httpx.Client) -> None:
    """An IMS v2 style expires_in in milliseconds is not taken for 1000 days."""
    endpoint.script = [(200, {"access_token": "ms", "expires_in": 86_399_000})]
    clock = Clock()
    tokens = OAuthTokens(settings_for(endpoint, refresh_before_s=3600), http, Metrics(), clock)
    assert tokens.token() == "ms"
    clock.now += 86399 - 3599
    assert tokens.token() == "tok-1"


def test_concurrent_callers_share_one_fetch(endpoint: TokenEndpoint, http: httpx.Client) -> None:
    """Many threads asking at once cause one token request."""
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(tokens.token())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["tok-1"] * 8
    assert len(endpoint.requests) == 1


def test_secrets_never_in_repr_or_logs(
    endpoint: TokenEndpoint, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the client secret nor the token shows in reprs or log lines."""
    caplog.set_level(logging.DEBUG)
    endpoint.script = [(200, {"access_token": "tok-very-secret", "expires_in": 86399})]
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    tokens.token()
    static = StaticToken("static-very-secret")
    static.invalidate()
    text = repr(tokens) + repr(static) + caplog.text
    text += "".join(json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    for secret in (SECRET, "tok-very-secret", "static-very-secret"):
        assert secret not in text


def test_make_token_provider_picks_oauth_or_static(
    endpoint: TokenEndpoint, http: httpx.Client
) -> None:
    """Client credentials give OAuthTokens; only an access token gives StaticToken."""
    assert isinstance(make_token_provider(settings_for(endpoint), http, Metrics()), OAuthTokens)
    static = make_token_provider(AuthSettings(access_token="abc123"), http, Metrics())
    assert isinstance(static, StaticToken)
    assert static.token() == "abc123"
    static.invalidate()
    assert static.token() == "abc123"


def test_fetched_and_static_tokens_join_the_process_secrets(
    endpoint: TokenEndpoint, http: httpx.Client
) -> None:
    """Every token the provider hands out is registered with the process's Secrets."""
    from bridge.secrets import Secrets

    secrets = Secrets()
    tokens = make_token_provider(settings_for(endpoint), http, Metrics(), secrets=secrets)
    assert secrets.found_in(f"a line with {tokens.token()} in it")
    tokens.invalidate()
    assert secrets.found_in(tokens.token())
    assert len(secrets) == 2
    static = make_token_provider(
        AuthSettings(access_token="static-abc123"), http, Metrics(), secrets=secrets
    )
    assert secrets.found_in(static.token())


@pytest.mark.parametrize("status", [200, 400])
def test_deeply_nested_token_answer_is_handled(
    endpoint: TokenEndpoint, http: httpx.Client, status: int
) -> None:
    """A token answer nested 60,000 deep is an unusable answer, not a RecursionError."""
    endpoint.script = [(status, b"[" * 60_000)]
    tokens = OAuthTokens(settings_for(endpoint), http, Metrics())
    with pytest.raises(UpstreamLost if status == 200 else AuthError):
        tokens.token()


def test_static_token_is_not_renewable() -> None:
    """A static token says it cannot be renewed; OAuth tokens can."""
    assert StaticToken("abc123").renewable is False
    assert OAuthTokens.renewable is True
