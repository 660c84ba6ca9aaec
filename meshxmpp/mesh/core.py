"""One node's whole mesh protocol, sans-IO: membership, the replicated directory and forwarding, composed.

`MeshCore` takes frames from peers (`on_frame`), time (`on_timer` once `next_deadline` has passed) and the
node's own writes (`put_session`, `remove_session`, `forward`), and hands out frames to send
(`drain_outgoing`: ``(address, kind, payload)``) and what the node must act on (`drain_events`). It never
awaits, reads a clock or touches a socket: `mesh.service` is its Trio glue, and `testing.SimNet` can drive
several cores in simulated time (tests/mesh/test_core_sim.py, benchmarks/mesh_convergence.py).

How the three cores are tied together (docs/mesh.md has the picture):

- every frame goes to a member's *address* as membership knows it, so the transport dials on demand;
- the directory pushes each local write as a delta to every live member, batched per `drain_outgoing`;
  every ``repair_interval`` it sends its digest to one random live member, which answers with what the
  digest lacks and its own digest, which is answered in turn: both sides converge in one exchange;
- a starting node asks its seeds for everything (an empty digest) and reports `Joined` on the first answer;
  addresses discovered later (`add_seeds`, from `mesh.discovery`) are asked the same way;
- a member declared dead or gone is purged from the directory, its unacked forwards come back as `Reroute`
  events, and exactly one survivor (the live member with the smallest name) is told to announce the lost
  sessions as unavailable (`SessionsLost.announce`);
- a digest that lists this node among the dead (it was wrongly declared dead) makes it start a new
  directory epoch and push all its records again;
- a full JID bound here and on another node, where the other bind is newer, gives `ConflictLost`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from meshxmpp.jid import JID
from meshxmpp.mesh._directory_codec import decode_delta, decode_digest, encode_delta, encode_digest
from meshxmpp.mesh._records import Added, Conflict, Digest, Removed, SessionRecord, Update
from meshxmpp.mesh.directory import Directory
from meshxmpp.mesh.forward import Forwarder
from meshxmpp.mesh.membership import (
    ALIVE,
    SUSPECT,
    Member,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    Membership,
    MemberSuspect,
    Timing,
)
from meshxmpp.mesh.wire import DEFAULT_MAX_FRAME, Kind

__all__ = [
    "ConflictLost", "Inbound", "Joined", "MemberChanged", "MeshCore", "MeshEvent", "Reroute", "SessionsBack",
    "SessionsLost",
    "decode_stanza", "encode_stanza",
]

Addr = tuple[str, int]

# DIRECTORY frame payloads: one type byte, then the body.
_UPDATES, _DIGEST_ASK, _DIGEST_ANSWER = 1, 2, 3
_LEN = struct.Struct("!I")
_STANZA_HEAD = struct.Struct("!BH")  # flags | hops, target length
_SHARED = 0x80  # flag: the routing decision delivered the same stanza to other sessions too
#: A forwarded stanza goes around at most this many times (a stale table on both sides) before it is
#: handled as if its target had no session anywhere.
MAX_HOPS = 3


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Inbound:
    """A stanza forwarded to us for ``target``: deliver it (or route it again with ``hops``), then pass
    ``peer`` and ``token`` to `MeshCore.acknowledge`. ``shared``: other sessions got the same stanza
    by the same decision, so if ``target`` is gone it is routed again only when none of the user's
    sessions is left (to offline storage), never duplicated to one that had its copy."""

    peer: str
    token: object
    target: str
    hops: int
    stanza: bytes
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Reroute:
    """A stanza we forwarded and nobody acked (its node died): route it again with the updated table."""

    target: str
    hops: int
    stanza: bytes
    shared: bool = False


@dataclass(frozen=True, slots=True)
class SessionsLost:
    """``node`` is gone and its sessions with it. ``announce``: this node is the one survivor that sends
    each lost available resource's unavailable presence."""

    node: str
    records: tuple[SessionRecord, ...]
    announce: bool
    left: bool  #: a graceful leave (the node said goodbye) rather than a death


@dataclass(frozen=True, slots=True)
class ConflictLost:
    """Our session ``jid`` lost the newest-bind-wins rule to ``winner``: close it with <conflict/>."""

    jid: JID
    winner: SessionRecord


