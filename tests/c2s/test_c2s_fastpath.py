"""The plain-TCP fast paths over real loopback sockets: the writer's synchronous write with its
fallback to ``send_all``, the reader's wait-then-read, and their failure modes."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshxmpp.c2s import listener as listener_module
from meshxmpp.c2s import session as session_module
from meshxmpp.c2s.listener import READ_SIZE, C2SListener
from meshxmpp.c2s.session import Session, flush_held, hold_wakeups
from meshxmpp.jid import JID
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.serialize import STREAM_FOOTER, stream_error, to_bytes
from tests.c2s._helpers import DOMAIN, FakeRouter, make_ctx

TIMEOUT = 20
# SO_SNDBUF of the server side for the tests that need the socket to fill up. (Not SO_RCVBUF on
# the client: shrinking it on a connected socket makes the kernel drop segments it advertised
# room for, and their retransmission backs off for seconds.)
BUFFER = 4096


@asynccontextmanager
async def tcp_pair(
    *, small_buffers: bool = False
) -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(server side, client side) of one loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        await listeners[0].aclose()
    if small_buffers:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    try:
        yield server, client
    finally:
        await server.aclose()
        await client.aclose()


def reset(stream: trio.SocketStream) -> None:
    """Close with SO_LINGER 0: the peer gets a RST instead of a FIN."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


def message(i: int, size: int = 100) -> Element:
    el = Element("message", ns.CLIENT, {"to": "bob@example.org/phone", "id": str(i)})
    el.add("body", text=f"{i:06d}" + "x" * size)
    return el


