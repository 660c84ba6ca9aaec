"""Hostile input over real sockets: each ends its stream with the right error, quickly and cheaply,
and the node keeps serving everyone else."""

from __future__ import annotations

import logging
import os
import random
import time
from functools import partial

import pytest
import trio

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>")

LAUGHS = (b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
          + b"".join(b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 10))
          + b"]><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
            b"to='localhost' version='1.0'><message>&lol9;</message>")

rng = random.Random(20261126)

CASES = {
    "dtd": (b"<?xml version='1.0'?><!DOCTYPE stream [<!ELEMENT stream ANY>]>" + HEADER[21:], "restricted-xml"),
    "entity-declaration": (b"<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'y'>]>" + HEADER[21:],
                           "restricted-xml"),
    "entity-reference": (HEADER + b"<message><body>&xxe;</body></message>", None),
    "billion-laughs": (LAUGHS, "restricted-xml"),
    "huge-stanza": (HEADER + b"<message><body>" + b"A" * (10 * 1024 * 1024) + b"</body></message>",
                    "policy-violation"),
    "deep-nesting": (HEADER + b"<a>" * 10_000, "policy-violation"),
    "invalid-utf8": (HEADER + b"<message><body>\xff\xfe\xc3\x28</body></message>", "not-well-formed"),
    "random-bytes": (HEADER + bytes(rng.getrandbits(8) for _ in range(4096)), None),
    "comment": (HEADER + b"<!-- hi -->", "restricted-xml"),
    "processing-instruction": (HEADER + b"<?evil stuff?>", "restricted-xml"),
    "wrong-namespace": (HEADER.replace(b"jabber:client", b"jabber:evil"), "invalid-namespace"),
}
# An undefined entity is also malformed XML; random bytes may trip several checks.
ACCEPTABLE = {
    "entity-reference": {"not-well-formed", "restricted-xml"},
    "random-bytes": {"not-well-formed", "restricted-xml", "policy-violation", "invalid-namespace"},
}


async def read_until_closed(stream: trio.SocketStream, limit: float) -> bytes:
    received = bytearray()
    with trio.fail_after(limit):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


def stream_error_of(data: bytes) -> str | None:
    marker = b"xmlns='urn:ietf:params:xml:ns:xmpp-streams'"
    if b"<stream:error>" not in data:
        return None
    error = data.split(b"<stream:error>", 1)[1]
    for cond in ("restricted-xml", "policy-violation", "not-well-formed", "invalid-namespace", "bad-format",
                 "connection-timeout", "unsupported-stanza-type", "invalid-xml", "host-unknown"):
        if f"<{cond}".encode() in error:
            return cond
    raise AssertionError(f"unrecognised stream error: {error[:200]!r} ({marker!r})")


async def send_ignoring_close(stream: trio.SocketStream, data: bytes, *, chunk: int) -> None:
    try:
        for i in range(0, len(data), chunk):
            await stream.send_all(data[i:i + chunk])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the server closed on us mid-send: expected for big payloads


async def attack(address: tuple[str, int], payload: bytes, *, chunk: int) -> str | None:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(send_ignoring_close, stream, payload, chunk=chunk))
            data = await read_until_closed(stream, 10)
            nursery.cancel_scope.cancel()
    return stream_error_of(data)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_input_gets_stream_error(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp")
    payload, expected = CASES[name]
    async with testing.node() as n:
        await n.add_user("alice")
        bystander = await n.client("alice", resource="bystander")
        cpu0 = time.process_time()
        condition = await attack(n.c2s_address, payload, chunk=65536)
        cpu = time.process_time() - cpu0
        assert condition in (ACCEPTABLE.get(name) or {expected}), (name, condition)
        assert cpu < 1.0, f"{name} cost {cpu:.2f} s of CPU"
        # The node keeps serving: the bystander still gets answers, and a new client logs in.
        await bystander.ping()
        await n.add_user("carol")
        fresh = await n.client("carol")
        await fresh.ping()
        await fresh.aclose()
        await bystander.aclose()
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


async def test_byte_at_a_time_hostile_sender() -> None:
    async with testing.node() as n:
        cpu0 = time.process_time()
        condition = await attack(n.c2s_address, LAUGHS, chunk=1)
        assert condition == "restricted-xml"
        assert time.process_time() - cpu0 < 1.0


async def test_slow_sender_is_cut_off_by_the_negotiation_deadline() -> None:
    async with testing.node({"c2s": {"negotiation_timeout": 0.5}}) as n:
        stream = await trio.open_tcp_stream(*n.c2s_address)
        async with stream:
            # Half a header, then silence: the server must not wait forever.
            await stream.send_all(HEADER[:30])
            data = await read_until_closed(stream, 5)
        assert stream_error_of(data) == "connection-timeout"


async def test_many_random_garbage_connections_do_not_disturb_a_chat() -> None:
    async with testing.node() as n:
        await n.add_user("alice")
        await n.add_user("bob")
        alice = await n.client("alice", resource="a", presence=True)
        bob = await n.client("bob", resource="b", presence=True)
        async with trio.open_nursery() as nursery:
            for i in range(20):
                junk = HEADER + os.urandom(512) if i % 2 else os.urandom(512)
                nursery.start_soon(partial(attack, n.c2s_address, junk, chunk=512))
            msg = Element("message", ns.CLIENT, {"to": "bob@localhost/b", "type": "chat"})
            msg.add("body", ns.CLIENT, text="still here")
            await alice.send(msg)
            got = await bob.wait_for(lambda el: el.name == "message", what="alice's message")
            assert got.find("body", ns.CLIENT).text == "still here"  # type: ignore[union-attr]
        await alice.aclose()
        await bob.aclose()
