"""SimNet itself, with a trivial core: timers, delivery, loss, duplication, partitions, kills, the route hook."""

from __future__ import annotations

import math
from typing import Any

import pytest

from meshxmpp.testing._simnet import Packet, SimNet, SimNetError


class Pinger:
    """Sends ("ping", k) to every peer each `period` seconds and answers pings with pongs."""

    def __init__(self, peers: list[str], period: float = 1.0, start: float = 0.0) -> None:
        self.peers = peers
        self.period = period
        self.next = start + period
        self.k = 0
        self.out: list[tuple[str, Any]] = []
        self.got: list[tuple[float, str, Any]] = []
        self.ticks: list[float] = []
        self.failed: list[str] = []

    def on_message(self, now: float, src: str, msg: Any) -> None:
        self.got.append((now, src, msg))
        if msg[0] == "ping":
            self.out.append((src, ("pong", msg[1])))

    def on_timer(self, now: float) -> None:
        self.ticks.append(now)
        if now >= self.next:
            self.next = now + self.period
            self.k += 1
            self.out += [(p, ("ping", self.k)) for p in self.peers]

    def next_deadline(self) -> float:
        return self.next

    def drain_outgoing(self) -> list[tuple[str, Any]]:
        out, self.out = self.out, []
        return out

    def on_send_failed(self, now: float, dest: str) -> None:
        self.failed.append(dest)


def pair(seed: int = 1, **kw: Any) -> tuple[SimNet, Pinger, Pinger]:
    net = SimNet(seed, **kw)
    a, b = Pinger(["b"]), Pinger(["a"])
    net.add("a", a)
    net.add("b", b)
    return net, a, b


def test_timers_fire_exactly_at_the_deadline_and_messages_after_latency() -> None:
    net, a, b = pair(latency=(0.01, 0.01))
    net.run_for(3.5)
    assert a.ticks == [1.0, 2.0, 3.0]
    pings = [(t, msg) for t, src, msg in b.got if msg[0] == "ping"]
    assert pings == [(pytest.approx(1.01), ("ping", 1)), (pytest.approx(2.01), ("ping", 2)),
                     (pytest.approx(3.01), ("ping", 3))]
    assert [t for t, _, msg in a.got if msg[0] == "pong"][0] == pytest.approx(1.02)
    assert net.now == 3.5


def test_loss_and_duplication_rates() -> None:
    net, a, b = pair(loss=0.3, duplicate=0.2)
    net.run_for(2000.0)
    pings = [msg for _, _, msg in b.got if msg[0] == "ping"]
    distinct = len(set(pings))
    assert 0.64 < distinct / 2000 < 0.76
    assert 0.15 < (len(pings) - distinct) / distinct < 0.25
    assert net.dropped > 0 and net.duplicated > 0


def test_same_seed_same_run() -> None:
    def run(seed: int) -> list[tuple[float, str, Any]]:
        net, a, b = pair(seed, loss=0.2, duplicate=0.1, latency=(0.0, 0.5))
        net.run_for(100.0)
        return a.got + b.got

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_partition_and_heal() -> None:
    net = SimNet(1)
    nodes = {n: Pinger([p for p in "abc" if p != n]) for n in "abc"}
    for n, core in nodes.items():
        net.add(n, core)
    net.partition(["a", "b"], ["c"])
    net.run_for(5.0)
    assert {src for _, src, _ in nodes["c"].got} == set()
    assert {src for _, src, _ in nodes["a"].got} == {"b"}
    assert net.connected("a", "b") and not net.connected("a", "c")
    net.heal()
    net.run_for(2.0)
    assert {src for _, src, _ in nodes["c"].got} == {"a", "b"}


def test_kill_stops_timers_and_traffic_both_ways() -> None:
    net, a, b = pair(latency=(0.5, 0.5))
    net.run_for(1.2)  # a's first ping is in flight
    net.kill("b")
    assert not net.is_alive("b")
    net.run_for(5.0)
    assert b.got == [] and b.ticks == [1.0]
    assert [msg for _, _, msg in a.got] == []  # b's ping in flight was dropped too
    assert set(net.nodes()) == {"a"} and set(net.nodes(alive_only=False)) == {"a", "b"}
    net.add("b", Pinger(["a"], start=net.now))  # a new process at the same address
    net.run_for(2.0)
    assert net.node("b").got


def test_send_failed_notice() -> None:
    net, a, _ = pair(notify_send_failed=True)
    net.kill("b")
    net.run_for(2.0)
    assert a.failed == ["b", "b"]


def test_route_hook_decides_per_packet() -> None:
    seen: list[Packet] = []

    def route(packet: Packet) -> list[float] | None:
        seen.append(packet)
        if packet.src == "a":
            return [0.1, 0.2, 0.3]  # triplicate
        return None  # default treatment

    net, a, b = pair(route=route, latency=(0.001, 0.001))
    net.run_for(1.5)
    assert [t for t, _, msg in b.got if msg[0] == "ping"] == [pytest.approx(1.1), pytest.approx(1.2),
                                                              pytest.approx(1.3)]
    assert {(p.src, p.dst) for p in seen} == {("a", "b"), ("b", "a")}
    net.route = lambda packet: []  # drop everything from now on
    before = len(b.got)
    net.run_for(3.0)
    assert len(b.got) == before


def test_run_until_stops_early() -> None:
    net, a, b = pair()
    assert net.run_for(100.0, until=lambda: len(b.got) >= 3)
    assert net.now < 4.0
    assert not net.run_for(0.5, until=lambda: False)


def test_a_core_asking_for_the_past_forever_is_reported() -> None:
    class Stuck(Pinger):
        def next_deadline(self) -> float:
            return 0.5

    net = SimNet(1)
    net.add("s", Stuck([]))
    with pytest.raises(SimNetError, match="keeps asking"):
        net.run_for(1.0)


def test_duplicate_address_is_refused_and_idle_core_sleeps() -> None:
    class Idle(Pinger):
        def next_deadline(self) -> float:
            return math.inf

    net = SimNet(1)
    net.add("x", Idle([]))
    with pytest.raises(SimNetError):
        net.add("x", Idle([]))
    assert not net.run_for(1e9, until=lambda: False)
    assert net.node_rng("x").random() == net.node_rng("x").random()