class WriteLog:
    """Wraps the session's ``os.write``: (bytes offered, bytes taken) of every fast write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        self.real = session_module._write
        monkeypatch.setattr(session_module, "_write", self)

    def __call__(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        try:
            n = self.real(fd, data)
        except BlockingIOError:
            self.calls.append((len(data), 0))
            raise
        self.calls.append((len(data), n))
        return n

    @property
    def partial(self) -> int:
        return sum(1 for offered, taken in self.calls if taken < offered)


async def read_all(stream: trio.SocketStream, expected: int, *, chunk: int = 65536) -> bytes:
    received = bytearray()
    while len(received) < expected:
        data = await stream.receive_some(chunk)
        assert data, "connection closed early"
        received += data
    return bytes(received)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ------------------------------------------------------------------------------------------ writer


async def test_one_fast_write_per_tick_while_the_client_keeps_up(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                expected = bytearray()
                bursts = []
                for burst in range(5):
                    data = b"".join(to_bytes(message(burst * 10 + i)) for i in range(10))
                    for i in range(10):
                        session.send(message(burst * 10 + i))
                    await session.wait_flushed()
                    bursts.append((len(data), len(data)))  # 10 stanzas, 1 whole write
                    expected += data
                assert writes.calls == bursts
                assert await read_all(client, len(expected)) == expected
                assert session.statistics().bytes_out == len(expected)
                nursery.cancel_scope.cancel()
    assert not session.closed


async def test_partial_writes_fall_back_and_everything_arrives_once_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair(small_buffers=True) as (server, client):
            session = Session(server, outbox_limit=64 << 20)
            expected = bytearray()

            def send(i: int) -> None:
                session.send(message(i, size=1000))
                expected.extend(to_bytes(message(i, size=1000)))

            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                for i in range(4000):  # ~4 MiB: far more than the socket buffers hold
                    send(i)
                await trio.testing.wait_all_tasks_blocked()
                # the fast write took what fit; the writer now waits in send_all for room
                assert writes.partial == 1 and session._writing
                for i in range(4000, 4100):  # queued behind the write in progress
                    send(i)
                # the client reads slowly at first, with tasks running in between...
                received = bytearray()
                for _ in range(50):
                    received += await client.receive_some(1000)
                    await trio.testing.wait_all_tasks_blocked()
                for i in range(4100, 4200):
                    send(i)
                # ...then catches up
                received += await read_all(client, len(expected) - len(received))
                await session.wait_flushed()
                assert bytes(received) == bytes(expected)
                assert session.statistics().bytes_out == len(expected)
                # once the socket has room again, writes are whole fast writes again
                before = len(writes.calls)
                send(5000)
                await session.wait_flushed()
                assert writes.calls[before:] == [(len(to_bytes(message(5000, size=1000))),) * 2]
                assert await read_all(client, len(expected) - len(received)) == expected[len(received) :]
                nursery.cancel_scope.cancel()
    assert not session.closed


async def test_would_block_on_the_first_byte_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair(small_buffers=True) as (server, client):
            session = Session(server, outbox_limit=64 << 20)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                first = b"a" * (2 << 20)
                session.send_bytes(first)
                await trio.testing.wait_all_tasks_blocked()
                assert session._writing  # the socket is full
                second = b"b" * 1000
                session.send_bytes(second)
                received = await read_all(client, 1 << 20)
                await trio.testing.wait_all_tasks_blocked()
                # the writer still has the rest of the first write to do, so the socket is full
                # again when it gets to the second: a fast write that takes nothing
                received += await read_all(client, len(first) + len(second) - len(received))
                assert received == first + second
                nursery.cancel_scope.cancel()
    assert any(taken < offered for offered, taken in writes.calls)


async def test_close_while_writing_ends_with_the_footer() -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_pair(small_buffers=True) as (server, client):
            session = Session(server, outbox_limit=64 << 20)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                payload = b"p" * (2 << 20)
                session.send_bytes(payload)
                await trio.testing.wait_all_tasks_blocked()
                assert session._writing
                session.close("system-shutdown")
                expected = payload + stream_error("system-shutdown") + STREAM_FOOTER
                assert await read_all(client, len(expected)) == expected
            # the nursery ends by itself: write_loop returned once the footer was written
    assert session.closed and not session.aborted and session.close_reason == "system-shutdown"


async def test_peer_reset_while_blocked_in_send_all(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
    with trio.fail_after(TIMEOUT):
        async with tcp_pair(small_buffers=True) as (server, client):
            session = Session(server, outbox_limit=64 << 20)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                session.send_bytes(b"x" * (2 << 20))
                await trio.testing.wait_all_tasks_blocked()
                assert session._writing
                reset(client)
            # abort() cancelled the connection scope (cancelled_caught differs across Trio versions)
            assert nursery.cancel_scope.cancel_called
    assert session.aborted and session.close_reason == "write-failed"
    no_tracebacks(caplog)


async def test_peer_reset_then_fast_write(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                session.send(message(1))
                await session.wait_flushed()
                reset(client)
                await trio.lowlevel.wait_readable(server.socket)  # the RST has arrived
                session.send(message(2))  # EPIPE / ECONNRESET from the synchronous write
            # abort() cancelled the connection scope (cancelled_caught differs across Trio versions)
            assert nursery.cancel_scope.cancel_called
    assert session.aborted and session.close_reason == "write-failed"
    no_tracebacks(caplog)


@pytest.mark.parametrize("error", [errno.EPIPE, errno.ECONNRESET, errno.EBADF])
async def test_write_errors_abort(monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    def failing(fd: int, data: Any) -> int:
        raise OSError(error, "injected")

    monkeypatch.setattr(session_module, "_write", failing)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, _client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                session.send(message(1))
    assert session.aborted and session.close_reason == "write-failed"


async def test_closed_socket_is_never_written_even_if_its_fd_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, _client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                await trio.testing.wait_all_tasks_blocked()
                fd = server.socket.fileno()
                await server.aclose()  # behind the writer's back (the listener never does this)
                # another connection gets the same descriptor number
                other, other_peer = socket.socketpair()
                if other_peer.fileno() == fd:
                    other, other_peer = other_peer, other
                duplicated = other.fileno() != fd
                if duplicated:
                    os.dup2(other.fileno(), fd)
                session.send(message(1))
                session.send(message(2))
                await trio.sleep_forever()  # until the failed write aborts the session
            # abort() cancelled the connection scope (cancelled_caught differs across Trio versions)
            assert nursery.cancel_scope.cancel_called
    try:
        assert session.aborted and session.close_reason == "write-failed"
        other_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            other_peer.recv(1)  # nothing went into the other connection
    finally:
        if duplicated:
            os.close(fd)
        other.close()
        other_peer.close()
    assert writes.calls == []


async def test_tls_streams_take_the_send_all_path(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                session.send_bytes(b"<proceed/>")
                await session.wait_flushed()
                assert len(writes.calls) == 1
                wrapped = trio.StapledStream(server, server)  # any stream but a SocketStream
                session.replace_stream(wrapped)
                session.send_bytes(b"<features/>")
                await session.wait_flushed()
                assert len(writes.calls) == 1
                assert await read_all(client, 21) == b"<proceed/><features/>"
                nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------ reader


@asynccontextmanager
async def plain_server(tmp_path: Path, **c2s: Any) -> AsyncIterator[tuple[C2SListener, FakeRouter, int]]:
    ctx = await make_ctx(tmp_path, require_encryption=False, **c2s)
    listener = C2SListener(ctx, fake_salt_key=b"k" * 32)
    router: FakeRouter = ctx.router  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        yield listener, router, port
        nursery.cancel_scope.cancel()


async def plain_login(port: int) -> TestClient:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = TestClient(stream, DOMAIN, timeout=TIMEOUT)
    await client.login("alice", "secret", resource="r", starttls=False, mechanism="PLAIN")
    return client


class ReadLog:
    """Wraps the listener's ``os.read``: the size of every raw read (-1: would block)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.real = listener_module._read
        monkeypatch.setattr(listener_module, "_read", self)

    def __call__(self, fd: int, n: int) -> bytes:
        try:
            data = self.real(fd, n)
        except BlockingIOError:
            self.sizes.append(-1)
            raise
        self.sizes.append(len(data))
        return data


