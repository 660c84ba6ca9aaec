"""The sans-IO wire layer: frame codec and authentication handshake, with no socket and no clock."""

from __future__ import annotations

import ast
import hashlib
import itertools
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from meshxmpp.mesh import wire
from meshxmpp.mesh.wire import (
    APP_KINDS,
    HANDSHAKE_MAX_FRAME,
    MAX_NAME,
    PROTOCOL_VERSION,
    TRANSITIONS,
    Authenticated,
    AuthFailed,
    FrameDecoder,
    Handshake,
    HandshakeState,
    Kind,
    WireError,
    encode_frame,
)

SECRET = b"correct horse battery staple"


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(wire.__file__).read_text())
    forbidden = {"trio", "socket", "asyncio", "anyio", "ssl", "time", "random", "os", "select"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & forbidden
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.module.split(".")[0] not in forbidden
        assert not isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncWith | ast.AsyncFor)


# --------------------------------------------------------------------------- frames


def test_frame_layout() -> None:
    frame = encode_frame(Kind.FORWARD, b"abc")
    assert frame == struct.pack("!IBB", 5, PROTOCOL_VERSION, Kind.FORWARD) + b"abc"
    assert encode_frame(Kind.ACK, b"") == b"\x00\x00\x00\x02\x01\x08"
    assert wire.frame_header(Kind.ACK, 3) + b"xyz" == encode_frame(Kind.ACK, b"xyz")


def test_encode_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        encode_frame(256, b"")
    with pytest.raises(ValueError):
        encode_frame(-1, b"")
    with pytest.raises(ValueError):
        encode_frame(Kind.FORWARD, b"x" * 11, max_frame=10)
    assert len(encode_frame(Kind.FORWARD, b"x" * 10, max_frame=10)) == 16
    with pytest.raises(ValueError):
        FrameDecoder(-1)


FRAMES = [(Kind.MEMBERSHIP, b"m"), (Kind.FORWARD, b""), (Kind.ACK, bytes(range(256)) * 3), (200, b"?")]
TRAILING = struct.pack("!IBB", 50, PROTOCOL_VERSION, Kind.FORWARD) + b"part of a frame"


@pytest.mark.parametrize("how", ["whole", "byte by byte", "trailing"])
def test_decoder_three_ways(how: str) -> None:
    data = b"".join(encode_frame(k, p) for k, p in FRAMES)
    decoder = FrameDecoder()
    if how == "byte by byte":
        got = [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]
    else:
        got = decoder.feed(data + (TRAILING if how == "trailing" else b""))
    assert got == [(int(k), p) for k, p in FRAMES]
    assert decoder.buffered() == (TRAILING if how == "trailing" else b"")


def test_decoder_one_frame_at_a_time_hands_over_the_rest() -> None:
    decoder = FrameDecoder()
    decoder.receive(encode_frame(Kind.FORWARD, b"1") + encode_frame(Kind.ACK, b"2") + b"\x00\x00")
    assert decoder.next_frame() == (Kind.FORWARD, b"1")
    assert decoder.buffered() == encode_frame(Kind.ACK, b"2") + b"\x00\x00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x01", "bad frame length 1"),
        (b"\x00\x00\x00\x00", "bad frame length 0"),
        (struct.pack("!I", 1002 + 1), "exceeds the limit"),  # refused from the length alone
        (struct.pack("!I", 0xFFFFFFFF), "exceeds the limit"),
        (struct.pack("!IB", 10, 2), "unsupported protocol version 2"),  # refused before the body
        (struct.pack("!IB", 10, 0), "unsupported protocol version 0"),
    ],
)
def test_decoder_errors(data: bytes, message: str) -> None:
    decoder = FrameDecoder(1000)
    with pytest.raises(WireError, match=message):
        decoder.feed(data)
    with pytest.raises(WireError):  # failed for good
        decoder.feed(encode_frame(Kind.ACK, b""))
    with pytest.raises(WireError):
        decoder.next_frame()


def test_decoder_max_frame_is_the_payload_size() -> None:
    decoder = FrameDecoder(4)
    assert decoder.feed(encode_frame(Kind.ACK, b"1234")) == [(Kind.ACK, b"1234")]
    with pytest.raises(WireError):
        decoder.feed(encode_frame(Kind.ACK, b"12345"))


frames_st = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=12)


