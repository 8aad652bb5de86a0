"""How the bridge's librdkafka clients are configured, and how a producer is made.

* :func:`producer_config`: the transactional producer (user properties never override the
  exactly-once essentials).
* :func:`reader_config`: a read_committed consumer that assigns partitions itself (the
  dedupe seed and the commit-outcome check).
* :func:`admin_config`: topic admin and reachability probes.
* :func:`kafka_logger`: where librdkafka logs go, with repeated lines held back.
* :data:`ProducerFactory`: what makes a producer from its config; the writer takes one
  (``confluent_kafka.Producer`` by default) so tests can hand in a fake.
* :func:`bounded`: a blocking transactional call that cannot outstay its timeout.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from bridge.config import KafkaSettings
from bridge.errors import KafkaSetupError, PublishError
from bridge.kafkaerrors import credentials_problem
from bridge.logs import EventLog

__all__ = [
    "LIBRDKAFKA_REPEAT_S",
    "MESSAGE_MAX_BYTES",
    "WEDGE_GRACE_S",
    "ErrorLog",
    "ProducerFactory",
    "admin_config",
    "bounded",
    "discard",
    "fatal_error",
    "give_back_freed_memory",
    "init_transactions",
    "kafka_logger",
    "producer_config",
    "reader_config",
    "replay",
]

MESSAGE_MAX_BYTES = 1_048_576  # a 1,000,000-byte record plus key and headers; broker: 1,048,588

LIBRDKAFKA_REPEAT_S = 30.0  # one distinct librdkafka log line per this long

# How long past its own timeout a transactional call may run before its producer counts
# as wedged (see bounded()).
WEDGE_GRACE_S = 5.0

# Makes a producer from its librdkafka config. Any: confluent_kafka's Producer is untyped,
# and a test's fake only needs the calls the writer makes.
ProducerFactory = Callable[[dict[str, Any]], Any]


class _Repeats(logging.Filter):
    """Lets each distinct librdkafka log line through once per ``every_s``.

    While a broker is down librdkafka logs the same failed connect several times a second
    ("Connect to ... failed: Connection refused (after 0ms in state CONNECT)"): thousands of
    identical error lines in a long outage. The varying timing part is ignored.
    """

    _TIMING = re.compile(r"\(after \d+ms in state [A-Z_]+\)|\d+ms")

    def __init__(self, every_s: float) -> None:
        super().__init__()
        self._every = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.levelno}:{self._TIMING.sub('', record.getMessage())}"
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every:
                return False
            if len(self._last) >= 1024:  # bounded: distinct lines are few in practice
                self._last.clear()
            self._last[key] = now
        return True


class ErrorLog:
    """An ``error_cb`` that logs each error name once per ``every_s`` (fatal ones always):
    librdkafka repeats connection errors every few seconds during an outage."""

    def __init__(self, log: EventLog, every_s: float) -> None:
        self._log, self._every = log, every_s
        self._logged: dict[str, float] = {}

    def __call__(self, err: KafkaError) -> None:
        now, name = time.monotonic(), err.name()
        if now - self._logged.get(name, -1e9) >= self._every or err.fatal():
            self._logged[name] = now
            self._log.warning("kafka.error", error=name, detail=err.str(), fatal=err.fatal())


def kafka_logger(name: str) -> logging.Logger:
    """The logger librdkafka client ``name`` logs to, with repeated lines held back."""
    logger = logging.getLogger(f"bridge.kafka.{name}")
    if not any(isinstance(f, _Repeats) for f in logger.filters):
        logger.addFilter(_Repeats(LIBRDKAFKA_REPEAT_S))
    return logger


def producer_config(
    kafka: KafkaSettings,
    compression: str,
    error_cb: Callable[[KafkaError], None],
    message_max_bytes: int = MESSAGE_MAX_BYTES,
) -> dict[str, Any]:
    """The transactional producer: throughput defaults, user properties, then EOS essentials.

    The queue bounds are a safety net: the publisher commits at ``commit_max_records`` or
    16 MiB, far below them, and a commit flushes the queue. ``message_max_bytes`` should
    be below the topic's ``max.message.bytes``: then a record too large for the topic is
    refused by ``produce()`` itself (and dead-lettered), not by the broker in the middle of
    a transaction, where it would fail every retry of that transaction.
    """
    conf: dict[str, Any] = {
        "client.id": "livestream-bridge",
        "compression.type": compression,
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.kbytes": 65_536,
        "queue.buffering.max.messages": 100_000,
        "message.max.bytes": message_max_bytes,
    }
    conf.update(kafka.client_config())
    # Never overridable: exactly-once depends on them.
    conf |= {"transactional.id": kafka.transactional_id, "enable.idempotence": True}
    conf |= {"acks": "all", "logger": kafka_logger("producer")}
    conf["error_cb"] = error_cb
    return conf


def init_transactions(producer: Any, kafka: KafkaSettings, deadline: float) -> Any:
    """``producer`` once its ``init_transactions`` succeeded (fencing older producers with
    the same transactional.id); retried until ``deadline`` while the error is retriable."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            producer.init_transactions(max(1.0, min(remaining, 30.0)))
            return producer
        except KafkaException as exc:
            err = exc.args[0]
            problem = credentials_problem(kafka, err)
            if problem:
                raise KafkaSetupError(problem) from None
            if err.retriable() and remaining > 0:
                continue
            raise PublishError(f"init_transactions failed: {err.name()}: {err.str()}") from None