async def test_reader_routes_everything_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with plain_server(tmp_path) as (_, router, port):
            client = await plain_login(port)
            # one at a time: every read follows a wait for readability, none fails with EAGAIN
            for i in range(20):
                await client.send(message(i))
                await router.wait_until(lambda n=i + 1: len(router.routed) == n)
            assert reads.sizes and -1 not in reads.sizes
            # then a flood that fills the read buffer: full reads are followed by an eager read
            count = 3 * READ_SIZE // len(to_bytes(message(0))) + 50
            await client.send_raw(b"".join(to_bytes(message(i)) for i in range(20, 20 + count)))
            await router.wait_until(lambda: len(router.routed) == 20 + count)
            assert READ_SIZE in reads.sizes
            ids = [int(el.get("id") or -1) for el, _ in router.routed]
            assert ids == list(range(20 + count))
            assert all(el.get("from") == f"alice@{DOMAIN}/r" for el, _ in router.routed)
            # a stanza split over many writes
            data = to_bytes(message(10_000))
            for k in range(0, len(data), 7):
                await client.send_raw(data[k : k + 7])
            await router.wait_until(lambda: len(router.routed) == 21 + count)
            await client.send_raw(STREAM_FOOTER)
            await client.wait_closed()
            await router.wait_until(lambda: len(router.ended) == 1)
            assert router.ended[0].close_reason == "closed" and not router.ended[0].aborted
            await client.stream.aclose()


async def test_reader_eof_and_reset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
    with trio.fail_after(TIMEOUT):
        async with plain_server(tmp_path) as (listener, router, port):
            first = await plain_login(port)
            await first.stream.send_eof()  # type: ignore[attr-defined]
            await router.wait_until(lambda: len(router.ended) == 1)
            assert router.ended[0].close_reason == "eof" and router.ended[0].aborted
            await first.stream.aclose()

            second = await plain_login(port)
            reset(second.stream)  # type: ignore[arg-type]
            await router.wait_until(lambda: len(router.ended) == 2)
            assert router.ended[1].close_reason == "connection-lost" and router.ended[1].aborted
            await trio.testing.wait_all_tasks_blocked()
            assert listener.statistics().active == 0
    no_tracebacks(caplog)


