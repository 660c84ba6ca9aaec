"""The directory's query side: every owner's live records by full and bare JID, and the conflict rule.

`Directory` keeps the replication state per owner and tells this index what was added, updated or
removed; the index keeps one winner per full JID (`_records.rank`: the newest bind wins) so that
`of(bare)` and `get(full)` are plain dict lookups on the routing hot path.
"""

from __future__ import annotations

import math

from meshxmpp.jid import JID
from meshxmpp.mesh._records import Added, Change, Conflict, Removed, SessionRecord, Updated, rank

__all__ = ["SessionIndex"]


class SessionIndex:
    __slots__ = ("by_bare", "by_full", "conflicted", "copies")

    def __init__(self) -> None:
        self.copies: dict[JID, dict[str, SessionRecord]] = {}  #: full JID -> node -> record
        self.by_full: dict[JID, SessionRecord] = {}  #: full JID -> winning record
        self.by_bare: dict[JID, dict[str, SessionRecord]] = {}  #: bare -> resource -> winner
        self.conflicted: set[JID] = set()  #: full JIDs with records on more than one node

    def add(self, record: SessionRecord, previous: SessionRecord | None, out: list[Change]) -> None:
        """``record`` is new, or replaces ``previous`` (same node and full JID)."""
        jid = record.jid
        out.append(Added(record) if previous is None else Updated(record, previous))
        copies = self.copies.get(jid)
        if copies is None:
            self.copies[jid] = {record.node: record}
            self._show(jid, record)
            return
        copies[record.node] = record
        if len(copies) == 1:
            self._show(jid, record)
            return
        self._resolve(jid, copies, out, previous is None)

    def remove(self, record: SessionRecord, out: list[Change]) -> None:
        jid = record.jid
        out.append(Removed(record))
        copies = self.copies[jid]
        del copies[record.node]
        if copies:
            self._resolve(jid, copies, out, False)
            return
        del self.copies[jid], self.by_full[jid]
        bare = jid.bare
        resources = self.by_bare[bare]
        del resources[jid.resource]  # type: ignore[arg-type]
        if not resources:
            del self.by_bare[bare]

    def conflicts(self) -> list[tuple[SessionRecord, SessionRecord]]:
        pairs = [(self.by_full[jid], record) for jid in self.conflicted
                 for record in self.copies[jid].values() if record is not self.by_full[jid]]
        pairs.sort(key=lambda p: (str(p[1].jid), p[1].node))
        return pairs

    def bind_time(self, full: JID, now: float) -> float:
        copies = self.copies.get(full)
        if not copies:
            return now
        newest = max(r.bound_at for r in copies.values())
        return now if now > newest else math.nextafter(newest, math.inf)

    def _resolve(self, jid: JID, copies: dict[str, SessionRecord], out: list[Change], added: bool) -> None:
        if len(copies) == 1:
            self.conflicted.discard(jid)
            winner = next(iter(copies.values()))
        else:
            self.conflicted.add(jid)
            winner = max(copies.values(), key=rank)
            old = self.by_full.get(jid)
            # Tell the losers' owners when a record joins the conflict or the winner changes.
            if added or old is None or old.node != winner.node:
                out.extend(Conflict(winner, r) for r in copies.values() if r is not winner)
        self._show(jid, winner)

    def _show(self, jid: JID, record: SessionRecord) -> None:
        self.by_full[jid] = record
        bare = jid.bare
        resources = self.by_bare.get(bare)
        if resources is None:
            resources = self.by_bare[bare] = {}
        resources[jid.resource] = record  # type: ignore[index]
