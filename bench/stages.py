"""Where a hit's time goes on the pump: each stage timed alone, in one process, one run.

    python bench/stages.py [--hits 100000] [--repeat 3] [--json]

Uses the simulator's own corpus (the records ``bench/run.py`` serves), gzipped as one stream
and cut into 64 KiB chunks (one socket read). Each stage is timed over every hit, best of
``--repeat``, and reported in µs per hit:

gunzip            bare zlib-ng (``zlib_ng.decompressobj``) over the chunks: the bridge's
gunzip (zlib)     the same with CPython's ``zlib``: what ``gunzip`` replaced, and what the
                  ceiling and the naive peer use
frame             ``RecordDecoder.feed`` minus bare zlib-ng: splitting into records
parse             ``FieldReader.read`` per record (bridge.fields): the JSON check the
                  dead-letter rule needs and the fields the bridge reads
parse (orjson)    ``orjson.loads`` per record, then the same fields: what ``parse`` replaced
                  (and still decides every record the fast path is unsure of)
dedupe            ``HitIdWindow.seen_or_add`` of each hit's id into a fresh default window
                  (the C window, bridge/_window.c)
dedupe (Python)   the same with ``PyHitIdWindow``: what ``dedupe`` replaced
produce           ``Producer.produce`` with the bridge's key and its three headers as a dict
                  (no broker is needed: messages are queued locally, then purged)
produce (pairs)   the same with the headers as a list of pairs: what ``produce`` replaced
bare produce      ``Producer.produce`` of the value alone (the ceiling's call)
lane              the publisher's native lane (bridge/_lane.c) over every record: what
                  parse, dedupe and produce do, plus the id and header rules and the open
                  transaction's bookkeeping, in one C loop

The bridge's stages are gunzip, frame and lane (parse, dedupe and produce are its parts, as
the general path runs them one record at a time); the four in brackets are the forms they
replaced, timed in the same process for the before/after comparison. The commits are not
here: ``bench/run.py`` measures the whole.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from zlib_ng import zlib_ng  # noqa: E402

from bridge._lane import END, Lane  # noqa: E402
from bridge.decode import RecordDecoder  # noqa: E402
from bridge.dedupe import HitIdWindow, PyHitIdWindow  # noqa: E402
from bridge.fields import FIELDS, FieldReader  # noqa: E402
from bridge.kafkaerrors import PRODUCE_ERRORS  # noqa: E402
from livestream_sim import Simulator, SimulatorConfig  # noqa: E402

CHUNK = 64 * 1024


Stage = tuple[Callable[[], object], Callable[[], None] | None]  # run, setup before each run


def best_of_each(repeat: int, stages: dict[str, Stage]) -> dict[str, float]:
    """Fastest of ``repeat`` runs of each stage, in seconds (the least disturbed by other
    jobs). The stages take turns round by round, so a burst of load elsewhere hits all of
    them alike, and none pays alone for warming up what the others share."""
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(repeat):
        for name, (run, setup) in stages.items():
            if setup is not None:
                setup()
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def corpus(hits: int) -> list[bytes]:
    sim = Simulator(SimulatorConfig(total_hits=hits))
    body = sim.corpus.plain(range(hits), [1_770_000_000] * hits, {})
    return body.split(b"\r\n")[:-1]


def measure(hits: int, repeat: int) -> dict[str, float]:  # noqa: PLR0915 - a closure per stage
    records = corpus(hits)
    compressed = gzip.compress(b"".join(r + b"\r\n" for r in records), 6)
    chunks = [compressed[i : i + CHUNK] for i in range(0, len(compressed), CHUNK)]
    docs = [orjson.loads(r) for r in records]
    ids = [(int(d["hitIdHigh"]), int(d["hitIdLow"])) for d in docs]
    keys = [f"{d.get('visIdHigh')}:{d.get('visIdLow')}" for d in docs]
    pairs: list[list[tuple[str, str | bytes | None]]] = [
        [("hit-id", f"{h}:{lo}"), ("report-suite", "rs"), ("received-at", "1")] for h, lo in ids
    ]
    headers = [dict(p) for p in pairs]

    def bare(decompressobj: Callable[[int], Any]) -> Callable[[], None]:
        def gunzip() -> None:
            inflate = decompressobj(31)
            for chunk in chunks:
                inflate.decompress(chunk)

        return gunzip

    def feed() -> None:
        decoder = RecordDecoder(1 << 20)
        for chunk in chunks:
            decoder.feed(chunk)

    def parse() -> None:
        read = FieldReader().read
        for record in records:
            read(record)

    def parse_orjson() -> None:
        loads, names = orjson.loads, FIELDS
        for record in records:
            get = loads(record).get
            for name in names:
                get(name)

    window: list[HitIdWindow | PyHitIdWindow] = []

    def fresh_window(make: type[HitIdWindow | PyHitIdWindow] = HitIdWindow) -> None:
        for old in window:
            old.close()
        window[:] = [make()]

    def dedupe() -> None:
        seen_or_add = window[0].seen_or_add
        for high, low in ids:
            seen_or_add(high, low)

    conf: dict[str, Any] = {
        "bootstrap.servers": "127.0.0.1:1",  # never reached: produce() only queues
        "queue.buffering.max.messages": 2 * hits + 10,
        "queue.buffering.max.kbytes": 4_000_000,
        "compression.type": "lz4",
        "log_level": 0,
    }
    producer = Producer(conf)

    def empty() -> None:
        producer.purge()
        while len(producer):  # purged messages count until their reports are served
            producer.poll(0.01)

    def produce() -> None:
        send = producer.produce
        for record, key, hdrs in zip(records, keys, headers, strict=True):
            send("hits", record, key, headers=hdrs)

    def produce_pairs() -> None:
        send = producer.produce
        for record, key, hdrs in zip(records, keys, pairs, strict=True):
            send("hits", record, key, headers=hdrs)

    def bare_produce() -> None:
        send = producer.produce
        for record in records:
            send("hits", record)

    def no_report(_: float | None) -> None:
        return None  # no delivery report asked for (the bridge samples latency so)

    def lane() -> None:
        parse, object_type = FieldReader().validator
        seen = window[0]
        assert isinstance(seen, HitIdWindow)  # the C window: the lane probes it directly
        run = Lane(parse, object_type, seen, "hits", True, "rs", PRODUCE_ERRORS).run
        kept: list[Any] = []
        hdrs: list[Any] = []
        stamps: list[object] = []
        i, n = 0, len(records)
        while i < n:  # a record the lane leaves to the general path is skipped here
            i, stop, *_ = run(
                records, i, producer.produce, kept, hdrs, stamps, n, 1 << 62, "1", 0.0, no_report
            )
            i += stop != END

    def lane_setup() -> None:
        empty()
        fresh_window()

    out = best_of_each(
        repeat,
        {
            "gunzip": (bare(zlib_ng.decompressobj), None),
            "gunzip (zlib)": (bare(zlib.decompressobj), None),
            "frame": (feed, None),
            "parse": (parse, None),
            "parse (orjson)": (parse_orjson, None),
            "dedupe": (dedupe, fresh_window),
            "dedupe (Python)": (dedupe, lambda: fresh_window(PyHitIdWindow)),
            "produce": (produce, empty),
            "produce (pairs)": (produce_pairs, empty),
            "bare produce": (bare_produce, empty),
            "lane": (lane, lane_setup),
        },
    )
    out["frame"] = max(0.0, out["frame"] - out["gunzip"])
    empty()
    fresh_window()
    window[0].close()
    return {name: seconds / hits * 1e6 for name, seconds in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    us = measure(args.hits, args.repeat)
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in us.items()}))
        return 0
    bridge = sum(us[k] for k in ("gunzip", "frame", "lane"))
    ceiling = us["gunzip (zlib)"] + us["frame"] + us["bare produce"]  # its gunzip is zlib
    for name, value in us.items():
        print(f"{name:<17} {value:6.2f} µs/hit")
    print(
        f"bridge stages {bridge:.2f} µs/hit, ceiling stages {ceiling:.2f} µs/hit: "
        f"the stages alone allow the bridge {ceiling / bridge:.2f} x the ceiling"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
