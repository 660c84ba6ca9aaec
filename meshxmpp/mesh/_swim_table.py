"""The member table: who is in which state at which incarnation, and the rules that change it.

`MemberTable` applies alive / suspect / dead / left claims (memberlist ``aliveNode``, ``suspectNode``,
``deadNode``), runs the suspicion timers, queues a broadcast for every change it accepts and records a
`MemberEvent` for every change an application cares about.  The resulting states come from `TRANSITIONS`;
the incarnation guards are here.  It does not send anything itself: `Membership` drives it and is told about
refutations and new members through two callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from meshxmpp.mesh import _swim_msgs as m
from meshxmpp.mesh._swim_queue import BroadcastQueue
from meshxmpp.mesh._swim_timing import Suspicion, Timing, suspicion_timeout
from meshxmpp.mesh._swim_types import (
    ALIVE,
    DEAD,
    LEFT,
    STATES,
    SUSPECT,
    TRANSITIONS,
    Member,
    MemberAlive,
    MemberDead,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberSuspect,
)

__all__ = ["Entry", "MemberTable"]

Addr = tuple[str, int]


@dataclass(slots=True)
class Entry:
    name: str
    addr: Addr
    incarnation: int
    state: str
    since: float  # time of the last state change

    def snapshot(self) -> Member:
        return Member(self.name, self.addr, self.incarnation, self.state)


class MemberTable:
    def __init__(self, name: str, addr: Addr, timing: Timing, now: float, broadcasts: BroadcastQueue, *,
                 on_refute: Callable[[m.Alive, str | None], None], on_added: Callable[[str], None]) -> None:
        self.name = name
        self.addr = addr
        self._t = timing
        self._broadcasts = broadcasts
        self._on_refute = on_refute
        self._on_added = on_added
        self.members: dict[str, Entry] = {}
        self.counts = dict.fromkeys(STATES, 0)
        self.suspicions: dict[str, Suspicion] = {}
        self.events: list[MemberEvent] = []
        self.leaving = False
        self.refutations = 0
        self.declared_dead = 0
        self.address_conflicts = 0
        #: Bumped by every change of a member's state, incarnation or address (for the callers' caches).
        self.version = 0
        self._sync_cache: tuple[int, tuple[m.SyncEntry, ...]] = (-1, ())
        self.me = self._add(name, addr, 0, now)

    def live(self) -> int:
        """Members alive or suspect, the local one included: the n of every formula."""
        return self.counts[ALIVE] + self.counts[SUSPECT]

    # -- claims ------------------------------------------------------------------------------------------

    def apply(self, msg: m.Alive | m.Suspect | m.Dead | m.Left, now: float) -> None:
        match msg:
            case m.Alive():
                self.alive(msg, now)
            case m.Suspect():
                self.suspect(msg, now)
            case m.Dead():
                self.dead(msg, now)
            case m.Left():
                self.left(msg, now)

    def alive(self, a: m.Alive, now: float) -> None:
        entry = self.members.get(a.name)
        if entry is self.me:
            if self.leaving or a.incarnation < entry.incarnation:
                return
            if a.incarnation == entry.incarnation and a.addr == self.addr:
                return
            self._refute(a.incarnation, None)  # a stale or conflicting claim about us (an earlier life)
            return
        if entry is None:
            entry = self._add(a.name, a.addr, a.incarnation, now)
            self._broadcast(a.name, a)
            self.events.append(MemberJoined(entry.snapshot()))
            return
        if a.addr != entry.addr:
            reclaim = self._t.dead_reclaim_time
            if not (entry.state == LEFT
                    or (entry.state == DEAD and reclaim > 0 and now - entry.since > reclaim)):
                self.address_conflicts += 1
                return
        elif a.incarnation <= entry.incarnation:
            return
        self.suspicions.pop(a.name, None)
        old = entry.state
        entry.addr = a.addr
        entry.incarnation = a.incarnation
        self.version += 1
        self._transition(entry, "alive", now)
        self._broadcast(a.name, a)
        if old != ALIVE:
            self.events.append(MemberAlive(entry.snapshot()))

    def suspect(self, s: m.Suspect, now: float) -> None:
        entry = self.members.get(s.name)
        if entry is None or s.incarnation < entry.incarnation:
            return
        timer = self.suspicions.get(s.name)
        if timer is not None:
            if timer.confirm(s.accuser):
                self._broadcast(s.name, s)  # a new confirmation is news for the others too
            return
        if entry.state != ALIVE:
            return
        if entry is self.me:
            if not self.leaving:
                self._refute(s.incarnation, s.accuser)
            return
        entry.incarnation = s.incarnation
        self._transition(entry, "suspect", now)
        self._broadcast(s.name, s)
        n = self.live()
        # Lifeguard: expect k = mult - 2 independent confirmations, unless there are not enough others
        # (n counts us and the suspect) to give them.
        k = self._t.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        lo = suspicion_timeout(self._t.suspicion_mult, n, self._t.probe_interval)
        self.suspicions[s.name] = Suspicion(s.accuser, k, lo, self._t.suspicion_max_timeout_mult * lo, now)
        self.events.append(MemberSuspect(entry.snapshot()))

    def dead(self, d: m.Dead, now: float, *, timeout: bool = False) -> None:
        entry = self.members.get(d.name)
        if entry is None or d.incarnation < entry.incarnation:
            return
        self.suspicions.pop(d.name, None)
        if entry.state in (DEAD, LEFT):
            return
        if entry is self.me:
            if not self.leaving:
                self._refute(d.incarnation, d.accuser)
            return
        entry.incarnation = d.incarnation
        self._transition(entry, "timeout" if timeout else "dead", now)
        self._broadcast(d.name, d)
        self.events.append(MemberDead(entry.snapshot()))

    def left(self, lm: m.Left, now: float) -> None:
        entry = self.members.get(lm.name)
        if entry is None or lm.incarnation < entry.incarnation:
            return
        if entry is self.me:
            if not self.leaving:
                self._refute(lm.incarnation, None)  # an earlier life of ours left; this one is here
            return
        if entry.state == LEFT:
            return
        self.suspicions.pop(lm.name, None)
        entry.incarnation = lm.incarnation
        self._transition(entry, "left", now)
        self._broadcast(lm.name, lm)
        self.events.append(MemberLeft(entry.snapshot()))

    def merge(self, entries: tuple[m.SyncEntry, ...], sender: str, now: float) -> None:
        """A push-pull table from `sender`."""
        for e in entries:
            local = self.members.get(e.name)
            if (local is not None and local is not self.me and local.state == e.state
                    and local.incarnation == e.incarnation):
                continue
            if e.state == ALIVE:
                self.alive(m.Alive(e.name, e.addr, e.incarnation), now)
            elif e.state == LEFT:
                self.left(m.Left(e.name, e.incarnation), now)
            else:
                # memberlist: a remote 'dead' only makes us suspect, so the member gets to refute.
                self.suspect(m.Suspect(e.name, e.incarnation, sender), now)

    def expire_suspicions(self, now: float) -> None:
        for name, timer in list(self.suspicions.items()):
            if now >= timer.deadline:
                self.declared_dead += 1
                self.dead(m.Dead(name, self.members[name].incarnation, self.name), now, timeout=True)

    def leave(self, now: float) -> m.Left:
        self.leaving = True
        self.me.incarnation = min(self.me.incarnation + 1, m.MAX_INCARNATION)
        self._set_state(self.me, LEFT, now)
        self.suspicions.clear()
        msg = m.Left(self.name, self.me.incarnation)
        self._broadcast(self.name, msg)
        return msg

    def forget(self, name: str) -> None:
        self.version += 1
        entry = self.members.pop(name)
        self.counts[entry.state] -= 1
        self.suspicions.pop(name, None)

    def sync_entries(self) -> tuple[m.SyncEntry, ...]:
        if self._sync_cache[0] != self.version:
            entries = tuple(m.SyncEntry(e.name, e.addr, e.incarnation, e.state)
                            for e in list(self.members.values())[: m.MAX_SYNC_ENTRIES])
            self._sync_cache = (self.version, entries)
        return self._sync_cache[1]

    # -- internals ---------------------------------------------------------------------------------------

    def _refute(self, accused: int, accuser: str | None) -> None:
        self.me.incarnation = min(max(self.me.incarnation, accused) + 1, m.MAX_INCARNATION)
        self.version += 1
        self.refutations += 1
        alive = m.Alive(self.name, self.addr, self.me.incarnation)
        self._broadcast(self.name, alive)
        self._on_refute(alive, accuser)

    def _transition(self, entry: Entry, event: str, now: float) -> None:
        self._set_state(entry, TRANSITIONS[(entry.state, event)], now)

    def _set_state(self, entry: Entry, state: str, now: float) -> None:
        self.version += 1
        if state != entry.state:
            self.counts[entry.state] -= 1
            self.counts[state] += 1
            entry.state = state
            entry.since = now

    def _add(self, name: str, addr: Addr, incarnation: int, now: float) -> Entry:
        entry = Entry(name, addr, incarnation, ALIVE, now)
        self.version += 1
        self.members[name] = entry
        self.counts[ALIVE] += 1
        if name != self.name:
            self._on_added(name)
        return entry

    def _broadcast(self, subject: str, msg: m.Message) -> None:
        self._broadcasts.put(subject, m.encode_message(msg))
