"""The replicated routing table: every node's bound sessions, on every node (sans-IO).

Each node owns its records and is their only writer (ARCHITECTURE conventions 11 and 14, as in
CETS): it numbers its writes ``(epoch, counter)`` and pushes each as a `Delta`. A replica keeps,
per owner, the epoch, the numbers it has seen (``_Seen``: a contiguous prefix plus a few ranges)
and per full JID the number of the write that set it; a removal leaves a tombstone number. Every
update states a fact about the owner's history that stays true for ever, so `Directory.apply` is
idempotent and order-insensitive. A repair (`digest` / `missing_for`) sends what a peer lacks
plus a `Manifest` that accounts for the overwritten writes nobody needs to resend. A newer epoch
replaces all of an owner's older records; `purge` drops a dead owner, who is taken back only on its
own word at a newer epoch (`bump_epoch`). The same full JID bound on two nodes resolves by one rule
every node computes alike: the newest bind wins (`_records.rank`). docs/mesh/directory.md has the
reasoning; nothing here awaits, reads a clock or touches a socket.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from meshxmpp.jid import JID
from meshxmpp.mesh._directory_codec import decode_delta, decode_digest, encode_delta, encode_digest
from meshxmpp.mesh._records import (
    MAX_PRESENCE,
    Added,
    Change,
    Conflict,
    Delta,
    Digest,
    DirectoryStatistics,
    Manifest,
    Removed,
    SessionRecord,
    Update,
    Updated,
    Version,
    check_node_name,
    rank,
)
from meshxmpp.mesh._session_index import SessionIndex

__all__ = [
    "MAX_PRESENCE", "TOMBSTONE_LIMIT", "Added", "Change", "Conflict", "Delta", "Digest", "Directory", "DirectoryStatistics", "Manifest",
    "Removed", "SessionRecord", "Update", "Updated", "Version", "decode_delta", "decode_digest",
    "encode_delta", "encode_digest", "rank",
]

TOMBSTONE_LIMIT = 1024  #: tombstones kept per owner at least (more when it has more records)


class _Seen:
    """The write numbers of one owner epoch that a replica has applied or knows to be overwritten:
    all up to ``low``, plus disjoint, non-adjacent ranges above ``low + 1`` (a hole each between)."""

    __slots__ = ("_ends", "_starts", "low")

    def __init__(self) -> None:
        self.low = 0
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, n: int) -> bool:
        if n <= self.low:
            return True
        i = bisect_right(self._starts, n) - 1
        return i >= 0 and self._ends[i] >= n

    def add(self, a: int, b: int) -> None:
        """Mark ``a..b`` (inclusive) seen."""
        low = self.low
        if b <= low or a > b:
            return
        starts, ends = self._starts, self._ends
        if a <= low + 1 and not starts:  # the push path: the next number in order
            self.low = b
            return
        a = max(a, low + 1)
        i = bisect_left(ends, a - 1)  # first range touching [a, b] from below
        j = bisect_right(starts, b + 1)  # one past the last range touching it from above
        if i < j:
            a, b = min(a, starts[i]), max(b, ends[j - 1])
        starts[i:j] = [a]
        ends[i:j] = [b]
        if starts[0] == low + 1:
            self.low = ends[0]
            del starts[0], ends[0]

    @property
    def ahead(self) -> bool:
        """Whether any number above the contiguous prefix is seen."""
        return bool(self._starts)


class _Owner:
    """One owner's current epoch, as this replica holds it."""

    __slots__ = ("by_counter", "epoch", "horizon", "live", "seen", "tombs")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.seen = _Seen()
        self.live: dict[JID, tuple[int, SessionRecord]] = {}
        self.tombs: dict[JID, int] = {}  #: full JID -> number of the removal
        self.by_counter: dict[int, JID] = {}  #: every number held, live or tombstone
        self.horizon = 0  #: highest number of a compacted tombstone


