"""Backend ``kubernetes``'s read-only view of other slots for
``bridge.election.agreement``: a slot's holder is its Lease's ``holderIdentity`` while the
Lease is renewed, its last record the Lease's last-event annotation."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from bridge.config import Settings, slot_name
from bridge.election.agreement import SlotView
from bridge.election.kubeapi import SA_DIR, Json, LeaseApi
from bridge.election.kubernetes import last_event
from bridge.errors import ElectionError

# Another pod's renewTime is read against our wall clock (there is nothing else to read it
# against); this margin absorbs clock skew between nodes.
SKEW_S = 5.0


class KubePeek:
    """GETs other slots' Leases (the chart's Role grants get on all eight names)."""

    def __init__(self, settings: Settings, sa_dir: Path = SA_DIR) -> None:
        self._cfg, self._sa_dir = settings.election, sa_dir
        self._api: LeaseApi | None = None

    def views(self, slots: Iterable[int]) -> dict[int, SlotView]:
        if self._api is None:
            self._api = LeaseApi(self._cfg, self._cfg.identity, 5.0, self._sa_dir)
        out: dict[int, SlotView] = {}
        for slot in slots:
            resp = self._api.get(name=slot_name(self._cfg.lease_name, slot))
            if resp.status_code == 404:
                continue
            if resp.status_code != 200:
                raise ElectionError(f"reading the Lease of slot {slot}: HTTP {resp.status_code}")
            out[slot] = _view(resp.json())
        return out

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None


def _view(lease: Json) -> SlotView:
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renewed = _unix(spec.get("renewTime"))
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if holder is not None and renewed is not None and time.time() > renewed + duration + SKEW_S:
        holder = None  # expired: its holder is gone
    return SlotView(holder, last_event(lease)[1])


def _unix(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
