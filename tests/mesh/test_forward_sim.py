"""Forwarding on the shared `SimNet`: a seeded soak with loss, duplication and jittered latency (reordering).

Each node sends to every other node on a schedule, with bursts that overrun the window; each receiver routes
and acknowledges at once. Every stanza must be handed out exactly once, in order per node pair.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque

import pytest

from meshxmpp.mesh.forward import Forwarder
from meshxmpp.testing._simnet import SimNet


class Host:
    """Adapts a `Forwarder` (frames as ``(kind, payload)`` messages) plus a send schedule to `SimNet`."""

    def __init__(self, name: str, epoch: int, sends: list[tuple[float, str, bytes]], window: int) -> None:
        self.fw = Forwarder(name, epoch=epoch, window=window, retransmit_after=0.2)
        self.schedule = deque(sorted(sends))
        self.got: dict[str, list[bytes]] = defaultdict(list)
        self.max_in_flight = 0

    def on_message(self, now: float, src: str, msg: tuple[int, bytes]) -> None:
        for inbound in self.fw.on_frame(now, src, *msg):
            self.got[src].append(inbound.stanza)
            self.fw.acknowledge(src, inbound.token)

    def on_timer(self, now: float) -> None:
        while self.schedule and self.schedule[0][0] <= now:
            _, peer, stanza = self.schedule.popleft()
            assert self.fw.send(now, peer, stanza)
            self.max_in_flight = max(self.max_in_flight, self.fw.in_flight(peer))
        self.fw.on_timer(now)

    def next_deadline(self) -> float:
        return min(self.fw.next_deadline(), self.schedule[0][0] if self.schedule else math.inf)

    def drain_outgoing(self) -> list[tuple[str, tuple[int, bytes]]]:
        return [(peer, (kind, payload)) for peer, kind, payload in self.fw.drain_outgoing()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_soak_three_nodes_lossy_duplicating_reordering(seed: int) -> None:
    rng = random.Random(seed)
    names = ["n1", "n2", "n3"]
    sends: dict[str, list[tuple[float, str, bytes]]] = {n: [] for n in names}
    for src in names:
        for dst in names:
            if src != dst:
                for i in range(1500):
                    t = rng.uniform(0, 20) if i < 1000 else 10.0  # and a burst of 500 at t=10
                    sends[src].append((t, dst, b"%s>%s#%d" % (src.encode(), dst.encode(), i)))
    net = SimNet(seed, loss=0.1, duplicate=0.05, latency=(0.001, 0.08))
    print(f"seed {seed}")
    hosts = {n: Host(n, epoch=1000 + k, sends=sends[n], window=64) for k, n in enumerate(names)}
    for n, host in hosts.items():
        net.add(n, host)
    net.run_for(3600.0, until=lambda: all(h.fw.statistics().in_flight == 0 and not h.schedule
                                          for h in hosts.values()))
    for src in names:
        for dst in names:
            if src != dst:
                expected = [s for _, d, s in sorted(sends[src]) if d == dst]
                assert hosts[dst].got[src] == expected, f"seed {seed}: {src} -> {dst}"
        stats = hosts[src].fw.statistics()
        assert stats.acked == stats.accepted == 3000 and stats.backlog == 0
        assert stats.retransmitted > 0 and hosts[src].max_in_flight == 64
    assert net.dropped > 0 and net.duplicated > 0
