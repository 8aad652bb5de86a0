"""When to connect to Live Stream again: the wait before the next attempt, what each
refusal means given the ones before it (retry at the grace, back off, or give up), and
what an operator is told about refusals (``AnswerReport``).

Adobe cannot tell a client that dropped for a moment from one that is gone, so a slot
stays taken for a while after every disconnect (KA-16598): no attempt ever follows the
previous one sooner than the grace, and refusals back off from there.
"""

from __future__ import annotations

import random
from typing import Literal, NamedTuple

import httpx

from bridge.logs import EventLog
from bridge.observability import OPERATOR_STATUSES, Metrics

__all__ = [
    "FATAL_STATUSES",
    "NOT_ENABLED",
    "RETRIABLE_STATUSES",
    "AnswerReport",
    "ReconnectPolicy",
    "StatusRules",
    "Verdict",
    "enable_url",
    "not_enabled_hint",
]

log = EventLog("bridge.livestream")  # the upstream's own lines, under its logger

# Client or configuration bugs, and 403 (not entitled): retrying cannot change the answer.
FATAL_STATUSES = frozenset({400, 403, 405, 406, 505})
# Documented refusals that go away by themselves (5xx other than 505 count too).
RETRIABLE_STATUSES = frozenset({409, 429})
# 424 (2026): the stream is not enabled for the latest API version. Only an operator can
# enable it, but once enabled the same URL works, with no change on our side: so it is
# retried with the refusal backoff (never faster than the grace, at most the cap apart)
# instead of ending the process, which would only restart into the same answer.
NOT_ENABLED = 424
MAX_404 = 3  # the third 404 in a row is fatal
# The first two 401s in a row wait only the grace (a new token is on its way); from the
# third on they back off like a refusal, and with a static token, which cannot change,
# the third is fatal instead.
MAX_401_AT_GRACE = 2


