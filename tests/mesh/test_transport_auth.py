"""Authentication over real sockets: a peer with a wrong secret cannot join, read or send anything.

Covers issue 5's acceptance point in both directions (the stranger dials us; we dial the stranger),
with a second real transport and with a raw socket that speaks the protocol and cheats; plus secret
rotation, random bytes on the port, and the cap on concurrent handshakes.
"""

from __future__ import annotations

import os
import random
import struct

import trio

from meshxmpp.mesh.wire import FrameDecoder, Handshake, Kind, WireError, encode_frame
from tests.mesh.test_transport import SECRET, TIMEOUT, F, make, mesh, start

WRONG = b"not the mesh secret"
PAYLOAD = b"TOP SECRET routing data"


async def read_all(stream: trio.SocketStream) -> bytes:
    """Everything the other end sends until it closes (a reset counts as closed)."""
    data = bytearray()
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def kinds(data: bytes) -> list[int]:
    """Frame kinds in ``data`` (a final partial frame is ignored)."""
    decoder = FrameDecoder()
    try:
        return [k for k, _ in decoder.feed(data)]
    except WireError:
        raise AssertionError(f"not a frame stream: {data!r}") from None


async def test_wrong_secret_cannot_join_in_either_direction() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            good, bad = make("good"), make("bad", secrets=[WRONG])
            await start(nursery, good)
            await start(nursery, bad)

            # the stranger dials us, with frames queued for us
            assert bad.t.send(good.addr, F, PAYLOAD)
            await bad.wait(lambda: bad.closed)
            await good.wait(lambda: good.closed)
            assert bad.closed[0].reason == good.closed[0].reason == "auth failed"
            assert bad.closed[0].peer is None and good.closed[0].peer is None
            assert bad.t.statistics().auth_failures == good.t.statistics().auth_failures == 1
            assert not bad.t.send(good.addr, F, PAYLOAD)  # and it backs off

            # we dial the stranger, with frames queued for it
            assert good.t.send(bad.addr, F, PAYLOAD)
            await good.wait(lambda: len(good.closed) == 2)
            await bad.wait(lambda: len(bad.closed) == 2)
            assert good.closed[1].reason == bad.closed[1].reason == "auth failed"
            assert good.t.statistics().auth_failures == bad.t.statistics().auth_failures == 2

            for rec in (good, bad):
                assert rec.frames == [] and rec.ups == [] and rec.downs == []
                assert rec.t.peers() == () and rec.t.statistics().peers == {}
            await good.t.aclose()
            await bad.t.aclose()


async def test_a_stranger_dialling_in_receives_nothing_and_its_frames_are_dropped() -> None:
    async with mesh("good", "peer") as (good, peer):
        # "good" has a real peer, with traffic, while the stranger poses as that peer
        assert good.t.send(peer.addr, F, b"hello peer")
        await peer.wait(lambda: peer.frames)
        stream = await trio.open_tcp_stream(*good.addr)
        hs = Handshake("dialer", node_name="peer", secrets=[WRONG], nonce=os.urandom(32))
        await stream.send_all(hs.start())
        received = b""
        out = b""
        while not out:
            chunk = await stream.receive_some(65536)
            received += chunk
            out = hs.feed(chunk)
        # the proof, then frames pipelined without waiting for AUTH_OK
        await stream.send_all(
            out + encode_frame(Kind.FORWARD, b"forged") + encode_frame(Kind.DIRECTORY, b"x")
        )
        assert good.t.send("peer", F, PAYLOAD)  # traffic for the name it claims
        received += await read_all(stream)
        await stream.aclose()
        await good.wait(lambda: good.closed)
        # (the BYE saying "auth failed" may be lost if the close resets the connection)
        assert kinds(received)[:1] == [Kind.CHALLENGE] and set(kinds(received)) <= {Kind.CHALLENGE, Kind.BYE}
        assert PAYLOAD not in received and b"good" not in received  # not even our name
        assert good.frames == [] and good.closed[0].reason == "auth failed"
        assert good.t.peers() == ("peer",) and good.t.statistics().auth_failures == 1
        await peer.wait(lambda: len(peer.frames) == 2)
        assert peer.payloads() == [b"hello peer", PAYLOAD]  # the real peer got it


async def test_a_stranger_we_dial_receives_nothing_beyond_the_handshake() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    stranger = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    try:
        async with mesh("good") as (good,):
            assert good.t.send(stranger, F, PAYLOAD)
            assert good.t.send(stranger, F, PAYLOAD)
            stream = await listeners[0].accept()
            hs = Handshake("listener", node_name="stranger", secrets=[WRONG], nonce=os.urandom(32))
            decoder = FrameDecoder()
            received = b""
            frames: list[tuple[int, bytes]] = []
            while not frames:
                chunk = await stream.receive_some(65536)
                received += chunk
                frames = decoder.feed(chunk)
            await stream.send_all(hs.feed(received))  # CHALLENGE
            while len(frames) < 2:
                chunk = await stream.receive_some(65536)
                received += chunk
                frames += decoder.feed(chunk)
            # it cannot prove the secret: it forges AUTH_OK and sends frames of its own
            forged = os.urandom(32) + b"\x08stranger" + b"\x00\x00\x00"
            await stream.send_all(encode_frame(Kind.AUTH_OK, forged) + encode_frame(Kind.FORWARD, b"forged"))
            received += await read_all(stream)
            await stream.aclose()
            await good.wait(lambda: good.closed)
            assert kinds(received)[:2] == [Kind.HELLO, Kind.AUTH]
            assert set(kinds(received)) <= {Kind.HELLO, Kind.AUTH, Kind.BYE}
            assert PAYLOAD not in received
            assert good.frames == [] and good.ups == []
            assert good.closed[0].reason == "auth failed" and good.t.statistics().auth_failures == 1
            assert not good.t.send(stranger, F, PAYLOAD)  # backs off
    finally:
        await listeners[0].aclose()


