"""Session's write path: coalesced writes, serialise once, bounded outbox, deadlines."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshxmpp.c2s.session import Session, SessionStatistics
from meshxmpp.jid import JID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.serialize import STREAM_FOOTER, stream_error, to_bytes


class RecordingStream(trio.abc.SendStream):
    """Records each send_all; ``block`` makes it hang like a socket whose peer does not read."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.block = False
        self.broken = False
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.broken:
            raise trio.BrokenResourceError("peer reset")
        if self.block:
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def message(body: str = "hi") -> Element:
    el = Element("message", ns.CLIENT, {"to": "bob@example.org/phone", "from": "alice@example.org/laptop"})
    el.add("body", text=body)
    return el


async def test_sends_in_one_tick_leave_in_one_write() -> None:
    stream = RecordingStream()
    session = Session(stream)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(100):
            session.send(message(str(i)))
        await session.wait_flushed()
        assert len(stream.writes) == 1
        assert stream.writes[0] == b"".join(to_bytes(message(str(i))) for i in range(100))
        # the next burst is another single write
        session.send(message("a"))
        session.send_bytes(b" ")
        await session.wait_flushed()
        assert len(stream.writes) == 2 and stream.writes[1] == to_bytes(message("a")) + b" "
        stats = session.statistics()
        assert isinstance(stats, SessionStatistics)
        assert stats.stanzas_out == 101 and stats.bytes_out == sum(map(len, stream.writes))
        assert stats.queued == 0 and not stats.closed
        nursery.cancel_scope.cancel()


async def test_fan_out_serialises_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshxmpp.c2s import session as session_module

    calls = []
    real = session_module.to_bytes

    def counting(el: Element, default_ns: str = ns.CLIENT) -> bytes:
        calls.append(el._bytes is None)  # True: this call really serialises
        return real(el, default_ns)

    monkeypatch.setattr(session_module, "to_bytes", counting)
    sessions = [Session(RecordingStream()) for _ in range(5)]
    el = message()
    for s in sessions:
        s.send(el)
    assert calls == [True, False, False, False, False]
    assert all(s._outbox == to_bytes(el) for s in sessions)


async def test_close_writes_error_and_footer_then_ends() -> None:
    stream = RecordingStream()
    session = Session(stream)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        session.send(message())
        session.close("conflict", "Replaced")
        assert session.closed
        session.send(message("dropped"))  # after close: ignored
        session.close("policy-violation")  # second close: ignored
    assert (
        b"".join(stream.writes) == to_bytes(message()) + stream_error("conflict", "Replaced") + STREAM_FOOTER
    )
    assert session.close_reason == "conflict" and not session.aborted


async def test_slow_consumer_is_disconnected_not_buffered() -> None:
    stream = RecordingStream()
    session = Session(stream, outbox_limit=10_000)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        session.send(message())
        await trio.testing.wait_all_tasks_blocked()
        stream.block = True  # the client stops reading: the next write hangs
        session.send(message())
        await trio.testing.wait_all_tasks_blocked()
        for i in range(1000):
            session.send(message(str(i)))
            if session.closed:
                break
        assert session.aborted and session.close_reason == "slow-consumer"
        assert session.statistics().queued == 0  # the backlog is dropped, not kept
    assert nursery.cancel_scope.cancelled_caught


async def test_write_timeout_aborts(autojump_clock: trio.testing.MockClock) -> None:
    stream = RecordingStream()
    session = Session(stream, write_timeout=30.0)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        stream.block = True
        nursery.start_soon(session.write_loop)
        start = trio.current_time()
        session.send(message())
        await trio.sleep(60)
    assert session.aborted and session.close_reason == "write-timeout"
    assert 30.0 <= trio.current_time() - start <= 60.0


async def test_broken_transport_aborts_quietly() -> None:
    stream = RecordingStream()
    stream.broken = True
    session = Session(stream)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        session.send(message())
    assert session.aborted and session.close_reason == "write-failed"


async def test_wait_flushed_and_replace_stream() -> None:
    first, second = RecordingStream(), RecordingStream()
    session = Session(first)
    async with trio.open_nursery() as nursery:
        session.cancel_scope = nursery.cancel_scope
        nursery.start_soon(session.write_loop)
        session.send_bytes(b"<proceed/>")
        await session.wait_flushed()
        session.replace_stream(second)
        session.send_bytes(b"<features/>")
        await session.wait_flushed()
        nursery.cancel_scope.cancel()
    assert first.writes == [b"<proceed/>"] and second.writes == [b"<features/>"]


def test_bind_sets_identity() -> None:
    session = Session(RecordingStream(), peer="10.0.0.1:5000")
    assert not session.bound
    jid = JID.parse("alice@example.org/laptop")
    session.bind(jid, now=123.0)
    assert session.bound and session.jid == jid and session.bare == jid.bare
    assert session.jid_str == "alice@example.org/laptop" and session.bound_at == 123.0
    assert not session.available and session.priority == 0 and session.directed == set()
    assert "alice@example.org/laptop" in repr(session)