async def test_idle_timeout_on_a_real_socket(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with plain_server(tmp_path, idle_timeout=0.2) as (_, router, port):
            client = await plain_login(port)
            start = trio.current_time()
            await client.wait_closed()
            assert client.stream_error == "connection-timeout"
            assert trio.current_time() - start >= 0.2
            await router.wait_until(lambda: len(router.ended) == 1)
            await client.stream.aclose()


# ---------------------------------------------------------------------------------- held wakeups


@asynccontextmanager
async def writers(
    n: int, *, small_buffers: bool = False
) -> AsyncIterator[list[tuple[Session, trio.SocketStream]]]:
    """``n`` sessions on loopback sockets with their writers parked: (session, client side)."""
    async with AsyncExitStack() as stack:
        pairs = [await stack.enter_async_context(tcp_pair(small_buffers=small_buffers)) for _ in range(n)]
        async with trio.open_nursery() as nursery:
            sessions = []
            for server, client in pairs:
                session = Session(server, outbox_limit=64 << 20)
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                sessions.append((session, client))
            await trio.testing.wait_all_tasks_blocked()
            yield sessions
            nursery.cancel_scope.cancel()


async def test_held_section_writes_each_outbox_once_without_waking_writers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with writers(3) as sessions:
            expected = [bytearray() for _ in sessions]
            hold_wakeups()
            for i in range(10):  # fan-out: every session gets every stanza
                for k, (session, _) in enumerate(sessions):
                    session.send(message(i))
                    expected[k] += to_bytes(message(i))
            assert writes.calls == []  # nothing written, no writer woken yet
            assert all(session._parked is not None for session, _ in sessions)
            flush_held()
            # written synchronously by flush_held, one write per session, writers still parked
            assert writes.calls == [(len(expected[0]),) * 2] * 3
            assert all(session._parked is not None and not session._outbox for session, _ in sessions)
            for k, (session, client) in enumerate(sessions):
                assert await read_all(client, len(expected[k])) == expected[k]
                assert session.statistics().bytes_out == len(expected[k])
            # outside a held section, sends wake the writer as before
            session, client = sessions[0]
            session.send(message(99))
            assert session._parked is None and session._outbox
            await session.wait_flushed()
            assert await read_all(client, len(to_bytes(message(99)))) == to_bytes(message(99))


async def test_held_partial_write_hands_over_to_the_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = WriteLog(monkeypatch)
    with trio.fail_after(TIMEOUT):
        async with writers(1, small_buffers=True) as [(session, client)]:
            expected = bytearray()
            hold_wakeups()
            for i in range(2000):  # ~2 MiB
                session.send(message(i, size=1000))
                expected += to_bytes(message(i, size=1000))
            flush_held()
            assert writes.partial == 1 and session._parked is None  # the writer has the rest
            for i in range(2000, 2100):  # queued behind the rest, in order
                session.send(message(i, size=1000))
                expected += to_bytes(message(i, size=1000))
            assert await read_all(client, len(expected)) == expected
            await session.wait_flushed()
            assert session.statistics().bytes_out == len(expected) and not session.closed


async def test_held_close_writes_the_footer_and_the_writer_ends() -> None:
    with trio.fail_after(TIMEOUT):
        async with tcp_pair() as (server, client):
            session = Session(server)
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(session.write_loop)
                await trio.testing.wait_all_tasks_blocked()
                hold_wakeups()
                session.send(message(1))
                session.close("conflict")
                flush_held()
                assert session._parked is None  # woken to see the end of the stream
            # the nursery ends by itself: write_loop returned after the footer
            expected = to_bytes(message(1)) + stream_error("conflict") + STREAM_FOOTER
            assert await read_all(client, len(expected)) == expected
    assert session.closed and not session.aborted


async def test_held_write_to_a_reset_peer_aborts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
    with trio.fail_after(TIMEOUT):
        async with writers(2) as [(gone, gone_client), (alive, alive_client)]:
            reset(gone_client)
            await trio.lowlevel.wait_readable(gone._fileno())  # type: ignore[misc]  # RST arrived
            hold_wakeups()
            gone.send(message(1))
            alive.send(message(1))
            flush_held()
            assert gone.aborted and gone.close_reason == "write-failed"
            assert not alive.closed
            assert await read_all(alive_client, len(to_bytes(message(1)))) == to_bytes(message(1))
    no_tracebacks(caplog)


async def test_held_wakeups_are_per_thread_and_only_for_plain_sockets() -> None:
    from tests.c2s.test_c2s_session import RecordingStream

    stream = RecordingStream()
    session = Session(stream)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        await trio.testing.wait_all_tasks_blocked()
        hold_wakeups()
        seen: list[bool] = []
        thread = threading.Thread(target=lambda: seen.append(session_module._held.active))
        thread.start()
        thread.join()
        assert seen == [False]
        session.send(message(1))  # not a SocketStream: the writer is woken at once
        assert session._parked is None
        flush_held()
        await session.wait_flushed()
        assert stream.writes == [to_bytes(message(1))]
        nursery.cancel_scope.cancel()


async def test_listener_delivers_through_held_wakeups_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[Session] = []
    real_flush = Session._flush_held

    def counting_flush(self: Session) -> None:
        flushes.append(self)
        real_flush(self)

    monkeypatch.setattr(Session, "_flush_held", counting_flush)
    with trio.fail_after(TIMEOUT):
        async with plain_server(tmp_path) as (listener, router, port):
            alice = await plain_login(port)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            bob = TestClient(stream, DOMAIN, timeout=TIMEOUT)
            await bob.login("bob", "hunter2", resource="r", starttls=False, mechanism="PLAIN")
            sessions = listener.ctx.sessions

            awaited = False

            def deliver(el: Element, origin: Session | None) -> Any:
                target = sessions.get(JID.parse(el.get("to") or ""))
                assert target is not None
                if awaited and int(el.get("id") or 0) % 7 == 0:  # every 7th: an awaited route

                    async def later() -> None:
                        await trio.lowlevel.checkpoint()
                        target.send(el)

                    return later()
                target.send(el)
                return None

            router.on_route = deliver

            def batch(ids: range) -> bytes:
                return b"".join(
                    to_bytes(Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}/r", "id": str(i)}))
                    for i in ids
                )

            # synchronous routes: alice's reader writes bob's outbox at the end of each read
            await alice.send_raw(batch(range(500)))
            got = [await bob.next_stanza() for _ in range(500)]
            assert [el.get("id") for el in got] == [str(i) for i in range(500)]
            assert all(el.get("from") == f"alice@{DOMAIN}/r" for el in got)
            assert flushes and set(flushes) == {sessions.get(JID.parse(f"bob@{DOMAIN}/r"))}
            # awaited routes in between: flushed before each await, the order still holds
            awaited = True
            await alice.send_raw(batch(range(500, 1000)))
            got = [await bob.next_stanza() for _ in range(500)]
            assert [el.get("id") for el in got] == [str(i) for i in range(500, 1000)]
            await alice.aclose()
            await bob.aclose()


# ------------------------------------------------------------------------------ lazy idle deadline


async def test_lazy_idle_deadline_never_fires_early_and_fires_soon_after(
    tmp_path: Path, autojump_clock: Any
) -> None:
    idle = 60.0
    ctx = await make_ctx(tmp_path, require_encryption=False, idle_timeout=idle)
    listener = C2SListener(ctx, fake_salt_key=b"k" * 32)
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(listener.handle_stream, server_stream, "192.0.2.1:1")
        client = TestClient(client_stream, DOMAIN, timeout=1000)
        await client.login("alice", "secret", resource="r", starttls=False, mechanism="PLAIN")
        # input just often enough, at uneven intervals: the deadline must always have moved
        for gap in [59.9, 5.0, 59.9, 1.0, 0.1, 59.0, 30.0, 3.7, 59.99, 59.99]:
            await trio.sleep(gap)
            await client.send_raw(b" ")
        await trio.testing.wait_all_tasks_blocked()
        assert not client.closed_by_server
        last = trio.current_time()
        await client.wait_closed()
        assert client.stream_error == "connection-timeout"
        assert idle <= trio.current_time() - last <= idle * (1 + listener_module.IDLE_SLACK) + 0.01
        nursery.cancel_scope.cancel()
