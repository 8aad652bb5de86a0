"""The Live Stream simulator over real loopback sockets (livestream_sim: server, streams,
wire, cli)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from livestream_sim import Simulator, SimulatorConfig
from livestream_sim.cli import add_arguments, main
from livestream_sim.fakehits import hit_id_low
from tests.test_container import DOCKERFILE, DOCKERIGNORE, parse_dockerfile
from tests.testutil import wait_until

DEADLINE_S = 10.0
ROOT = Path(__file__).resolve().parent.parent
StartSim = Callable[..., Simulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators with SimulatorConfig overrides; all are stopped at teardown."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> Simulator:
            overrides.setdefault("corpus_size", 1024)
            return stack.enter_context(Simulator(SimulatorConfig(**overrides)))

        yield start


def token(sim: Simulator) -> str:
    form = {"grant_type": "client_credentials", "client_id": "sim-client"}
    form |= {"client_secret": "sim-secret", "scope": "openid,AdobeID"}
    answer = httpx.post(sim.token_url, data=form)
    assert answer.status_code == 200
    return str(answer.json()["access_token"])


class Raw:
    """A hand-written HTTP/1.1 client for one request, decoding chunked + gzip itself, so
    tests control exactly how the connection is read and closed."""

    def __init__(self, url: str, target: str, headers: dict[str, str], *, version: str = "1.1"):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
        weakref.finalize(self, self.sock.close)
        lines = [f"GET {target} HTTP/{version}", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw, self.eof = b"", False
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ")[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.inflater = zlib.decompressobj(47)
        self.text = b""
        self.lines: list[bytes] = []  # every record, empty ones included
        self.chunks = 0
        self.mid_record_chunk_ends = 0

    def _recv(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            self.eof = True
            raise EOFError
        self.raw += data

    def body_json(self) -> dict[str, Any]:
        length = int(self.headers["content-length"])
        while len(self.raw) < length:
            self._recv()
        body = orjson.loads(self.raw[:length])
        assert isinstance(body, dict)
        return body

    def _parse(self) -> None:
        while (end := self.raw.find(b"\r\n")) >= 0:
            size = int(self.raw[:end], 16)
            if len(self.raw) < end + 2 + size + 2:
                return
            data = self.raw[end + 2 : end + 2 + size]
            self.raw = self.raw[end + 4 + size :]
            self.chunks += 1
            self.text += self.inflater.decompress(data)
            *lines, self.text = self.text.split(b"\r\n")
            self.lines += lines
            self.mid_record_chunk_ends += bool(self.text)

    @property
    def records(self) -> list[bytes]:
        return [line for line in self.lines if line]

    def hits(self) -> list[bytes]:
        """The records that are valid hits (malformed lines left out)."""
        return [r for r in self.records if hit_id(r)]

    def hit_ids(self) -> list[str]:
        return [i for i in map(hit_id, self.records) if i]

    def read(self, count: int) -> list[bytes]:
        """Read until at least ``count`` non-empty records arrived."""
        deadline = time.monotonic() + DEADLINE_S
        self._parse()
        while len(self.records) < count:
            assert time.monotonic() < deadline, f"only {len(self.records)} of {count} records"
            self._recv()
            self._parse()
        return self.records

    def read_to_eof(self) -> list[bytes]:
        """Read (and decode what can be) until the server closes."""
        try:
            while True:
                self._recv()
                self._parse()
        except EOFError:
            self._parse()
        return self.records

    def close_clean(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()

    def vanish(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def hit_id(record: bytes) -> str | None:
    try:
        hit = orjson.loads(record)
    except orjson.JSONDecodeError:
        return None
    return f"{hit['hitIdHigh']}:{hit['hitIdLow']}" if isinstance(hit, dict) else None


def open_stream(sim: Simulator, query: str = "", **extra: str) -> Raw:
    headers = {"Authorization": f"Bearer {token(sim)}", "Accept-Encoding": "gzip"} | extra
    target = f"/api/1/stream/{sim.config.stream_name}{query}"
    return Raw(sim.base_url, target, {k: v for k, v in headers.items() if v})


# -- status codes ----------------------------------------------------------------------


def test_token_endpoint_issues_tokens_and_refuses_bad_clients(start_sim: StartSim) -> None:
    """The token endpoint answers 401 invalid_client for wrong credentials, 503 in
    token_down mode, 200 with a bearer token otherwise, and counts every request."""
    sim = start_sim()
    bad = httpx.post(sim.token_url, data={"grant_type": "client_credentials", "client_id": "x"})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    sim.set_mode("token_down")
    assert httpx.post(sim.token_url, data={}).status_code == 503
    sim.set_mode("normal")
    form = {"grant_type": "client_credentials", "client_id": "sim-client"}
    answer = httpx.post(sim.token_url, data=form | {"client_secret": "sim-secret"}).json()
    assert answer["token_type"] == "bearer" and answer["expires_in"] == 86400
    assert sim.state()["token_requests"] == 3


@pytest.mark.parametrize(
    "query",
    [
        "?maxConnections=9",
        "?maxConnections=0",
        "?maxConnections=two",
        "?reset=middle",
        "?reset=oldest",
        "?beta=maybe",
        "?smoothingBucketSize=0",
        "?smoothingBucketSize=7201",
    ],
)
def test_400_for_bad_parameters(start_sim: StartSim, query: str) -> None:
    """Bad maxConnections, reset or smoothingBucketSize values get 400 with a description."""
    stream = open_stream(start_sim(), query)
    assert stream.status == 400
    assert "error_description" in stream.body_json()


def test_401_for_missing_unknown_and_expired_tokens(start_sim: StartSim) -> None:
    """No token, an unknown token, and an expired token all get 401."""
    sim = start_sim()
    assert open_stream(sim, Authorization="").status == 401
    assert open_stream(sim, Authorization="Bearer nope").status == 401
    good = token(sim)
    sim.expire_tokens()
    expired = open_stream(sim, Authorization=f"Bearer {good}")
    assert expired.status == 401 and "expired" in expired.body_json()["error_description"]


def test_tokens_really_expire_after_expires_in(start_sim: StartSim) -> None:
    """A token stops working once token_expires_in seconds have passed."""
    sim = start_sim(token_expires_in=1)
    bearer = f"Bearer {token(sim)}"
    assert open_stream(sim, Authorization=bearer).status == 200
    sim.drop_connections()
    wait_until(
        lambda: open_stream(sim, Authorization=bearer).status == 401, DEADLINE_S, "token expiry"
    )


def test_404_405_406(start_sim: StartSim) -> None:
    """An unknown stream name is 404, a POST on the stream path 405, no gzip 406."""
    sim = start_sim()
    headers = {"Authorization": f"Bearer {token(sim)}", "Accept-Encoding": "gzip"}
    assert Raw(sim.base_url, "/api/1/stream/other", headers).status == 404
    posted = httpx.post(sim.stream_url, headers=headers)
    assert posted.status_code == 405 and posted.json()["error"] == "method_not_allowed"
    assert open_stream(sim, **{"Accept-Encoding": "identity"}).status == 406
    assert open_stream(sim, **{"Accept-Encoding": "gzip;q=0, identity"}).status == 406
    assert [a["status"] for a in sim.attempts()] == [404, 405, 406, 406]


def test_505_for_http_1_0(start_sim: StartSim) -> None:
    """An HTTP/1.0 request on the stream path gets 505."""
    sim = start_sim()
    headers = {"Authorization": f"Bearer {token(sim)}", "Accept-Encoding": "gzip"}
    answer = Raw(sim.base_url, "/api/1/stream/demo", headers, version="1.0")
    assert answer.status == 505


def test_409_when_all_connections_are_taken(start_sim: StartSim) -> None:
    """A second client with maxConnections=1 gets 409 with an error_description."""
    sim = start_sim()
    first = open_stream(sim)
    assert first.status == 200
    second = open_stream(sim)
    assert second.status == 409
    assert "in use" in second.body_json()["error_description"]


def test_409_when_clients_disagree_on_max_connections(start_sim: StartSim) -> None:
    """A client asking maxConnections=3 while one with 2 is live gets 409."""
    sim = start_sim()
    live = open_stream(sim, "?maxConnections=2")
    assert live.status == 200
    refused = open_stream(sim, "?maxConnections=3")
    assert refused.status == 409
    assert "differs" in refused.body_json()["error_description"]


def test_status_mode_refuses_new_streams_but_keeps_live_ones(start_sim: StartSim) -> None:
    """In status mode new GETs get that code with a JSON error while a live stream goes on."""
    sim = start_sim(rate=200, max_connections_allowed=2)
    live = open_stream(sim, "?maxConnections=2")
    live.read(5)
    for code in (503, 500, 409, 404):
        sim.set_mode("status", code=code)
        refused = open_stream(sim, "?maxConnections=2")
        assert refused.status == code
        assert set(refused.body_json()) == {"error", "error_description"}
    live.read(len(live.records) + 20)
    sim.set_mode("normal")
    assert open_stream(sim, "?maxConnections=2").status == 200


def test_302_to_the_second_port_keeps_the_query(start_sim: StartSim) -> None:
    """With redirect on, the main port answers 302 to the same path and query on the
    second port, which then streams."""
    sim = start_sim(redirect=True, redirect_port=0)
    moved = open_stream(sim, "?maxConnections=1&reset=smallest")
    assert moved.status == 302
    location = moved.headers["location"]
    assert location.endswith("/api/1/stream/demo?maxConnections=1&reset=smallest")
    assert location != sim.base_url and not location.startswith(sim.base_url + "/")
    base, _, target = location.partition("/api/")
    headers = {"Authorization": f"Bearer {token(sim)}", "Accept-Encoding": "gzip"}
    followed = Raw(base, "/api/" + target, headers)
    assert followed.status == 200
    assert followed.read(3)


# -- ghosts and clean closes -------------------------------------------------------------


def test_vanished_client_leaves_a_ghost_slot_until_ghost_s(start_sim: StartSim) -> None:
    """A client that disappears with a RST keeps its slot (409) until ghost_s has passed."""
    sim = start_sim(ghost_s=1.0)
    gone = open_stream(sim)
    gone.read(1)
    gone.vanish()
    wait_until(lambda: sim.live_connections() == 0, DEADLINE_S, "the server to notice the reset")
    started = time.monotonic()
    refused = open_stream(sim)
    assert refused.status == 409
    assert "1 held by vanished clients" in refused.body_json()["error_description"]
    wait_until(lambda: open_stream(sim).status == 200, DEADLINE_S, "the ghost to expire")
    assert time.monotonic() - started > 0.5
    assert "vanished" in sim.attempts()[0]["reason"]


def test_clean_close_frees_the_slot_at_once(start_sim: StartSim) -> None:
    """A client that half-closes (FIN) releases its slot immediately: no ghost, no 409."""
    sim = start_sim(ghost_s=600)
    first = open_stream(sim)
    first.read(2)
    first.close_clean()
    wait_until(lambda: sim.live_connections() == 0, DEADLINE_S, "the server to see the FIN")
    assert open_stream(sim).status == 200
    assert sim.attempts()[0]["reason"] == "client closed cleanly (FIN)"


def test_server_drop_mid_chunk_frees_the_slot(start_sim: StartSim) -> None:
    """drop_connections closes live streams inside a chunk, with no final chunk, and the
    slot is free at once."""
    sim = start_sim(ghost_s=600)
    stream = open_stream(sim)
    stream.read(2)
    sim.drop_connections(mid_chunk=True)
    assert sim.live_connections() == 0
    stream.read_to_eof()
    assert stream.raw and not stream.raw.startswith(b"0\r\n")  # cut inside a chunk
    assert open_stream(sim).status == 200


# -- the records -----------------------------------------------------------------------


def test_records_decode_and_match_emitted_ids(start_sim: StartSim) -> None:
    """A 200 stream is chunked gzip JSON, records span chunks, and the hit ids read equal
    emitted_hit_ids() in order."""
    sim = start_sim(rate=300)
    stream = open_stream(sim)
    assert stream.status == 200
    assert stream.headers["content-encoding"] == "gzip"
    assert stream.headers["transfer-encoding"] == "chunked"
    assert stream.headers["content-type"] == "application/json"
    stream.read(150)
    sim.drop_connections()
    stream.read_to_eof()
    ids = stream.hit_ids()
    assert ids == sim.emitted_hit_ids()
    assert len(set(ids)) == len(ids)
    assert stream.mid_record_chunk_ends > 0


def test_malformed_empty_and_big_records(start_sim: StartSim) -> None:
    """malformed_every and empty_every show up on the wire, and big_record sends one
    valid hit of exactly the size asked."""
    sim = start_sim(rate=300, malformed_every=5, empty_every=4)
    stream = open_stream(sim)
    stream.read(30)
    sim.set_mode("big_record", size=200_000)
    wait_until(
        lambda: any(len(r) == 200_000 for r in stream.read(len(stream.records) + 1)),
        DEADLINE_S,
        "big",
    )
    big = next(r for r in stream.records if len(r) == 200_000)
    assert "hitIdLow" in orjson.loads(big)
    assert b"" in stream.lines
    bad = 0
    for record in stream.records:
        try:
            bad += not isinstance(orjson.loads(record), dict)
        except orjson.JSONDecodeError:
            bad += 1
    assert bad >= len(stream.records) // 6


def test_resume_replays_duplicates_and_loses_nothing(start_sim: StartSim) -> None:
    """A reconnect within the window re-sends the last replay_on_resume records and then
    continues, so the two connections together hold every emitted hit."""
    sim = start_sim(rate=400, replay_on_resume=5)
    first = open_stream(sim)
    first.read(60)
    sim.drop_connections(mid_chunk=True)
    first.read_to_eof()
    second = open_stream(sim)
    second.read(60)
    sim.drop_connections(mid_chunk=True)
    second.read_to_eof()
    a, b = first.hit_ids(), second.hit_ids()
    assert set(b[:5]) <= set(a)  # the replayed duplicates
    emitted = sim.emitted_hit_ids()
    assert len(emitted) == len(set(emitted))
    assert set(emitted) <= set(a) | set(b)
    assert len(emitted) >= 100


@pytest.mark.parametrize("reset", ["largest", "latest"])
def test_reset_largest_skips_what_was_produced_meanwhile(start_sim: StartSim, reset: str) -> None:
    """reset=largest (or latest, the newer spelling) starts with records produced after the
    connect: no replay, and what was produced while nobody was connected is never sent."""
    sim = start_sim(rate=400)
    first = open_stream(sim)
    first.read(20)
    sim.drop_connections(mid_chunk=False)
    first.read_to_eof()
    produced = sim.state()["produced"]
    wait_until(lambda: sim.state()["produced"] > produced + 40, DEADLINE_S, "more production")
    high = int(first.hit_ids()[0].split(":")[0])
    before = {f"{high}:{hit_id_low(high, seq)}" for seq in range(sim.state()["produced"])}
    second = open_stream(sim, f"?reset={reset}")
    second.read(20)
    assert not set(second.hit_ids()) & before


@pytest.mark.parametrize("reset", ["smallest", "earliest"])
def test_reset_smallest_starts_at_the_oldest_retained(start_sim: StartSim, reset: str) -> None:
    """reset=smallest (or earliest) starts again at the oldest retained record, even right
    after a client that already read it."""
    sim = start_sim(rate=400)
    first = open_stream(sim)
    first.read(20)
    sim.drop_connections(mid_chunk=False)
    first.read_to_eof()
    second = open_stream(sim, f"?reset={reset}")
    second.read(20)
    assert second.hit_ids()[:20] == first.hit_ids()[:20]


def test_hits_produced_before_the_first_client_are_delivered(start_sim: StartSim) -> None:
    """The first client gets what was produced while nobody was connected, from seq 0."""
    sim = start_sim(rate=400)
    wait_until(lambda: sim.state()["produced"] >= 50, DEADLINE_S, "production before any client")
    stream = open_stream(sim)
    stream.read(50)
    high = int(stream.hit_ids()[0].split(":")[0])
    assert stream.hit_ids()[:50] == [f"{high}:{hit_id_low(high, seq)}" for seq in range(50)]


def test_reconnect_after_the_resume_window_loses_the_gap(start_sim: StartSim) -> None:
    """Past resume_window_s a reconnect gets only new records: no replay, the gap is lost."""
    sim = start_sim(rate=400, resume_window_s=0.0)
    first = open_stream(sim)
    first.read(20)
    sim.drop_connections(mid_chunk=False)
    first.read_to_eof()
    produced = sim.state()["produced"]
    wait_until(lambda: sim.state()["produced"] > produced + 20, DEADLINE_S, "more production")
    second = open_stream(sim)
    second.read(20)
    sim.drop_connections(mid_chunk=False)
    second.read_to_eof()
    emitted = sim.emitted_hit_ids()
    assert emitted == first.hit_ids() + second.hit_ids()
    assert sim.state()["produced"] > len(emitted) + 20


def test_total_hits_then_silence_and_pause(start_sim: StartSim) -> None:
    """Production stops after total_hits hits while the stream stays open; in pause mode
    nothing new is produced either; emitted_records gives each record byte for byte."""
    sim = start_sim(rate=0, total_hits=300, malformed_every=7)
    stream = open_stream(sim)
    stream.read(300 + 49)  # every 7th record is malformed; the 350th is never produced
    wait_until(lambda: len(sim.emitted_hit_ids()) == 300, DEADLINE_S, "all hits emitted")
    stream.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        stream._recv()
    assert sim.live_connections() == 1
    records = sim.emitted_records()
    assert list(records.values()) == stream.hits()
    assert list(records) == stream.hit_ids()

    paused = start_sim(rate=500)
    paused.set_mode("pause")
    produced = paused.state()["produced"]
    live = open_stream(paused)
    live.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        live.read(produced + 1)
    assert paused.state()["produced"] == produced


def test_deflate_only_clients_get_a_deflate_stream(start_sim: StartSim) -> None:
    """A client accepting only deflate gets Content-Encoding: deflate (zlib) records."""
    sim = start_sim(rate=300)
    stream = open_stream(sim, **{"Accept-Encoding": "deflate"})
    assert stream.status == 200 and stream.headers["content-encoding"] == "deflate"
    assert len(stream.read(10)) >= 10


def test_two_connections_split_hits_by_visitor(start_sim: StartSim) -> None:
    """With maxConnections=2 each client gets its own visitors' hits: no overlap, and
    together every emitted hit."""
    sim = start_sim(rate=500, max_connections_allowed=2)
    clients = [open_stream(sim, "?maxConnections=2") for _ in range(2)]
    assert [c.status for c in clients] == [200, 200]
    for client in clients:
        client.read(80)
    sim.drop_connections(mid_chunk=False)
    owners: dict[str, int] = {}
    ids = []
    for n, client in enumerate(clients):
        client.read_to_eof()
        ids.append(set(client.hit_ids()))
        for record in client.records:
            hit = orjson.loads(record)
            visitor = f"{hit.get('visIdHigh', hit.get('mcVisIdHigh'))}"
            assert owners.setdefault(visitor, n) == n
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(sim.emitted_hit_ids())
    assert sim.max_concurrent_connections() == 2


def test_rate_zero_serves_as_fast_as_read(start_sim: StartSim) -> None:
    """rate=0 serves pre-generated records as fast as the client reads, fresh ids each pass."""
    sim = start_sim(rate=0, corpus_size=2000)
    stream = open_stream(sim)
    records = stream.read(30_000)
    ids = stream.hit_ids()
    assert len(set(ids)) == len(ids) >= 30_000
    assert all(isinstance(orjson.loads(r), dict) for r in records[::97])


def test_stall_then_resume_sending(start_sim: StartSim) -> None:
    """In stall mode a live stream sends no bytes yet stays open; back in normal it goes on."""
    sim = start_sim(rate=300)
    stream = open_stream(sim)
    stream.read(5)
    sim.set_mode("stall")
    stream.sock.settimeout(0.3)
    deadline = time.monotonic() + DEADLINE_S
    with pytest.raises(TimeoutError):  # bytes already in flight drain, then silence
        while time.monotonic() < deadline:
            stream._recv()
    assert sim.live_connections() == 1
    stream.sock.settimeout(DEADLINE_S)
    sim.set_mode("normal")
    stream.read(len(stream.records) + 10)


@pytest.mark.parametrize("mode", ["garbage", "truncate"])
def test_garbage_and_truncate_end_the_stream(start_sim: StartSim, mode: str) -> None:
    """garbage sends bytes no inflater accepts, truncate cuts the gzip stream mid-block;
    both then close the connection and free the slot."""
    sim = start_sim(rate=300)
    stream = open_stream(sim)
    stream.read(5)
    sim.set_mode(mode)
    if mode == "garbage":
        with pytest.raises(zlib.error):
            stream.read_to_eof()
    else:
        stream.read_to_eof()
        assert stream.eof and stream.raw == b""  # complete chunks, but no final one
    wait_until(lambda: sim.live_connections() == 0, DEADLINE_S, "the stream to end")
    assert sim.attempts()[-1]["reason"].startswith("fault:")


def test_admin_http_view_and_mode(start_sim: StartSim) -> None:
    """GET /admin/state reports the run, POST /admin/mode changes the fault mode."""
    sim = start_sim(rate=300)
    stream = open_stream(sim)
    stream.read(10)
    state = httpx.get(sim.base_url + "/admin/state").json()
    assert {"emitted", "attempts", "live_connections", "max_concurrent", "token_requests"} <= set(
        state
    )
    assert state["live_connections"] == 1 and state["token_requests"] == 1
    assert state["attempts"][0]["status"] == 200 and state["attempts"][0]["duration_s"] is None
    changed = httpx.post(sim.base_url + "/admin/mode", json={"mode": "status", "code": 503})
    assert changed.status_code == 200
    assert open_stream(sim).status == 503
    assert httpx.post(sim.base_url + "/admin/mode", json={"mode": "nope"}).status_code == 400


def test_livestream_sim_console_entry_is_the_cli_main() -> None:
    """pyproject's `livestream-sim` script names livestream_sim.cli.main, and the image
    installs the package: setuptools finds it, the builder copies it in before the install,
    and .dockerignore keeps it in the build context."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, name = project["project"]["scripts"]["livestream-sim"].partition(":")
    assert getattr(importlib.import_module(module), name) is main
    assert "livestream_sim*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    builder = [(i.keyword, i.args) for i in parse_dockerfile(DOCKERFILE.read_text())[0]]
    copied = builder.index(("COPY", "livestream_sim/ ./livestream_sim/"))
    assert any(k == "RUN" and "--no-deps" in a for k, a in builder[copied:])
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert "livestream_sim" not in ignored


