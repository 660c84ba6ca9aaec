"""Membership message flows, one at a time, with cores stepped by hand (no SimNet, no clock, no sockets)."""

from __future__ import annotations

import ast
import dataclasses
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.mesh import _swim_msgs as m
from meshxmpp.mesh._swim_timing import (
    Awareness,
    Suspicion,
    push_pull_scale,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_timeout,
)
from meshxmpp.mesh._swim_types import INPUTS, STATES
from meshxmpp.mesh.membership import (
    PROFILES,
    TRANSITIONS,
    Member,
    MemberAlive,
    MemberDead,
    MemberJoined,
    MemberLeft,
    Membership,
    MembershipStatistics,
    MemberSuspect,
    Timing,
)

ROOT = Path(__file__).resolve().parents[2]
TEST = PROFILES["test"]
Addr = tuple[str, int]


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 5701)


class Wire:
    """Cores by address; `flush` delivers every queued packet at once (optionally dropping some)."""

    def __init__(self, n: int, *, seed: int = 0, timing: Timing = TEST, now: float = 0.0) -> None:
        self.now = now
        self.cores: dict[Addr, Membership] = {}
        for i in range(1, n + 1):
            self.cores[addr(i)] = Membership(f"n{i}", addr(i), timing=timing, rng=random.Random(seed * 100 + i),
                                             now=now, seeds=[addr(1)] if i > 1 else [])
        self.log: list[tuple[Addr, Addr, m.Packet]] = []
        self.raw: list[bytes] = []
        self.down: set[Addr] = set()
        self.cut: set[frozenset[Addr]] = set()  # pairs that cannot talk to each other

    def __getitem__(self, i: int) -> Membership:
        return self.cores[addr(i)]

    def flush(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for src, core in self.cores.items():
                for dst, data in core.drain_outgoing():
                    moved = True
                    self.log.append((src, dst, m.decode_packet(data)))
                    self.raw.append(data)
                    if (dst in self.cores and dst not in self.down and src not in self.down
                            and frozenset((src, dst)) not in self.cut):
                        self.cores[dst].on_message(self.now, src, data)
            if not moved:
                return

    def advance(self, dt: float, step: float = 0.01) -> None:
        end = self.now + dt
        while self.now < end - 1e-12:
            self.now = min(self.now + step, end)
            for a, core in self.cores.items():
                if a not in self.down and core.next_deadline() <= self.now:
                    core.on_timer(self.now)
            self.flush()

    def sent(self, kind: type, src: int | None = None, dst: int | None = None) -> list[m.Message]:
        return [msg for s, d, p in self.log for msg in p.messages
                if isinstance(msg, kind) and (src is None or s == addr(src)) and (dst is None or d == addr(dst))]


def joined(n: int, **kw: object) -> Wire:
    wire = Wire(n, **kw)  # type: ignore[arg-type]
    wire.flush()
    wire.advance(0.5)
    for core in wire.cores.values():
        assert len(core.alive()) == n
    for core in wire.cores.values():
        core.drain_events()
    wire.log.clear()
    return wire


def states(core: Membership) -> dict[str, str]:
    return {mem.name: mem.state for mem in core.members()}


# -- formulas and profiles ----------------------------------------------------------------------------------


def test_lan_profile_is_memberlist_default_lan_config() -> None:
    lan = PROFILES["lan"]
    assert (lan.probe_interval, lan.probe_timeout, lan.indirect_checks) == (1.0, 0.5, 3)
    assert (lan.suspicion_mult, lan.suspicion_max_timeout_mult, lan.awareness_max_multiplier) == (4, 6, 8)
    assert (lan.gossip_interval, lan.gossip_nodes, lan.retransmit_mult) == (0.2, 3, 4)
    assert (lan.push_pull_interval, lan.gossip_to_the_dead_time, lan.dead_reclaim_time) == (30.0, 30.0, 0.0)
    assert (lan.reconnect_interval, lan.reconnect_timeout) == (30.0, 86400.0)


def test_timing_validation() -> None:
    with pytest.raises(ValueError, match="probe_timeout"):
        dataclasses.replace(TEST, probe_timeout=TEST.probe_interval)
    with pytest.raises(ValueError, match="gossip_nodes"):
        dataclasses.replace(TEST, gossip_nodes=0)
    with pytest.raises(ValueError, match="finite"):
        dataclasses.replace(TEST, probe_interval=math.inf)
    with pytest.raises(ValueError, match="suspicion_mult"):
        dataclasses.replace(TEST, suspicion_mult=2.5)  # type: ignore[arg-type]
    assert dataclasses.replace(TEST, indirect_checks=0).indirect_checks == 0


def test_formulas_match_memberlist() -> None:
    assert suspicion_timeout(4, 1, 1.0) == 4.0  # log10 floored at 1
    assert suspicion_timeout(4, 10, 1.0) == 4.0
    assert suspicion_timeout(4, 100, 0.5) == pytest.approx(4.0)
    assert suspicion_timeout(5, 1000, 1.0) == pytest.approx(15.0)
    assert [retransmit_limit(4, n) for n in (0, 1, 9, 10, 99, 100)] == [0, 4, 4, 8, 8, 12]
    assert push_pull_scale(30.0, 32) == 30.0
    assert push_pull_scale(30.0, 33) == 60.0
    assert push_pull_scale(30.0, 64) == 60.0
    assert push_pull_scale(30.0, 65) == 90.0
    # memberlist suspicion_test.go: k=3, min 2 s, max 30 s
    assert remaining_suspicion_time(0, 3, 0.0, 2.0, 30.0) == 30.0
    assert remaining_suspicion_time(1, 3, 2.0, 2.0, 30.0) == pytest.approx(14.0)
    assert remaining_suspicion_time(2, 3, 3.0, 2.0, 30.0) == pytest.approx(4.810)
    assert remaining_suspicion_time(3, 3, 4.0, 2.0, 30.0) == pytest.approx(-2.0)
    assert remaining_suspicion_time(4, 3, 5.0, 2.0, 30.0) == pytest.approx(-3.0)


def test_suspicion_timer() -> None:
    s = Suspicion("a", k=3, lo=2.0, hi=30.0, start=100.0)
    assert s.deadline == 130.0
    assert not s.confirm("a")  # the accuser's own message coming back is no confirmation
    assert s.confirm("b") and s.deadline == pytest.approx(116.0)
    assert not s.confirm("b")
    assert s.confirm("c") and s.confirm("d") and s.deadline == pytest.approx(102.0)
    assert not s.confirm("e")  # k reached: no more news
    assert Suspicion("a", k=0, lo=2.0, hi=30.0, start=0.0).deadline == 2.0  # nobody to confirm: min at once


def test_awareness() -> None:
    a = Awareness(4)
    assert a.scale(0.5) == 0.5
    a.apply_delta(10)
    assert a.score == 3 and a.scale(0.5) == 2.0
    a.apply_delta(-100)
    assert a.score == 0


# -- join and probing -----------------------------------------------------------------------------------------


def test_join_through_one_seed() -> None:
    wire = Wire(3)
    wire.flush()
    assert {type(msg) for msg in wire.sent(m.Sync, src=2, dst=1)} == {m.Sync}
    for i in (1, 2, 3):
        assert len(wire[i].members()) >= 2
    wire.advance(1.0)
    for i in (1, 2, 3):
        assert [mem.state for mem in wire[i].members()] == ["alive"] * 3
        events = wire[i].drain_events()
        assert sorted(e.member.name for e in events if isinstance(e, MemberJoined)) == sorted(
            f"n{j}" for j in (1, 2, 3) if j != i)
    assert wire[1].alive()[0] == Member("n1", addr(1), 0, "alive")
    assert wire[2].member("n3") == Member("n3", addr(3), 0, "alive")


def test_direct_probe_and_ack() -> None:
    wire = joined(2)
    wire.advance(2 * TEST.probe_interval)
    pings, acks = wire.sent(m.Ping, src=1), wire.sent(m.Ack, src=2)
    assert pings and {p.seq for p in pings} <= {a.seq for a in acks}  # type: ignore[union-attr]
    assert all(p.target == "n2" for p in pings)  # type: ignore[union-attr]
    assert wire.sent(m.PingReq) == []
    stats = wire[1].statistics()
    assert stats.probes_sent >= 2 and stats.acks_received == stats.probes_sent and stats.probes_failed == 0


def test_ping_for_another_name_is_not_acked() -> None:
    wire = joined(2)
    header = m.packet_header("n1", addr(1))
    wire[2].on_message(wire.now, addr(1), m.encode_packet(header, [m.encode_message(m.Ping(5, "someone"))]))
    assert wire[2].drain_outgoing() == []


def test_indirect_probe_through_helpers() -> None:
    wire = joined(4)
    wire.cut.add(frozenset((addr(1), addr(4))))  # n1 cannot talk to n4 directly, the others can
    wire.advance(10 * TEST.probe_interval)
    reqs = wire.sent(m.PingReq, src=1)
    assert reqs and all(r.target == "n4" and r.target_addr == addr(4) and r.nack for r in reqs)  # type: ignore[union-attr]
    assert wire.sent(m.Ack, src=4, dst=2) or wire.sent(m.Ack, src=4, dst=3)
    relayed = {a.seq for a in wire.sent(m.Ack, dst=1)}  # type: ignore[union-attr]
    assert {r.seq for r in reqs} <= relayed  # type: ignore[union-attr]
    assert states(wire[1])["n4"] == "alive"
    assert wire[1].statistics().probes_failed == 0
    assert wire[1].statistics().indirect_probes_sent == len(reqs)


def test_unreachable_member_is_suspected_then_dead_and_helpers_nack() -> None:
    wire = joined(3)
    wire.down.add(addr(3))
    t0 = wire.now
    wire.advance(4 * TEST.probe_interval)
    assert wire.sent(m.Nack, dst=1) or wire.sent(m.Nack, dst=2)
    events = wire[1].drain_events() + wire[2].drain_events()
    assert any(isinstance(e, MemberSuspect) and e.member.name == "n3" for e in events)
    assert states(wire[1])["n3"] == "suspect"
    # n = 3: nobody else can confirm, so k = 0 and the timer runs the minimum:
    lo = suspicion_timeout(TEST.suspicion_mult, 3, TEST.probe_interval)
    wire.advance(lo + 0.1)
    assert states(wire[1])["n3"] == states(wire[2])["n3"] == "dead"
    dead = [e for e in wire[1].drain_events() if isinstance(e, MemberDead)]
    assert [e.member.name for e in dead] == ["n3"]
    assert wire.now - t0 < 4 * TEST.probe_interval + lo + 0.1
    assert wire[1].statistics().dead == 1


def test_send_failure_skips_the_direct_wait() -> None:
    wire = joined(3)
    core = wire[1]
    core.on_timer(core.next_deadline())
    probe = core._probe  # noqa: SLF001
    while probe is None:
        core.on_timer(core.next_deadline())
        probe = core._probe  # noqa: SLF001
    core.drain_outgoing()
    core.on_send_failed(wire.now, probe.addr)
    out = [m.decode_packet(p) for _, p in core.drain_outgoing()]
    assert any(isinstance(msg, m.PingReq) for p in out for msg in p.messages)
    assert core.statistics().send_failures == 1


# -- suspicion, refutation, death, return ----------------------------------------------------------------------


def packet(sender: int, *msgs: m.Message) -> bytes:
    return m.encode_packet(m.packet_header(f"n{sender}", addr(sender)), [m.encode_message(x) for x in msgs])


def test_suspected_member_refutes_on_the_ack() -> None:
    wire = joined(3)
    core = wire[2]
    assert core.incarnation == 0
    core.on_message(wire.now, addr(1), packet(1, m.Ping(9, "n2"), m.Suspect("n2", 0, "n1")))
    assert core.incarnation == 1
    out = [(d, m.decode_packet(p)) for d, p in core.drain_outgoing()]
    ack = [p for d, p in out if d == addr(1) and any(isinstance(x, m.Ack) for x in p.messages)]
    assert ack and m.Alive("n2", addr(2), 1) in ack[0].messages
    assert core.statistics().refutations == 1 and core.statistics().health_score == 1


def test_refutation_reaches_the_accuser_directly() -> None:
    wire = joined(3)
    wire[2].on_message(wire.now, addr(3), packet(3, m.Suspect("n2", 0, "n1")))
    out = [(d, m.decode_packet(p)) for d, p in wire[2].drain_outgoing()]
    assert any(d == addr(1) and m.Alive("n2", addr(2), 1) in p.messages for d, p in out)


def test_refuted_suspicion_brings_the_member_back() -> None:
    wire = joined(3)
    wire[1].on_message(wire.now, addr(3), packet(3, m.Suspect("n2", 0, "n3")))
    assert states(wire[1])["n2"] == "suspect"
    wire[1].on_message(wire.now, addr(2), packet(2, m.Alive("n2", addr(2), 0)))  # not newer: ignored
    assert states(wire[1])["n2"] == "suspect"
    wire[1].on_message(wire.now, addr(2), packet(2, m.Alive("n2", addr(2), 1)))
    assert states(wire[1])["n2"] == "alive"
    kinds = [type(e) for e in wire[1].drain_events()]
    assert kinds == [MemberSuspect, MemberAlive]


def test_confirmations_shorten_the_suspicion() -> None:
    wire = joined(6)
    core = wire[1]
    core.on_message(wire.now, addr(2), packet(2, m.Suspect("n6", 0, "n2")))
    timer = core._table.suspicions["n6"]  # noqa: SLF001
    lo = suspicion_timeout(TEST.suspicion_mult, 6, TEST.probe_interval)
    assert timer.k == TEST.suspicion_mult - 2
    assert timer.deadline == pytest.approx(wire.now + TEST.suspicion_max_timeout_mult * lo)
    core.on_message(wire.now, addr(2), packet(2, m.Suspect("n6", 0, "n2")))  # same accuser: no news
    assert timer.n == 0
    core.on_message(wire.now, addr(3), packet(3, m.Suspect("n6", 0, "n3")))
    core.on_message(wire.now, addr(4), packet(4, m.Suspect("n6", 0, "n4")))
    assert timer.n == 2 and timer.deadline == pytest.approx(wire.now + lo, abs=1e-3)
    core.on_timer(wire.now + lo + 0.001)
    assert states(core)["n6"] == "dead"
    assert core.statistics().declared_dead == 1


def test_dead_member_returns_with_a_higher_incarnation_only() -> None:
    wire = joined(3)
    core = wire[1]
    core.on_message(wire.now, addr(2), packet(2, m.Dead("n3", 0, "n2")))
    assert states(core)["n3"] == "dead"
    core.on_message(wire.now, addr(3), packet(3, m.Alive("n3", addr(3), 0)))
    core.on_message(wire.now, addr(2), packet(2, m.Suspect("n3", 5, "n2")))
    assert states(core)["n3"] == "dead"
    core.on_message(wire.now, addr(3), packet(3, m.Alive("n3", addr(3), 1)))
    assert states(core)["n3"] == "alive"
    assert [type(e) for e in core.drain_events()] == [MemberDead, MemberAlive]


def test_false_dead_about_ourselves_is_refuted() -> None:
    wire = joined(3)
    wire[3].on_message(wire.now, addr(1), packet(1, m.Dead("n3", 0, "n1")))
    assert wire[3].incarnation == 1 and states(wire[3])["n3"] == "alive"
    wire.flush()
    wire.advance(1.0)
    assert all(states(wire[i])["n3"] == "alive" for i in (1, 2, 3))
    assert all(wire[i].member("n3").incarnation == 1 for i in (1, 2))  # type: ignore[union-attr]


def test_push_pull_dead_only_makes_us_suspect() -> None:
    wire = joined(3)
    entries = (m.SyncEntry("n3", addr(3), 0, "dead"),)
    wire[1].on_message(wire.now, addr(2), packet(2, m.Sync(True, entries)))
    assert states(wire[1])["n3"] == "suspect"


def test_push_pull_request_is_answered_after_merging() -> None:
    wire = joined(2)
    entries = (m.SyncEntry("n2", addr(2), 4, "dead"), m.SyncEntry("n9", addr(9), 2, "alive"))
    wire[2].on_message(wire.now, addr(1), packet(1, m.Sync(False, entries)))
    out = [(d, m.decode_packet(p)) for d, p in wire[2].drain_outgoing()]
    reply = [msg for d, p in out for msg in p.messages if isinstance(msg, m.Sync)]
    assert reply and reply[0].reply
    mine = {e.name: e for e in reply[0].entries}
    assert mine["n2"].incarnation == 5 and mine["n2"].state == "alive"  # refuted before answering
    assert mine["n9"].state == "alive"


def test_address_conflicts_and_reclaim() -> None:
    wire = joined(3)
    core = wire[1]
    core.on_message(wire.now, addr(3), packet(3, m.Alive("n3", ("10.9.9.9", 1), 7)))
    assert core.member("n3") == Member("n3", addr(3), 0, "alive")
    assert core.statistics().address_conflicts == 1
    core.on_message(wire.now, addr(2), packet(2, m.Dead("n3", 0, "n2")))
    core.on_message(wire.now, addr(3), packet(3, m.Alive("n3", ("10.9.9.9", 1), 0)))
    assert core.member("n3").state == "dead"  # type: ignore[union-attr]
    core.on_timer(wire.now + TEST.dead_reclaim_time + 0.01)
    core.on_message(wire.now + TEST.dead_reclaim_time + 0.01, addr(3), packet(3, m.Alive("n3", ("10.9.9.9", 1), 0)))
    assert core.member("n3") == Member("n3", ("10.9.9.9", 1), 0, "alive")


def test_lan_never_reclaims_a_dead_name() -> None:
    core = Membership("n1", addr(1), timing=PROFILES["lan"], rng=random.Random(1), now=0.0)
    core.on_message(0.0, addr(2), packet(2, m.Alive("n2", addr(2), 0)))
    core.on_message(0.0, addr(2), packet(3, m.Dead("n2", 0, "n3")))
    core.on_message(1e6, addr(2), packet(2, m.Alive("n2", ("10.9.9.9", 1), 9)))
    assert core.member("n2") == Member("n2", addr(2), 0, "dead")


def test_restarted_member_outbids_its_earlier_life() -> None:
    wire = joined(3)
    wire[1].on_message(wire.now, addr(2), packet(2, m.Dead("n3", 4, "n2")))
    wire.cores[addr(3)] = Membership("n3", addr(3), timing=TEST, rng=random.Random(99), now=wire.now,
                                     seeds=[addr(1)])
    wire.flush()
    assert wire[3].incarnation == 5
    wire.advance(1.0)
    assert all(states(wire[i])["n3"] == "alive" for i in (1, 2, 3))


# -- leaving ---------------------------------------------------------------------------------------------------


def test_graceful_leave() -> None:
    wire = joined(4)
    wire[4].leave(wire.now)
    assert wire[4].incarnation == 1 and states(wire[4])["n4"] == "left"
    assert {d for s, d, p in wire.log} == set()  # nothing delivered yet
    wire.flush()
    assert {d for s, d, _ in wire.log if s == addr(4)} == {addr(1), addr(2), addr(3)}
    for i in (1, 2, 3):
        assert states(wire[i])["n4"] == "left"
        assert [type(e) for e in wire[i].drain_events()] == [MemberLeft]
    wire.down.add(addr(4))
    wire.advance(TEST.reconnect_interval * 3)
    assert all(states(wire[i])["n4"] == "left" for i in (1, 2, 3))
    assert not [p for p in wire.log if p[1] == addr(4) and any(isinstance(x, m.Sync) for x in p[2].messages)]
    assert "n4" not in {mem.name for mem in wire[4].alive()}


def test_leave_is_idempotent_and_quiet_afterwards() -> None:
    wire = joined(2)
    wire[2].leave(wire.now)
    wire[2].leave(wire.now)
    assert wire[2].incarnation == 1
    wire.flush()
    wire.advance(2.0)
    assert wire[2].next_deadline() == math.inf
    assert not wire.sent(m.Ping, src=2)
    wire[2].on_message(wire.now, addr(1), packet(1, m.Suspect("n2", 1, "n1")))
    assert wire[2].incarnation == 1  # a leaving member does not refute


def test_rejoin_after_leave_with_a_new_process() -> None:
    wire = joined(3)
    wire[3].leave(wire.now)
    wire.flush()
    wire.cores[addr(3)] = Membership("n3", addr(3), timing=TEST, rng=random.Random(5), now=wire.now,
                                     seeds=[addr(1)])
    wire.flush()
    wire.advance(1.0)
    assert wire[3].incarnation == 2
    assert all(states(wire[i])["n3"] == "alive" for i in (1, 2, 3))
    assert any(isinstance(e, MemberAlive) for e in wire[1].drain_events())


# -- reconnect and forgetting ----------------------------------------------------------------------------------


def test_dead_members_and_absent_seeds_are_redialled_then_forgotten() -> None:
    timing = dataclasses.replace(TEST, reconnect_timeout=5.0)
    core = Membership("n2", addr(2), timing=timing, rng=random.Random(3), now=0.0, seeds=[addr(1), addr(2)])
    first = [d for d, _ in core.drain_outgoing()]
    assert first == [addr(1)]  # our own address is no seed
    core.on_message(0.1, addr(3), packet(3, m.Alive("n3", addr(3), 0)))
    core.on_message(0.1, addr(4), packet(4, m.Dead("n3", 0, "n4")))
    redials: list[Addr] = []
    now = 0.1
    while now < 8.0:
        now = core.next_deadline()
        core.on_timer(now)
        redials += [d for d, p in core.drain_outgoing()
                    if any(isinstance(x, m.Sync) for x in m.decode_packet(p).messages)]
    assert redials.count(addr(1)) >= 3 and redials.count(addr(3)) >= 3
    assert core.member("n3") is None  # forgotten after reconnect_timeout
    assert core.statistics().reconnect_attempts == len(redials)


# -- the transition table, the docs, determinism, sans-IO ---------------------------------------------------------


def test_transitions_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(s, i) for s in STATES for i in INPUTS}
    assert set(TRANSITIONS.values()) <= set(STATES)


