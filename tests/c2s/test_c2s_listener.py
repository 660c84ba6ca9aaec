"""C2SListener over trio memory streams (with a MockClock: timeouts without real sleeps)."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from meshxmpp.c2s.listener import AuthThrottle, C2SListener, _address
from meshxmpp.c2s.sasl import plain_client
from meshxmpp.c2s.session import Session
from meshxmpp.context import NodeContext
from meshxmpp.jid import JID
from meshxmpp.testing import ClientError, TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived
from meshxmpp.xml.serialize import STREAM_FOOTER, to_bytes
from tests.c2s._helpers import DOMAIN, FakeRouter, auth, bind_iq, header, make_ctx, session_iq

CA = trustme.CA()
CERT = CA.issue_cert(DOMAIN)


def server_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CERT.configure_cert(ctx)
    return ctx


def client_ssl() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    CA.configure_trust(ctx)
    return ctx


class Server:
    def __init__(self, ctx: NodeContext, listener: C2SListener, nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.listener = listener
        self.nursery = nursery
        self.router: FakeRouter = ctx.router  # type: ignore[assignment]

    def connect(self, peer: str = "192.0.2.1:40000", *, lockstep: bool = False) -> TestClient:
        if lockstep:
            client_stream, server_stream = trio.testing.lockstep_stream_pair()
        else:
            client_stream, server_stream = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.listener.handle_stream, server_stream, peer)
        return TestClient(client_stream, DOMAIN, timeout=120)

    async def login(
        self,
        user: str = "alice",
        password: str = "secret",
        resource: str | None = "laptop",
        peer: str = "192.0.2.1:40000",
        **kw: Any,
    ) -> TestClient:
        client = self.connect(peer, lockstep=kw.pop("lockstep", False))
        kw.setdefault("starttls", True)
        await client.login(user, password, resource=resource, **kw)
        return client

    def session(self, jid: str) -> Session:
        session = self.ctx.sessions.get(JID.parse(jid))
        assert session is not None, jid
        return session


@asynccontextmanager
async def serving(tmp_path: Path, *, direct_tls: bool = False, **c2s: Any) -> AsyncIterator[Server]:
    ctx = await make_ctx(tmp_path, **c2s)
    listener = C2SListener(
        ctx, direct_tls=direct_tls, ssl_context=server_ssl(), rng=random.Random(7), fake_salt_key=b"k" * 32
    )
    async with trio.open_nursery() as nursery:
        yield Server(ctx, listener, nursery)
        nursery.cancel_scope.cancel()


def error_condition(el: Element) -> str:
    return next(c.name for c in el.children if isinstance(c, Element))


# ------------------------------------------------------------------------------ login and routing


async def test_starttls_scram_bind_and_route(tmp_path: Path, autojump_clock: Any) -> None:
    bound: list[Session] = []
    async with serving(tmp_path) as srv:
        srv.ctx.hub.hook("session/bound", bound.append)
        client = await srv.login(resource="laptop")
        assert client.jid == JID.parse(f"alice@{DOMAIN}/laptop")
        session = srv.session(f"alice@{DOMAIN}/laptop")
        assert bound == [session]
        assert isinstance(client.stream, trio.SSLStream)
        # a forged 'from' is replaced by the session's full JID
        await client.send(
            Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}", "from": "mallory@evil.example"})
        )
        await srv.router.wait_until(lambda: len(srv.router.routed) == 1)
        el, origin = srv.router.routed[0]
        assert el.get("from") == f"alice@{DOMAIN}/laptop" and origin is session
        stats = session.statistics()
        assert stats.stanzas_in == 1 and stats.bytes_in > 0 and stats.bytes_out > 0
        assert srv.listener.statistics().active == 1


async def test_plain_in_clear_when_encryption_not_required(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, require_encryption=False) as srv:
        client = await srv.login(starttls=False, mechanism="PLAIN")
        assert client.jid is not None


async def test_plain_in_clear_refused_when_required(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = srv.connect()
        features = await client.open_stream()
        assert features.find("mechanisms", ns.SASL) is None
        with pytest.raises(ClientError, match="encryption-required"):
            await client.authenticate("alice", "secret", "PLAIN")
        assert not srv.router.routed and len(srv.ctx.sessions) == 0


async def test_direct_tls(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, direct_tls=True) as srv:
        client = srv.connect()
        client.stream = trio.SSLStream(client.stream, client_ssl(), server_hostname=DOMAIN)
        features = await client.open_stream()
        assert features.find("starttls", ns.TLS) is None  # already encrypted
        mechs = [m.text for m in features.find("mechanisms", ns.SASL).findall("mechanism")]  # type: ignore[union-attr]
        assert "PLAIN" in mechs
        await client.authenticate("alice", "secret", "PLAIN")
        await client.open_stream()
        assert await client.bind("phone") == JID.parse(f"alice@{DOMAIN}/phone")


async def test_legacy_session_iq_is_answered_not_routed(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()
        iq = Element("iq", ns.CLIENT, {"type": "set", "id": "sess"}, [Element("session", ns.SESSION)])
        assert (await client.iq(iq)).attrs["type"] == "result"
        assert srv.router.routed == []


async def test_pipelined_restart_hands_trailing_bytes_over(tmp_path: Path, autojump_clock: Any) -> None:
    """<auth/>, the next stream header and the bind request in one write (XEP-0305 style)."""
    async with serving(tmp_path, require_encryption=False) as srv:
        client = srv.connect()
        await client.open_stream()
        await client.send_raw(auth("PLAIN", plain_client("alice", "secret")) + header() + bind_iq("fast"))
        assert (await client.next_stanza()).name == "success"
        # our writes coalesce too: the new stream's header may have come with <success/>
        trailing = client._parser.restart()
        client._pending += [e.element for e in client._parser.feed(trailing) if isinstance(e, StanzaReceived)]
        features = await client.next_stanza()
        assert features.name == "features"
        result = await client.next_stanza()
        assert result.attrs["type"] == "result"
        assert result.find("bind", ns.BIND).findtext("jid", ns.BIND) == f"alice@{DOMAIN}/fast"  # type: ignore[union-attr]


async def test_stanzas_of_one_read_keep_order_across_awaitable_routes(
    tmp_path: Path, autojump_clock: Any
) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()
        done: list[str] = []

        def on_route(el: Element, origin: Session | None) -> Any:
            if el.get("id") == "1":

                async def slow() -> None:
                    await trio.sleep(5)  # e.g. storage
                    done.append("1")

                return slow()
            done.append(el.get("id") or "")
            return None

        srv.router.on_route = on_route
        data = b"".join(
            to_bytes(Element("message", ns.CLIENT, {"id": str(i), "to": f"bob@{DOMAIN}"})) for i in (1, 2, 3)
        )
        await client.send_raw(data)
        await srv.router.wait_until(lambda: len(done) == 3)
        assert done == ["1", "2", "3"]


# ----------------------------------------------------------------------------------- auth failures


@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", "secret")])
async def test_failed_auth_is_not_authorized_and_slowed(
    tmp_path: Path, autojump_clock: Any, user: str, password: str
) -> None:
    async with serving(tmp_path, auth_failure_delay=1.0, max_auth_attempts=5) as srv:
        client = srv.connect("198.51.100.7:1111")
        await client.open_stream()
        await client.send(Element("starttls", ns.TLS))
        await client.next_stanza()
        client.stream = trio.SSLStream(client.stream, client_ssl(), server_hostname=DOMAIN)
        await client.open_stream()
        delays = []
        for _ in range(3):
            start = trio.current_time()
            with pytest.raises(ClientError, match="not-authorized"):
                await client.authenticate(user, password, "SCRAM-SHA-256")
            delays.append(trio.current_time() - start)
        assert delays == pytest.approx([1.0, 2.0, 4.0])
        assert srv.listener.throttle.failures("198.51.100.7") == 3
        # another address is not slowed by this one's failures
        other = srv.connect("203.0.113.9:2222")
        await other.open_stream()
        await other.send(Element("starttls", ns.TLS))
        await other.next_stanza()
        other.stream = trio.SSLStream(other.stream, client_ssl(), server_hostname=DOMAIN)
        await other.open_stream()
        start = trio.current_time()
        with pytest.raises(ClientError, match="not-authorized"):
            await other.authenticate(user, password, "PLAIN")
        assert trio.current_time() - start == pytest.approx(1.0)
        assert srv.listener.statistics().auth_failures == 4


async def test_too_many_failures_end_the_stream(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, require_encryption=False, max_auth_attempts=2) as srv:
        client = srv.connect()
        await client.open_stream()
        for _ in range(2):
            with pytest.raises(ClientError, match="not-authorized"):
                await client.authenticate("alice", "nope", "PLAIN")
        await client.wait_closed()
        assert client.stream_error == "policy-violation"


def test_throttle_forgets_and_stays_bounded() -> None:
    now = [0.0]
    throttle = AuthThrottle(base_delay=1.0, clock=lambda: now[0], window=100.0, max_delay=8.0, max_entries=3)
    assert [throttle.failed("a") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    now[0] = 500.0
    assert throttle.failures("a") == 0 and throttle.failed("a") == 1.0
    for addr in "bcde":
        throttle.failed(addr)
    assert len(throttle._failures) <= 3
    assert throttle.failed("x" * 5) == 1.0
    for _ in range(2000):  # no overflow however long an attack goes on
        assert throttle.failed("z") <= 8.0


def test_address_of_peer() -> None:
    assert _address("192.0.2.1:5222") == "192.0.2.1"
    assert _address("[2001:db8::1]:5222") == "2001:db8::1"
    assert _address("test") == "test"


# ------------------------------------------------------------------------------- bind conflicts


async def test_same_full_jid_replaces_the_old_session(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        first = await srv.login(resource="desk")
        old = srv.session(f"alice@{DOMAIN}/desk")
        second = await srv.login(resource="desk", peer="192.0.2.2:40001")
        new = srv.session(f"alice@{DOMAIN}/desk")
        assert new is not old
        await first.wait_closed()
        assert first.stream_error == "conflict"
        await srv.router.wait_until(lambda: old in srv.router.ended)
        # the old connection's end does not unbind the new session
        assert srv.ctx.sessions.get(JID.parse(f"alice@{DOMAIN}/desk")) is new
        assert not new.closed
        await second.send(Element("presence", ns.CLIENT))
        await srv.router.wait_until(lambda: len(srv.router.routed) == 1)
        assert srv.router.routed[0][1] is new


# ----------------------------------------------------------------------------- ends of streams


async def test_clean_close(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()
        session = srv.session(f"alice@{DOMAIN}/laptop")
        await client.send_raw(STREAM_FOOTER)
        await client.wait_closed()
        assert client.stream_error is None
        await srv.router.wait_until(lambda: session in srv.router.ended)
        assert len(srv.ctx.sessions) == 0 and session.closed and not session.aborted


async def test_dropped_connection_ends_the_session(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()
        session = srv.session(f"alice@{DOMAIN}/laptop")
        await client.stream.aclose()  # no footer, no TLS close_notify: the TCP connection just goes
        await srv.router.wait_until(lambda: session in srv.router.ended)
        assert session.aborted and len(srv.ctx.sessions) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert srv.listener.statistics().active == 0


async def test_cancelled_connection_still_ends_its_session(tmp_path: Path, autojump_clock: Any) -> None:
    ctx = await make_ctx(tmp_path)
    listener = C2SListener(ctx, ssl_context=server_ssl(), fake_salt_key=b"k" * 32)
    router: FakeRouter = ctx.router  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        nursery.start_soon(listener.handle_stream, server_stream, "192.0.2.1:1")
        client = TestClient(client_stream, DOMAIN)
        await client.login("alice", "secret", resource="r")
        session = ctx.sessions.get(JID.parse(f"alice@{DOMAIN}/r"))
        nursery.cancel_scope.cancel()  # e.g. the node shuts down
    assert session is not None and router.ended == [session]
    assert listener.statistics().active == 0


async def test_idle_timeout(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, idle_timeout=60.0) as srv:
        client = await srv.login()
        start = trio.current_time()
        await client.wait_closed(timeout=1000)
        assert client.stream_error == "connection-timeout"
        assert 60.0 <= trio.current_time() - start < 70.0


async def test_whitespace_keepalives_keep_the_stream_open(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, idle_timeout=60.0) as srv:
        client = await srv.login()
        session = srv.session(f"alice@{DOMAIN}/laptop")
        for _ in range(5):
            await trio.sleep(45)
            await client.send_raw(b" \n")
        assert not session.closed
        await client.wait_closed(timeout=1000)
        assert client.stream_error == "connection-timeout"


async def test_negotiation_timeout(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, negotiation_timeout=30.0) as srv:
        client = srv.connect()
        start = trio.current_time()
        await client.wait_closed(timeout=1000)  # we never even sent a header
        assert client.stream_error == "connection-timeout"
        assert 30.0 <= trio.current_time() - start < 40.0


async def test_parse_error_before_header_opens_the_stream_first(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = srv.connect()
        await client.send_raw(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x/>")
        await client.wait_closed()
        assert client.stream_error == "restricted-xml"


async def test_parse_error_after_bind(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()
        session = srv.session(f"alice@{DOMAIN}/laptop")
        await client.send_raw(b"<message><body>a</bod></message>")
        await client.wait_closed()
        assert client.stream_error == "not-well-formed"
        await srv.router.wait_until(lambda: session in srv.router.ended)


async def test_stanza_size_limit_is_raised_after_auth(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, max_stanza_size_preauth=4096, max_stanza_size=65536) as srv:
        client = await srv.login()
        big = Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}"})
        big.add("body", text="x" * 20_000)
        await client.send(big)
        await srv.router.wait_until(lambda: len(srv.router.routed) == 1)

        early = srv.connect()
        await early.open_stream()
        await early.send(big)
        await early.wait_closed()
        assert early.stream_error == "policy-violation"


async def test_stanza_before_auth_is_not_authorized(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = srv.connect()
        await client.open_stream()
        await client.send(Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}"}))
        await client.wait_closed()
        assert client.stream_error == "not-authorized"
        assert srv.router.routed == []


async def test_data_after_starttls_is_not_processed(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path) as srv:
        client = srv.connect()
        await client.open_stream()
        await client.send_raw(
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='bob@example.org'/>"
        )
        await client.wait_closed()  # dropped at once: not even <proceed/> goes out
        assert [el.name for el in client.pending()] in ([], ["proceed"])
        assert srv.router.routed == []


# --------------------------------------------------------------------------------- misbehaviour


async def test_router_bug_is_logged_once_and_answered(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(tmp_path) as srv:
        client = await srv.login()

        def broken(el: Element, origin: Session | None) -> None:
            raise RuntimeError("boom")

        srv.router.on_route = broken
        caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
        await client.send(Element("message", ns.CLIENT, {"to": f"bob@{DOMAIN}"}))
        await client.wait_closed()
        assert client.stream_error == "internal-server-error"
        await trio.testing.wait_all_tasks_blocked()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is not None
        # and the listener keeps serving
        srv.router.on_route = None
        assert (await srv.login(resource="again")).jid is not None


async def test_network_errors_are_logged_without_traceback(
    tmp_path: Path, autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="meshxmpp.c2s")
    async with serving(tmp_path) as srv:
        client = srv.connect()
        await client.open_stream()
        await client.send(Element("starttls", ns.TLS))
        await client.next_stanza()
        await client.send_raw(b"this is not a TLS client hello" * 10)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_slow_reader_is_disconnected(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, outbox_limit=20_000) as srv:
        client = await srv.login(lockstep=True)
        session = srv.session(f"alice@{DOMAIN}/laptop")
        # the client stops reading; the server keeps producing
        note = Element("message", ns.CLIENT, {"to": f"alice@{DOMAIN}/laptop", "from": f"bob@{DOMAIN}/x"})
        note.add("body", text="y" * 1000)
        for _ in range(100):
            session.send(note)
            await trio.sleep(0.01)
            if session.closed:
                break
        assert session.aborted and session.close_reason == "slow-consumer"
        await srv.router.wait_until(lambda: session in srv.router.ended)
        assert len(srv.ctx.sessions) == 0
        del client


async def test_handle_stream_never_raises_on_garbage(tmp_path: Path, autojump_clock: Any) -> None:
    rng = random.Random(1)
    async with serving(tmp_path) as srv:
        for i in range(20):
            client_stream, server_stream = trio.testing.memory_stream_pair()
            garbage = header() + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
            await client_stream.send_all(garbage)
            await client_stream.send_eof()
            # runs to completion, whatever the bytes
            with trio.fail_after(100):
                await srv.listener.handle_stream(server_stream, f"192.0.2.{i}:1")


async def test_session_iq_before_bind_is_refused(tmp_path: Path, autojump_clock: Any) -> None:
    async with serving(tmp_path, require_encryption=False) as srv:
        client = srv.connect()
        await client.open_stream()
        await client.authenticate("alice", "secret", "PLAIN")
        await client.open_stream()
        await client.send_raw(session_iq())
        await client.wait_closed()
        assert client.stream_error == "not-authorized"