class ReconnectPolicy:
    """How long to wait before the next connection attempt.

    - After an established stream ended (``after_drop``): exactly ``grace_s``.
    - After the n-th consecutive refusal (``after_refusal``; n = 0, 1, 2, ...):
      ``grace_s + uniform(0, min(cap_s - grace_s, base * 2**n))`` with
      ``base = max(grace_s, 1 s)``: full jitter on top of a floor of ``grace_s``. Every
      delay lies in ``[grace_s, cap_s]``; the jitter window doubles until it reaches
      ``cap_s - grace_s``, so the expected delay never decreases. With the defaults
      (60 s, 600 s) the windows are [60, 120], [60, 180], [60, 300], [60, 540], [60, 600]...
    - ``reset`` after a stream delivered data starts the refusal count afresh.
    """

    def __init__(self, grace_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if grace_s < 0 or cap_s < grace_s:
            raise ValueError("need 0 <= grace_s <= cap_s")
        self.grace_s = grace_s
        self.cap_s = cap_s
        self._base = max(grace_s, 1.0)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._refusals = 0

    @property
    def refusals(self) -> int:
        """Consecutive refusals so far."""
        return self._refusals

    def after_drop(self) -> float:
        return self.grace_s

    def after_refusal(self) -> float:
        window = min(self.cap_s - self.grace_s, self._base * 2.0 ** min(self._refusals, 60))
        self._refusals += 1
        return min(self.cap_s, self.grace_s + self._rng.uniform(0.0, window))

    def reset(self) -> None:
        self._refusals = 0


class Verdict(NamedTuple):
    """What to do after a refusal: ``grace`` (retry after the grace), ``backoff`` (retry
    after the refusal backoff), ``fatal`` (FatalUpstreamError) or ``auth`` (AuthError);
    ``unexpected`` when Live Stream does not document the status."""

    action: Literal["grace", "backoff", "fatal", "auth"]
    why: str = ""
    unexpected: bool = False


class StatusRules:
    """Judges each non-200, non-redirect answer, counting 401s and 404s in a row."""

    def __init__(self, *, renewable_token: bool) -> None:
        self._renewable = renewable_token
        self._count_401 = 0
        self._count_404 = 0

    def connected(self) -> None:
        """A 200: the counts start afresh."""
        self._count_401 = self._count_404 = 0

    def judge(self, status: int) -> Verdict:  # noqa: PLR0911 - one return per rule
        if status == 404:
            self._count_401, self._count_404 = 0, self._count_404 + 1
            if self._count_404 >= MAX_404:
                return Verdict("fatal", f"{MAX_404} consecutive 404")
            return Verdict("backoff")
        self._count_404 = 0
        if status in FATAL_STATUSES:
            return Verdict("fatal", "not retriable")
        if status == 401:
            self._count_401 += 1
            if self._count_401 <= MAX_401_AT_GRACE:
                return Verdict("grace")
            if not self._renewable:
                return Verdict("auth", f"{self._count_401} consecutive 401, static access token")
            return Verdict("backoff")
        self._count_401 = 0
        if status == NOT_ENABLED:
            return Verdict("backoff", "stream not enabled for the latest API version")
        known = status in RETRIABLE_STATUSES or 500 <= status <= 599
        return Verdict("backoff", unexpected=not known)


class AnswerReport:
    """What Live Stream's refusals tell an operator: each refusal counted by status, the
    status that needs an operator held in a gauge until another answer or a stream, and
    one line explaining a run of 424s (each attempt gets its own line elsewhere)."""

    def __init__(self, metrics: Metrics, stream_url: str) -> None:
        self._metrics, self._url = metrics, stream_url
        self._in_424_run = False

    def opened(self) -> None:
        """A stream opened: nothing needs an operator any more."""
        self._in_424_run = False
        for code in OPERATOR_STATUSES:
            self._metrics.upstream_fatal_status.labels(status=code).set(0)

    def refused(self, status: int, description: str, *, unexpected: bool) -> None:
        """Live Stream answered ``status`` (not 200, not a redirect)."""
        label = str(status) if 100 <= status <= 599 else "other"
        self._metrics.refused(label)
        for code in OPERATOR_STATUSES:
            self._metrics.upstream_fatal_status.labels(status=code).set(int(code == label))
        if status == NOT_ENABLED and not self._in_424_run:
            hint = not_enabled_hint(self._url)
            log.error(
                "upstream.stream_not_enabled",
                status=status,
                error_description=description,
                hint=hint,
            )
        self._in_424_run = status == NOT_ENABLED
        if unexpected:
            self._metrics.unexpected_statuses.labels(status=label).inc()
            log.warning(
                "upstream.unexpected_status",
                status=status,
                error_description=description,
                hint="Live Stream does not document this status; retrying with backoff",
            )


def not_enabled_hint(stream_url: str) -> str:
    """What an operator reads after a 424: what it means and how to fix it."""
    target = enable_url(stream_url) or "https://livestream.adobe.net/api/2/enable/<stream>"
    return (
        "Live Stream answered 424 Failed Dependency: this stream is not enabled for the "
        f"latest Live Stream API version. Fix: GET {target} with the usual headers "
        "(Authorization: Bearer <access token>, x-api-key: <client id>), or ask Adobe "
        "Customer Care. Meanwhile the bridge retries with the refusal backoff."
    )


def enable_url(stream_url: str) -> str | None:
    """Where Adobe enables a stream for the latest API version: ``/api/2/enable/<name>``
    on the stream URL's own scheme and host (None when the URL names no stream)."""
    url = httpx.URL(stream_url)
    head, sep, name = url.path.rpartition("/stream/")
    if not sep or not name.strip("/") or not head.startswith("/api/"):
        return None
    # Built from parts: user info in the configured URL must never reach a log line.
    path = f"/api/2/enable/{name.strip('/')}"
    return str(httpx.URL(scheme=url.scheme, host=url.host, port=url.port, path=path))
