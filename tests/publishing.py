"""Shared pieces of the publisher tests: realistic hits, a fake librdkafka producer, and
helpers for the real broker. The fake producer is only for pure unit tests of the bridge's own
logic, never the evidence that publishing works: the integration tests use the real broker."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, SupportsIndex

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import bridge.outcome as outcome_mod
import bridge.publish as publish_mod
from bridge.config import KafkaSettings, PublishSettings
from bridge.observability import Metrics
from bridge.publish import Publisher
from bridge.seed import SeedResult
from tests.kafkautil import Record

# -- realistic hits ------------------------------------------------------------------------

_PAGES = ("Accueil", "Café & Crème: Nos produits", "東京の天気予報", "Checkout: Payment")


def make_bodies(count: int, seed: int = 7) -> list[bytes]:
    """JSON bodies (everything after the hit id) shaped like Live Stream hits."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        vh, vl = rng.getrandbits(62), rng.getrandbits(62)
        ids: dict[str, Any]
        if i % 5 == 0:
            ids = {"mcVisIdHigh": str(vh), "mcVisIdLow": str(vl)}
        elif i % 2:
            ids = {"visIdHigh": vh, "visIdLow": vl}
        else:
            ids = {"visIdHigh": str(vh), "visIdLow": str(vl)}
        body = {
            "timeGMT": 1_780_000_000 + i,
            "receivedTimeGMT": 1_780_000_002 + i,
            "reportSuite": "sim.demo.prod",
            **ids,
            "pageName": rng.choice(_PAGES),
            "pageURL": f"https://www.example.com/p/{rng.randrange(10**6)}?q=a+b",
            "evars": {"evar1": "x" * rng.randrange(20, 400), "evar7": "ünïcödé"},
            "events": [{"id": "event1", "value": 1}],
            "geoCountry": "fra",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        }
        out.append(orjson.dumps(body)[1:])  # drop the opening brace
    return out


def make_hit(bodies: list[bytes], n: int, *, high: int = 3_141_592_653_589_793_238) -> bytes:
    """Hit number ``n``: its hit id is (high, n), alternately as strings and numbers."""
    if n % 2:
        return b'{"hitIdHigh":"%d","hitIdLow":"%d",%s' % (high, n, bodies[n % len(bodies)])
    return b'{"hitIdHigh":%d,"hitIdLow":%d,%s' % (high, n, bodies[n % len(bodies)])


def header(rec: Record, name: str) -> bytes | None:
    return next((v for k, v in rec.headers if k == name), None)


# -- the fake producer (pure logic only) ----------------------------------------------------


class _Delivered:
    """What a delivery report says of a message (the fake's offsets count its open ones)."""

    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self._offset = topic, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeProducer:
    """Records what the publisher asks of librdkafka and raises what a test scripts; like
    librdkafka, refuses at once a message above ``message.max.bytes`` and reports delivery."""

    instances: ClassVar[list[FakeProducer]] = []
    script: ClassVar[dict[str, list[KafkaError]]] = {}

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.max_bytes = int(conf["message.max.bytes"])
        self.calls: list[str] = []
        self.open: list[tuple[str, bytes, Any, list[tuple[str, str]]]] = []
        self.committed: list[tuple[str, bytes, Any, list[tuple[str, str]]]] = []
        self.offsets: list[Any] = []
        FakeProducer.instances.append(self)

    def _maybe_fail(self, call: str) -> None:
        self.calls.append(call)
        errors = FakeProducer.script.get(call)
        if errors:
            raise KafkaException(errors.pop(0))

    def init_transactions(self, timeout: float) -> None:
        self._maybe_fail("init_transactions")

    def begin_transaction(self) -> None:
        self._maybe_fail("begin_transaction")

    def produce(  # noqa: PLR0917 - confluent-kafka's parameters, in its order (the lane's call)
        self,
        topic: str,
        value: bytes,
        key: Any = None,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: Any = None,
    ) -> None:
        self._maybe_fail("produce")
        assert (partition, timestamp) == (-1, 0), "the partitioner's choice, the time of produce"
        raw = headers or []
        # Like confluent-kafka: a dict of headers or a list of pairs, in the order given.
        pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
        size = len(value) + len(key or "") + sum(len(k) + len(str(v)) for k, v in pairs)
        if size > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.open.append((topic, bytes(value), key, pairs))
        callback = callback or on_delivery
        if callback is not None:
            callback(None, _Delivered(topic, len(self.open) - 1))

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float) -> None:
        self._maybe_fail("send_offsets_to_transaction")
        self.offsets.append((offsets, meta))

    def commit_transaction(self, timeout: float) -> None:
        self._maybe_fail("commit_transaction")
        self.committed += self.open
        self.open = []

    def abort_transaction(self, timeout: float) -> None:
        self._maybe_fail("abort_transaction")
        self.open = []

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self) -> None:
        self.open = []

    def __len__(self) -> int:
        return 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="fake")
def fake_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    FakeProducer.instances = []
    FakeProducer.script = {}
    # The fake's failing commit_transaction never commits: a fatal one left nothing behind.
    monkeypatch.setattr(outcome_mod, "committed_at", lambda *a, **k: False)
    monkeypatch.setattr(publish_mod, "read_hit_ids", lambda *a, **k: SeedResult())
    monkeypatch.setattr(publish_mod, "topic_message_limit", lambda *a, **k: None)
    yield FakeProducer


def fake_publisher(
    clock: Callable[[], float] | None = None, report_suite: str | None = None, **publish: Any
) -> tuple[Publisher, Metrics]:
    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="hits", dlq_topic="dlq")
    metrics = Metrics()
    settings = PublishSettings(**{"dedupe_window": 1000, **publish})
    pub = Publisher(
        kafka,
        settings,
        metrics,
        report_suite=report_suite,
        clock=clock or FakeClock(),
        producer_factory=FakeProducer,
    )
    return pub, metrics


def sent(producer: FakeProducer) -> list[tuple[str, bytes, Any, dict[str, Any]]]:
    return [(t, v, k, dict(h or [])) for t, v, k, h in producer.committed + producer.open]


NOW = 1_780_000_000.25


class StubFencing:
    """An election's fencing side whose generation renews (a standby joined) or not."""

    def __init__(self, renewed: bool = False) -> None:
        self.renewed = renewed
        self.metadata = "metadata-1"

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition("election", 0, 5)]

    def group_metadata(self) -> object:
        return self.metadata

    def wait_renewed(self, stale: object, timeout_s: float) -> bool:
        if self.renewed:
            self.metadata = "metadata-2"
        return self.renewed


class Timeouts(list[KafkaError]):
    """A script entry that times out every call, one second of ``clock`` each."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def pop(self, index: SupportsIndex = -1) -> KafkaError:
        self.clock.now += 1.0
        return KafkaError(KafkaError._TIMED_OUT, retriable=True)

    def __bool__(self) -> bool:
        return True


# -- integration: the real broker -----------------------------------------------------------


def kafka_settings(bootstrap: str, topic: str, dlq: str, **extra: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=bootstrap,
        topic=topic,
        dlq_topic=dlq,
        transactional_id=f"test-{uuid.uuid4().hex[:10]}",
        partitions=3,
        replication_factor=1,
        properties={"log_level": "3"},
        **extra,
    )


def run_publisher(pub: Publisher, records: list[bytes]) -> None:
    for i, record in enumerate(records):
        pub.publish(record, NOW)
        if i % 200 == 0:
            pub.maybe_commit()
