"""How fast does RecordDecoder turn Live Stream bytes into records?

    python bench/decode.py [--mb N] [--chunk BYTES] [--repeat R]

Builds about N MB of ~1.8 KB JSON records shaped like Live Stream hits, gzips them as one
stream, cuts the compressed bytes into chunks of 64 KiB (what one socket read gives), then
times ``RecordDecoder.feed`` over the chunks and, in the same run, a bare
``decompressobj(wbits=31).decompress`` over the same chunks, with zlib-ng (the bridge's
gunzip) and with CPython's zlib. Prints decompressed MB/s for each and the ratio (bridge /
bare zlib-ng). Best of ``--repeat`` runs each.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

from zlib_ng import zlib_ng

from bridge.decode import RecordDecoder

MB = 1_000_000


def make_record(rng: random.Random, n: int) -> bytes:
    """One JSON hit of roughly 1.8 KB with plausible field values."""
    words = ("home", "cart", "search", "product", "checkout", "account", "blog", "help")
    hit = {
        "hitIdHigh": str(rng.getrandbits(63)),
        "hitIdLow": str(rng.getrandbits(63)),
        "visIdHigh": str(rng.getrandbits(63)),
        "visIdLow": str(rng.getrandbits(63)),
        "reportSuite": "examplersid",
        "timeGMT": 1_770_000_000 + n,
        "receivedTimeGMT": 1_770_000_002 + n,
        "pageName": f"{rng.choice(words)}:{rng.choice(words)}:{rng.randrange(1000)}",
        "pageURL": f"https://www.example.com/{rng.choice(words)}/{rng.randrange(10**6)}?q=a b",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari",
        "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        "geoCountry": rng.choice(("usa", "deu", "fra", "jpn", "bra")),
        "geoCity": rng.choice(("berlin", "paris", "tokyo", "são paulo", "new york")),
        "evars": {f"evar{i}": f"{rng.choice(words)}-{rng.randrange(10**5)}" for i in range(1, 36)},
        "props": {f"prop{i}": rng.choice(words) for i in range(1, 16)},
        "events": [f"event{rng.randrange(1, 100)}" for _ in range(rng.randrange(1, 6))],
        "products": f";sku-{rng.randrange(10**5)};1;19.99",
        "referrer": f"https://search.example.net/?q={rng.choice(words)}+{rng.randrange(10**6)}",
    }
    return json.dumps(hit, ensure_ascii=False).encode()


def corpus(mb: float, seed: int = 7) -> tuple[bytes, int]:
    """About ``mb`` MB of CRLF-separated records and how many records that is."""
    rng = random.Random(seed)
    records: list[bytes] = []
    size = 0
    while size < mb * MB:
        rec = make_record(rng, len(records))
        records.append(rec)
        size += len(rec) + 2
    return b"\r\n".join(records) + b"\r\n", len(records)


def best_of(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    """The shortest of ``repeat`` timed runs, and what the run returned."""
    best, result = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=100.0, help="decompressed corpus size")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="compressed chunk size")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    args = parser.parse_args(argv)

    body, count = corpus(args.mb)
    compressed = zlib.compress(body, 6, wbits=31)
    chunks = [compressed[i : i + args.chunk] for i in range(0, len(compressed), args.chunk)]

    def bridge() -> int:
        decoder = RecordDecoder(1_000_000)
        records = 0
        for chunk in chunks:
            records += len(decoder.feed(chunk))
        return records

    def bare(decompressobj: Callable[[int], Any]) -> Callable[[], int]:
        def gunzip() -> int:
            inflate = decompressobj(31)
            total = 0
            for chunk in chunks:
                total += len(inflate.decompress(chunk))
            return total

        return gunzip

    t_bridge, records = best_of(args.repeat, bridge)
    t_bare, total = best_of(args.repeat, bare(zlib_ng.decompressobj))
    t_zlib, _ = best_of(args.repeat, bare(zlib.decompressobj))
    if records != count or total != len(body):
        print(f"mismatch: {records} records of {count}, {total} bytes of {len(body)}")
        return 1
    bridge_mbs = len(body) / MB / t_bridge
    bare_mbs = len(body) / MB / t_bare
    print(
        f"corpus: {len(body) / MB:.1f} MB, {count} records of {len(body) / count:.0f} B avg, "
        f"{len(compressed) / MB:.1f} MB gzip in {len(chunks)} chunks of {args.chunk} B"
    )
    print(f"bridge RecordDecoder.feed: {bridge_mbs:.1f} MB/s decompressed")
    print(f"bare zlib-ng decompress:   {bare_mbs:.1f} MB/s decompressed (the bridge's gunzip)")
    print(f"bare zlib decompress:      {len(body) / MB / t_zlib:.1f} MB/s decompressed (CPython's)")
    print(f"ratio bridge/zlib-ng:      {bridge_mbs / bare_mbs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
