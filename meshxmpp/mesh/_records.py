"""Value types of the replicated directory (see `meshxmpp.mesh.directory` and docs/mesh/directory.md).

Everything here is a frozen, slotted dataclass: records, versions, the two kinds of update that
travel between nodes (`Delta`, `Manifest`), the `Digest` a repair starts from, and the `Change`
events `Directory.apply` returns. No I/O and no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshxmpp.jid import JID

__all__ = [
    "MAX_NODE_NAME", "MAX_PRESENCE", "SHOWS", "Added", "Change", "Conflict", "Delta", "Digest",
    "DirectoryStatistics", "Manifest", "Removed", "SessionRecord", "Update", "Updated", "Version",
    "check_node_name", "rank",
]

MAX_NODE_NAME = 64  #: UTF-8 bytes, as `mesh.wire.MAX_NAME`
MAX_PRESENCE = 262144  #: UTF-8 bytes of a serialised presence (the default max_stanza_size)
SHOWS = (None, "chat", "away", "xa", "dnd")  #: RFC 6121 4.7.2.1; the index is the wire code


def check_node_name(node: object) -> str:
    if not isinstance(node, str) or not node or len(node.encode("utf-8", "surrogatepass")) > MAX_NODE_NAME \
            or not node.isprintable():
        raise ValueError(f"node name must be 1 to {MAX_NODE_NAME} printable UTF-8 bytes: {node!r}")
    return node


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One bound session as every node sees it: what `routing.policy` reads (it is a `SessionLike`),
    plus the owner ``node``, ``bound_at`` for the conflict rule and the last broadcast presence.
    Owned and written only by ``node``; ``bound_at`` stays the same for the session's lifetime."""

    jid: JID  #: full JID
    node: str  #: owner node name
    available: bool = True
    priority: int = 0  #: -128..127 (RFC 6121 4.7.2.3)
    show: str | None = None  #: None | chat | away | xa | dnd
    last_activity: float = 0.0
    carbons: bool = False
    interested: bool = False
    bound_at: float = 0.0  #: the owner's wall clock at bind (see `Directory.bind_time`)
    presence: str | None = None  #: serialised last broadcast presence, for probes answered anywhere

    def __post_init__(self) -> None:
        if self.jid.resource is None:
            raise ValueError(f"a session record needs a full JID: {self.jid}")
        if not -128 <= self.priority <= 127:
            raise ValueError(f"priority out of range -128..127: {self.priority}")
        if self.show not in SHOWS:
            raise ValueError(f"show must be one of {SHOWS}: {self.show!r}")
        # NaN would make the conflict rule depend on comparison order, so it differs between nodes.
        if not (math.isfinite(self.bound_at) and math.isfinite(self.last_activity)):
            raise ValueError("bound_at and last_activity must be finite")


def rank(record: SessionRecord) -> tuple[float, str]:
    """The conflict rule's order: for one full JID on several nodes, the greatest rank wins (the
    newest bind; equal bind times are broken by the greater node name)."""
    return (record.bound_at, record.node)


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Position of a write in its owner's history: ``epoch`` (a new life of the node) first."""

    epoch: int
    counter: int


@dataclass(frozen=True, slots=True)
class Delta:
    """One write by ``node``: ``jid`` now has ``record``, or (``record`` None) is no longer bound.

    ``relayed`` is set when a node other than the owner sends it (a repair answer): a node that
    purged the owner takes the owner back only from the owner itself."""

    node: str
    version: Version
    jid: JID
    record: SessionRecord | None  #: None = removed
    relayed: bool = False

    def __post_init__(self) -> None:
        record = self.record
        if record is not None and (record.jid != self.jid or record.node != self.node):
            raise ValueError("a delta's record must have the delta's jid and node")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A repair fact about ``node``'s history in ``epoch``: of the writes numbered ``low+1`` to
    ``high``, only those listed in ``kept`` (ascending) may still be in effect. Every other one was
    overwritten, or (only when ``low`` is 0) is a removal of a key whose every earlier write is in
    the range and unlisted too. A replica turns a record it holds at an unlisted number of the
    range into a removal, and counts the unlisted numbers as seen. True once, true for ever: so a
    manifest, like a delta, can be applied late, twice or in any order."""

    node: str
    epoch: int
    low: int
    high: int
    kept: tuple[int, ...] = ()
    relayed: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ValueError(f"manifest range ({self.low}, {self.high}] is empty or negative")
        prev = self.low
        for n in self.kept:
            if not prev < n <= self.high:
                raise ValueError("manifest kept numbers must ascend inside (low, high]")
            prev = n

    @property
    def version(self) -> Version:
        return Version(self.epoch, self.high)


Update = Delta | Manifest


@dataclass(frozen=True, slots=True)
class Digest:
    """What a replica has: per owner, (epoch, highest contiguous counter seen); and the owners it
    purged, with the epoch it purged (None: purged before it knew the epoch)."""

    versions: Mapping[str, Version]
    dead: Mapping[str, int | None] = field(default_factory=dict)


# -- changes returned by Directory.apply -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Added:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class Updated:
    record: SessionRecord
    previous: SessionRecord


@dataclass(frozen=True, slots=True)
class Removed:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class Conflict:
    """A full JID is bound on two nodes; ``loser``'s owner sends it <conflict/> and removes it."""

    winner: SessionRecord
    loser: SessionRecord


Change = Added | Updated | Removed | Conflict


@dataclass(frozen=True, slots=True)
class DirectoryStatistics:
    records: int  #: session records held, every node's (a conflicted full JID counts twice)
    local: int  #: this node's own records
    nodes: int  #: owners with state here, this node included
    tombstones: int
    conflicts: int  #: full JIDs bound on more than one node
    dead: int  #: owners purged and not heard from since
    applied: int  #: updates that took effect
    duplicates: int  #: updates already seen, or older than what is held
    refused: int  #: updates from a purged owner, an older epoch, or about this node
    epoch_changes: int  #: times an owner's newer epoch replaced its older records
    full_repairs: int  #: repair answers that had to list every live write (tombstones compacted)