class Directory:
    """Every node's sessions, replicated; see the module docstring and docs/mesh/directory.md.

    Queries (`of`, `get`) are dict lookups on the routing hot path. Writes to this node's own
    records go through `put_local` / `remove_local` / `bump_epoch`, which return what to push to
    every peer; everything from peers goes through `apply`.
    """

    def __init__(self, node: str, *, epoch: int, tombstone_limit: int = TOMBSTONE_LIMIT) -> None:
        """``epoch`` must grow across restarts of ``node`` (e.g. milliseconds since 1970 at start),
        so the records of a previous life are replaced, never merged."""
        check_node_name(node)
        if not 0 <= epoch < 1 << 63 or not 0 <= tombstone_limit:
            raise ValueError("epoch must be in 0..2**63-1 and tombstone_limit non-negative")
        self._node = node
        self._tombstone_limit = tombstone_limit
        self._owners: dict[str, _Owner] = {node: _Owner(epoch)}
        self._dead: dict[str, int | None] = {}  #: purged owner -> epoch purged (None: unknown)
        self._index = SessionIndex()
        self._by_full = self._index.by_full  # the hot path reads these two dicts directly
        self._by_bare = self._index.by_bare
        self._applied = self._duplicates = self._refused = self._epoch_changes = self._full_repairs = 0

    @property
    def node(self) -> str:
        return self._node

    @property
    def epoch(self) -> int:
        return self._owners[self._node].epoch

    # -- the owner's writes ------------------------------------------------------------------------

    def put_local(self, record: SessionRecord) -> Delta:
        """Add or replace this node's record for ``record.jid``; push the returned delta to peers.
        If another node holds a newer bind of the same full JID, ``get(record.jid)`` shows it won
        (use `bind_time` for ``bound_at`` so a new login wins)."""
        if record.node != self._node:
            raise ValueError(f"put_local is for records of {self._node!r}, not {record.node!r}")
        presence = record.presence
        if presence is not None and len(presence) * 4 > MAX_PRESENCE and \
                len(presence.encode("utf-8", "surrogatepass")) > MAX_PRESENCE:
            raise ValueError(f"presence longer than {MAX_PRESENCE} bytes")
        st = self._owners[self._node]
        n = st.seen.low + 1
        st.seen.add(n, n)
        self._write(st, n, record.jid, record, [])
        return Delta(self._node, Version(st.epoch, n), record.jid, record)

    def remove_local(self, jid: JID) -> Delta | None:
        """Remove this node's record for the full JID ``jid``; None if it has none."""
        st = self._owners[self._node]
        if jid not in st.live:
            return None
        n = st.seen.low + 1
        st.seen.add(n, n)
        self._write(st, n, jid, None, [])
        return Delta(self._node, Version(st.epoch, n), jid, None)

    def bump_epoch(self) -> list[Delta]:
        """Start a new epoch (after this node was wrongly declared dead and purged): every own
        record is written again under it. Push the returned deltas to every peer."""
        old = self._owners[self._node]
        st = self._owners[self._node] = _Owner(old.epoch + 1)
        out = []
        for n, (_, record) in enumerate(sorted(old.live.values(), key=_first), 1):
            st.live[record.jid] = (n, record)
            st.by_counter[n] = record.jid
            out.append(Delta(self._node, Version(st.epoch, n), record.jid, record))
        st.seen.add(1, len(out))
        return out  # the indexes hold the same records: nothing else changes

    def bind_time(self, full: JID, now: float) -> float:
        """The ``bound_at`` for a new session of ``full``: ``now``, or just after any binding of
        ``full`` known anywhere, so the new login wins the conflict rule even if clocks disagree."""
        return self._index.bind_time(full, now)

    # -- replication -------------------------------------------------------------------------------

    def apply(self, update: Update) -> list[Change]:
        """Apply a delta or manifest from a peer; return what changed in the table (`Conflict` for
        a full JID that gained a second owner or a new winner: its loser's owner acts on it)."""
        name = update.node
        epoch = update.version.epoch
        if name == self._node:
            self._refused += 1  # this node is the authority on its own records
            return []
        if name in self._dead:
            dead = self._dead[name]
            if update.relayed or (dead is not None and epoch <= dead):
                self._refused += 1
                return []
            del self._dead[name]  # the owner itself, in a newer life
        out: list[Change] = []
        st = self._owners.get(name)
        if st is None:
            st = self._owners[name] = _Owner(epoch)
        elif epoch != st.epoch:
            if epoch < st.epoch:
                self._refused += 1
                return []
            for _, record in st.live.values():
                self._index.remove(record, out)
            st = self._owners[name] = _Owner(epoch)
            self._epoch_changes += 1
        if isinstance(update, Delta):
            n = update.version.counter
            if n < 1:
                raise ValueError("write numbers start at 1")
            if n in st.seen:
                self._duplicates += 1
                return out
            st.seen.add(n, n)
            if not self._write(st, n, update.jid, update.record, out):
                self._duplicates += 1
                return out
        else:
            self._apply_manifest(st, update, out)
        self._applied += 1
        return out

    def digest(self) -> Digest:
        return Digest({name: Version(st.epoch, st.seen.low) for name, st in self._owners.items()},
                      dict(self._dead))

    def missing_for(self, digest: Digest) -> list[Update]:
        """What a peer with ``digest`` lacks: per owner a `Manifest` if needed, then the deltas."""
        out: list[Update] = []
        for name, st in self._owners.items():
            relayed = name != self._node
            if name in digest.dead:
                dead = digest.dead[name]
                if relayed or (dead is not None and dead >= st.epoch):
                    continue  # the peer refuses it until the owner speaks in a newer epoch
            self._missing(name, st, digest.versions.get(name), relayed, out)
        return out

    def announce(self) -> list[Update]:
        """This node's own records with its epoch, for every peer: push it at start (so peers drop
        what a previous life left there at once) and after `bump_epoch` if it returned nothing."""
        out: list[Update] = []
        self._missing(self._node, self._owners[self._node], None, False, out)
        return out

    def snapshot(self) -> list[Update]:
        """Everything, for a node that joins (apply it before accepting clients)."""
        return self.missing_for(Digest({}))

    def purge(self, node: str) -> list[SessionRecord]:
        """``node`` is dead: drop all its records (returned). Until ``node`` itself speaks in a
        newer epoch, nothing about it is accepted (a peer that has not purged yet may relay it)."""
        if node == self._node:
            raise ValueError("a node does not purge itself: bump_epoch after a false death")
        st = self._owners.pop(node, None)
        if st is None:
            self._dead.setdefault(node, None)
            return []
        self._dead[node] = st.epoch
        records = [record for _, record in sorted(st.live.values(), key=_first)]
        sink: list[Change] = []
        for record in records:
            self._index.remove(record, sink)
        return records

    # -- queries -----------------------------------------------------------------------------------

    def of(self, bare: JID) -> list[SessionRecord]:
        """Every node's sessions of ``bare`` (one per full JID: the conflict winner)."""
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def get(self, full: JID) -> SessionRecord | None:
        return self._by_full.get(full)

    def records_of(self, node: str) -> list[SessionRecord]:
        """The records ``node`` owns, as held here (in write order)."""
        st = self._owners.get(node)
        return [record for _, record in sorted(st.live.values(), key=_first)] if st else []

    def epoch_of(self, node: str) -> int | None:
        """The epoch of ``node``'s records held here; None when there are none (unknown or purged)."""
        st = self._owners.get(node)
        return st.epoch if st is not None else None

    def nodes(self) -> set[str]:
        """Owners this replica holds state for (this node included), whether or not with sessions."""
        return set(self._owners)

    def __len__(self) -> int:
        return sum(len(st.live) for st in self._owners.values())

    def conflicts(self) -> list[tuple[SessionRecord, SessionRecord]]:
        """(winner, loser) for every full JID bound on more than one node, in a stable order."""
        return self._index.conflicts()

    def statistics(self) -> DirectoryStatistics:
        own = self._owners[self._node]
        return DirectoryStatistics(
            records=len(self), local=len(own.live), nodes=len(self._owners),
            tombstones=sum(len(st.tombs) for st in self._owners.values()),
            conflicts=len(self._index.conflicted), dead=len(self._dead), applied=self._applied,
            duplicates=self._duplicates, refused=self._refused, epoch_changes=self._epoch_changes,
            full_repairs=self._full_repairs)

    # -- internals ---------------------------------------------------------------------------------

    def _missing(self, name: str, st: _Owner, have: Version | None, relayed: bool, out: list[Update]) -> None:
        if have is not None and have.epoch > st.epoch:
            return
        top = st.seen.low
        if have is None or have.epoch < st.epoch:
            since, full = 0, True  # nothing of this epoch there: no removal to tell about
        else:
            since = have.counter
            if since >= top and not st.seen.ahead:
                return
            full = since < st.horizon  # removals it may lack were compacted: list everything
            self._full_repairs += full
        if full:
            # Below ``top`` only the live records count: an unlisted number is overwritten or
            # removed, and the manifest's range reaches down to every older write of its key.
            kept = sorted(n for n, _ in st.live.values() if n <= top)
            send = sorted(n for n, jid in st.by_counter.items() if n > since and (n > top or jid in st.live))
            out.append(Manifest(name, st.epoch, 0, top, tuple(kept), relayed))
        else:
            send = sorted(n for n in st.by_counter if n > since)
            kept = [n for n in send if n <= top]
            if len(kept) < top - since:  # else the deltas alone account for every number
                out.append(Manifest(name, st.epoch, since, top, tuple(kept), relayed))
        live = st.live
        for n in send:
            jid = st.by_counter[n]
            entry = live.get(jid)
            out.append(Delta(name, Version(st.epoch, n), jid, None if entry is None else entry[1], relayed))

    def _write(self, st: _Owner, n: int, jid: JID, record: SessionRecord | None, out: list[Change]) -> bool:
        """Write number ``n`` (already marked seen); False if what is held is newer."""
        cur = st.live.get(jid)
        if cur is not None:
            held = cur[0]
        else:
            held = st.tombs.get(jid, 0)
        if held > n:
            return False
        if held:
            del st.by_counter[held]
        st.by_counter[n] = jid
        if record is not None:
            st.live[jid] = (n, record)
            if cur is None and held:
                del st.tombs[jid]
            self._index.add(record, None if cur is None else cur[1], out)
        else:
            st.tombs[jid] = n
            if cur is not None:
                del st.live[jid]
                self._index.remove(cur[1], out)
            self._compact(st)
        return True

    def _apply_manifest(self, st: _Owner, m: Manifest, out: list[Change]) -> None:
        low, high, kept = m.low, m.high, m.kept
        listed = set(kept)
        if high - low <= len(st.by_counter):
            held = [n for n in range(low + 1, high + 1) if n in st.by_counter]
        else:
            held = [n for n in st.by_counter if low < n <= high]
        for n in held:
            if n not in listed:
                jid = st.by_counter[n]
                entry = st.live.pop(jid, None)
                if entry is not None:  # overwritten (or removed) at the owner: now a removal here
                    st.tombs[jid] = n
                    self._index.remove(entry[1], out)
        seen = st.seen
        prev = low
        for n in kept:
            seen.add(prev + 1, n - 1)
            prev = n
        seen.add(prev + 1, high)
        if low == 0:
            # An unlisted number we hold nothing for may be a removal we have no tombstone for, so
            # this replica must not answer a later repair below it incrementally (as if compacted).
            n = high
            while n > st.horizon and (n in listed or n in st.by_counter):
                n -= 1
            st.horizon = n
        self._compact(st)

    def _compact(self, st: _Owner) -> None:
        limit = max(self._tombstone_limit, len(st.live))
        if len(st.tombs) <= limit:
            return
        # The oldest tombstones at or below the contiguous prefix go: a late write older than one
        # of them is a number already seen, so it is ignored without the tombstone.
        low = st.seen.low
        old = sorted(((n, jid) for jid, n in st.tombs.items() if n <= low), key=_first)
        for n, jid in old[:len(st.tombs) - limit // 2]:
            del st.tombs[jid], st.by_counter[n]
            if n > st.horizon:
                st.horizon = n


def _first(entry: tuple[int, object]) -> int:
    return entry[0]
