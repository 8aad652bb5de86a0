"""Leader election: which replicas hold the upstream connections (one per slot).

``make_election`` picks the backend named by ``election.backend``; every backend
implements ``Election`` from ``bridge.election.base``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from bridge.config import Settings
from bridge.election.agreement import Agreement, Peek, SlotView
from bridge.election.base import Election, Fencing, Predecessor, Term
from bridge.election.kafka import KafkaElection
from bridge.election.kafkapeek import KafkaPeek
from bridge.election.none import NoneElection
from bridge.election.slots import SlotElection
from bridge.errors import ElectionError
from bridge.observability import Metrics, State

__all__ = [
    "Agreement",
    "Election",
    "Fencing",
    "Predecessor",
    "Term",
    "make_election",
    "make_peek",
]


def make_election(settings: Settings, metrics: Metrics, state: State) -> Election:
    """The election backend ``settings.election.backend`` names (not started yet); with
    ``max_connections`` > 1, one per slot behind a ``SlotElection``."""
    if settings.livestream.max_connections > 1:
        return SlotElection(settings, metrics, state, _backend)
    return _backend(settings, metrics, state)


def _backend(settings: Settings, metrics: Metrics, state: State) -> Election:
    backend = settings.election.backend
    if backend == "none":
        return NoneElection(settings, metrics, state)
    if backend == "kafka":
        return KafkaElection(settings, metrics, state)
    if backend == "kubernetes":
        name = "bridge.election.kubernetes"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                raise ElectionError("backend kubernetes is not available in this build") from None
            raise ElectionError(f"backend kubernetes needs the missing module {exc.name}") from None
        election: Election = module.KubernetesElection(settings, metrics, state)
        return election
    raise ElectionError(f"unknown election backend {backend!r}")


class _NoPeek:
    """Backend none: a single instance, with no other slot to look at."""

    def views(self, slots: Iterable[int]) -> dict[int, SlotView]:
        return {}

    def close(self) -> None:
        pass


def make_peek(settings: Settings) -> Peek:
    """The read-only view of other slots' elections for ``settings.election.backend``."""
    backend = settings.election.backend
    if backend == "kafka":
        return KafkaPeek(settings)
    if backend == "kubernetes":  # loaded only when used, like the backend itself
        peek: Peek = importlib.import_module("bridge.election.kubepeek").KubePeek(settings)
        return peek
    return _NoPeek()