@dataclass(frozen=True, slots=True)
class SessionsBack:
    """Sessions of ``node`` that this node had given up for lost (the node was declared dead, then
    came back: a false death or a healed partition) are in the table again. ``announce``: this node
    announced them unavailable then (`SessionsLost.announce`), so it now sends their presence again."""

    node: str
    records: tuple[SessionRecord, ...]
    announce: bool


@dataclass(frozen=True, slots=True)
class Joined:
    """The first complete answer from a member arrived: the directory holds the cluster's sessions."""

    via: str


@dataclass(frozen=True, slots=True)
class MemberChanged:
    member: Member
    state: str


MeshEvent = Inbound | Reroute | SessionsLost | SessionsBack | ConflictLost | Joined | MemberChanged


def encode_stanza(target: str, hops: int, stanza: bytes, shared: bool = False) -> bytes:
    t = target.encode()
    return _STANZA_HEAD.pack(min(hops, 127) | (_SHARED if shared else 0), len(t)) + t + stanza


def decode_stanza(data: bytes) -> tuple[str, int, bytes, bool]:
    """``(target, hops, stanza, shared)``; ValueError when malformed."""
    if len(data) < _STANZA_HEAD.size:
        raise ValueError("forwarded stanza too short")
    flags, n = _STANZA_HEAD.unpack_from(data)
    end = _STANZA_HEAD.size + n
    if len(data) < end:
        raise ValueError("forwarded stanza target truncated")
    return data[_STANZA_HEAD.size:end].decode(), flags & 0x7F, data[end:], bool(flags & _SHARED)


# --------------------------------------------------------------------------- the core


