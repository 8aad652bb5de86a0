"""The ``livestream-bridge`` command.

Exit codes (also in the README):
    0  stopped cleanly
    1  unexpected error (a bug, or an unexpected Kafka failure)
    2  configuration error: bad setting, Kafka refused credentials, topic missing
    3  Live Stream refused us for good: 400/403/405/406/505, persistent 404, IMS refused
       credentials (424, stream not enabled for the latest API version, is retried instead)
    4  election backend unusable
  130  interrupted twice

``health`` and ``status`` exit 0 when the local replica answered (healthy), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeGuard

from bridge import __version__
from bridge.config import INSECURE_HTTP_VAR, Settings, cleartext_urls
from bridge.configload import load_settings, masked
from bridge.errors import (
    AuthError,
    ConfigError,
    ElectionError,
    FatalUpstreamError,
    KafkaSetupError,
)

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_UPSTREAM, EXIT_ELECTION = 0, 1, 2, 3, 4


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    code: int = args.handler(args)
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livestream-bridge",
        description="Adobe Analytics Live Stream to Kafka, as a hot-standby pair.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", default=".env", help="optional .env file (default .env)")
    sub = parser.add_subparsers(dest="command", parser_class=_LazyParser)
    sub.add_parser("run", help="run the bridge").set_defaults(handler=_run)
    sub.add_parser(
        "check-config", help="validate settings and print them with secrets masked"
    ).set_defaults(handler=_check_config)
    tail = sub.add_parser("tail", help="print hits from the topic as they arrive")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=0, help="stop after this many (0: never)")
    tail.set_defaults(handler=_tail)
    health = sub.add_parser("health", help="exit 0 when the local bridge is healthy")
    health.add_argument("--url", default=None, help="default: http://127.0.0.1:$BRIDGE_HTTP__PORT")
    health.set_defaults(handler=_health)
    status = sub.add_parser("status", help="print the local bridge's /status as a table")
    status.add_argument("--url", default=None, help="default: http://127.0.0.1:$BRIDGE_HTTP__PORT")
    status.set_defaults(handler=_status)
    simulate = sub.add_parser(
        "simulate", help="run the Live Stream simulator", add_arguments=_simulator_flags
    )
    simulate.set_defaults(handler=_simulate)
    return parser


class _LazyParser(argparse.ArgumentParser):
    """A subcommand's parser that adds its arguments only when that subcommand is parsed,
    so ``run`` never imports what only ``simulate`` needs (the simulator is no part of the
    bridge)."""

    def __init__(
        self,
        *args: Any,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)
        return super().parse_known_args(args, namespace)


def _simulator_flags(parser: argparse.ArgumentParser) -> None:
    from livestream_sim.cli import add_arguments

    add_arguments(parser)


def _simulate(args: argparse.Namespace) -> int:
    from livestream_sim.cli import run

    return run(args)


def _settings(args: argparse.Namespace) -> Settings | int:
    try:
        return load_settings(env_file=args.env_file)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if isinstance(settings, int):
        return settings
    print(json.dumps(masked(settings), indent=2, sort_keys=True))
    for name, loopback in cleartext_urls(settings):
        # stderr, so stdout stays one JSON document for scripts.
        if loopback:
            print(f"note: {name} uses cleartext http to a loopback host", file=sys.stderr)
        else:
            print(
                f"warning: {name} uses cleartext http, allowed by {INSECURE_HTTP_VAR}: "
                "credentials travel unencrypted",
                file=sys.stderr,
            )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if isinstance(settings, int):
        return settings
    from bridge.logs import EventLog, configure_logging
    from bridge.secrets import Secrets, secret_values
    from bridge.service import Bridge

    # One instance for the whole process: tokens the bridge fetches join the configured
    # secrets, and the log redactor sees them from then on.
    secrets = Secrets(secret_values(settings))
    configure_logging(settings.log.format, settings.log.level, secrets)
    log = EventLog("bridge.cli")
    for name, loopback in cleartext_urls(settings):
        if not loopback:
            log.warning("config.insecure_url", variable=name, allowed_by=INSECURE_HTTP_VAR)
    stop = threading.Event()
    _install_signals(stop)
    try:
        Bridge(settings, secrets=secrets).run(stop)
    except (KafkaSetupError, ConfigError) as exc:
        log.error("bridge.config_error", error=str(exc))
        return EXIT_CONFIG
    except (FatalUpstreamError, AuthError) as exc:
        log.error("bridge.upstream_fatal", error=str(exc))
        return EXIT_UPSTREAM
    except ElectionError as exc:
        log.error("bridge.election_error", error=str(exc))
        return EXIT_ELECTION
    except Exception as exc:
        log.error("bridge.crashed", error=f"{type(exc).__name__}: {exc}")
        return EXIT_ERROR
    return EXIT_OK


def _install_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(130)  # a second signal: the operator wants out now
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _tail(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if isinstance(settings, int):
        return settings
    from confluent_kafka import Consumer, KafkaError

    stop = threading.Event()
    _install_signals(stop)
    conf = settings.kafka.client_config()
    conf.update(
        {
            "group.id": f"livestream-bridge-tail-{os.getpid()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
        }
    )
    consumer = Consumer(conf)
    consumer.subscribe([settings.kafka.topic])
    seen = 0
    try:
        while not stop.is_set() and (args.max == 0 or seen < args.max):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    print(f"tail: {error}", file=sys.stderr)
                continue
            seen += 1
            headers = dict(msg.headers() or [])
            hit = _text(headers.get("hit-id"))
            print(f"p{msg.partition()}@{msg.offset()} hit={hit} key={_text(msg.key())}", flush=True)
    finally:
        consumer.close()
    return EXIT_OK


def _text(value: str | bytes | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _local_url(path: str) -> str:
    return f"http://127.0.0.1:{os.environ.get('BRIDGE_HTTP__PORT', '8080')}{path}"


def _health(args: argparse.Namespace) -> int:
    url = args.url or _local_url("/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - local probe URL
            return EXIT_OK if answer.status == 200 else EXIT_ERROR
    except OSError as exc:
        print(f"health: {url}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _status(args: argparse.Namespace) -> int:
    url = args.url or _local_url("/status")
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - local probe URL
            doc = json.loads(answer.read())
    except (OSError, ValueError) as exc:  # HTTPError (a non-2xx answer) is an OSError
        print(f"status: {url}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not isinstance(doc, dict):
        print(f"status: {url}: not a JSON object", file=sys.stderr)
        return EXIT_ERROR
    print(status_table(doc, time.time()))
    return EXIT_OK


# /status keys with a row of their own below; every other key is printed as it comes, so
# what a newer replica adds to /status shows without a change here.
_SHOWN = frozenset(
    {
        "identity",
        "role",
        "role_since",
        "seconds_in_role",
        "leader",
        "slot",
        "term",
        "upstream",
        "last_record_at",
        "freshness",
        "newest_committed_hit_at",
        "newest_committed_hit_age_s",
        "ready",
        "stale_loops",
        "version",
    }
)


def status_table(doc: dict[str, Any], now: float) -> str:
    """A replica's /status as ``label  value`` lines: role, slot, upstream state, last
    record age, freshness, then whatever else it holds, tables (counters first) last."""
    role = _plain(doc.get("role"))
    if _is_number(doc.get("seconds_in_role")):
        role += f" (for {_duration(doc['seconds_in_role'])})"
    rows = [("replica", _plain(doc.get("identity"))), ("role", role)]
    rows.append(("leader", _plain(doc.get("leader"))))
    rows += [(key, _plain(doc[key])) for key in ("slot", "term") if key in doc]
    rows.append(("upstream", _plain(doc.get("upstream"))))
    rows.append(("last record", _ago(doc.get("last_record_at"), now)))
    rows.append(("freshness", _freshness(doc, now)))
    rows.append(("ready", _plain(doc.get("ready"))))
    rows.append(("stale loops", _plain(doc.get("stale_loops") or ["none"])))
    rows.append(("version", _plain(doc.get("version"))))
    others = sorted((k, v) for k, v in doc.items() if k not in _SHOWN or isinstance(v, dict))
    rows += [(k.replace("_", " "), _plain(v)) for k, v in others if not isinstance(v, dict)]
    tables = [(k, v) for k, v in others if isinstance(v, dict)]
    tables.sort(key=lambda kv: kv[0] != "counters")
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    for title, table in tables:
        lines.append(f"{title.replace('_', ' ')}:")
        inner = max((len(str(k)) for k in table), default=0)
        lines += [f"  {k!s:<{inner}}  {_plain(v)}" for k, v in table.items()]
    return "\n".join(lines)


def _freshness(doc: dict[str, Any], now: float) -> str:
    """The newest committed hit's age, from whichever form /status gives it in."""
    age = doc.get("newest_committed_hit_age_s")
    if not _is_number(age) and _is_number(doc.get("newest_committed_hit_at")):
        age = now - doc["newest_committed_hit_at"]
    if _is_number(age):
        return f"newest committed hit {_duration(age)} old"
    freshness = doc.get("freshness")
    return "-" if isinstance(freshness, dict) else _plain(freshness)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ago(stamp: object, now: float) -> str:
    if not _is_number(stamp):
        return "never"
    return f"{_duration(max(0.0, now - stamp))} ago"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plain(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) else f"{value:.3f}".rstrip("0")
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "-"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
