"""SWIM membership with the Lifeguard refinements, sans-IO (after hashicorp/memberlist ``state.go``).

Feed it bytes (`on_message`) and time (`on_timer` once `next_deadline` has passed); take the bytes to send
(`drain_outgoing`) and what changed (`drain_events`).  It never reads a clock, never draws from the global
random module (the caller's `rng` makes every choice) and never awaits.

Each probe interval the node probes one member (round robin over a shuffled list): a direct ping; after
`probe_timeout`, pings through `indirect_checks` other members (which nack when they cannot reach it) plus
one more direct ping; no ack by the end of the interval and the member is suspect.  A suspect member refutes
by gossiping alive with a higher incarnation; otherwise the suspicion timer (long, shrinking with independent
confirmations) declares it dead.  Every packet piggybacks pending broadcasts; a gossip round sends them to a
few random members; a periodic push-pull exchanges whole member tables (which is also how a node joins
through its seeds); dead members and absent seeds are re-dialled so a healed partition merges again.

This module drives the protocol: probes, gossip, push-pull, re-dialling, bytes in and out.  The member table
and its rules live in `_swim_table` (states, events and TRANSITIONS in `_swim_types`), the wire format in
`_swim_msgs`, the formulas and both timing profiles in `_swim_timing`, probe scheduling in `_swim_probe`, the
gossip queue in `_swim_queue`.  docs/mesh/membership.md describes all of it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from meshxmpp.mesh import _swim_msgs as m
from meshxmpp.mesh._swim_msgs import DecodeError
from meshxmpp.mesh._swim_probe import Probe, ProbeOrder, Relay, random_members
from meshxmpp.mesh._swim_queue import BroadcastQueue
from meshxmpp.mesh._swim_table import Entry, MemberTable
from meshxmpp.mesh._swim_timing import PROFILES, Awareness, Timing, push_pull_scale, retransmit_limit
from meshxmpp.mesh._swim_types import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    TRANSITIONS,
    Member,
    MemberAlive,
    MemberDead,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MembershipStatistics,
    MemberSuspect,
)

__all__ = [
    "PROFILES",
    "TRANSITIONS",
    "DecodeError",
    "Member",
    "MemberAlive",
    "MemberDead",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberSuspect",
    "Membership",
    "MembershipStatistics",
    "Timing",
]

Addr = tuple[str, int]
#: Piggybacked gossip fills a packet up to this size, as memberlist fills a 1400-byte UDP datagram.
GOSSIP_PACKET_BYTES = 1400


@dataclass(slots=True)
class _Counters:
    probes_sent: int = 0
    probes_failed: int = 0
    indirect_probes_sent: int = 0
    acks_received: int = 0
    nacks_received: int = 0
    gossip_packets_sent: int = 0
    push_pulls_sent: int = 0
    reconnect_attempts: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    malformed_received: int = 0
    send_failures: int = 0


class Membership:
    def __init__(self, name: str, addr: tuple[str, int], *, timing: Timing, rng: random.Random, now: float,
                 seeds: Sequence[tuple[str, int]] = ()) -> None:
        self._addr = (addr[0], int(addr[1]))
        self._t = timing
        self._rng = rng
        self._header = m.packet_header(name, self._addr)
        self._c = _Counters()
        self._awareness = Awareness(timing.awareness_max_multiplier)
        self._broadcasts = BroadcastQueue()
        self._probe: Probe | None = None
        self._probe_order = ProbeOrder(rng)
        self._seq = 0
        self._relays: dict[int, Relay] = {}
        self._out: list[tuple[Addr, bytes]] = []
        self._sync_cache: tuple[int, tuple[bytes, bytes]] = (-1, (b"", b""))
        self._pool_cache: tuple[int, tuple[list[Entry], list[Entry], list[Entry]]] = (-1, ([], [], []))
        self._table = MemberTable(name, self._addr, timing, now, self._broadcasts,
                                  on_refute=self._refuted, on_added=self._added)
        # Random phases, so that nodes started together do not probe and gossip in lockstep.
        self._next_probe = now + rng.uniform(0, timing.probe_interval)
        self._next_gossip = now + rng.uniform(0, timing.gossip_interval)
        self._next_push_pull = now + rng.uniform(0, timing.push_pull_interval)
        self._next_reconnect = now + rng.uniform(0.5, 1.0) * timing.reconnect_interval
        self._seeds = tuple(dict.fromkeys(a for a in ((s[0], int(s[1])) for s in seeds) if a != self._addr))
        self._seeds_until = now + timing.reconnect_timeout
        for seed in self._seeds:
            self._push_pull(seed)

    # -- public surface ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._table.name

    @property
    def addr(self) -> Addr:
        return self._addr

    @property
    def incarnation(self) -> int:
        return self._table.me.incarnation

    @property
    def timing(self) -> Timing:
        return self._t

    def members(self) -> list[Member]:
        """Every member we know of, the local one included, sorted by name."""
        table = self._table.members
        return [table[k].snapshot() for k in sorted(table)]

    def alive(self) -> list[Member]:
        """The members in state alive, the local one included until it leaves, sorted by name."""
        return [e for e in self.members() if e.state == ALIVE]

    def member(self, name: str) -> Member | None:
        entry = self._table.members.get(name)
        return entry.snapshot() if entry else None

    def drain_outgoing(self) -> list[tuple[Addr, bytes]]:
        out, self._out = self._out, []
        return out

    def drain_events(self) -> list[MemberEvent]:
        events, self._table.events = self._table.events, []
        return events

    def statistics(self) -> MembershipStatistics:
        c, t = self._c, self._table
        return MembershipStatistics(
            name=t.name, incarnation=t.me.incarnation, alive=t.counts[ALIVE], suspect=t.counts[SUSPECT],
            dead=t.counts[DEAD], left=t.counts[LEFT], health_score=self._awareness.score,
            probes_sent=c.probes_sent, probes_failed=c.probes_failed,
            indirect_probes_sent=c.indirect_probes_sent, acks_received=c.acks_received,
            nacks_received=c.nacks_received, refutations=t.refutations, declared_dead=t.declared_dead,
            gossip_packets_sent=c.gossip_packets_sent, push_pulls_sent=c.push_pulls_sent,
            reconnect_attempts=c.reconnect_attempts, packets_sent=c.packets_sent, bytes_sent=c.bytes_sent,
            packets_received=c.packets_received, bytes_received=c.bytes_received,
            malformed_received=c.malformed_received, address_conflicts=t.address_conflicts,
            send_failures=c.send_failures, broadcast_queue=len(self._broadcasts),
        )

    def next_deadline(self) -> float:
        # The gossip timer only matters while there is something to gossip.
        gossip = self._next_gossip if len(self._broadcasts) else math.inf
        if self._table.leaving:
            return gossip
        deadline = min(gossip, self._next_push_pull, self._next_reconnect)
        probe = self._probe
        if probe is None:
            deadline = min(deadline, self._next_probe)
        else:
            deadline = min(deadline, probe.end if probe.indirect else probe.direct_deadline)
        for s in self._table.suspicions.values():
            deadline = min(deadline, s.deadline)
        for r in self._relays.values():
            deadline = min(deadline, r.nack_at, r.expires)
        return deadline

    def on_timer(self, now: float) -> None:
        if self._table.leaving:
            if now >= self._next_gossip:
                self._gossip(now)
            return
        for seq, relay in list(self._relays.items()):
            if now >= relay.nack_at:
                relay.nack_at = math.inf
                self._send(relay.requester, [m.encode_message(m.Nack(relay.orig_seq))])
            if now >= relay.expires:
                del self._relays[seq]
        self._table.expire_suspicions(now)
        probe = self._probe
        if probe is not None and not probe.indirect and now >= probe.direct_deadline:
            self._probe_indirect(probe)
        if probe is not None and now >= probe.end:
            self._probe_finish(probe, now)
        if self._probe is None and now >= self._next_probe:
            self._probe_start(now)
        if now >= self._next_gossip:
            self._gossip(now)
        if now >= self._next_push_pull:
            self._next_push_pull = now + push_pull_scale(self._t.push_pull_interval, self._table.live())
            target = self._random_members(1, self._pools()[1])
            if target:
                self._push_pull(target[0].addr)
        if now >= self._next_reconnect:
            self._next_reconnect = now + self._t.reconnect_interval
            self._reconnect(now)

    def on_message(self, now: float, src: tuple[str, int], data: bytes) -> None:
        """One packet from the transport.  Malformed bytes are counted and dropped, never raised."""
        try:
            packet = m.decode_packet(data)
        except DecodeError:
            self._c.malformed_received += 1
            return
        self._c.packets_received += 1
        self._c.bytes_received += len(data)
        if packet.sender == self._table.name:
            return
        # Replies go out once the whole packet is handled, so that a refutation of a suspect message that
        # came with a ping rides on the ack.
        replies: list[tuple[Addr, bytes, bool]] = []
        for msg in packet.messages:
            self._dispatch(msg, packet, now, replies)
        for dest, data_out, piggyback in replies:
            self._send(dest, [data_out], piggyback=piggyback)

    def on_send_failed(self, now: float, dest: tuple[str, int]) -> None:
        """The transport could not reach `dest`: stop waiting for a direct ack from it."""
        self._c.send_failures += 1
        probe = self._probe
        if probe is not None and not probe.indirect and probe.addr == dest:
            self._probe_indirect(probe)
        for relay in self._relays.values():
            if relay.target_addr == dest and relay.nack_at < math.inf:
                relay.nack_at = now

    def leave(self, now: float) -> None:
        """Leave gracefully: tell every member 'left' with a bumped incarnation, then only gossip it."""
        if self._table.leaving:
            return
        data = m.encode_message(self._table.leave(now))
        for entry in self._table.members.values():
            if entry is not self._table.me and entry.state in (ALIVE, SUSPECT):
                self._send(entry.addr, [data], piggyback=False)
        self._probe = None
        self._relays.clear()

    # -- probing -------------------------------------------------------------------------------------------

    def _probe_start(self, now: float) -> None:
        interval = self._awareness.scale(self._t.probe_interval)  # Lifeguard: slower when unhealthy
        self._next_probe = now + interval
        target = self._probe_order.next(self._table.members, self._table.me)
        if target is None:
            return
        seq = self._next_seq()
        self._probe = Probe(target.name, target.addr, seq, target.incarnation,
                             direct_deadline=now + self._t.probe_timeout, end=now + interval)
        self._c.probes_sent += 1
        self._send(target.addr, self._ping(seq, target))

    def _ping(self, seq: int, target: Entry) -> list[bytes]:
        msgs = [m.encode_message(m.Ping(seq, target.name))]
        if target.state == SUSPECT:
            # Lifeguard: tell a suspect member it is suspected, so that it can refute at once.
            msgs.append(m.encode_message(m.Suspect(target.name, target.incarnation, self._table.name)))
        return msgs

    def _probe_indirect(self, probe: Probe) -> None:
        probe.indirect = True
        helpers = self._random_members(self._t.indirect_checks,
                                       [e for e in self._pools()[1] if e.name != probe.target])
        req = m.encode_message(m.PingReq(probe.seq, probe.target, probe.addr, True))
        for helper in helpers:
            self._send(helper.addr, [req])
        self._c.indirect_probes_sent += len(helpers)
        probe.expected_nacks = len(helpers)
        # memberlist also tries the target once more over TCP at this point; our packets already travel
        # over the mesh links, so the fallback is a second direct ping.
        target = self._table.members.get(probe.target)
        if target is not None:
            self._send(probe.addr, self._ping(probe.seq, target))

    def _probe_finish(self, probe: Probe, now: float) -> None:
        self._probe = None
        # Lifeguard: every missing nack hints that we, not the target, are the slow one; without helpers
        # a failed probe counts against us.
        if probe.expected_nacks:
            self._awareness.apply_delta(max(probe.expected_nacks - probe.nacks, 0))
        else:
            self._awareness.apply_delta(1)
        self._c.probes_failed += 1
        self._table.suspect(m.Suspect(probe.target, probe.incarnation, self._table.name), now)

    def _on_ack(self, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq:
            self._c.acks_received += 1
            self._probe = None
            self._awareness.apply_delta(-1)
            return
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.requester, [m.encode_message(m.Ack(relay.orig_seq))])

    def _added(self, name: str) -> None:
        self._probe_order.add(name)

    def _refuted(self, alive: m.Alive, accuser: str | None) -> None:
        self._awareness.apply_delta(1)  # being suspected hints that we are the slow one
        accusing = self._table.members.get(accuser) if accuser else None
        if accusing is not None and accusing is not self._table.me:
            # Not in memberlist: answer the accuser directly too, the quickest way to stop its timer.
            self._send(accusing.addr, [m.encode_message(alive)])

    # -- receiving -----------------------------------------------------------------------------------------

    def _dispatch(self, msg: m.Message, packet: m.Packet, now: float,
                  replies: list[tuple[Addr, bytes, bool]]) -> None:
        match msg:
            case m.Ping(seq, target):
                if target == self._table.name:
                    replies.append((packet.sender_addr, m.encode_message(m.Ack(seq)), True))
            case m.Ack(seq):
                self._on_ack(seq)
            case m.Nack(seq):
                if self._probe is not None and self._probe.seq == seq:
                    self._c.nacks_received += 1
                    self._probe.nacks += 1
            case m.PingReq(seq, target, target_addr, nack):
                if self._table.leaving or target == self._table.name:
                    return
                own = self._next_seq()
                self._relays[own] = Relay(packet.sender_addr, seq, target_addr,
                                           now + self._t.probe_timeout if nack else math.inf,
                                           now + self._t.probe_interval)
                self._send(target_addr, [m.encode_message(m.Ping(own, target))])
            case m.Sync(reply, entries):
                self._table.merge(entries, packet.sender, now)
                if not reply:
                    replies.append((packet.sender_addr, self._sync(True), False))
            case m.Alive() | m.Suspect() | m.Dead() | m.Left():
                self._table.apply(msg, now)

    # -- sending -------------------------------------------------------------------------------------------

    def _send(self, dest: Addr, msgs: list[bytes], *, piggyback: bool = True) -> None:
        if piggyback and len(self._broadcasts):
            budget = GOSSIP_PACKET_BYTES - len(self._header) - 1 - sum(map(len, msgs))
            msgs = msgs + self._broadcasts.take(budget, self._retransmit_limit(), m.MAX_MESSAGES - len(msgs))
        data = m.encode_packet(self._header, msgs)
        self._c.packets_sent += 1
        self._c.bytes_sent += len(data)
        self._out.append((dest, data))

    def _gossip(self, now: float) -> None:
        self._next_gossip = now + self._t.gossip_interval
        limit = self._retransmit_limit()
        budget = GOSSIP_PACKET_BYTES - len(self._header) - 1
        ttl = self._t.gossip_to_the_dead_time
        live, _, dead = self._pools()
        if dead:
            live = live + [e for e in dead if now - e.since < ttl]
        targets = self._random_members(self._t.gossip_nodes, live)
        for target in targets:
            msgs = self._broadcasts.take(budget, limit, m.MAX_MESSAGES)
            if not msgs:
                return
            self._c.gossip_packets_sent += 1
            self._send(target.addr, msgs, piggyback=False)

    def _sync(self, reply: bool) -> bytes:
        version, cached = self._sync_cache
        if version != self._table.version:
            entries = self._table.sync_entries()
            cached = (m.encode_message(m.Sync(False, entries)), m.encode_message(m.Sync(True, entries)))
            self._sync_cache = (self._table.version, cached)
        return cached[reply]

    def _push_pull(self, dest: Addr) -> None:
        self._c.push_pulls_sent += 1
        self._send(dest, [self._sync(False)], piggyback=False)

    def _reconnect(self, now: float) -> None:
        """Re-dial dead members and the seeds no live member answers at, so a healed partition merges."""
        live, _, dead = self._pools()
        targets = dict.fromkeys(e.addr for e in dead)
        if now < self._seeds_until and self._seeds:
            live_addrs = {e.addr for e in live}
            targets.update(dict.fromkeys(s for s in self._seeds if s not in live_addrs))
        for addr in targets:
            self._c.reconnect_attempts += 1
            self._push_pull(addr)
        # Forget members that have been dead or gone for reconnect_timeout.
        expiry = now - self._t.reconnect_timeout
        gone = [e.name for e in dead if e.since <= expiry]
        if self._table.counts[LEFT]:
            gone += [e.name for e in self._table.members.values() if e.state == LEFT and e.since <= expiry
                     and e is not self._table.me]
        for name in gone:
            self._table.forget(name)

    # -- helpers -------------------------------------------------------------------------------------------

    def _retransmit_limit(self) -> int:
        return retransmit_limit(self._t.retransmit_mult, self._table.live())

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & m.MAX_SEQ
        return self._seq

    def _pools(self) -> tuple[list[Entry], list[Entry], list[Entry]]:
        """The other members that are (alive or suspect, alive, dead), cached until the table changes."""
        if self._pool_cache[0] != self._table.version:
            others = [e for e in self._table.members.values() if e is not self._table.me]
            self._pool_cache = (self._table.version, (
                [e for e in others if e.state in (ALIVE, SUSPECT)],
                [e for e in others if e.state == ALIVE],
                [e for e in others if e.state == DEAD],
            ))
        return self._pool_cache[1]

    def _random_members(self, k: int, pool: list[Entry]) -> list[Entry]:
        return random_members(self._rng, k, pool)
