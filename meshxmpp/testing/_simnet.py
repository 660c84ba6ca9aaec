"""A simulated network for sans-IO cores: seeded, with a fake clock and a route hook for faults.

Any object with ``on_message(now, src, msg)``, ``on_timer(now)``, ``next_deadline()`` and
``drain_outgoing() -> [(dest, msg)]`` can be a node: the membership core, the directory, the forwarder.
`SimNet` delivers what nodes send after a random latency, drops, duplicates or delays packets as told,
honours partitions and killed nodes, and calls ``on_timer`` exactly at each node's ``next_deadline()``.
Nothing sleeps: simulated minutes take a fraction of the time, and one seed replays one run exactly.

    net = SimNet(seed=7, loss=0.1)
    net.add(("n1", 1), core1)
    net.run_for(60.0)

Faults:

- ``loss``, ``duplicate`` and ``latency`` apply to every packet unless the route hook decides;
- ``route(packet)`` may return the list of delays for its copies (``[]`` drops it, two delays duplicate it)
  or ``None`` for the default treatment;
- ``partition(group_a, group_b, ...)`` drops packets between groups (nodes in no group talk to everyone),
  ``heal()`` ends it; ``kill(addr)`` stops a node: no timers, nothing delivered to or from it.

``observe(addr, node, now)`` (optional) runs after every call into a node: the place to drain events with
their exact simulated time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Packet", "SimNet", "SimNetError", "SimNode"]

#: Calls into one node at one instant before `SimNet` decides the node spins on a deadline in the past.
_SPIN_LIMIT = 10_000


class SimNode(Protocol):
    def on_message(self, now: float, src: Any, msg: Any, /) -> None: ...
    def on_timer(self, now: float, /) -> None: ...
    def next_deadline(self) -> float: ...
    def drain_outgoing(self) -> Sequence[tuple[Any, Any]]: ...


class SimNetError(RuntimeError):
    """The simulation cannot go on (a node keeps asking for a timer in the past, an unknown address...)."""


@dataclass(frozen=True, slots=True)
class Packet:
    src: Hashable
    dst: Hashable
    msg: Any
    sent_at: float


RouteHook = Callable[[Packet], Sequence[float] | None]
Observer = Callable[[Hashable, Any, float], None]

_TIMER, _DELIVER = 0, 1


@dataclass(slots=True)
class _Slot:
    node: Any
    alive: bool = True
    deadline: float = math.inf  # the deadline currently in the heap
    spin: int = 0
    spin_at: float = -math.inf


class SimNet:
    def __init__(self, seed: int, *, latency: tuple[float, float] = (0.0005, 0.003), loss: float = 0.0,
                 duplicate: float = 0.0, route: RouteHook | None = None, observe: Observer | None = None,
                 start: float = 0.0, notify_send_failed: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = start
        self.latency = latency
        self.loss = loss
        self.duplicate = duplicate
        self.route = route
        self.observe = observe
        #: Tell a sender (``on_send_failed(now, dst)``, when it has one) about packets to unknown or
        #: killed nodes, as a connection-oriented transport would.
        self.notify_send_failed = notify_send_failed
        self.sent = self.delivered = self.dropped = self.duplicated = 0
        self._slots: dict[Hashable, _Slot] = {}
        self._groups: dict[Hashable, int] = {}
        self._heap: list[tuple[float, int, int, Hashable, Any]] = []
        self._counter = itertools.count()

    # -- topology ------------------------------------------------------------------------------------------

    def node_rng(self, addr: Hashable) -> random.Random:
        """A generator for one node, derived from the net's seed and the node's address."""
        return random.Random(f"{self.seed}/{addr!r}")

    def add(self, addr: Hashable, node: Any) -> None:
        if addr in self._slots and self._slots[addr].alive:
            raise SimNetError(f"address {addr!r} is already taken")
        self._slots[addr] = _Slot(node)
        self._after_call(addr)

    def node(self, addr: Hashable) -> Any:
        return self._slots[addr].node

    def nodes(self, *, alive_only: bool = True) -> dict[Hashable, Any]:
        return {a: s.node for a, s in self._slots.items() if s.alive or not alive_only}

    def is_alive(self, addr: Hashable) -> bool:
        slot = self._slots.get(addr)
        return slot is not None and slot.alive

    def kill(self, addr: Hashable) -> None:
        """Stop the node abruptly: no more timers, and nothing delivered to or from it."""
        slot = self._slots[addr]
        slot.alive = False
        slot.deadline = math.inf

    def partition(self, *groups: Iterable[Hashable]) -> None:
        self._groups = {addr: i for i, group in enumerate(groups) for addr in group}

    def heal(self) -> None:
        self._groups = {}

    def connected(self, a: Hashable, b: Hashable) -> bool:
        if not self._groups:
            return True
        ga, gb = self._groups.get(a), self._groups.get(b)
        return ga is None or gb is None or ga == gb

    # -- running -------------------------------------------------------------------------------------------

    def run_for(self, duration: float, until: Callable[[], bool] | None = None) -> bool:
        return self.run_until(self.now + duration, until)

    def run_until(self, t: float, until: Callable[[], bool] | None = None) -> bool:
        """Process everything due up to time `t`; with `until`, stop as soon as it returns True (checked
        after every step) and return True, else return False at `t`."""
        if until is not None and until():
            return True
        heap = self._heap
        while heap and heap[0][0] <= t:
            if self._step() and until is not None and until():
                return True
        self.now = max(self.now, t)
        return False

    def _step(self) -> bool:
        when, _, kind, addr, payload = heapq.heappop(self._heap)
        slot = self._slots.get(addr)
        if kind == _TIMER:
            if slot is None or not slot.alive or payload is not slot or when != slot.deadline:
                return False  # superseded
            self.now = when
            slot.deadline = math.inf
            if when == slot.spin_at:
                slot.spin += 1
                if slot.spin > _SPIN_LIMIT:
                    raise SimNetError(f"node {addr!r} keeps asking for a timer at {when} (seed {self.seed})")
            else:
                slot.spin_at, slot.spin = when, 0
            slot.node.on_timer(when)
        else:
            src, msg = payload
            sender = self._slots.get(src)
            if (slot is None or not slot.alive or sender is None or not sender.alive
                    or (self._groups and not self.connected(src, addr))):
                self.dropped += 1
                return False
            self.now = when
            self.delivered += 1
            slot.node.on_message(when, src, msg)
        self._after_call(addr)
        return True

    def _after_call(self, addr: Hashable) -> None:
        slot = self._slots[addr]
        out = slot.node.drain_outgoing()
        while out:
            for dst, msg in out:
                self._send(addr, dst, msg)
            # A send-failed notice may have made the node send more.
            out = slot.node.drain_outgoing() if self.notify_send_failed else ()
        if self.observe is not None:
            self.observe(addr, slot.node, self.now)
        deadline = slot.node.next_deadline() if slot.alive else math.inf
        if deadline != slot.deadline:
            slot.deadline = deadline
            if deadline < math.inf:
                heapq.heappush(self._heap, (max(deadline, self.now), next(self._counter), _TIMER, addr, slot))
                slot.deadline = max(deadline, self.now)

    def _send(self, src: Hashable, dst: Hashable, msg: Any) -> None:
        self.sent += 1
        target = self._slots.get(dst)
        if target is None or not target.alive:
            self.dropped += 1
            sender = self._slots[src].node
            if self.notify_send_failed and hasattr(sender, "on_send_failed"):
                # Reported at once, as a refused connection would be; the sender sees it on its next call.
                sender.on_send_failed(self.now, dst)
            return
        if not self.connected(src, dst):
            self.dropped += 1
            return
        packet = Packet(src, dst, msg, self.now)
        delays = self.route(packet) if self.route is not None else None
        if delays is None:
            delays = self.default_delays()
        if not delays:
            self.dropped += 1
        self.duplicated += max(len(delays) - 1, 0)
        for delay in delays:
            heapq.heappush(self._heap, (self.now + delay, next(self._counter), _DELIVER, dst, (src, msg)))

    def default_delays(self) -> list[float]:
        """The delays of the default treatment: `loss`, `duplicate` and `latency` (usable in a route hook)."""
        rand = self.rng.random
        if self.loss and rand() < self.loss:
            return []
        lo, hi = self.latency
        delays = [lo + (hi - lo) * rand()]
        if self.duplicate and rand() < self.duplicate:
            delays.append(lo + (hi - lo) * rand())
        return delays
