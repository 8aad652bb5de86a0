"""Backend ``kafka``'s read-only view of other slots for ``bridge.election.agreement``: a
slot's holder is the member of its group assigned partition 0, its last record the last
record of its election topic."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from bridge.config import Settings, slot_name
from bridge.election.agreement import SlotView
from bridge.election.kafkagroup import PARTITION, describe_leader, election_client_config
from bridge.election.kafkalog import READ_S, log_reader_props, read_last_record


class KafkaPeek:
    """Reads other slots' election topics and groups; its clients are made on first use."""

    def __init__(self, settings: Settings) -> None:
        self._kafka, self._election = settings.kafka, settings.election
        self._clients: tuple[AdminClient, Consumer] | None = None

    def views(self, slots: Iterable[int]) -> dict[int, SlotView]:
        admin, reader = self._open()
        e = self._election
        existing = admin.list_topics(timeout=READ_S).topics
        out: dict[int, SlotView] = {}
        for slot in slots:
            topic = slot_name(e.topic, slot)
            if topic not in existing:
                continue
            tp = TopicPartition(topic, PARTITION)
            low, high = reader.get_watermark_offsets(tp, timeout=READ_S, cached=False)
            last = read_last_record(reader, topic, low, high)
            holder = describe_leader(admin, slot_name(e.group_id, slot), topic)
            out[slot] = SlotView(holder, last)
        return out

    def close(self) -> None:
        if self._clients is not None:
            self._clients[1].close()
            self._clients = None

    def _open(self) -> tuple[AdminClient, Consumer]:
        if self._clients is None:
            who = f"{self._election.identity}.slot-peek"
            props = log_reader_props(f"{self._election.group_id}.peek")
            self._clients = (
                AdminClient(election_client_config(self._kafka, who, {})),
                Consumer(election_client_config(self._kafka, who, props)),
            )
        return self._clients
