"""The directory's bytes: round trips, one encoding per value, and hostile input raises ValueError only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshxmpp.jid import JID
from meshxmpp.mesh.directory import (
    Delta,
    Digest,
    Manifest,
    SessionRecord,
    Update,
    Version,
    decode_delta,
    decode_digest,
    encode_delta,
    encode_digest,
)

U63 = st.integers(0, 2**63 - 1)
names = st.sampled_from(["n1", "node-2", "ünï✓", "x" * 64]) | st.text("abc-19é✓", min_size=1, max_size=12)
resources = st.sampled_from(["laptop", "a/b@c", "Ünïcode ✓"]) | st.text("ab/@ é✓Ω", min_size=1, max_size=8)


@st.composite
def full_jids(draw: st.DrawFn) -> JID:
    local = draw(st.sampled_from(["alice", "bob", "ünïcode", "x"]))
    domain = draw(st.sampled_from(["example.org", "xn--mnchen-3ya.de", "[::1]", "127.0.0.1"]))
    resource = draw(resources)
    try:
        return JID.parse(f"{local}@{domain}/{resource}")
    except ValueError:
        return JID.parse(f"{local}@{domain}/fallback")


finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def deltas(draw: st.DrawFn) -> Delta:
    node = draw(names)
    jid = draw(full_jids())
    record = draw(st.none() | st.builds(
        SessionRecord, jid=st.just(jid), node=st.just(node), available=st.booleans(),
        priority=st.integers(-128, 127), show=st.sampled_from([None, "chat", "away", "xa", "dnd"]),
        last_activity=finite, carbons=st.booleans(), interested=st.booleans(), bound_at=finite,
        presence=st.none() | st.text(max_size=40)))
    return Delta(node, Version(draw(U63), draw(st.integers(1, 2**63 - 1))), jid, record, draw(st.booleans()))


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    low = draw(st.integers(0, 2**40))
    high = low + draw(st.integers(0, 50))
    kept = sorted(draw(st.sets(st.integers(low + 1, high), max_size=50))) if high > low else []
    return Manifest(draw(names), draw(U63), low, high, tuple(kept), draw(st.booleans()))


updates = st.one_of(deltas(), manifests())
digests = st.builds(
    Digest,
    st.dictionaries(names, st.builds(Version, U63, U63), max_size=6),
    st.dictionaries(names, st.none() | st.integers(0, 2**63 - 2), max_size=4),
)


@settings(max_examples=200)
@given(updates)
def test_update_round_trip(update: Update) -> None:
    data = encode_delta(update)
    assert decode_delta(data) == update
    assert decode_delta(bytearray(data)) == update and decode_delta(memoryview(data)) == update


@settings(max_examples=100)
@given(digests)
def test_digest_round_trip(digest: Digest) -> None:
    assert decode_digest(encode_digest(digest)) == digest


def test_a_typical_put_is_small() -> None:
    jid = JID("alice", "example.org", "laptop-1234")
    record = SessionRecord(jid, "node-1", priority=5, show="away", last_activity=1.7e9, bound_at=1.7e9)
    assert len(encode_delta(Delta("node-1", Version(1_700_000_000_000, 123_456), jid, record))) <= len(str(jid)) + 40
    assert len(encode_delta(Delta("node-1", Version(1_700_000_000_000, 123_457), jid, None))) <= len(str(jid)) + 20


@pytest.mark.parametrize("update", [
    Delta("n", Version(2**63, 1), JID("a", "b", "c"), None),
    Delta("n", Version(-1, 1), JID("a", "b", "c"), None),
    Delta("n", Version(1, 1), JID("a", "b"), None),
    Delta("n" * 65, Version(1, 1), JID("a", "b", "c"), None),
])
def test_unrepresentable_values_raise_value_error(update: Update) -> None:
    with pytest.raises(ValueError):
        encode_delta(update)


@pytest.mark.parametrize("data", [
    b"", b"\x01", b"\x02\x01", b"\x01\x09", b"\x01\x04\x00",
    bytes([1, 1, 0, 1]) + b"n" + bytes([1, 1, 5]) + b"a@b/c",  # put without a record
    bytes([1, 2, 2, 1]) + b"n" + bytes([1, 1, 5]) + b"a@b/c",  # unknown flag
    bytes([1, 2, 0, 1]) + b"n" + bytes([1, 0, 5]) + b"a@b/c",  # write number 0
    bytes([1, 2, 0, 1]) + b"n" + bytes([1, 1, 3]) + b"a@b",  # bare JID
    bytes([1, 2, 0, 1]) + b"n" + bytes([1, 1, 5]) + b"A@b/c",  # not canonical
    bytes([1, 2, 0, 1]) + b"n" + bytes([1, 1, 5]) + b"a@b/c" + b"\x00",  # trailing byte
    bytes([1, 2, 0, 1]) + b"n" + bytes([0x81, 0x00, 1, 5]) + b"a@b/c",  # non-minimal varint
    bytes([1, 2, 0, 1]) + b"n" + b"\xff" * 10 + bytes([1, 1, 5]) + b"a@b/c",  # varint too long
    bytes([1, 3, 0, 1]) + b"n" + bytes([1, 5, 2, 1, 1, 1]),  # manifest range negative
    bytes([1, 3, 0, 1]) + b"n" + bytes([1, 0, 2, 2, 1, 0]),  # manifest gap 0
    bytes([1, 3, 0, 1]) + b"n" + bytes([1, 0, 2, 2, 2, 1]),  # manifest past its high
    bytes([1, 3, 0, 1]) + b"n" + bytes([1, 0, 2, 3, 1, 1, 1]),  # more kept than the range holds
    bytes([1, 4, 0, 0]),  # a digest is not an update
])
def test_malformed_updates_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_delta(data)


def _put(record_bytes: bytes) -> bytes:
    return bytes([1, 1, 0, 1]) + b"n" + bytes([1, 1, 5]) + b"a@b/c" + record_bytes


@pytest.mark.parametrize("record_bytes", [
    bytes([16, 0, 0]) + struct.pack(">dd", 0, 0),  # unknown record bit
    bytes([0, 5, 0]) + struct.pack(">dd", 0, 0),  # unknown show
    bytes([0, 0, 0]) + struct.pack(">dd", float("nan"), 0),
    bytes([0, 0, 0]) + struct.pack(">dd", 0, float("inf")),
    bytes([8, 0, 0]) + struct.pack(">dd", 0, 0) + bytes([2]) + b"\xff\xfe",  # presence not UTF-8
    bytes([8, 0, 0]) + struct.pack(">dd", 0, 0) + b"\x80\x80\x80\x01",  # presence too long
    bytes([0, 0, 0]) + struct.pack(">d", 0),  # truncated
])
def test_malformed_records_raise_value_error(record_bytes: bytes) -> None:
    with pytest.raises(ValueError):
        decode_delta(_put(record_bytes))
    decode_delta(_put(bytes([0, 0, 0]) + struct.pack(">dd", 0, 0)))  # the well-formed neighbour


@pytest.mark.parametrize("data", [
    bytes([1, 1, 0, 0]),  # an update is not a digest
    bytes([1, 4, 1, 1]) + b"n" + bytes([1]),  # truncated
    bytes([1, 4, 2, 1]) + b"n" + bytes([1, 1, 1]) + b"n" + bytes([1, 1, 0]),  # node twice
    bytes([1, 4, 0, 2, 1]) + b"n" + bytes([0, 1]) + b"n" + bytes([0]),  # dead node twice
    bytes([1, 4, 0x81, 0x40]),  # more nodes than the cap
])
def test_malformed_digests_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_digest(data)


@settings(max_examples=300)
@given(st.binary(max_size=80))
@example(b"\x01\x01\x00\x01n\x01\x01\x05a@b/c")
def test_random_bytes_raise_value_error_or_decode_canonically(data: bytes) -> None:
    for decode, encode in ((decode_delta, encode_delta), (decode_digest, encode_digest)):
        try:
            value = decode(data)  # type: ignore[operator]
        except ValueError:
            continue
        assert encode(value) == data  # type: ignore[operator]


@settings(max_examples=200)
@given(updates, st.data())
def test_mutated_updates_raise_value_error_or_decode_canonically(update: Update, data: st.DataObject) -> None:
    raw = bytearray(encode_delta(update))
    for _ in range(data.draw(st.integers(1, 3))):
        choice = data.draw(st.integers(0, 2))
        pos = data.draw(st.integers(0, len(raw)))
        if choice == 0 and pos < len(raw):
            raw[pos] = data.draw(st.integers(0, 255))
        elif choice == 1:
            raw.insert(pos, data.draw(st.integers(0, 255)))
        else:
            del raw[pos:]
    try:
        value = decode_delta(bytes(raw))
    except ValueError:
        return
    assert encode_delta(value) == bytes(raw)


def test_every_truncation_of_a_valid_update_is_refused() -> None:
    jid = JID("alice", "example.org", "r")
    for update in (Delta("n", Version(9, 300), jid, SessionRecord(jid, "n", presence="<presence/>")),
                   Manifest("n", 9, 100, 400, (101, 300, 400))):
        data = encode_delta(update)
        for cut in range(len(data)):
            with pytest.raises(ValueError):
                decode_delta(data[:cut])


def test_non_bytes_input_raises_value_error() -> None:
    with pytest.raises(ValueError):
        decode_delta("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        decode_digest(None)  # type: ignore[arg-type]
