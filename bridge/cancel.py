"""One cancellation object: a stop, a deposition or a cut fires it once, with a reason.

Whoever must react subscribes a callback instead of running a thread that polls for the
news: the upstream subscribes its ``disconnect``, the pipeline the wake-up of its queue.
Scopes nest with ``child()``: the process's stop fires each term's scope, which the
reader and the pump watch.

A ``Cancel`` is also a ``threading.Event`` (``set``, ``is_set``, ``wait``), so code that
waits with a timeout, and the election backends that end a term with ``set()``, need
nothing else. It never clears: a fired scope stays fired, and the next term or process
phase gets a new one.

The rule for callbacks: they run on the thread that fires (the election thread, the pump,
the reader, the stop waiter), so each must be cheap and must never block or wait for
another thread; shutting a socket down or notifying a condition is the kind of thing
they do. A callback that raises is logged and does not keep the others from running.

Do not fire a ``Cancel`` from a signal handler: Python runs the handler on the main thread
between two bytecodes, where a callback could need a lock the interrupted code holds.
A handler sets a plain ``threading.Event``; a thread waiting on it fires the Cancel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from bridge.logs import EventLog

__all__ = ["Callback", "Cancel"]

Callback = Callable[[str], None]

log = EventLog("bridge.cancel")


class Cancel(threading.Event):
    """Fires once, with a reason; runs each subscribed callback once with that reason."""

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.Lock()
        self._callbacks: dict[int, Callback] = {}  # insertion order is the calling order
        self._next_key = 0
        self._reason: str | None = None

    @property
    def reason(self) -> str | None:
        """Why it fired (the first reason given); None until it has."""
        return self._reason

    def fire(self, reason: str) -> bool:
        """Fire now: True if this call fired it, False if it had fired already."""
        with self._guard:
            if self._reason is not None:
                return False
            self._reason = reason
            callbacks = list(self._callbacks.values())
            self._callbacks.clear()
        # The flag first: a callback, or a thread it wakes, must already see is_set().
        super().set()
        for callback in callbacks:
            _call(callback, reason)
        return True

    def set(self, reason: str = "stop") -> None:
        """``threading.Event``'s spelling of ``fire`` (the reason defaults to ``stop``)."""
        self.fire(reason)

    def clear(self) -> None:
        raise TypeError("a Cancel fires once and never clears: make a new one")

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Run ``callback(reason)`` when this fires (at once, here, if it has already);
        returns the function that unsubscribes it (safe to call at any time, repeatedly)."""
        with self._guard:
            fired = self._reason
            if fired is None:
                key = self._next_key
                self._next_key += 1
                self._callbacks[key] = callback
        if fired is not None:
            _call(callback, fired)
            return _nothing

        def unsubscribe() -> None:
            with self._guard:
                self._callbacks.pop(key, None)

        return unsubscribe

    def child(self) -> Cancel:
        """A new scope that fires, with this one's reason, when this one does; it can
        also fire on its own without touching this one."""
        kid = Cancel()
        leave = self.subscribe(kid.set)
        # A child that fired by itself leaves its parent's list: a long-lived parent must
        # not collect one callback per short-lived child.
        kid.subscribe(lambda _reason: leave())
        return kid


def _call(callback: Callback, reason: str) -> None:
    try:
        callback(reason)
    except Exception as exc:
        log.error(
            "cancel.callback_failed",
            callback=getattr(callback, "__qualname__", repr(callback)),
            error=f"{type(exc).__name__}: {exc}",
        )


def _nothing() -> None:
    return None
