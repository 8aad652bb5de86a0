"""Leader election: which replica holds the one upstream connection.

``make_election`` picks the backend named by ``election.backend``; every backend
implements ``Election`` from ``bridge.election.base``.
"""

from __future__ import annotations

import importlib

from bridge.config import Settings
from bridge.election.base import Election, Fencing, Predecessor, Term
from bridge.election.kafka import KafkaElection
from bridge.election.none import NoneElection
from bridge.errors import ElectionError
from bridge.observability import Metrics, State

__all__ = ["Election", "Fencing", "Predecessor", "Term", "make_election"]


def make_election(settings: Settings, metrics: Metrics, state: State) -> Election:
    """The election backend ``settings.election.backend`` names (not started yet)."""
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