def render_transitions() -> str:
    """The docs diagram, generated from TRANSITIONS (self-loops are ignored inputs and left out)."""
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> alive: joined"]
    edges: dict[tuple[str, str], list[str]] = {}
    for (state, event), target in TRANSITIONS.items():
        if state != target:
            edges.setdefault((state, target), []).append(event)
    lines += [f"    {a} --> {b}: {', '.join(ev)}" for (a, b), ev in edges.items()]
    lines.append("```")
    return "\n".join(lines)


def test_docs_diagram_is_generated_from_the_table() -> None:
    doc = (ROOT / "docs" / "mesh" / "membership.md").read_text()
    assert render_transitions() in doc, "regenerate with: python tests/mesh/test_membership.py"


claims = st.one_of(
    st.builds(m.Alive, st.just("n2"), st.sampled_from([addr(2), addr(9)]), st.integers(0, 4)),
    st.builds(m.Suspect, st.just("n2"), st.integers(0, 4), st.sampled_from(["n3", "n4"])),
    st.builds(m.Dead, st.just("n2"), st.integers(0, 4), st.sampled_from(["n3", "n4"])),
    st.builds(m.Left, st.just("n2"), st.integers(0, 4)),
    st.builds(lambda e: m.Sync(True, (e,)), st.builds(m.SyncEntry, st.just("n2"), st.just(addr(2)),
                                                      st.integers(0, 4), st.sampled_from(STATES))),
    st.floats(0.0, 30.0),  # time passes
)