class MeshCore:
    """See the module docstring. ``epoch`` grows across restarts (milliseconds since 1970 at start)."""

    def __init__(self, name: str, addr: Addr, *, timing: Timing, rng: random.Random, now: float, epoch: int,
                 seeds: Sequence[Addr] = (), repair_interval: float = 10.0, forward_window: int = 512,
                 forward_retransmit: float = 1.0, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.name = name
        self.max_frame = max_frame
        self.repair_interval = repair_interval
        self._rng = rng
        self.membership = Membership(name, addr, timing=timing, rng=rng, now=now, seeds=seeds)
        self.directory = Directory(name, epoch=epoch)
        self.forwarder = Forwarder(name, epoch=epoch, window=forward_window, retransmit_after=forward_retransmit,
                                   max_frame=max_frame)
        #: Largest stanza `forward` takes (the envelope and our header must fit in one frame).
        self.max_stanza = self.forwarder.max_stanza - _STANZA_HEAD.size - 3 * 1024
        self._out: list[tuple[Addr, int, bytes]] = []
        self._events: list[MeshEvent] = []
        self._pending: list[Update] = []  # own writes not yet pushed
        self._next_repair = now + rng.uniform(0.5, 1.0) * repair_interval
        self._joined = False
        #: node -> until when its returning records count as "back" (it was purged as dead before)
        self._returning: dict[str, float] = {}
        self._lost_nodes: set[str] = set()
        self._announced: set[str] = set()
        #: dead node -> (the member expected to announce its sessions, the records, left)
        self._unannounced: dict[str, tuple[str, tuple[SessionRecord, ...], bool]] = {}
        self._now = now
        self._seeds = [s for s in seeds if tuple(s) != tuple(addr)]
        for seed in self._seeds:
            self._send_addr((seed[0], int(seed[1])), Kind.DIRECTORY,
                            bytes([_DIGEST_ASK]) + encode_digest(self.directory.digest()))
        if not self._seeds:
            self._joined = True
        self.counters = dict.fromkeys(("updates_sent", "updates_received", "update_bytes_sent", "repairs",
                                       "epoch_bumps", "malformed"), 0)

    # ------------------------------------------------------------------ the node's own writes

    @property
    def joined(self) -> bool:
        return self._joined

    def bind_time(self, full: JID, now: float) -> float:
        return self.directory.bind_time(full, now)

    def put_session(self, record: SessionRecord) -> None:
        self._pending.append(self.directory.put_local(record))
        self._check_conflict(record.jid)

    def remove_session(self, jid: JID) -> None:
        delta = self.directory.remove_local(jid)
        if delta is not None:
            self._pending.append(delta)

    def forward(self, now: float, node: str, target: str, stanza: bytes, hops: int = 0, *,
                shared: bool = False) -> bool:
        """Send ``stanza`` to ``target``'s session on ``node``. False: not possible now (unknown or dead
        node, backlog full, too big); the caller routes it as if the session were gone."""
        member = self.membership.member(node)
        # A suspect member may well be alive: forward anyway. If it is declared dead, what it has not
        # acked comes back as Reroute events (in order), so nothing is decided twice meanwhile.
        if member is None or member.state not in (ALIVE, SUSPECT) or node == self.name or hops >= MAX_HOPS:
            return False
        if len(stanza) > self.max_stanza:
            return False
        return self.forwarder.send(now, node, encode_stanza(target, hops + 1, stanza, shared))

    def acknowledge(self, peer: str, token: object) -> None:
        self.forwarder.acknowledge(peer, token)

    def leave(self, now: float) -> None:
        self.membership.leave(now)

    def add_seeds(self, now: float, addrs: Sequence[Addr]) -> list[Addr]:
        """Ask addresses found after the start (`mesh.discovery`) to join, as the seeds given at
        construction were: a membership push-pull and a directory digest ask to each one that is not
        this node and not the address of a member alive or suspect now. Returns those asked."""
        self._now = now
        known = {m.addr for m in self.membership.members() if m.state in (ALIVE, SUSPECT)}
        asked: list[Addr] = []
        for addr in dict.fromkeys((a[0], int(a[1])) for a in addrs):
            if addr in known:
                continue
            # Membership has no public "join this address" (its seeds are fixed at construction); a
            # push-pull is exactly what it sends its seeds and re-dialled members.
            self.membership._push_pull(addr)
            self._send_addr(addr, Kind.DIRECTORY, bytes([_DIGEST_ASK]) + encode_digest(self.directory.digest()))
            asked.append(addr)
        return asked

    # ------------------------------------------------------------------ queries

    def remote_of(self, bare: JID) -> list[SessionRecord]:
        name = self.name
        return [r for r in self.directory.of(bare) if r.node != name]

    def address_of(self, node: str) -> Addr | None:
        member = self.membership.member(node)
        return member.addr if member is not None else None

    # ------------------------------------------------------------------ inputs

    def on_frame(self, now: float, peer: str, kind: int, payload: bytes) -> None:
        """A frame from the authenticated ``peer``. Malformed payloads are counted and dropped."""
        self._now = now
        try:
            if kind == Kind.MEMBERSHIP:
                self.membership.on_message(now, ("", 0), payload)
            elif kind == Kind.DIRECTORY:
                self._on_directory(peer, payload)
            elif kind in (Kind.FORWARD, Kind.ACK):
                for inbound in self.forwarder.on_frame(now, peer, kind, payload):
                    self._inbound(peer, inbound.token, inbound.stanza)
            else:
                self.counters["malformed"] += 1
        except ValueError:
            self.counters["malformed"] += 1
        self._after(now)

    def on_send_failed(self, now: float, dest: Addr) -> None:
        self.membership.on_send_failed(now, dest)
        self._after(now)

    def next_deadline(self) -> float:
        return min(self.membership.next_deadline(), self.forwarder.next_deadline(), self._next_repair)

    def on_timer(self, now: float) -> None:
        self._now = now
        self.membership.on_timer(now)
        self.forwarder.on_timer(now)
        if now >= self._next_repair:
            self._next_repair = now + self.repair_interval
            peers = [m for m in self.membership.alive() if m.name != self.name]
            if peers:
                target = self._rng.choice(peers)
                self.counters["repairs"] += 1
                self._send_addr(target.addr, Kind.DIRECTORY,
                                bytes([_DIGEST_ASK]) + encode_digest(self.directory.digest()))
        self._after(now)

    # ------------------------------------------------------------------ outputs

    def drain_outgoing(self) -> list[tuple[Addr, int, bytes]]:
        self._flush_updates()
        for peer, kind, payload in self.forwarder.drain_outgoing():
            addr = self.address_of(peer)
            if addr is not None:
                self._out.append((addr, kind, payload))
        for addr, data in self.membership.drain_outgoing():
            self._out.append((addr, Kind.MEMBERSHIP.value, data))
        out, self._out = self._out, []
        return out

    def drain_events(self) -> list[MeshEvent]:
        events, self._events = self._events, []
        return events

    def status(self) -> dict[str, object]:
        counts: dict[str, int] = {}
        for record_node in (r.node for r in self._all_records()):
            counts[record_node] = counts.get(record_node, 0) + 1
        stats = self.forwarder.statistics()
        return {
            "node": self.name,
            "epoch": self.directory.epoch,
            "incarnation": self.membership.incarnation,
            "members": [
                {"name": m.name, "address": f"{m.addr[0]}:{m.addr[1]}", "state": m.state,
                 "incarnation": m.incarnation, "sessions": counts.get(m.name, 0)}
                for m in self.membership.members()
            ],
            "sessions": {"local": counts.get(self.name, 0), "total": len(self.directory)},
            "forward": {"in_flight": stats.in_flight, "backlog": stats.backlog},
        }

    # ------------------------------------------------------------------ internals

    def _all_records(self) -> list[SessionRecord]:
        return [r for node in self.directory.nodes() for r in self.directory.records_of(node)]

    def _send_addr(self, addr: Addr, kind: int, payload: bytes) -> None:
        self._out.append((addr, int(kind), payload))

    def _after(self, now: float) -> None:
        for event in self.membership.drain_events():
            self._member_event(now, event)

    def _member_event(self, now: float, event: object) -> None:
        if isinstance(event, (MemberDead, MemberLeft)):
            member = event.member
            self._events.append(MemberChanged(member, member.state))
            records = tuple(self.directory.purge(member.name))
            shared_seen: set[bytes] = set()
            for data in self.forwarder.on_peer_dead(member.name):
                try:
                    target, hops, stanza, shared = decode_stanza(data)
                except (ValueError, UnicodeDecodeError):
                    continue
                if shared:
                    # One decision's copies for several sessions on that node: route it again once.
                    if stanza in shared_seen:
                        continue
                    shared_seen.add(stanza)
                self._events.append(Reroute(target, hops, stanza, shared))
            left = isinstance(event, MemberLeft)
            self._lost(member.name, records, left)
            # Losses whose announcer was this member (it never got to announce them, or was cut off
            # with them by a partition): the next announcer in our view takes them over.
            for node, (announcer, lost, was_left) in list(self._unannounced.items()):
                if announcer == member.name:
                    del self._unannounced[node]
                    self._lost(node, lost, was_left)
        elif isinstance(event, (MemberJoined, MemberAlive)):
            member = event.member
            self._unannounced.pop(member.name, None)
            self._events.append(MemberChanged(member, member.state))
            # Tell it our sessions now, and start a repair so we learn everything it knows.
            self._send_updates(member.addr, self.directory.announce())
            self._send_addr(member.addr, Kind.DIRECTORY,
                            bytes([_DIGEST_ASK]) + encode_digest(self.directory.digest()))
        elif isinstance(event, MemberSuspect):
            self._events.append(MemberChanged(event.member, event.member.state))

    def _inbound(self, peer: str, token: object, data: bytes) -> None:
        try:
            target, hops, stanza, shared = decode_stanza(data)
        except (ValueError, UnicodeDecodeError):
            self.counters["malformed"] += 1
            self.forwarder.acknowledge(peer, token)  # nothing anyone can do with it
            return
        self._events.append(Inbound(peer, token, target, hops, stanza, shared))

    def _on_directory(self, peer: str, payload: bytes) -> None:
        if not payload:
            raise ValueError("empty directory frame")
        type_, body = payload[0], payload[1:]
        if type_ == _UPDATES:
            for update in _split_updates(body):
                self.counters["updates_received"] += 1
                self._apply(update)
        elif type_ in (_DIGEST_ASK, _DIGEST_ANSWER):
            digest = decode_digest(body)
            self._check_false_death(digest)
            addr = self.address_of(peer)
            if addr is None:
                return
            self._send_updates(addr, self.directory.missing_for(digest))
            if type_ == _DIGEST_ASK:
                self._send_addr(addr, Kind.DIRECTORY,
                                bytes([_DIGEST_ANSWER]) + encode_digest(self.directory.digest()))
            elif not self._joined:
                self._joined = True
                self._events.append(Joined(peer))
        else:
            raise ValueError(f"unknown directory frame type {type_}")

    def _lost(self, node: str, records: tuple[SessionRecord, ...], left: bool) -> None:
        live = sorted(m.name for m in self.membership.alive() if m.name != node)
        announcer = live[0] if live else self.name
        announce = announcer == self.name
        self._events.append(SessionsLost(node, records, announce, left))
        if not announce and records:
            self._unannounced[node] = (announcer, records, left)
        if not left:
            self._lost_nodes.add(node)
            self._returning.pop(node, None)
            if announce and records:
                self._announced.add(node)  # we said they left: we say it if they come back

    def _announcer(self, node: str) -> bool:
        """Whether this node is the one survivor that speaks for ``node``'s sessions: the live member
        with the smallest name (every node with the same view picks the same one)."""
        live = sorted(m.name for m in self.membership.alive() if m.name != node)
        return bool(live) and live[0] == self.name

    def _apply(self, update: Update) -> None:
        node = update.node
        # Only the epoch is needed here: one dict read, not a digest of every owner per update.
        before = self.directory.epoch_of(node) if node != self.name else None
        changes = self.directory.apply(update)
        restarted: list[SessionRecord] = []
        back: list[SessionRecord] = []
        if node in self._lost_nodes and not update.relayed:
            self._lost_nodes.discard(node)  # the node itself speaks again: what it sends is "back"
            self._returning[node] = self._now + 2 * self.repair_interval
        returning = self._returning.get(node, 0.0) >= self._now
        for change in changes:
            if isinstance(change, Conflict):
                if change.loser.node == self.name:
                    self._events.append(ConflictLost(change.loser.jid, change.winner))
            elif isinstance(change, Removed) and change.record.node == node and before is not None \
                    and update.version.epoch > before + 1:
                restarted.append(change.record)  # a new life of the node: its old sessions are gone
            elif isinstance(change, Added) and returning:
                back.append(change.record)
        if restarted:
            # Restarted faster than it could be declared dead (an epoch bump after a false death is
            # +1; a restart's epoch is a new millisecond clock reading).
            self._events.append(SessionsLost(node, tuple(restarted), self._announcer(node), False))
        if back:
            self._events.append(SessionsBack(node, tuple(back), node in self._announced))
        if not returning and node not in self._lost_nodes:
            self._announced.discard(node)

    def _check_conflict(self, jid: JID) -> None:
        winner = self.directory.get(jid)
        if winner is not None and winner.node != self.name:
            self._events.append(ConflictLost(jid, winner))

    def _check_false_death(self, digest: Digest) -> None:
        if self.name not in digest.dead:
            return
        dead_epoch = digest.dead[self.name]
        if dead_epoch is not None and dead_epoch < self.directory.epoch:
            return  # that verdict was about an earlier life; our current epoch is accepted
        self.counters["epoch_bumps"] += 1
        deltas = self.directory.bump_epoch()
        self._pending.extend(deltas if deltas else self.directory.announce())

    def _flush_updates(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for member in self.membership.alive():
            if member.name != self.name:
                self._send_updates(member.addr, pending)

    def _send_updates(self, addr: Addr, updates: Sequence[Update]) -> None:
        if not updates:
            return
        limit = self.max_frame - 1
        batch = bytearray([_UPDATES])
        for update in updates:
            data = encode_delta(update)
            if len(batch) > 1 and len(batch) + _LEN.size + len(data) > limit:
                self._emit_updates(addr, batch)
                batch = bytearray([_UPDATES])
            batch += _LEN.pack(len(data))
            batch += data
        if len(batch) > 1:
            self._emit_updates(addr, batch)

    def _emit_updates(self, addr: Addr, batch: bytearray) -> None:
        self.counters["updates_sent"] += 1
        self.counters["update_bytes_sent"] += len(batch)
        self._out.append((addr, Kind.DIRECTORY.value, bytes(batch)))


def _split_updates(body: bytes) -> list[Update]:
    out: list[Update] = []
    i, n = 0, len(body)
    while i < n:
        if n - i < _LEN.size:
            raise ValueError("truncated update length")
        (size,) = _LEN.unpack_from(body, i)
        i += _LEN.size
        if size > n - i:
            raise ValueError("truncated update")
        out.append(decode_delta(body[i:i + size]))
        i += size
    return out