@given(frames=frames_st, cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_roundtrip_under_any_chunking(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = b"".join(encode_frame(k, p) for k, p in frames)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    decoder = FrameDecoder(300)
    got = []
    for a, b in itertools.pairwise(bounds):
        got += decoder.feed(data[a:b])
    assert got == frames
    assert decoder.buffered() == b""


@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_fuzzed_bytes_only_raise_wire_error(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    decoder = FrameDecoder(500)
    try:
        for a, b in itertools.pairwise(bounds):
            for kind, payload in decoder.feed(data[a:b]):
                assert 0 <= kind <= 255 and len(payload) <= 500
    except WireError:
        pass


@given(st.data())
def test_valid_prefix_then_garbage(data: st.DataObject) -> None:
    frames = data.draw(frames_st)
    garbage = data.draw(st.binary(min_size=1, max_size=100))
    decoder = FrameDecoder(300)
    got: list[tuple[int, bytes]] = []
    try:
        got += decoder.feed(b"".join(encode_frame(k, p) for k, p in frames) + garbage)
    except WireError:
        got = frames  # the error came from the garbage; the frames before it were complete
    assert got[: len(frames)] == frames


# --------------------------------------------------------------------------- handshake


def nonce(i: int = 0) -> bytes:
    return hashlib.sha256(b"nonce %d" % i).digest()


def pair(
    dialer_secrets: list[bytes] | None = None,
    listener_secrets: list[bytes] | None = None,
    *,
    dialer: str = "node-a",
    listener: str = "node-b",
    advertise_d: tuple[str, int] | None = ("10.0.0.1", 5701),
    advertise_l: tuple[str, int] | None = ("10.0.0.2", 5701),
) -> tuple[Handshake, Handshake]:
    d = Handshake(
        "dialer",
        node_name=dialer,
        secrets=dialer_secrets or [SECRET],
        nonce=nonce(1),
        advertise=advertise_d,
        sequence=42,
    )
    lst = Handshake(
        "listener",
        node_name=listener,
        secrets=listener_secrets or [SECRET],
        nonce=nonce(2),
        advertise=advertise_l,
    )
    return d, lst


def run(d: Handshake, lst: Handshake, *, byte_by_byte: bool = False) -> list[bytes]:
    """Shuttle bytes until both are done or one fails; return the messages in order."""
    messages = []
    to_l = d.start()
    assert lst.start() == b""
    for _ in range(4):
        if not to_l:
            break
        messages.append(to_l)
        to_d = (
            b"".join(lst.feed(to_l[i : i + 1]) for i in range(len(to_l))) if byte_by_byte else lst.feed(to_l)
        )
        if not to_d:
            break
        messages.append(to_d)
        to_l = b"".join(d.feed(to_d[i : i + 1]) for i in range(len(to_d))) if byte_by_byte else d.feed(to_d)
    return messages


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_handshake_authenticates_both_sides(byte_by_byte: bool) -> None:
    d, lst = pair()
    messages = run(d, lst, byte_by_byte=byte_by_byte)
    assert [FrameDecoder().feed(m)[0][0] for m in messages] == [
        Kind.HELLO,
        Kind.CHALLENGE,
        Kind.AUTH,
        Kind.AUTH_OK,
    ]
    assert d.done and lst.done
    assert lst.result == Authenticated("node-a", ("10.0.0.1", 5701), 42)
    assert d.result == Authenticated("node-b", ("10.0.0.2", 5701), 42)
    assert d.trailing == lst.trailing == b""
    assert all(len(m) <= HANDSHAKE_MAX_FRAME + 6 for m in messages)


def test_handshake_without_advertised_addresses() -> None:
    d, lst = pair(advertise_d=None, advertise_l=None)
    run(d, lst)
    assert d.result == Authenticated("node-b", None, 42)
    assert lst.result == Authenticated("node-a", None, 42)


def test_the_listener_reveals_nothing_before_the_dialer_proves_the_secret() -> None:
    d, lst = pair()
    challenge = lst.feed(d.start())
    assert FrameDecoder().feed(challenge) == [(Kind.CHALLENGE, nonce(2))]
    assert b"node-b" not in challenge and b"10.0.0.2" not in challenge


def test_trailing_bytes_are_handed_over_unparsed() -> None:
    d, lst = pair()
    hello = d.start()
    auth = d.feed(lst.feed(hello))
    after = encode_frame(Kind.FORWARD, b"x" * 10_000) + b"\xff\xff\xff\xff junk"  # too big for a hello
    auth_ok = lst.feed(auth + after)
    assert lst.done and lst.trailing == after
    assert d.feed(auth_ok + after) == b"" and d.trailing == after


@pytest.mark.parametrize(
    ("dialer_secrets", "listener_secrets"),
    [
        ([b"old", b"new"], [b"old"]),  # step 1 of a rotation meets a node not yet touched
        ([b"old"], [b"new", b"old"]),
        ([b"new", b"old"], [b"old", b"new"]),
        ([b"new"], [b"new", b"old"]),
        ([b"old"], [b"other", b"old", b"more"]),
    ],
)
def test_secret_rotation(dialer_secrets: list[bytes], listener_secrets: list[bytes]) -> None:
    d, lst = pair(dialer_secrets, listener_secrets)
    run(d, lst)
    assert d.done and lst.done


def test_rotation_steps_must_not_be_skipped() -> None:
    """The dialer proves its first secret: a node that already leads with the new secret cannot
    reach one that does not know it yet (docs/mesh/transport.md: add, then promote, then remove)."""
    d, lst = pair([b"new", b"old"], [b"old"])
    with pytest.raises(AuthFailed):
        run(d, lst)


def test_wrong_secret_fails_on_the_listener_with_a_bye() -> None:
    d, lst = pair([b"wrong"], [SECRET])
    auth = d.feed(lst.feed(d.start()))
    with pytest.raises(AuthFailed, match="auth failed") as info:
        lst.feed(auth)
    assert lst.claimed_name == "node-a"  # for the log line only
    assert lst.state is HandshakeState.FAILED and lst.result is None
    assert FrameDecoder().feed(info.value.reply) == [(Kind.BYE, b"auth failed")]
    with pytest.raises(WireError):
        lst.feed(b"")
    # the dialer learns why
    with pytest.raises(AuthFailed, match="rejected our secret"):
        d.feed(info.value.reply)
    assert d.result is None


def test_a_listener_without_the_secret_cannot_fake_auth_ok() -> None:
    d, _ = pair()
    d.start()
    d.feed(encode_frame(Kind.CHALLENGE, nonce(2)))
    forged = encode_frame(Kind.AUTH_OK, os.urandom(32) + b"\x06node-b" + b"\x00\x00\x00")
    with pytest.raises(AuthFailed):
        d.feed(forged)
    assert d.result is None


@given(
    dialer_secret=st.binary(min_size=1, max_size=40),
    listener_secrets=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3),
)
def test_a_wrong_secret_never_authenticates(dialer_secret: bytes, listener_secrets: list[bytes]) -> None:
    assume(dialer_secret not in listener_secrets)
    d, lst = pair([dialer_secret], listener_secrets)
    with pytest.raises(AuthFailed):
        run(d, lst)
    assert lst.result is None and d.result is None


def _flip(messages: list[bytes], index: int, position: int, mask: int) -> list[bytes]:
    m = bytearray(messages[index])
    m[position % len(m)] ^= mask
    return [*messages[:index], bytes(m), *messages[index + 1 :]]


@given(index=st.integers(0, 3), position=st.integers(0, 400), mask=st.integers(1, 255))
def test_tampering_with_any_byte_never_authenticates_both_sides(index: int, position: int, mask: int) -> None:
    honest = run(*pair())
    tampered = _flip(honest, index, position, mask)
    d, lst = pair()
    d.start()
    try:
        for i, message in enumerate(tampered):
            (lst if i % 2 == 0 else d).feed(message)
    except WireError:
        pass
    assert not (d.done and lst.done)


def test_bytes_from_the_dialer_before_it_is_authenticated_are_never_parsed_as_frames() -> None:
    d, lst = pair()
    hello = d.start()
    with pytest.raises(WireError, match="unexpected frame kind 7"):
        lst.feed(hello + encode_frame(Kind.FORWARD, b"sneaky"))  # instead of AUTH
    d, lst = pair()
    with pytest.raises(WireError, match="exceeds the limit"):
        lst.feed(encode_frame(Kind.FORWARD, b"x" * (HANDSHAKE_MAX_FRAME + 1))[:4])


def _drive_to(state: HandshakeState) -> Handshake:
    d, lst = pair()
    hello = d.start()
    if state is HandshakeState.WAIT_HELLO:
        return lst
    if state is HandshakeState.SENT_HELLO:
        return d
    challenge = lst.feed(hello)
    if state is HandshakeState.SENT_CHALLENGE:
        return lst
    d.feed(challenge)
    if state is HandshakeState.SENT_AUTH:
        return d
    raise AssertionError(state)


LIVE_STATES = [
    HandshakeState.WAIT_HELLO,
    HandshakeState.SENT_HELLO,
    HandshakeState.SENT_CHALLENGE,
    HandshakeState.SENT_AUTH,
]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(state=st.sampled_from(LIVE_STATES), kind=st.sampled_from(list(Kind)), payload=st.binary(max_size=64))
def test_every_state_and_input(state: HandshakeState, kind: Kind, payload: bytes) -> None:
    hs = _drive_to(state)
    assert hs.state is state
    try:
        hs.feed(encode_frame(kind, payload))
    except WireError:
        assert hs.state is HandshakeState.FAILED
        return
    # only a listed transition can succeed, and only to its listed state
    assert (state, kind) in TRANSITIONS
    assert hs.state is TRANSITIONS[(state, kind)]


def test_the_table_is_the_whole_machine() -> None:
    assert set(TRANSITIONS) == {
        (HandshakeState.WAIT_HELLO, Kind.HELLO),
        (HandshakeState.SENT_HELLO, Kind.CHALLENGE),
        (HandshakeState.SENT_CHALLENGE, Kind.AUTH),
        (HandshakeState.SENT_AUTH, Kind.AUTH_OK),
    }
    assert not {k for _, k in TRANSITIONS} & APP_KINDS


@given(role=st.sampled_from(["dialer", "listener"]), data=st.binary(max_size=1000))
def test_fuzzed_handshake_input_only_raises_wire_error(role: str, data: bytes) -> None:
    d, lst = pair()
    hs = d if role == "dialer" else lst
    hs.start()
    try:
        hs.feed(data)
    except WireError:
        assert hs.state is HandshakeState.FAILED
    assert hs.result is None


@given(name=st.text(st.characters(exclude_categories=("C", "Zl", "Zp")), min_size=1, max_size=16))
def test_any_valid_name_travels(name: str) -> None:
    assume(name.isprintable() and len(name.encode()) <= MAX_NAME and name != "node-b")
    d, lst = pair(dialer=name)
    run(d, lst)
    assert lst.result is not None and lst.result.peer_name == name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_name": ""},
        {"node_name": "x" * (MAX_NAME + 1)},
        {"node_name": "bad\nname"},
        {"secrets": []},
        {"secrets": [b""]},
        {"nonce": b"short"},
        {"advertise": ("", 5701)},
        {"advertise": ("h", 0)},
        {"advertise": ("h\u00e9", 1)},
        {"sequence": -1},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"node_name": "n", "secrets": [SECRET], "nonce": nonce()}
    args.update(kwargs)
    with pytest.raises(ValueError):
        Handshake("dialer", **args)  # type: ignore[arg-type]


def test_bad_role_and_misuse() -> None:
    with pytest.raises(ValueError):
        Handshake("server", node_name="n", secrets=[SECRET], nonce=nonce())  # type: ignore[arg-type]
    d, lst = pair()
    with pytest.raises(RuntimeError):
        d.feed(b"")  # before start()
    run(d, lst)
    with pytest.raises(RuntimeError):
        d.feed(b"")  # after done: the link's decoder takes over
    with pytest.raises(RuntimeError):
        d.start()


def test_malformed_hello_fields() -> None:
    _, lst = pair()
    good = nonce(1) + struct.pack("!Q", 1)
    for body in [
        good,  # truncated
        good + b"\x00" + b"\x00\x00\x00",  # empty name
        good + b"\x02\xff\xfe" + b"\x00\x00\x00",  # not UTF-8
        good + b"\x01a" + b"\x00\x00\x05",  # port without host
        good + b"\x01a" + b"\x01h\x00\x00",  # host without port
        good + b"\x01a" + b"\x00\x00\x00" + b"extra",
    ]:
        _, lst = pair()
        with pytest.raises(WireError, match="malformed"):
            lst.feed(encode_frame(Kind.HELLO, body))


def test_same_name_and_echoed_nonce_are_refused() -> None:
    d, lst = pair(dialer="twin", listener="twin")
    with pytest.raises(WireError, match="our node name") as info:
        run(d, lst)
    assert FrameDecoder().feed(info.value.reply)[0][0] == Kind.BYE
    d, lst = pair()
    d.start()
    with pytest.raises(WireError, match="echoed"):
        d.feed(encode_frame(Kind.CHALLENGE, nonce(1)))


def test_bye_during_handshake() -> None:
    d, _ = pair()
    d.start()
    with pytest.raises(WireError, match="closed by peer during handshake: busy") as info:
        d.feed(encode_frame(Kind.BYE, b"busy"))
    assert not isinstance(info.value, AuthFailed)


def test_proofs_are_bound_to_the_role() -> None:
    """A dialer's AUTH replayed as the listener's proof (reflection) is useless: labels differ."""
    d, lst = pair()
    hello = d.start()
    challenge = lst.feed(hello)
    auth = d.feed(challenge)
    ((_, mac),) = FrameDecoder().feed(auth)
    forged = encode_frame(Kind.AUTH_OK, mac + b"\x06node-b" + b"\x08" + b"10.0.0.2" + struct.pack("!H", 5701))
    with pytest.raises(AuthFailed):
        d.feed(forged)