async def test_frames_instead_of_the_proof_are_never_delivered() -> None:
    async with mesh("good") as (good,):
        stream = await trio.open_tcp_stream(*good.addr)
        hs = Handshake("dialer", node_name="x", secrets=[SECRET], nonce=os.urandom(32))
        await stream.send_all(hs.start() + encode_frame(Kind.FORWARD, b"skip the proof"))
        received = await read_all(stream)
        await stream.aclose()
        await good.wait(lambda: good.closed)
        assert good.frames == [] and good.ups == []
        assert good.closed[0].reason.startswith("handshake: unexpected frame kind")
        assert Kind.AUTH_OK not in kinds(received)


async def _links(dialer_secrets: list[bytes], listener_secrets: list[bytes]) -> bool:
    """Whether a transport with ``dialer_secrets`` gets a link to one with ``listener_secrets``."""
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            d, lst = make("d", secrets=dialer_secrets), make("l", secrets=listener_secrets)
            await start(nursery, d)
            await start(nursery, lst)
            assert d.t.send(lst.addr, F, b"x")
            await d.wait(lambda: d.ups or d.closed)
            if d.ups:
                await lst.wait(lambda: lst.frames)
            else:
                await lst.wait(lambda: lst.closed)
                assert d.closed[0].reason == lst.closed[0].reason == "auth failed"
                assert lst.frames == []
            await d.t.aclose()
            await lst.t.aclose()
            return bool(d.ups)


async def test_secret_rotation() -> None:
    """Rotation in three rolling steps: append the new secret everywhere, then put it first
    everywhere, then drop the old one. Nodes one step apart link in both directions."""
    steps = [[b"old"], [b"old", b"new"], [b"new", b"old"], [b"new"]]
    for i, dialer in enumerate(steps):
        for j, listener in enumerate(steps):
            # the dialer proves its first secret; the listener accepts any of its list
            assert await _links(dialer, listener) == (dialer[0] in listener), (i, j)
            if abs(i - j) <= 1:
                assert dialer[0] in listener


async def test_hostile_random_bytes_on_the_port() -> None:
    rng = random.Random(1234)
    version_2 = struct.pack("!IBB", 40, 2, Kind.HELLO) + bytes(40)
    huge = struct.pack("!IBB", 0x7FFFFFFF, 1, Kind.HELLO)
    hello = Handshake("dialer", node_name="h", secrets=[WRONG], nonce=os.urandom(32)).start()
    blobs = [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"<stream:stream xmlns='jabber:client'>",
        version_2,
        huge,
        hello,  # a valid hello, then silence (EOF)
        hello + encode_frame(Kind.AUTH, os.urandom(32)),  # a guessed proof
        hello + encode_frame(Kind.AUTH, b"short"),
        hello + hello,
        encode_frame(Kind.FORWARD, b"no hello"),
        encode_frame(Kind.BYE, b"bye"),
    ] + [rng.randbytes(rng.choice([1, 5, 6, 50, 600, 5000])) for _ in range(25)]
    async with mesh("good", "peer") as (good, peer):
        for blob in blobs:
            stream = await trio.open_tcp_stream(*good.addr)
            try:
                await stream.send_all(blob)
                await stream.send_eof()
            except trio.BrokenResourceError:
                pass  # refused before we finished: fine
            received = await read_all(stream)
            await stream.aclose()
            assert kinds(received) in ([], [Kind.CHALLENGE], [Kind.CHALLENGE, Kind.BYE], [Kind.BYE])
        await good.wait(lambda: len(good.closed) == len(blobs))
        stats = good.t.statistics()
        assert stats.handshake_failures + stats.auth_failures == len(blobs)
        assert stats.auth_failures == 2
        assert good.frames == [] and good.ups == [] and stats.connections == 0
        # and the port still serves real peers
        assert peer.t.send(good.addr, F, b"still here")
        await good.wait(lambda: good.frames)


async def test_too_many_concurrent_handshakes_are_refused() -> None:
    async with mesh("good", max_handshakes=2) as (good,):
        pending = []
        for _ in range(2):  # two handshakes that stall after the CHALLENGE
            stream = await trio.open_tcp_stream(*good.addr)
            hs = Handshake("dialer", node_name="slow", secrets=[SECRET], nonce=os.urandom(32))
            await stream.send_all(hs.start())
            assert kinds(await stream.receive_some(65536)) == [Kind.CHALLENGE]
            pending.append(stream)
        third = await trio.open_tcp_stream(*good.addr)
        assert await read_all(third) == b""  # closed at once
        assert good.t.statistics().refused == 1 and good.t.statistics().connections == 2
        for stream in [*pending, third]:
            await stream.aclose()
        await good.wait(lambda: len(good.closed) == 2)
