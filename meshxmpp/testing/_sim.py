"""`SimCluster`: whole mesh cores on a simulated network: seeded, fake clock, nothing sleeps.

Each node is a real `mesh.core.MeshCore` (membership, replicated directory, forwarding: the sans-IO part of
a node's mesh) driven by `SimNet`, which keeps its own clock and calls each core exactly at its deadlines.
Thirty simulated minutes of gossip take seconds, and a seed fixes every random choice (latency, loss,
each core's generator), so a failing seed replays the same run: `trace()` is comparable between runs.

    sim = SimCluster(3, seed=7, loss=0.10)
    sim.converged()                        # members all alive, tables equal (raises after a deadline)
    sim.bind(0, "alice@example.org/desk")
    sim.run_for(30 * 60)
    assert not sim.false_deaths()
    sim.kill(2); sim.run_until(lambda: "n2" not in sim.alive_members(0), timeout=30, what="n2 dead")
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from meshxmpp.jid import JID
from meshxmpp.mesh._swim_timing import PROFILES, Timing
from meshxmpp.mesh.core import Inbound, MemberChanged, MeshCore, MeshEvent
from meshxmpp.mesh.directory import SessionRecord
from meshxmpp.testing._simmesh import PORT, SimMeshNode
from meshxmpp.testing._simnet import SimNet

__all__ = ["Death", "SimCluster", "SimTimeout", "TraceEvent"]


class SimTimeout(AssertionError):
    """A `SimCluster` wait ran out of simulated time; the message names the seed and the time."""


@dataclass(frozen=True, slots=True, order=True)
class TraceEvent:
    """One entry of `SimCluster.trace`: ``node`` reported ``kind`` at simulated ``time``.

    ``kind`` is the core's event class (``MemberChanged``, ``SessionsLost``, ...) or ``harness`` for what
    the test did (``kill n2``, ``partition``...); ``detail`` is a stable text (no object ids)."""

    time: float
    node: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Death:
    """``observer`` declared ``member`` dead at ``time``. ``false``: the member was running and the
    network connected the two (no kill, no partition between them) at that moment."""

    time: float
    observer: str
    member: str
    incarnation: int
    false: bool


def _detail(event: MeshEvent) -> str:
    if isinstance(event, Inbound):  # its token is an opaque object: leave it out
        return f"peer={event.peer} target={event.target} hops={event.hops} shared={event.shared} " \
               f"stanza={event.stanza!r}"
    if isinstance(event, MemberChanged):
        m = event.member
        return f"{m.name} {event.state} incarnation={m.incarnation}"
    parts = []
    for f in dataclasses.fields(event):
        parts.append(f"{f.name}={getattr(event, f.name)!r}")
    return " ".join(parts)


class SimCluster:
    """``n`` mesh cores named ``n0``.. on a `SimNet`; node ``i`` joins through ``n0`` (or any live node
    when restarted). ``sim[i]`` is the `SimMeshNode` (``.core`` is its `MeshCore`, ``.events`` what it
    reported). See docs/testing.md, "Deterministic mode"."""

    def __init__(self, n: int = 3, *, seed: int = 0, loss: float = 0.0, duplicate: float = 0.0,
                 latency: tuple[float, float] = (0.0005, 0.003), profile: str = "test",
                 timing: Timing | None = None, repair_interval: float = 1.0, start_spread: float = 0.0) -> None:
        if n < 1:
            raise ValueError("a SimCluster needs at least one node")
        if profile not in PROFILES:
            raise ValueError(f"unknown timing profile {profile!r}; one of {sorted(PROFILES)}")
        self.seed = seed
        self.timing = timing or PROFILES[profile]
        self.repair_interval = repair_interval
        self.net = SimNet(seed, loss=loss, duplicate=duplicate, latency=latency, observe=self._observe,
                          notify_send_failed=True)
        self.nodes: list[SimMeshNode] = []
        self._trace: list[TraceEvent] = []
        self._deaths: list[Death] = []
        self._seen: dict[int, int] = {}  # id(SimMeshNode) -> events already traced
        self._retired: list[SimMeshNode] = []  # restarted nodes' old selves, so their ids stay unique
        self._generation: dict[str, int] = {}
        self._rng = random.Random(seed)
        for i in range(n):
            start = self._rng.uniform(0, start_spread) if start_spread else 0.0
            self.nodes.append(self._new_node(i, [("n0", PORT)] if i else [], start))

    # -- construction --------------------------------------------------------------------------------------

    def _new_node(self, i: int, seeds: list[tuple[str, int]], start_offset: float = 0.0) -> SimMeshNode:
        name = f"n{i}"
        generation = self._generation.get(name, -1) + 1
        self._generation[name] = generation
        core = MeshCore(name, (name, PORT), timing=self.timing,
                        rng=random.Random(f"{self.seed}/{name}/{generation}"), now=self.net.now + start_offset,
                        # Epochs grow across restarts, as wall-clock milliseconds do for a real node.
                        epoch=1_000_000 + 1000 * generation + i, seeds=seeds,
                        repair_interval=self.repair_interval)
        node = SimMeshNode(core)
        self.net.add((name, PORT), node)
        return node

    # -- access --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, i: int) -> SimMeshNode:
        return self.nodes[i]

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    @property
    def now(self) -> float:
        """Simulated seconds since the start."""
        return self.net.now

    @property
    def loss(self) -> float:
        return self.net.loss

    @loss.setter
    def loss(self, value: float) -> None:
        self._harness("-", f"loss {value}")
        self.net.loss = value

    @property
    def duplicate(self) -> float:
        return self.net.duplicate

    @duplicate.setter
    def duplicate(self, value: float) -> None:
        self._harness("-", f"duplicate {value}")
        self.net.duplicate = value

    def core(self, i: int) -> MeshCore:
        return self.nodes[i].core

    def is_alive(self, i: int) -> bool:
        """Node ``i`` runs (not killed)."""
        return self.net.is_alive(self._addr(i))

    def live(self) -> list[int]:
        return [i for i in range(len(self.nodes)) if self.is_alive(i)]

    def members(self, i: int) -> dict[str, str]:
        """Node ``i``'s view: member name -> alive | suspect | dead | left (itself included)."""
        return {m.name: m.state for m in self.core(i).membership.members()}

    def alive_members(self, i: int) -> list[str]:
        return sorted(m.name for m in self.core(i).membership.alive())

    def table(self, i: int) -> list[tuple[str, str]]:
        """Node ``i``'s session table: sorted ``(full JID, owner node)``."""
        d = self.core(i).directory
        return sorted((str(r.jid), r.node) for o in d.nodes() for r in d.records_of(o))

    def statistics(self) -> dict[str, int]:
        net = self.net
        return {"sent": net.sent, "delivered": net.delivered, "dropped": net.dropped,
                "duplicated": net.duplicated}

    # -- running -------------------------------------------------------------------------------------------

    def run_for(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Advance simulated time by ``seconds`` (stop early, returning True, once ``until()`` holds)."""
        return self.net.run_for(seconds, until)

    def run_until(self, condition: Callable[[], bool], *, timeout: float = 60.0,
                  what: str | Callable[[], str] = "") -> float:
        """Run until ``condition()`` holds; return the simulated seconds it took. Raises `SimTimeout`
        (naming the seed and what was missing) after ``timeout`` simulated seconds."""
        start = self.now
        if self.net.run_for(timeout, condition):
            return self.now - start
        text = what() if callable(what) else what
        raise SimTimeout(f"seed {self.seed}: after {timeout} simulated s (t={self.now:.3f}): "
                         f"{text or 'condition still false'}")

    def is_converged(self) -> bool:
        """Every live node sees exactly the live nodes alive, and all hold the same session table."""
        live = self.live()
        want = sorted(self.nodes[i].name for i in live)
        if any(self.alive_members(i) != want for i in live):
            return False
        return len({tuple(self.table(i)) for i in live}) <= 1

    def converged(self, *, timeout: float = 60.0) -> float:
        """Run until `is_converged`; the simulated seconds it took (`SimTimeout` after ``timeout``)."""
        return self.run_until(self.is_converged, timeout=timeout, what=lambda: "not converged: " + "; ".join(
            f"{self.nodes[i].name} sees alive {self.alive_members(i)}, {len(self.table(i))} records"
            for i in self.live()))

    # -- the test's actions ----------------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """Crash node ``i``: no more timers, nothing delivered to or from it, no goodbye."""
        self._harness(self.nodes[i].name, "kill")
        self.net.kill(self._addr(i))

    def restart(self, i: int) -> SimMeshNode:
        """Start node ``i`` again with an empty state and a newer epoch (killing it first if it runs);
        it joins through a live node."""
        if self.is_alive(i):
            self.kill(i)
        seeds = [self._addr(j) for j in self.live()][:1]
        self._harness(self.nodes[i].name, "restart")
        self._retired.append(self.nodes[i])
        self.nodes[i] = self._new_node(i, seeds)
        return self.nodes[i]

    def partition(self, *groups: Iterable[int]) -> None:
        """Lose every packet between nodes of different groups until `heal` (a node in no group talks to
        everyone). Groups are node indices: ``partition({0, 1}, {2})``."""
        sets = [sorted(set(g)) for g in groups]
        self._harness("-", f"partition {sets}")
        self.net.partition(*[[self._addr(i) for i in g] for g in sets])

    def heal(self) -> None:
        self._harness("-", "heal")
        self.net.heal()

    def bind(self, i: int, jid: str | JID, *, priority: int = 0, available: bool = True,
             **fields: Any) -> SessionRecord:
        """A session bound on node ``i`` (its record replicates to the others)."""
        full = jid if isinstance(jid, JID) else JID.parse(jid)
        record = SessionRecord(jid=full, node=self.nodes[i].name, bound_at=self.now, priority=priority,
                               available=available, **fields)
        self._harness(self.nodes[i].name, f"bind {full}")
        self.core(i).put_session(record)
        self._flush(i)
        return record

    def unbind(self, i: int, jid: str | JID) -> None:
        full = jid if isinstance(jid, JID) else JID.parse(jid)
        self._harness(self.nodes[i].name, f"unbind {full}")
        self.core(i).remove_session(full)
        self._flush(i)

    def forward(self, i: int, to: int, jid: str, stanza: bytes) -> bool:
        """Node ``i`` forwards ``stanza`` for full JID ``jid`` to node ``to`` (acked on arrival)."""
        self._harness(self.nodes[i].name, f"forward to {self.nodes[to].name} for {jid}")
        ok = self.core(i).forward(self.now, self.nodes[to].name, jid, stanza)
        self._flush(i)
        return ok

    # -- what happened ---------------------------------------------------------------------------------------

    def trace(self) -> list[TraceEvent]:
        """Every event the cores reported and every action of the test, in simulated-time order. Two runs
        with the same seed and the same actions give equal traces."""
        return list(self._trace)

    def deaths(self) -> list[Death]:
        """Every 'dead' declaration, each classified as true or false (see `Death`)."""
        return list(self._deaths)

    def false_deaths(self) -> list[Death]:
        """Members declared dead while they were running and reachable: a failure detector's mistakes."""
        return [d for d in self._deaths if d.false]

    def events(self, i: int, kind: type | None = None) -> list[tuple[float, MeshEvent]]:
        """``(time, event)`` node ``i`` (its current incarnation) reported, optionally of one class."""
        return [(t, e) for t, e in self.nodes[i].events if kind is None or isinstance(e, kind)]

    # -- internals -----------------------------------------------------------------------------------------

    def _addr(self, i: int) -> tuple[str, int]:
        return (f"n{i}", PORT)

    def _harness(self, node: str, detail: str) -> None:
        self._trace.append(TraceEvent(self.now, node, "harness", detail))

    def _flush(self, i: int) -> None:
        """Send what a direct call into a core produced, as SimNet does after its own calls."""
        self.net._after_call(self._addr(i))

    def _observe(self, addr: Hashable, node: Any, now: float) -> None:
        key = id(node)
        seen = self._seen.get(key, 0)
        events = node.events
        if seen == len(events):
            return
        self._seen[key] = len(events)
        for t, event in events[seen:]:
            self._trace.append(TraceEvent(t, node.name, type(event).__name__, _detail(event)))
            if isinstance(event, MemberChanged) and event.state == "dead":
                member = event.member.name
                target = (member, PORT)
                false = self.net.is_alive(target) and self.net.connected(addr, target)
                self._deaths.append(Death(t, node.name, member, event.member.incarnation, false))
