"""Whole mesh nodes (`mesh.core.MeshCore`) on a `SimNet`: simulated time, seeded faults, no sockets.

A node's address is ``(name, 5701)``, so the sender's name is the first half of the packet's source, as the
transport's handshake would have told the real glue. Events each core reports are kept in ``events`` with
their simulated time.

    net, nodes = sim_mesh(3, seed=1, profile="test")
    nodes[0].core.put_session(record)
    net.run_for(1.0)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from meshxmpp.mesh._swim_timing import PROFILES, Timing
from meshxmpp.mesh.core import MeshCore, MeshEvent
from meshxmpp.testing._simnet import SimNet

__all__ = ["SimMeshNode", "sim_mesh"]

PORT = 5701


@dataclass(slots=True)
class SimMeshNode:
    """Adapts a `MeshCore` to `SimNet`'s node protocol; ``events`` collects ``(time, event)``."""

    core: MeshCore
    events: list[tuple[float, MeshEvent]] = field(default_factory=list)
    frames_out: int = 0
    bytes_out: int = 0
    auto_ack: bool = True  # acknowledge forwarded stanzas as soon as they arrive

    @property
    def name(self) -> str:
        return self.core.name

    def on_message(self, now: float, src: Any, msg: Any, /) -> None:
        kind, payload = msg
        self.core.on_frame(now, src[0], kind, payload)
        self._collect(now)

    def on_timer(self, now: float, /) -> None:
        self.core.on_timer(now)
        self._collect(now)

    def next_deadline(self) -> float:
        return self.core.next_deadline()

    def on_send_failed(self, now: float, dst: Any, /) -> None:
        self.core.on_send_failed(now, dst)
        self._collect(now)

    def drain_outgoing(self) -> Sequence[tuple[Any, Any]]:
        out = []
        for addr, kind, payload in self.core.drain_outgoing():
            self.frames_out += 1
            self.bytes_out += len(payload) + 6
            out.append((addr, (kind, payload)))
        return out

    def _collect(self, now: float) -> None:
        from meshxmpp.mesh.core import Inbound

        for event in self.core.drain_events():
            self.events.append((now, event))
            if self.auto_ack and isinstance(event, Inbound):
                self.core.acknowledge(event.peer, event.token)


def sim_mesh(n: int, *, seed: int, profile: str = "test", timing: Timing | None = None,
             repair_interval: float = 1.0, epoch: int = 1_000_000, start_spread: float = 0.0,
             **net_kw: Any) -> tuple[SimNet, list[SimMeshNode]]:
    """``n`` nodes named n0..n(n-1), each seeded with n0's address (n0 with none); ``net_kw`` go to SimNet."""
    net = SimNet(seed, **net_kw)
    rng = random.Random(seed)
    nodes = []
    for i in range(n):
        name = f"n{i}"
        addr = (name, PORT)
        seeds = [("n0", PORT)] if i else []
        core = MeshCore(name, addr, timing=timing or PROFILES[profile], rng=random.Random(rng.random()),
                        now=net.now + (rng.uniform(0, start_spread) if start_spread else 0.0), epoch=epoch + i,
                        seeds=seeds, repair_interval=repair_interval)
        node = SimMeshNode(core)
        net.add(addr, node)
        nodes.append(node)
    return net, nodes
