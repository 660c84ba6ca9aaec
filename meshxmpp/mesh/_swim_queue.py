"""The broadcast queue: membership changes waiting to be piggybacked (memberlist ``TransmitLimitedQueue``).

One entry per member: a newer message about a member replaces the older one.  Each `take` prefers the
entries sent the fewest times (newest first among equals), counts a transmission for each entry it returns,
and drops an entry once it has been sent `limit` times.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BroadcastQueue"]


@dataclass(slots=True)
class _Entry:
    data: bytes
    transmits: int
    order: int


class BroadcastQueue:
    __slots__ = ("_entries", "_order")

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, subject: str, data: bytes) -> None:
        """Queue `data` (an encoded message about `subject`), replacing what was queued about it."""
        self._order += 1
        self._entries[subject] = _Entry(data, 0, self._order)

    def take(self, budget: int, limit: int, max_count: int) -> list[bytes]:
        """Up to `max_count` messages whose total size fits `budget` bytes."""
        if not self._entries:
            return []
        picked: list[bytes] = []
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        for subject, entry in ranked:
            if len(picked) >= max_count or budget < 8:
                break
            if len(entry.data) > budget:
                continue
            picked.append(entry.data)
            budget -= len(entry.data)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[subject]
        return picked

    def clear(self) -> None:
        self._entries.clear()