@settings(max_examples=300, deadline=None)
@given(st.lists(claims, max_size=25))
def test_every_state_change_is_in_the_table(steps: list[m.Message | float]) -> None:
    """Any sequence of claims about a member moves our view of it only along TRANSITIONS, never lowers its
    incarnation, and reports each change with exactly the matching event."""
    core = Membership("n1", addr(1), timing=TEST, rng=random.Random(0), now=0.0)
    core.on_message(0.0, addr(2), packet(2, m.Alive("n2", addr(2), 0)))
    for n in (3, 4):
        core.on_message(0.0, addr(n), packet(n, m.Alive(f"n{n}", addr(n), 0)))
    core.drain_events()
    now, before = 0.0, core.member("n2")
    allowed = {(s, t) for (s, _), t in TRANSITIONS.items()}
    expected_event = {"suspect": MemberSuspect, "dead": MemberDead, "left": MemberLeft, "alive": MemberAlive}
    for step in steps:
        if isinstance(step, float):
            now += step
            core.on_timer(now)
        else:
            core.on_message(now, addr(3), packet(3, step))
        after = core.member("n2")
        events = [e for e in core.drain_events() if e.member.name == "n2"]
        if before is None or after is None:
            before = after  # forgotten after reconnect_timeout (not reached with these times)
            continue
        assert (before.state, after.state) in allowed
        assert after.incarnation >= before.incarnation or after.addr != before.addr
        if after.state != before.state:
            assert [type(e) for e in events] == [expected_event[after.state]]
        else:
            assert events == []
        before = after


