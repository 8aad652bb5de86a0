"""When to connect to Live Stream again: the wait before the next attempt, and what each
refusal means given the ones before it (retry at the grace, back off, or give up).

Adobe cannot tell a client that dropped for a moment from one that is gone, so a slot
stays taken for a while after every disconnect (KA-16598): no attempt ever follows the
previous one sooner than the grace, and refusals back off from there.
"""

from __future__ import annotations

import random
from typing import Literal, NamedTuple

__all__ = ["FATAL_STATUSES", "RETRIABLE_STATUSES", "ReconnectPolicy", "StatusRules", "Verdict"]

# Client or configuration bugs, and 403 (not entitled): retrying cannot change the answer.
FATAL_STATUSES = frozenset({400, 403, 405, 406, 505})
# Documented refusals that go away by themselves (5xx other than 505 count too).
RETRIABLE_STATUSES = frozenset({409, 429})
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
        known = status in RETRIABLE_STATUSES or 500 <= status <= 599
        return Verdict("backoff", unexpected=not known)
