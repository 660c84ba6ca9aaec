"""Probe bookkeeping: the records of probes in flight and the choice of whom to probe or gossip to.

`ProbeOrder` is memberlist's probe list: every alive or suspect member once per round, in an order
shuffled anew each round, with newcomers slotted into a random place in the rest of the current round.
`random_members` is ``kRandomNodes``.  All randomness comes from the `rng` passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshxmpp.mesh._swim_table import Entry
from meshxmpp.mesh._swim_types import ALIVE, SUSPECT

__all__ = ["Probe", "ProbeOrder", "Relay", "random_members"]

Addr = tuple[str, int]


@dataclass(slots=True)
class Probe:
    """Our probe of one member in this interval."""

    target: str
    addr: Addr
    seq: int
    incarnation: int  # suspected at this incarnation if the probe fails
    direct_deadline: float
    end: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class Relay:
    """A probe we run on behalf of another member (its ping-req)."""

    requester: Addr
    orig_seq: int
    target_addr: Addr
    nack_at: float
    expires: float


class ProbeOrder:
    __slots__ = ("_index", "_order", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def add(self, name: str) -> None:
        # A random place in the rest of this round keeps the detection time low on average.
        self._order.insert(self._rng.randint(self._index, len(self._order)), name)

    def next(self, members: dict[str, Entry], me: Entry) -> Entry | None:
        """The next member to probe (alive or suspect, not us), or None if there is nobody."""
        for _ in range(2 * len(members) + 2):
            if self._index >= len(self._order):
                self._order = [k for k, e in members.items() if e.state in (ALIVE, SUSPECT) and e is not me]
                self._rng.shuffle(self._order)
                self._index = 0
                if not self._order:
                    return None
            entry = members.get(self._order[self._index])
            self._index += 1
            if entry is not None and entry.state in (ALIVE, SUSPECT) and entry is not me:
                return entry
        return None


def random_members(rng: random.Random, k: int, pool: list[Entry]) -> list[Entry]:
    """Up to k distinct members of `pool` in random order (memberlist ``kRandomNodes``)."""
    n = len(pool)
    if n <= k:
        pool = list(pool)
        rng.shuffle(pool)
        return pool
    # k is small next to n here (3 of dozens): drawing and skipping repeats beats rng.sample.
    rand = rng.random
    picked: dict[int, None] = {}
    while len(picked) < k:
        picked[int(rand() * n)] = None
    return [pool[i] for i in picked]