def test_same_seed_same_bytes() -> None:
    def run() -> list[bytes]:
        wire = joined(4, seed=7)
        wire.advance(3.0)
        return wire.raw

    assert run() == run()


def test_statistics_is_a_frozen_snapshot() -> None:
    wire = joined(3)
    stats = wire[1].statistics()
    assert isinstance(stats, MembershipStatistics)
    assert (stats.alive, stats.suspect, stats.dead, stats.left) == (3, 0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.alive = 0  # type: ignore[misc]
    wire.advance(1.0)
    assert wire[1].statistics().packets_sent > stats.packets_sent


SANS_IO = ["membership.py", "_swim_msgs.py", "_swim_table.py", "_swim_timing.py", "_swim_types.py",
           "_swim_queue.py", "_swim_probe.py"]


@pytest.mark.parametrize("name", SANS_IO)
def test_cores_are_sans_io(name: str) -> None:
    source = (ROOT / "meshxmpp" / "mesh" / name).read_text()
    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"trio", "socket", "time", "asyncio", "threading", "selectors", "os"}
    assert not any(isinstance(node, ast.Await | ast.AsyncFunctionDef) for node in ast.walk(tree))
    # random only as a type: every choice comes from the rng passed in
    assert not re.search(r"\brandom\.(random|choice|shuffle|sample|uniform|randint|randrange|seed)\(", source)


if __name__ == "__main__":
    print(render_transitions())