def test_add_arguments_covers_every_field() -> None:
    """Every SimulatorConfig field has a flag, with the right type."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--rate", "0", "--ghost-s", "2.5", "--no-split-records"])
    assert args.rate == 0.0 and args.ghost_s == 2.5 and args.split_records is False
    assert args.redirect_port is None and args.total_hits is None
    assert parser.parse_args(["--redirect-port", "0"]).redirect_port == 0
    assert vars(parser.parse_args([])) == vars(SimulatorConfig())


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["-m", "livestream_sim"], ["-m", "bridge.cli", "simulate"]],
    ids=["python-m-livestream_sim", "livestream-bridge-simulate"],
)
def test_run_prints_urls_and_stops_on_sigterm(command: list[str]) -> None:
    """`python -m livestream_sim` and `livestream-bridge simulate` print the three URLs and
    exit 0 on SIGTERM."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, *command, "--rate", "5"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        urls = [process.stdout.readline().strip() for _ in range(3)]
        assert urls[0].endswith("/api/1/stream/demo")
        assert urls[1].endswith("/ims/token/v3")
        assert httpx.get(urls[2]).json()["live_connections"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


# -- Live Stream's 2026 API changes ------------------------------------------------------


def test_api_2_path_and_beta_query_are_served(start_sim: StartSim) -> None:
    """/api/2/stream/<name>, with or without ?beta=true, streams like /api/1; the attempt
    records the target as asked; other versions or names are 404."""
    sim = start_sim(rate=300)
    headers = {"Authorization": f"Bearer {token(sim)}", "Accept-Encoding": "gzip"}
    beta = Raw(sim.base_url, "/api/2/stream/demo?beta=true&reset=earliest", headers)
    assert beta.status == 200
    beta.read(5)
    assert all(hit_id(r) for r in beta.hits())
    assert sim.attempts()[0]["target"] == "/api/2/stream/demo?beta=true&reset=earliest"
    sim.drop_connections()
    assert Raw(sim.base_url, "/api/2/stream/demo", headers).status == 200
    sim.drop_connections()
    assert Raw(sim.base_url, "/api/2/stream/other", headers).status == 404
    assert Raw(sim.base_url, "/api/3/stream/demo", headers).status == 404


def test_not_enabled_mode_answers_424_until_the_enable_call(start_sim: StartSim) -> None:
    """In not_enabled mode stream GETs get 424 with an error_description; GET
    /api/2/enable/<name> needs GET, the stream's name and a valid token, then ends it."""
    sim = start_sim(rate=100)
    sim.set_mode("not_enabled")
    refused = open_stream(sim)
    assert refused.status == 424
    assert "not enabled for the latest API version" in refused.body_json()["error_description"]
    enable = f"{sim.base_url}/api/2/enable/{sim.config.stream_name}"
    bearer = {"Authorization": f"Bearer {token(sim)}"}
    assert httpx.get(enable).status_code == 401
    assert httpx.post(enable, headers=bearer).status_code == 405
    assert httpx.get(f"{sim.base_url}/api/2/enable/other", headers=bearer).status_code == 404
    assert open_stream(sim).status == 424  # none of those enabled it
    answer = httpx.get(enable, headers=bearer)
    assert answer.status_code == 200 and answer.json()["enabled"] is True
    assert sim.state()["mode"] == "normal" and sim.state()["enable_requests"] == 4
    assert open_stream(sim).status == 200


def test_migrating_mode_answers_503_with_adobes_description(start_sim: StartSim) -> None:
    """In migrating mode new streams get 503 "stream is migrating, try again" until the
    mode changes; a live stream goes on."""
    sim = start_sim(rate=200, max_connections_allowed=2)
    live = open_stream(sim, "?maxConnections=2")
    live.read(5)
    sim.set_mode("migrating")
    refused = open_stream(sim, "?maxConnections=2")
    assert refused.status == 503
    assert refused.body_json()["error_description"] == "stream is migrating, try again"
    live.read(len(live.records) + 10)
    sim.set_mode("normal")
    assert open_stream(sim, "?maxConnections=2").status == 200
