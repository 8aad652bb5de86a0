"""The simulator's record log: the one logical stream of a report suite over a corpus."""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import Iterable

from livestream_sim.corpus import BATCH, CRLF, Corpus
from livestream_sim.fakehits import hit_id_low

__all__ = ["RETAINED_RECORDS", "RecordLog"]

RETAINED_RECORDS = 200_000


class RecordLog:
    """The one logical stream of a report suite: records at seq 0, 1, 2, ... over a corpus.

    Keeps the most recent ``RETAINED_RECORDS`` (records are virtual, so this costs only a
    timestamp table), when each was produced, and which were fully written at least once.
    Not thread-safe: the simulator calls it under its own lock.
    """

    def __init__(self, corpus: Corpus, *, total_hits: int | None) -> None:
        self.corpus = corpus
        self.next_seq = 0
        self._total = total_hits
        self._hits = 0
        self._ts_seq: list[int] = []  # first seq of each produced run ...
        self._ts_val: list[int] = []  # ... and its receivedTimeGMT
        self._pads: dict[int, int] = {}
        self._sent = bytearray()  # one bit per seq
        self._emitted = array("q")  # hit seqs in order of first emission

    @property
    def base(self) -> int:
        """The oldest retained seq."""
        return max(0, self.next_seq - RETAINED_RECORDS)

    def extend(self, count: int, now: float) -> bool:
        """Produce up to ``count`` records; False once ``total_hits`` hits exist."""
        if self._total is not None and self._hits >= self._total:
            return False
        self._ts_seq.append(self.next_seq)
        self._ts_val.append(int(now))
        for _ in range(count):
            if self._total is not None and self._hits >= self._total:
                break
            self._hits += self.corpus.is_hit(self.next_seq)
            self.next_seq += 1
        base = self.base
        if (drop := bisect.bisect_right(self._ts_seq, base) - 1) > 0:
            del self._ts_seq[:drop], self._ts_val[:drop]
        if self._pads and min(self._pads) < base:
            self._pads = {k: v for k, v in self._pads.items() if k >= base}
        return True

    def extend_to_batch_end(self, now: float) -> bool:
        """Produce up to the end of the current corpus batch, so batches stay aligned."""
        index = self.next_seq % self.corpus.size
        return self.extend(min(BATCH - index % BATCH, self.corpus.size - index), now)

    def take(self, pos: int, conns: int, slot: int) -> tuple[list[int], int]:
        """Up to BATCH seqs of slot ``slot``'s share from ``pos`` on, and the next pos.

        With one connection the run stops at a corpus batch boundary, so that in the
        rate=0 mode whole pre-compressed batches line up.
        """
        pos, end = max(pos, self.base), self.next_seq
        if conns == 1:
            index = pos % self.corpus.size
            stop = min(end, pos + self.corpus.size - index, pos + BATCH - index % BATCH)
            return list(range(pos, max(pos, stop))), max(pos, stop)
        out: list[int] = []
        key = self.corpus.visitor_key
        while pos < end and len(out) < BATCH:
            if key(pos) % conns == slot:
                out.append(pos)
            pos += 1
        return out, pos

    def pad_first_new_hit(self, seqs: Iterable[int], size: int) -> bool:
        """Pad the first never-sent hit among ``seqs`` to ``size`` bytes; False if none."""
        for seq in seqs:
            if self.corpus.is_hit(seq) and not self.was_sent(seq):
                self._pads[seq] = size
                return True
        return False

    def encode_args(self, seqs: list[int]) -> tuple[list[int], dict[int, int]]:
        """The receivedTimeGMT of each of ``seqs`` and the pads among them."""
        stamps: list[int] = []
        lo = hi = val = -1
        for seq in seqs:
            if not lo <= seq < hi:
                i = max(0, bisect.bisect_right(self._ts_seq, seq) - 1)
                lo, val = self._ts_seq[i], self._ts_val[i]
                hi = self._ts_seq[i + 1] if i + 1 < len(self._ts_seq) else sys.maxsize
            stamps.append(val)
        pads = {q: self._pads[q] for q in seqs if q in self._pads} if self._pads else {}
        return stamps, pads

    def record(self, seq: int) -> bytes:
        """The record at ``seq`` as it is written (without its CRLF)."""
        stamps, pads = self.encode_args([seq])
        return self.corpus.plain([seq], stamps, pads).rstrip(CRLF)

    def was_sent(self, seq: int) -> bool:
        byte = seq >> 3
        return byte < len(self._sent) and bool(self._sent[byte] & (1 << (seq & 7)))

    def first_unsent(self) -> int:
        seq = self.base
        while seq < self.next_seq and self.was_sent(seq):
            seq += 1
        return seq

    def mark_sent(self, seqs: list[int]) -> None:
        """Record that ``seqs`` were fully written to some client."""
        sent, is_hit = self._sent, self.corpus.is_hit
        if (need := (max(seqs) >> 3) + 1 - len(sent)) > 0:
            sent.extend(bytes(need + 65536))
        for seq in seqs:
            byte, bit = seq >> 3, 1 << (seq & 7)
            if not sent[byte] & bit:
                sent[byte] |= bit
                if is_hit(seq):
                    self._emitted.append(seq)

    def emitted_seqs(self) -> list[int]:
        return self._emitted.tolist()

    def hit_ids(self, seqs: Iterable[int]) -> list[str]:
        high = self.corpus.id_high
        return [f"{high}:{hit_id_low(high, seq)}" for seq in seqs]
