"""Cancel: fires once with a reason, runs its callbacks once, and nests as scopes."""

from __future__ import annotations

import logging
import threading

import pytest

from bridge.cancel import Cancel


def test_fires_once_and_keeps_the_first_reason() -> None:
    """The first fire wins: its reason stays, later fires report False and change nothing."""
    cancel = Cancel()
    seen: list[str] = []
    cancel.subscribe(seen.append)
    assert cancel.reason is None and not cancel.is_set()
    assert cancel.fire("deposed") is True
    assert cancel.fire("shutdown") is False
    cancel.set()
    assert cancel.is_set() and cancel.reason == "deposed"
    assert seen == ["deposed"]


def test_set_is_the_event_spelling_with_reason_stop() -> None:
    """set() fires with the reason "stop", as threading.Event callers expect it to stop."""
    cancel = Cancel()
    cancel.set()
    assert cancel.reason == "stop" and cancel.wait(0)


def test_never_clears() -> None:
    """clear() is refused: a fired scope must not come back to life."""
    cancel = Cancel()
    cancel.fire("x")
    with pytest.raises(TypeError):
        cancel.clear()
    assert cancel.is_set()


def test_fire_from_another_thread_wakes_a_waiter_and_runs_callbacks_there() -> None:
    """A waiter wakes when another thread fires, and the callbacks ran on the firing thread."""
    cancel = Cancel()
    ran_on: list[str] = []
    cancel.subscribe(lambda _reason: ran_on.append(threading.current_thread().name))
    firer = threading.Thread(target=cancel.fire, args=("lost",), name="firer")
    firer.start()
    assert cancel.wait(5.0)
    firer.join(5.0)
    assert ran_on == ["firer"]


def test_flag_is_set_before_callbacks_run() -> None:
    """A callback already sees is_set(): whatever it wakes finds the scope fired."""
    cancel = Cancel()
    seen: list[bool] = []
    cancel.subscribe(lambda _reason: seen.append(cancel.is_set()))
    cancel.fire("x")
    assert seen == [True]


def test_subscribe_after_firing_runs_at_once() -> None:
    """A callback subscribed after the fire runs immediately, with the fire's reason."""
    cancel = Cancel()
    cancel.fire("shutdown")
    seen: list[str] = []
    unsubscribe = cancel.subscribe(seen.append)
    assert seen == ["shutdown"]
    unsubscribe()  # harmless after the fact


def test_unsubscribed_callback_does_not_run() -> None:
    """unsubscribe() before the fire takes the callback out; the others still run, in order."""
    cancel = Cancel()
    seen: list[str] = []
    cancel.subscribe(lambda r: seen.append(f"a:{r}"))
    unsubscribe = cancel.subscribe(lambda r: seen.append(f"b:{r}"))
    cancel.subscribe(lambda r: seen.append(f"c:{r}"))
    unsubscribe()
    unsubscribe()
    cancel.fire("x")
    assert seen == ["a:x", "c:x"]


def test_a_failing_callback_is_logged_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in one callback neither stops the next one nor escapes fire()."""
    caplog.set_level(logging.ERROR, logger="bridge.cancel")
    cancel = Cancel()
    seen: list[str] = []

    def broken(_reason: str) -> None:
        raise RuntimeError("boom")

    cancel.subscribe(broken)
    cancel.subscribe(seen.append)
    assert cancel.fire("x") is True
    assert seen == ["x"]
    failures = [r for r in caplog.records if r.getMessage() == "cancel.callback_failed"]
    assert len(failures) == 1
    assert "boom" in getattr(failures[0], "fields", {})["error"]


def test_child_fires_with_its_parent() -> None:
    """Process stop -> term -> connection: firing the root fires every scope below it."""
    process = Cancel()
    term = process.child()
    connection = term.child()
    seen: list[str] = []
    connection.subscribe(seen.append)
    process.fire("shutdown")
    assert term.reason == "shutdown" and connection.reason == "shutdown"
    assert seen == ["shutdown"]


def test_child_fires_alone_and_leaves_its_parent() -> None:
    """A child fired on its own leaves the parent unfired and drops out of its callbacks."""
    process = Cancel()
    term = process.child()
    seen: list[str] = []
    term.subscribe(seen.append)
    term.fire("deposed")
    assert not process.is_set()
    assert process._callbacks == {}  # no callback per finished child piles up
    process.fire("shutdown")
    assert term.reason == "deposed" and seen == ["deposed"]


def test_child_of_a_fired_parent_is_born_fired() -> None:
    """A scope made after its parent fired is already fired, with the parent's reason."""
    process = Cancel()
    process.fire("shutdown")
    assert process.child().reason == "shutdown"


def _race_once(subscribers: int, firers: int) -> list[int]:
    """Start subscribers and firers at once; how often each subscriber's callback ran."""
    cancel, go, lock = Cancel(), threading.Event(), threading.Lock()
    counts = [0] * subscribers

    def bump(i: int) -> None:
        with lock:
            counts[i] += 1

    def subscriber(i: int) -> None:
        go.wait()
        cancel.subscribe(lambda _reason: bump(i))

    def firer(n: int) -> None:
        go.wait()
        cancel.fire(f"r{n}")

    threads = [threading.Thread(target=subscriber, args=(i,)) for i in range(subscribers)]
    threads += [threading.Thread(target=firer, args=(n,)) for n in range(firers)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(5.0)
    return counts


def test_racing_fires_and_subscribes_run_each_callback_exactly_once() -> None:
    """Under racing threads every callback runs exactly once, whether it was subscribed
    before or after the fire."""
    for _ in range(50):
        assert _race_once(40, 3) == [1] * 40
