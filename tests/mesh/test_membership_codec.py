"""The membership wire format: round trips, bounds, and hostile bytes that only ever raise DecodeError."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshxmpp.mesh import _swim_msgs as m
from meshxmpp.mesh.membership import PROFILES, DecodeError, Membership

names = st.text(min_size=1, max_size=20).filter(lambda s: 0 < len(s.encode()) <= 255)
addrs = st.tuples(names, st.integers(0, 65535))
seqs = st.integers(0, m.MAX_SEQ)
incs = st.integers(0, m.MAX_INCARNATION)
entries = st.builds(m.SyncEntry, names, addrs, incs, st.sampled_from(m.STATES))
messages = st.one_of(
    st.builds(m.Ping, seqs, names),
    st.builds(m.Ack, seqs),
    st.builds(m.Nack, seqs),
    st.builds(m.PingReq, seqs, names, addrs, st.booleans()),
    st.builds(m.Alive, names, addrs, incs),
    st.builds(m.Suspect, names, incs, names),
    st.builds(m.Dead, names, incs, names),
    st.builds(m.Left, names, incs),
    st.builds(m.Sync, st.booleans(), st.lists(entries, max_size=5).map(tuple)),
)
packets = st.builds(m.Packet, names, addrs, st.lists(messages, min_size=1, max_size=6).map(tuple))


def encode(packet: m.Packet) -> bytes:
    header = m.packet_header(packet.sender, packet.sender_addr)
    return m.encode_packet(header, [m.encode_message(msg) for msg in packet.messages])


@given(packets)
def test_round_trip(packet: m.Packet) -> None:
    assert m.decode_packet(encode(packet)) == packet


@given(packets, st.data())
def test_every_truncation_raises_decode_error(packet: m.Packet, data: st.DataObject) -> None:
    raw = encode(packet)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(DecodeError):
        m.decode_packet(raw[:cut])


@given(packets, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_raise_decode_error(packet: m.Packet, junk: bytes) -> None:
    with pytest.raises(DecodeError):
        m.decode_packet(encode(packet) + junk)


def _decode_or_decode_error(raw: bytes) -> None:
    try:
        m.decode_packet(raw)
    except DecodeError:
        pass  # the one exception allowed


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(packets, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_packets_decode_or_raise_decode_error(packet: m.Packet, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(encode(packet))
    for where, value in flips:
        raw[where % len(raw)] = value
    _decode_or_decode_error(bytes(raw))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    _decode_or_decode_error(raw)
    _decode_or_decode_error(b"SW\x01" + raw)


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_random_bodies_behind_a_valid_header(body: bytes) -> None:
    header = m.packet_header("n1", ("10.0.0.1", 5701))
    for count in (1, 2, 255):
        _decode_or_decode_error(header + bytes((count,)) + body)


def test_specific_bad_inputs() -> None:
    header = m.packet_header("n1", ("h", 1))
    good = m.encode_message(m.Ack(1))
    bad = [
        b"", b"S", b"XX\x01", b"SW\x02" + header[3:] + b"\x01" + good,  # magic, version
        header + b"\x00",  # no messages
        header + b"\x01\x63",  # unknown kind
        header + b"\x01" + bytes((4,)) + b"\x00" * 8 + b"\x00",  # empty name
        header + b"\x01" + bytes((4,)) + b"\x00" * 8 + b"\x02\xff\xfe",  # not UTF-8
        header + b"\x01" + bytes((9,)) + b"\x02" + b"\x00\x00",  # sync flag 2
        header + b"\x01" + bytes((9,)) + b"\x00\xff\xff",  # sync count over the cap
        header + b"\x01" + bytes((9,)) + b"\x00\x00\x01" + b"\x00" * 8 + b"\x09",  # unknown state
        header + b"\x01" + bytes((4,)) + b"\x00" * 8 + b"\x01a\x01h",  # alive without port
        b"SW\x01" + b"\xff" * 10,
    ]
    for raw in bad:
        with pytest.raises(DecodeError):
            m.decode_packet(raw)
    with pytest.raises(DecodeError):
        m.decode_packet(b"\x00" * (m.MAX_PACKET_BYTES + 1))
    with pytest.raises(DecodeError):
        m.decode_packet("text")  # type: ignore[arg-type]


def test_encoder_refuses_what_the_decoder_would_refuse() -> None:
    with pytest.raises(ValueError):
        m.encode_message(m.Left("", 1))
    with pytest.raises(ValueError):
        m.encode_message(m.Left("x" * 256, 1))
    with pytest.raises(ValueError):
        m.encode_packet(m.packet_header("a", ("h", 1)), [])
    with pytest.raises(ValueError):
        m.encode_message(m.Sync(False, (m.SyncEntry("a", ("h", 1), 0, "alive"),) * (m.MAX_SYNC_ENTRIES + 1)))


def test_messages_are_compact() -> None:
    header = m.packet_header("node-1", ("10.0.0.1", 5701))
    ping = m.encode_packet(header, [m.encode_message(m.Ping(7, "node-2"))])
    assert len(ping) < 40
    assert len(m.encode_message(m.Alive("node-2", ("10.0.0.2", 5701), 3))) < 32


@settings(max_examples=100)
@given(st.lists(st.one_of(st.binary(max_size=80), packets.map(encode)), max_size=10), st.integers(0, 2**32))
def test_membership_survives_hostile_bytes(inputs: list[bytes], seed: int) -> None:
    core = Membership("me", ("10.0.0.1", 5701), timing=PROFILES["test"], rng=random.Random(seed), now=0.0,
                      seeds=[("10.0.0.2", 5701)])
    now = 0.0
    for raw in inputs:
        now += 0.05
        core.on_message(now, ("10.0.0.9", 1), raw)
        core.on_timer(now)
        for _, data in core.drain_outgoing():
            m.decode_packet(data)  # whatever it answers is well-formed
    core.drain_events()
    stats = core.statistics()
    assert stats.packets_received + stats.malformed_received == len(inputs)
