"""MeshTransport over real loopback sockets: links, ordering, reconnects, duplicates, backoff, limits.

Nothing sleeps to wait: every wait is on an event fired by a transport callback (``Rec.wait``).
The authentication and hostile-peer tests are in test_transport_auth.py.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel

from meshxmpp.mesh.transport import ConnectionClosed, MeshTransport, backoff_delay
from meshxmpp.mesh.wire import Kind

SECRET = b"mesh test secret"
TIMEOUT = 10
F = int(Kind.FORWARD)


class Rec:
    """A transport plus everything its callbacks reported, and a way to wait for a condition."""

    def __init__(self, transport: MeshTransport) -> None:
        self.t = transport
        self.frames: list[tuple[str, int, bytes]] = []
        self.ups: list[tuple[str, tuple[str, int] | None]] = []
        self.downs: list[str] = []
        self.closed: list[ConnectionClosed] = []
        self._changed = trio.Event()
        transport.on_frame = lambda peer, kind, payload: self._add(self.frames, (peer, kind, payload))
        transport.on_link_up = lambda peer, addr: self._add(self.ups, (peer, addr))
        transport.on_link_down = lambda peer: self._add(self.downs, peer)
        transport.on_connection_closed = lambda event: self._add(self.closed, event)

    def _add(self, where: list[Any], item: object) -> None:
        where.append(item)
        self._changed.set()
        self._changed = trio.Event()

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.t.port)

    def payloads(self, peer: str | None = None) -> list[bytes]:
        return [p for who, _, p in self.frames if peer is None or who == peer]

    async def wait(self, condition: Callable[[], object]) -> None:
        with trio.fail_after(TIMEOUT):
            while not condition():
                await self._changed.wait()


def make(name: str, **kwargs: Any) -> Rec:
    kwargs.setdefault("secrets", [SECRET])
    kwargs.setdefault("port", 0)
    return Rec(MeshTransport(node_name=name, bind="127.0.0.1", **kwargs))


async def _run_in(scope: trio.CancelScope, transport: MeshTransport, *, task_status: Any) -> None:
    with scope:
        await transport.run(task_status=task_status)


async def start(nursery: trio.Nursery, rec: Rec) -> trio.CancelScope:
    """Run ``rec.t`` in ``nursery``; the returned scope kills it abruptly (no BYE)."""
    scope = trio.CancelScope()
    await nursery.start(_run_in, scope, rec.t)
    return scope


@asynccontextmanager
async def mesh(*names: str, **kwargs: Any) -> AsyncIterator[list[Rec]]:
    """Transports named ``names`` running on ephemeral loopback ports, closed with aclose()."""
    recs = [make(name, **kwargs) for name in names]
    with trio.fail_after(TIMEOUT * 3):
        async with trio.open_nursery() as nursery:
            for rec in recs:
                await start(nursery, rec)
            yield recs
            for rec in recs:
                await rec.t.aclose()


def dead_address() -> tuple[str, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ("127.0.0.1", s.getsockname()[1])


# --------------------------------------------------------------------------- exchanging frames


async def test_two_transports_exchange_frames_both_ways() -> None:
    async with mesh("alpha", "beta") as (a, b):
        assert a.t.peers() == ()
        assert a.t.send(b.addr, F, b"hello beta")  # no link yet: dials in the background
        await b.wait(lambda: b.frames)
        assert b.frames == [("alpha", F, b"hello beta")]
        assert b.ups == [("alpha", a.addr)] and a.ups == [("beta", b.addr)]
        assert b.t.send("alpha", Kind.ACK, b"hello alpha")  # by name, over the same link
        assert a.t.send(b.addr, Kind.MEMBERSHIP, b"")
        await a.wait(lambda: a.frames)
        await b.wait(lambda: len(b.frames) == 2)
        assert a.frames == [("beta", Kind.ACK, b"hello alpha")]
        assert b.frames[1] == ("alpha", Kind.MEMBERSHIP, b"")
        assert a.t.peers() == ("beta",) and b.t.peers() == ("alpha",)

        sa, sb = a.t.statistics(), b.t.statistics()
        assert sa.links == sb.links == 1 and sa.connections == sb.connections == 1
        assert sa.dials == 1 and sb.dials == 0
        assert sa.peers["beta"].outbound is True and sb.peers["alpha"].outbound is False
        assert sa.peers["beta"].addr == b.addr and sb.peers["alpha"].addr == a.addr
        assert sa.peers["beta"].frames_out == sb.peers["alpha"].frames_in == 2
        assert sb.peers["alpha"].frames_out == sa.peers["beta"].frames_in == 1
        assert sa.peers["beta"].bytes_out > 0 and sa.peers["beta"].bytes_in > 0
        assert sa.auth_failures == sa.handshake_failures == sa.protocol_errors == 0
    assert a.downs == ["beta"] and b.downs == ["alpha"]  # aclose


async def test_ordering_per_link_both_directions_at_once() -> None:
    rng = random.Random(5)
    n = 3000
    async with mesh("a", "b", outbox_limit=64 << 20) as (a, b):
        assert a.t.send(b.addr, F, b"start")
        await b.wait(lambda: b.frames)
        for i in range(n):
            # varied sizes, sent in bursts with scheduling points in between: writes coalesce
            # differently from burst to burst, and both directions interleave on the wire
            size = rng.choice([0, 1, 100, 5000, 20_000])
            body = struct.pack("!I", i) + bytes(size)
            assert a.t.send("b", F, body)
            assert b.t.send("a", F, body)
            if rng.random() < 0.05:
                await trio.lowlevel.checkpoint()
        await a.wait(lambda: len(a.frames) == n)
        await b.wait(lambda: len(b.frames) == n + 1)
        assert [struct.unpack("!I", p[:4])[0] for p in a.payloads()] == list(range(n))
        assert [struct.unpack("!I", p[:4])[0] for p in b.payloads()[1:]] == list(range(n))


async def test_three_transports_full_mesh() -> None:
    async with mesh("n1", "n2", "n3") as recs:
        n1, n2, n3 = recs
        assert n1.t.send(n2.addr, F, b"1->2") and n1.t.send(n3.addr, F, b"1->3")
        await n2.wait(lambda: n2.frames)
        await n3.wait(lambda: n3.frames)
        assert n2.t.send(n3.addr, F, b"2->3")
        await n3.wait(lambda: len(n3.frames) == 2)
        for rec in recs:
            for other in recs:
                if other is not rec:
                    assert rec.t.send(
                        other.t.node_name, F, f"{rec.t.node_name}=>{other.t.node_name}".encode()
                    )
        for rec in recs:
            await rec.wait(lambda: sum(b"=>" in p for p in rec.payloads()) == 2)  # noqa: B023
            assert rec.t.peers() == tuple(sorted({"n1", "n2", "n3"} - {rec.t.node_name}))
            assert rec.t.statistics().connections == 2
            assert not rec.downs
        assert sorted(n3.frames) == sorted(
            [("n1", F, b"1->3"), ("n2", F, b"2->3"), ("n1", F, b"n1=>n3"), ("n2", F, b"n2=>n3")]
        )


async def test_on_link_up_can_send_at_once() -> None:
    async with mesh("a", "b") as (a, b):
        b.t.on_link_up = lambda peer, addr: b.t.send(peer, F, b"welcome")
        assert a.t.send(b.addr, F, b"hi")
        await a.wait(lambda: a.frames)
        assert a.frames == [("b", F, b"welcome")]


# --------------------------------------------------------------------------- losing and regaining links


async def test_reconnect_after_disconnect() -> None:
    async with mesh("a", "b") as (a, b):
        assert a.t.send(b.addr, F, b"1")
        await b.wait(lambda: b.frames)
        assert b.t.disconnect("a")
        assert b.downs == ["a"]  # at once
        assert not b.t.disconnect("a")
        await a.wait(lambda: a.downs == ["b"] and a.closed)
        assert a.closed[-1].reason == "closed by peer: disconnect"
        assert a.t.send("b", F, b"2")  # dials b's advertised address again
        await b.wait(lambda: len(b.frames) == 2)
        assert b.payloads() == [b"1", b"2"]
        assert [p for p, _ in a.ups] == ["b", "b"]


async def test_reconnect_after_the_peer_is_killed_and_restarted() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("a"), make("b")
            await start(nursery, a)
            kill_b = await start(nursery, b)
            assert a.t.send(b.addr, F, b"before")
            await b.wait(lambda: b.frames)
            port = b.t.port

            kill_b.cancel()  # abrupt: no BYE, sockets just close
            await a.wait(lambda: a.downs == ["b"] and a.closed)
            assert a.closed[-1].reason == "eof" and b.downs == ["a"]
            assert a.t.peers() == ()

            b2 = make("b", port=port)
            await start(nursery, b2)
            assert a.t.send("b", F, b"after")  # no dial failed: no backoff
            await b2.wait(lambda: b2.frames)
            assert b2.frames == [("a", F, b"after")]
            assert a.t.peers() == ("b",)
            await a.t.aclose()
            await b2.t.aclose()


async def test_frames_for_a_name_are_not_given_to_another_node_at_its_address() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("a"), make("b")
            await start(nursery, a)
            kill_b = await start(nursery, b)
            assert a.t.send(b.addr, F, b"for b")
            await b.wait(lambda: b.frames)
            kill_b.cancel()
            await a.wait(lambda: a.downs)
            c = make("c", port=b.t.port)  # another node now listens where b did
            await start(nursery, c)
            assert a.t.send("b", F, b"for b only")  # dials b's old address, reaches c
            await a.wait(lambda: len(a.ups) == 2)
            assert a.ups[1] == ("c", c.addr) and a.t.peers() == ("c",)
            assert a.t.send(c.addr, F, b"for c")  # by address: whoever is there
            await c.wait(lambda: c.frames)
            assert c.frames == [("a", F, b"for c")]
            await a.t.aclose()
            await c.t.aclose()


async def test_simultaneous_dial_resolves_to_one_link_kept_by_the_lower_name() -> None:
    async with mesh("aaa", "zzz") as (low, high):
        # both dial in the same tick, before either link exists
        assert low.t.send(high.addr, F, b"from low")
        assert high.t.send(low.addr, F, b"from high")
        await low.wait(lambda: low.frames)
        await high.wait(lambda: high.frames)
        # each end closes the connection dialled by "zzz" as a duplicate
        await low.wait(lambda: any(c.reason == "duplicate" for c in low.closed))
        await high.wait(lambda: any(c.reason == "duplicate" for c in high.closed))
        sl, sh = low.t.statistics(), high.t.statistics()
        assert sl.connections == sh.connections == 1
        assert sl.peers["zzz"].outbound is True and sh.peers["aaa"].outbound is False
        # nothing lost, nothing duplicated, no flapping seen by the owners
        assert low.frames == [("zzz", F, b"from high")] and high.frames == [("aaa", F, b"from low")]
        assert low.ups == [("zzz", high.addr)] and high.ups == [("aaa", low.addr)]
        assert not low.downs and not high.downs
        assert low.t.send("zzz", F, b"again") and high.t.send("aaa", F, b"again")
        await low.wait(lambda: len(low.frames) == 2)
        await high.wait(lambda: len(high.frames) == 2)
        assert low.t.statistics().connections == high.t.statistics().connections == 1


async def test_idle_link_is_closed_and_dialled_again_on_demand() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("a", idle_timeout=0.3), make("b")
            await start(nursery, a)
            await start(nursery, b)
            assert a.t.send(b.addr, F, b"1")
            await b.wait(lambda: b.frames)
            await a.wait(lambda: a.closed)
            await b.wait(lambda: b.closed)
            assert a.downs == ["b"] and b.downs == ["a"]
            assert a.closed[-1].reason == "idle" and b.closed[-1].reason == "closed by peer: idle"
            assert a.t.send("b", F, b"2")
            await b.wait(lambda: len(b.frames) == 2)
            await a.t.aclose()
            await b.t.aclose()


# --------------------------------------------------------------------------- unreachable peers


def test_backoff_delay_doubles_up_to_the_cap() -> None:
    rng = random.Random(1)
    for failures, full in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (100, 30.0)]:
        for _ in range(20):
            delay = backoff_delay(failures, base=0.5, cap=30.0, rng=rng)
            assert full / 2 <= delay <= full


async def test_backoff_makes_send_return_false_fast_for_a_dead_address() -> None:
    dead = dead_address()
    async with mesh("a", backoff_base=60.0) as (a,):
        assert a.t.send(dead, F, b"x")  # queued while the dial runs
        await a.wait(lambda: a.closed)
        assert a.closed[0].dial_addr == dead and a.closed[0].reason.startswith("dial failed")
        t0 = time.perf_counter()
        assert not a.t.send(dead, F, b"y")
        assert time.perf_counter() - t0 < 0.01
        stats = a.t.statistics()
        assert stats.backoff == (dead,) and stats.dial_failures == 1 and stats.dials == 1
        assert not a.t.send("nobody-we-know", F, b"z")  # unknown name: nowhere to dial


async def test_a_silent_listener_times_the_handshake_out_and_backs_off() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    silent = ("127.0.0.1", listeners[0].socket.getsockname()[1])
    try:
        async with mesh("a", handshake_timeout=0.2) as (a,):
            assert a.t.send(silent, F, b"x")
            conn = await listeners[0].accept()  # accepts, then never says a word
            await a.wait(lambda: a.closed)
            assert a.closed[0].reason == "handshake timeout"
            assert not a.t.send(silent, F, b"x")
            assert a.t.statistics().handshake_failures == 1
            await conn.aclose()
    finally:
        await listeners[0].aclose()


async def test_dialling_ourselves_fails_and_backs_off() -> None:
    async with mesh("a") as (a,):
        assert a.t.send(a.addr, F, b"x")
        await a.wait(lambda: len(a.closed) == 2)  # both ends of the connection
        assert not a.frames and not a.ups
        assert not a.t.send(a.addr, F, b"x")


# --------------------------------------------------------------------------- limits


async def test_outbox_limit_drops_the_link() -> None:
    async with mesh("a", "b", outbox_limit=100_000) as (a, b):
        assert a.t.send(b.addr, F, b"hi")
        await b.wait(lambda: b.frames)
        body = bytes(30_000)
        # in one tick the writer cannot run: the outbox grows until it crosses the limit
        assert [a.t.send("b", F, body) for _ in range(4)] == [True, True, True, False]
        assert a.downs == ["b"] and a.t.statistics().outbox_overflows == 1
        await b.wait(lambda: b.downs == ["a"])
        assert b.payloads() == [b"hi"]  # what was queued on the dropped link is lost
        assert a.t.send("b", F, b"after")  # a fresh link
        await b.wait(lambda: len(b.frames) == 2)


async def test_outbox_limit_applies_while_dialling() -> None:
    async with mesh("a", "b", outbox_limit=100_000) as (a, b):
        body = bytes(40_000)
        assert [a.t.send(b.addr, F, body) for _ in range(3)] == [True, True, False]
        assert a.t.statistics().outbox_overflows == 1
        assert a.t.send(b.addr, F, b"x")  # a new dial
        await b.wait(lambda: b.frames)
        assert b.payloads() == [b"x"]


async def test_oversize_frame_drops_the_link() -> None:
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            a, b = make("a"), make("b", max_frame=1000)
            await start(nursery, a)
            await start(nursery, b)
            assert a.t.send(b.addr, F, bytes(1000))
            assert a.t.send(b.addr, F, bytes(1001))  # a allows it; b does not
            await b.wait(lambda: b.closed)
            await a.wait(lambda: a.closed)
            assert b.payloads() == [bytes(1000)]
            assert b.t.statistics().protocol_errors == 1
            assert b.closed[-1].reason.startswith("protocol error: frame of 1001 bytes exceeds")
            assert a.closed[-1].reason.startswith("closed by peer: protocol error")
            with pytest.raises(ValueError):
                b.t.send("a", F, bytes(1001))
            await a.t.aclose()
            await b.t.aclose()


async def test_send_refuses_misuse_and_works_only_while_running() -> None:
    a = make("a")
    assert not a.t.send(("127.0.0.1", 1), F, b"")  # not running
    async with mesh("b") as (b,):
        for kind in (Kind.HELLO, Kind.CHALLENGE, Kind.AUTH, Kind.AUTH_OK, Kind.BYE, 0, 77):
            with pytest.raises(ValueError):
                b.t.send(("127.0.0.1", 1), kind, b"")
        with pytest.raises(ValueError):
            b.t.send(("127.0.0.1", 1), F, bytes((1 << 20) + 1))
    assert not b.t.send(("127.0.0.1", 1), F, b"")  # closed
    with pytest.raises(ValueError):
        MeshTransport(node_name="", bind="127.0.0.1", port=0, secrets=[SECRET])
    with pytest.raises(ValueError):
        MeshTransport(node_name="x", bind="127.0.0.1", port=0, secrets=[])


# --------------------------------------------------------------------------- shutting down


async def test_aclose_drains_queued_frames_then_says_bye() -> None:
    async with mesh("a", "b") as (a, b):
        assert a.t.send(b.addr, F, b"0")
        await b.wait(lambda: b.frames)
        for i in range(1, 200):
            assert a.t.send("b", F, b"%d" % i)
        await a.t.aclose()  # returns once the link is closed on both ends
        assert a.downs == ["b"] and a.t.statistics().connections == 0
        assert not a.t.send("b", F, b"late")
        await b.wait(lambda: b.downs)
        assert b.payloads() == [b"%d" % i for i in range(200)]
        assert b.closed[-1].reason == "closed by peer: shutdown"


async def test_cancellation_closes_everything() -> None:
    a, b, c = make("a"), make("b"), make("c")
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for rec in (a, b, c):
                await start(nursery, rec)
            a.t.send(b.addr, F, b"x")
            a.t.send(c.addr, F, b"x")
            await b.wait(lambda: b.frames)
            await c.wait(lambda: c.frames)
            nursery.cancel_scope.cancel()
    assert sorted(a.downs) == ["b", "c"] and b.downs == ["a"] and c.downs == ["a"]
    for rec in (a, b, c):
        assert rec.t.statistics().connections == 0 and rec.t.peers() == ()
