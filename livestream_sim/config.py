"""What a simulator run can vary: one dataclass, each field also a command-line flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SimulatorConfig"]


def _opt(default: object, help_text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclass
class SimulatorConfig:
    """Everything a simulator run can vary; every field is also a command-line flag."""

    host: str = "127.0.0.1"
    port: int = _opt(0, "main port (0: a free one)")
    redirect_port: int | None = _opt(None, "open a second listener on this port (0: free)")
    redirect: bool = _opt(False, "the main port answers stream GETs with 302 to the second")
    stream_name: str = _opt("demo", "the one stream name served; others get 404")
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"  # noqa: S105 - the simulator's well-known test secret
    token_expires_in: int = _opt(86400, "token lifetime in seconds; 401 afterwards")
    rate: float = _opt(50.0, "records per second; 0: as fast as clients read")
    total_hits: int | None = _opt(None, "stop producing after this many hits")
    max_connections_allowed: int = _opt(8, "maxConnections above this gets 400")
    ghost_s: float = _opt(60.0, "how long a vanished client's slot stays taken (409)")
    write_timeout_s: float = _opt(60.0, "a write stuck this long ends the stream (a ghost)")
    resume_window_s: float = _opt(180.0, "a reconnect within this resumes where it stopped")
    replay_on_resume: int = _opt(5, "records re-sent (duplicates) on resume")
    malformed_every: int = _opt(0, "every Nth record is malformed (0: never)")
    empty_every: int = _opt(0, "every Nth record is followed by an empty one (0: never)")
    unknown_field_every: int = _opt(50, "every Nth hit has a new unknown field (0: never)")
    split_records: bool = _opt(True, "cut chunks inside records, not only between them")
    seed: int = _opt(1, "seed of the generated content")
    corpus_size: int = _opt(20000, "distinct records generated, then cycled with new ids")
    hit_bytes: int = _opt(1800, "mean JSON size of a hit (at least ~1 KB)")
