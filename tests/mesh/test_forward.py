"""The forwarding core, step by step: envelopes, acks, window, retransmission, peer death and restart."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.mesh import forward
from meshxmpp.mesh.forward import (
    ENVELOPE_OVERHEAD,
    MAX_BACKOFF,
    Ack,
    Envelope,
    Forwarder,
    ForwardStatistics,
    Inbound,
    decode_ack,
    decode_forward,
    encode_ack,
    encode_forward,
)
from meshxmpp.mesh.wire import Kind

FWD, ACK = Kind.FORWARD.value, Kind.ACK.value


def pair(**kw: int | float) -> tuple[Forwarder, Forwarder]:
    return Forwarder("a", epoch=10, **kw), Forwarder("b", epoch=20, **kw)  # type: ignore[arg-type]


def deliver(src: Forwarder, dst: Forwarder, now: float = 0.0) -> list[Inbound]:
    """Hand every frame ``src`` has to ``dst`` (all are addressed to it in these tests)."""
    got = []
    for peer, kind, payload in src.drain_outgoing():
        assert peer == dst.node
        got += dst.on_frame(now, src.node, kind, payload)
    return got


def frames(f: Forwarder) -> list[tuple[str, int, object]]:
    return [(p, k, decode_forward(b) if k == FWD else decode_ack(b)) for p, k, b in f.drain_outgoing()]


# -- the happy path ------------------------------------------------------------------------------------------


def test_send_deliver_ack_round_trip() -> None:
    a, b = pair()
    assert all(a.send(0.0, "b", s) for s in (b"one", b"two", b"three"))
    assert a.in_flight("b") == 3
    got = deliver(a, b)
    assert [i.stanza for i in got] == [b"one", b"two", b"three"]
    assert b.drain_outgoing() == []  # nothing acked before the caller takes responsibility
    for i in got:
        b.acknowledge("a", i.token)
    acks = b.drain_outgoing()
    assert acks == [("a", ACK, encode_ack(Ack(10, 3)))]  # one cumulative ack for three stanzas
    assert a.on_frame(0.0, "b", ACK, acks[0][2]) == []
    assert a.in_flight("b") == 0
    assert a.next_deadline() == math.inf
    stats = a.statistics()
    assert (stats.accepted, stats.transmitted, stats.acked, stats.in_flight, stats.frames_sent) == (3, 3, 3, 0, 1)


def test_sends_between_drains_share_one_frame_and_frames_respect_max_frame() -> None:
    a = Forwarder("a", epoch=1, max_frame=100)
    assert a.max_stanza == 100 - ENVELOPE_OVERHEAD
    for i in range(10):
        a.send(0.0, "b", bytes([i]) * 30)
    out = a.drain_outgoing()
    assert all(len(payload) <= 100 for _, _, payload in out)
    envs = [decode_forward(p) for _, _, p in out]
    assert [e.seq for e in envs] == [1, 3, 5, 7, 9]  # two 34-byte stanzas after a 24-byte header
    assert [s for e in envs for s in e.stanzas] == [bytes([i]) * 30 for i in range(10)]
    with pytest.raises(ValueError, match="exceeds"):
        a.send(0.0, "b", b"x" * (a.max_stanza + 1))
    a.send(0.0, "b", b"x" * a.max_stanza)
    assert len(a.drain_outgoing()[0][2]) == 100


def test_acks_are_coalesced_cumulative_and_wait_for_the_lowest_stanza() -> None:
    a, b = pair()
    for i in range(4):
        a.send(0.0, "b", b"%d" % i)
    got = deliver(a, b)
    b.acknowledge("a", got[1].token)
    b.acknowledge("a", got[2].token)
    assert b.drain_outgoing() == []  # stanza 1 still open: no ack can cover 2 and 3
    b.acknowledge("a", got[0].token)
    b.acknowledge("a", got[0].token)  # idempotent
    assert frames(b) == [("a", ACK, Ack(10, 3))]
    b.acknowledge("a", got[3].token)
    assert frames(b) == [("a", ACK, Ack(10, 4))]


def test_a_token_belongs_to_its_peer() -> None:
    a, b = pair()
    a.send(0.0, "b", b"x")
    (got,) = deliver(a, b)
    with pytest.raises(ValueError):
        b.acknowledge("c", got.token)
    with pytest.raises(ValueError):
        b.acknowledge("a", object())


# -- order and duplicates ------------------------------------------------------------------------------------


def test_out_of_order_is_held_and_handed_out_in_order() -> None:
    a, b = pair()
    for s in (b"1", b"2", b"3"):
        a.send(0.0, "b", s)
        a.drain_outgoing()

    def env(seq: int, s: bytes) -> bytes:
        return encode_forward(Envelope(10, 1, seq, (s,)))

    assert b.on_frame(0.0, "a", FWD, env(3, b"3")) == []
    assert b.on_frame(0.0, "a", FWD, env(2, b"2")) == []
    assert b.statistics().held == 2
    assert [i.stanza for i in b.on_frame(0.0, "a", FWD, env(1, b"1"))] == [b"1", b"2", b"3"]
    assert b.statistics().held == 0


def test_a_retransmit_is_not_handed_out_again_and_an_acked_one_is_acked_again() -> None:
    a, b = pair()
    a.send(0.0, "b", b"x")
    (payload,) = [p for _, _, p in a.drain_outgoing()]
    (got,) = b.on_frame(0.0, "a", FWD, payload)
    assert b.on_frame(0.0, "a", FWD, payload) == []  # handed out, not yet acknowledged: silence
    assert b.drain_outgoing() == []
    b.acknowledge("a", got.token)
    assert frames(b) == [("a", ACK, Ack(10, 1))]
    assert b.on_frame(0.0, "a", FWD, payload) == []  # the ack was lost: say it again
    assert frames(b) == [("a", ACK, Ack(10, 1))]
    assert b.statistics().duplicates == 2


def test_stanzas_far_beyond_the_gap_are_dropped_not_held() -> None:
    b = Forwarder("b", epoch=1, window=4)
    assert b.on_frame(0.0, "a", FWD, encode_forward(Envelope(5, 1, 2, (b"2", b"3", b"4", b"5", b"6")))) == []
    stats = b.statistics()
    assert (stats.held, stats.dropped) == (3, 2)  # 2, 3, 4 held (window 4 from 1); 5, 6 refused


# -- window and backlog --------------------------------------------------------------------------------------


def test_window_and_backlog_give_back_pressure() -> None:
    a, b = pair(window=2, backlog_limit=3)
    assert [a.send(0.0, "b", b"%d" % i) for i in range(6)] == [True] * 5 + [False]
    assert (a.in_flight("b"), a.backlogged("b")) == (2, 3)
    assert a.send(0.0, "c", b"other peer") is True  # one slow peer does not hold up the others
    out = a.drain_outgoing()
    assert [(peer, len(decode_forward(p).stanzas)) for peer, _, p in out] == [("b", 2), ("c", 1)]
    stats = a.statistics()
    assert (stats.accepted, stats.refused, stats.backlog, stats.in_flight) == (6, 1, 3, 3)


def test_acks_move_the_backlog_into_the_window_in_order() -> None:
    a, b = pair(window=2, backlog_limit=10)
    for i in range(7):
        a.send(0.0, "b", b"%d" % i)
    seen = []
    for _ in range(10):
        got = deliver(a, b)
        assert a.in_flight("b") <= 2
        seen += [i.stanza for i in got]
        for inbound in got:
            b.acknowledge("a", inbound.token)
        deliver(b, a)
    assert seen == [b"%d" % i for i in range(7)]
    assert (a.in_flight("b"), a.backlogged("b")) == (0, 0)


# -- retransmission ------------------------------------------------------------------------------------------


def test_unacked_stanzas_go_out_again_with_backoff_until_acked() -> None:
    a, b = pair(retransmit_after=1.0)
    a.send(5.0, "b", b"x")
    a.drain_outgoing()  # lost
    assert a.next_deadline() == 6.0
    a.on_timer(5.9)
    assert a.drain_outgoing() == []
    expected_gaps = [2.0, 4.0, 8.0, 16.0, 16.0]
    now = 6.0
    for gap in expected_gaps:
        a.on_timer(now)
        (env,) = [e for _, _, e in frames(a)]
        assert env == Envelope(10, 1, 1, (b"x",))
        assert a.next_deadline() == now + gap
        now += gap
    assert MAX_BACKOFF == 16
    a.on_timer(now)
    (got,) = deliver(a, b, now)
    b.acknowledge("a", got.token)
    deliver(b, a, now)
    assert a.next_deadline() == math.inf
    a.send(now + 1, "b", b"y")
    assert a.next_deadline() == now + 2  # the backoff ends with the ack
    assert a.statistics().retransmitted == 6


def test_retransmit_resends_only_what_is_unacked() -> None:
    a, b = pair()
    for s in (b"1", b"2", b"3"):
        a.send(0.0, "b", s)
    got = deliver(a, b)
    b.acknowledge("a", got[0].token)
    deliver(b, a)
    a.on_timer(a.next_deadline())
    (env,) = [e for _, _, e in frames(a)]
    assert env == Envelope(10, 2, 2, (b"2", b"3"))


# -- peer death ------------------------------------------------------------------------------------------------


def test_on_peer_dead_returns_every_unacked_stanza_in_order_and_the_stream_goes_on() -> None:
    a, b = pair(window=2)
    for i in range(5):
        a.send(0.0, "b", b"%d" % i)
    got = deliver(a, b)
    b.acknowledge("a", got[0].token)
    deliver(b, a)
    assert a.on_peer_dead("b") == [b"1", b"2", b"3", b"4"]  # 1-2 in flight (1 handed out), 3-4 backlog
    assert (a.in_flight("b"), a.backlogged("b"), a.next_deadline()) == (0, 0, math.inf)
    assert a.on_peer_dead("b") == []
    # b was only thought dead: the stream goes on above the numbers handed back, and b skips them.
    a.send(1.0, "b", b"new")
    (env,) = [e for _, _, e in frames(a)]
    assert env == Envelope(10, 4, 4, (b"new",))
    got = b.on_frame(1.0, "a", FWD, encode_forward(env))
    assert [i.stanza for i in got] == [b"new"]
    assert a.statistics().returned == 4


def test_a_late_copy_of_a_stanza_handed_back_is_not_held_for_ever() -> None:
    a, b = pair()
    a.send(0.0, "b", b"1")
    a.send(0.0, "b", b"2")
    a.drain_outgoing()  # lost
    a.on_peer_dead("b")
    b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 2, (b"2",))))  # a late copy: held
    assert b.statistics().held == 1
    a.send(1.0, "b", b"3")
    assert [i.stanza for i in deliver(a, b)] == [b"3"]  # base 3 drops the held copy of 2
    assert b.statistics().held == 0


def test_on_peer_dead_releases_stanzas_held_behind_a_gap_once() -> None:
    a, b = pair()
    for s in (b"1", b"2", b"3"):
        a.send(0.0, "b", s)
    (payload,) = [p for _, _, p in a.drain_outgoing()]
    env = decode_forward(payload)
    b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 2, env.stanzas[1:])))  # 1 was lost
    assert b.on_peer_dead("a") == [b"2", b"3"]  # routed by b now, as a will never fill the gap
    # a was alive after all: its retransmit fills the gap, and 2 and 3 are not handed out twice.
    got = b.on_frame(1.0, "a", FWD, payload)
    assert [i.stanza for i in got] == [b"1"]
    b.acknowledge("a", got[0].token)
    assert frames(b) == [("a", ACK, Ack(10, 3))]


# -- restart -----------------------------------------------------------------------------------------------------


def test_on_peer_restarted_returns_unacked_and_ignores_stale_notices() -> None:
    a, b = pair()
    a.send(0.0, "b", b"1")
    a.send(0.0, "b", b"2")
    got = deliver(a, b)
    b.acknowledge("a", got[0].token)
    deliver(b, a)
    assert a.on_peer_restarted("b", 21) == [b"2"]
    assert a.on_peer_restarted("b", 21) == []
    assert a.on_peer_restarted("b", 19) == []
    b2 = Forwarder("b", epoch=21)
    a.send(1.0, "b", b"3")
    assert [i.stanza for i in deliver(a, b2)] == [b"3"]


def test_a_sender_restart_starts_a_new_stream_and_releases_the_old_one() -> None:
    a, b = pair()
    b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 2, (b"old 2",))))  # old 1 never came
    a2 = Forwarder("a", epoch=11)
    a2.send(0.0, "b", b"new 1")
    got = deliver(a2, b)
    assert [i.stanza for i in got] == [b"old 2", b"new 1"]
    for i in got:
        b.acknowledge("a", i.token)  # the old stream's token is accepted and ignored
    assert frames(b) == [("a", ACK, Ack(11, 1))]
    assert b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 1, (b"old 1",)))) == []  # stale epoch


def test_on_peer_restarted_drops_the_old_inbound_stream() -> None:
    b = Forwarder("b", epoch=1)
    b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 2, (b"held",))))
    assert b.on_peer_restarted("a", 11) == [b"held"]
    assert b.on_frame(0.0, "a", FWD, encode_forward(Envelope(10, 1, 1, (b"stale",)))) == []
    got = b.on_frame(0.0, "a", FWD, encode_forward(Envelope(11, 1, 1, (b"fresh",))))
    assert [i.stanza for i in got] == [b"fresh"]


def test_acks_for_another_epoch_or_beyond_what_was_sent_are_ignored() -> None:
    a = Forwarder("a", epoch=10)
    a.send(0.0, "b", b"x")
    a.drain_outgoing()
    a.on_frame(0.0, "b", ACK, encode_ack(Ack(9, 1)))
    a.on_frame(0.0, "b", ACK, encode_ack(Ack(10, 2)))
    a.on_frame(0.0, "c", ACK, encode_ack(Ack(10, 1)))
    assert a.in_flight("b") == 1
    a.on_frame(0.0, "b", ACK, encode_ack(Ack(10, 1)))
    assert a.in_flight("b") == 0


# -- arguments, codec, hostile payloads --------------------------------------------------------------------------


def test_bad_arguments() -> None:
    for kw in ({"epoch": -1}, {"epoch": 1 << 64}, {"epoch": 1, "window": 0}, {"epoch": 1, "retransmit_after": 0},
               {"epoch": 1, "max_frame": ENVELOPE_OVERHEAD}, {"epoch": 1, "backlog_limit": -1}):
        with pytest.raises(ValueError):
            Forwarder("a", **kw)
    with pytest.raises(ValueError):
        Forwarder("a", epoch=1).send(0.0, "a", b"to myself")
    with pytest.raises(ValueError):
        Forwarder("a", epoch=1).on_frame(0.0, "b", Kind.MEMBERSHIP.value, b"")
    for env in (Envelope(1, 0, 1, (b"x",)), Envelope(1, 2, 1, (b"x",)), Envelope(1, 1, 1, ()),
                Envelope(1, 1, (1 << 64) - 1, (b"x", b"y"))):
        with pytest.raises(ValueError):
            encode_forward(env)


envelopes = st.builds(
    lambda epoch, base, gap, stanzas: Envelope(epoch, base, base + gap, tuple(stanzas)),
    st.integers(0, (1 << 64) - 1), st.integers(1, 1 << 40), st.integers(0, 1 << 20),
    st.lists(st.binary(max_size=40), min_size=1, max_size=8),
)


@given(envelopes)
def test_forward_codec_round_trips(env: Envelope) -> None:
    payload = encode_forward(env)
    assert decode_forward(payload) == env
    assert len(payload) == ENVELOPE_OVERHEAD - 4 + sum(4 + len(s) for s in env.stanzas)


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_ack_codec_round_trips(epoch: int, seq: int) -> None:
    assert decode_ack(encode_ack(Ack(epoch, seq))) == Ack(epoch, seq)


def _mutations() -> st.SearchStrategy[bytes]:
    valid = envelopes.map(encode_forward)
    flipped = st.tuples(valid, st.integers(0, 1000), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :])
    truncated = st.tuples(valid, st.integers(0, 1000)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)])
    return st.one_of(st.binary(max_size=80), flipped, truncated, valid.map(lambda p: p + b"\x00"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([FWD, ACK]), _mutations()), max_size=12), st.booleans())
def test_hostile_payloads_raise_value_error_only(frames_in: list[tuple[int, bytes]], primed: bool) -> None:
    f = Forwarder("b", epoch=7, window=8)
    if primed:
        for i in range(10):
            f.send(0.0, "a", b"%d" % i)
        f.drain_outgoing()
    for kind, payload in frames_in:
        try:
            got = f.on_frame(1.0, "a", kind, payload)
        except ValueError:
            continue
        for inbound in got:
            f.acknowledge("a", inbound.token)
        f.drain_outgoing()
        assert f.statistics().held <= 8
        assert f.in_flight("a") <= 8


# -- shape ---------------------------------------------------------------------------------------------------------


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(forward.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"trio", "socket", "time", "asyncio", "threading", "selectors", "os", "random"}
    assert not any(isinstance(n, ast.Await | ast.AsyncFunctionDef | ast.AsyncWith | ast.AsyncFor)
                   for n in ast.walk(tree))


def test_statistics_is_a_frozen_snapshot() -> None:
    a = Forwarder("a", epoch=1)
    stats = a.statistics()
    assert isinstance(stats, ForwardStatistics)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.accepted = 3  # type: ignore[misc]
    a.send(0.0, "b", b"x")
    assert (stats.accepted, a.statistics().accepted) == (0, 1)