def replay(
    producer: Any,
    messages: Iterable[tuple[str, bytes, str | None, dict[str, str]]],
    mark: Callable[[KafkaError | None, Any], None],
) -> None:
    """Produce ``messages`` (topic, value, key, headers, ...) again, in order, waiting while
    the producer is full; the first asks for delivery report ``mark``."""
    produce, poll = producer.produce, producer.poll
    for i, (topic, value, key, headers) in enumerate(messages):
        while True:
            try:
                kw = {} if i else {"on_delivery": mark}
                produce(topic, value, key, headers=headers, **kw)
                break
            except BufferError:
                poll(0.05)


def bounded(call: Callable[[], None], timeout: float, what: str) -> None:
    """Run ``call`` (a blocking librdkafka call given ``timeout``) in its own thread and
    wait at most ``timeout`` + :data:`WEDGE_GRACE_S`; past that, raise a fatal
    ``_TIMED_OUT`` ``KafkaException`` (the caller replaces the producer), leaving the call
    to finish, if ever, in its daemon thread. Whatever ``call`` raises is raised here.

    librdkafka does not always keep its timeouts: ``send_offsets_to_transaction`` waits
    forever when the group coordinator left the cluster's metadata (a broker's controlled
    shutdown) and its coordinator request is never re-driven (librdkafka issues #5456 and
    #5511). Made from the pump's own thread, such a call also keeps Python's signal
    handlers from ever running there, so SIGTERM could not end the process either.
    """
    done = threading.Event()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # any: the waiting thread raises it as is
            raised.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"kafka-{what}", daemon=True).start()
    if not done.wait(timeout + WEDGE_GRACE_S):
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                f"{what} still blocked {timeout + WEDGE_GRACE_S:.1f}s after it was called with "
                f"a {timeout:.1f}s timeout: the producer is wedged",
                fatal=True,
            )
        )
    if raised:
        raise raised[0]


def fatal_error(producer: Any, err: KafkaError) -> KafkaError:
    """The error itself when ``err`` only says the producer already failed fatally.

    Once fenced (or otherwise failed), ``produce()`` raises a bare ``_FATAL``; the cause,
    a fence say, is what ``poll()`` raises. Acting on the bare code would make a fenced
    writer give up with a plain ``PublishError`` instead of stepping down.
    """
    if err.code() != KafkaError._FATAL or producer is None:
        return err
    try:
        producer.poll(0)
    except KafkaException as exc:
        return exc.args[0]  # type: ignore[no-any-return]
    return err


def discard(producer: Any) -> None:
    """Drop whatever ``producer`` (None: none) still holds, without waiting."""
    if producer is not None:
        try:
            producer.purge()
            producer.flush(0)
        except (KafkaException, RuntimeError):
            pass


def reader_config(kafka: KafkaSettings, client_id: str, buffer_mb: int = 4) -> dict[str, Any]:
    """A read_committed consumer of the hits topic that assigns partitions itself."""
    conf: dict[str, Any] = dict(kafka.client_config())
    conf |= {
        "group.id": f"{kafka.transactional_id}-seed",  # never joined, never committed
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
        # Bounded buffers (given back by give_back_freed_memory): 16 MB read 1.8 KB hits
        # at 69k/s on the 2-core test machine, 8 MB at 42k/s, 4 MB at 23k/s.
        "queued.max.messages.kbytes": buffer_mb * 1024,
        "fetch.max.bytes": buffer_mb << 20,
        "max.partition.fetch.bytes": buffer_mb << 18,
        "logger": kafka_logger("seed"),
    }
    return conf


def admin_config(
    kafka: KafkaSettings, error_cb: Callable[[KafkaError], None] | None = None
) -> dict[str, Any]:
    conf: dict[str, Any] = dict(kafka.client_config())
    conf.setdefault("client.id", "livestream-bridge-admin")
    conf["logger"] = kafka_logger("admin")
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return conf


def give_back_freed_memory() -> None:
    """Ask glibc to return freed heap pages (a reader's buffers) to the system.

    Without it the process keeps ~30-50 MB it no longer uses after every seeding; the
    bridge's memory budget is 256 MiB. A no-op where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
