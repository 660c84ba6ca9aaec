"""Graceful shutdown (issue 8 item 3): ``Node.stop()`` is what SIGTERM and SIGINT do.

A stopping node closes its client listeners, lets each reader finish the stanza in hand, ends the
sessions, tells the clients (``<system-shutdown/>``, or ``<see-other-host/>`` naming a live node with
``[shutdown] redirect``), flushes the outboxes, leaves the mesh, and is done within ``[shutdown]
timeout``. Waits are bounded (stanzas with deadlines, `Cluster.wait`); nothing sleeps to let
something happen.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import trio

from meshxmpp.jid import JID
from meshxmpp.testing import TestClient, cluster, node
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

pytestmark = pytest.mark.timeout(90)

D = "localhost"


def chat(to: str, body: str, id_: str | None = None) -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": "chat"})
    if id_ is not None:
        el.set("id", id_)
    el.add("body", ns.CLIENT, text=body)
    return el


def ping(id_: str) -> Element:
    return Element("iq", ns.CLIENT, {"type": "get", "id": id_, "to": D}, children=[Element("ping", ns.PING)])


async def stream_error(client: TestClient) -> tuple[str, str]:
    """The stream error the server closed with: (condition, its text content)."""
    el = await client.wait_for(lambda e: e.name == "error" and e.ns == ns.STREAMS, what="a stream error")
    cond = next(c for c in el.children if isinstance(c, Element) and c.ns == ns.STREAM_ERRORS)
    return cond.name, cond.text


async def connect(address: str, user: str, **kw: Any) -> TestClient:
    host, _, port = address.rpartition(":")
    return await TestClient.connect(host, int(port), f"{user}@{D}", "secret", starttls=False, **kw)


async def stop_timed(the_node: Any, limit: float) -> float:
    """Stop ``the_node`` gracefully; how long it took (fails past ``limit``)."""
    began = trio.current_time()
    the_node.stop()
    with trio.fail_after(limit):
        await the_node.stopped.wait()
    return trio.current_time() - began


async def test_stop_sends_system_shutdown_and_closes_the_listener_first() -> None:
    async with node({"shutdown": {"timeout": 3.0}}) as n:
        for u in ("alice", "bob"):
            await n.add_user(u)
        alice = await n.client("alice", presence=True)
        bob = await n.client("bob", presence=True)
        await alice.send(chat(f"bob@{D}", "before the stop"))
        await alice.ping()
        host, port = n.c2s_address
        elapsed = await stop_timed(n.node, 3.0 + 1.0)
        assert elapsed < 3.0
        # What was queued before the stream error arrives first, then the error, then the footer.
        await bob.wait_message("before the stop")
        for client in (alice, bob):
            assert await stream_error(client) == ("system-shutdown", "")
            await client.wait_closed()
            await client.aclose()
        assert n.node.c2s is not None and n.node.c2s.not_accepting.is_set()
        with pytest.raises(OSError):
            await trio.open_tcp_stream(host, port)


async def test_a_connection_in_negotiation_is_told_too() -> None:
    async with node() as n:
        stream = await trio.open_tcp_stream(*n.c2s_address)
        raw = TestClient(stream, D)
        await raw.open_stream()  # features received: not authenticated, not bound
        await stop_timed(n.node, 5.0)
        assert await stream_error(raw) == ("system-shutdown", "")
        await raw.aclose()


async def test_clients_that_do_not_read_do_not_hold_the_node(caplog: pytest.LogCaptureFixture) -> None:
    """bob never reads: the node's writer for him is stuck on a full socket, and the node still stops
    within [shutdown] timeout, saying what it cut short."""
    timeout = 1.5
    async with node({"shutdown": {"timeout": timeout}}) as n:
        for u in ("alice", "bob", "carol"):
            await n.add_user(u)
        alice = await n.client("alice")
        bob = await n.client("bob", presence=True)
        carol = await n.client("carol", presence=True)
        session = n.ctx.sessions.of(JID.parse(f"bob@{D}"))[0]
        big = "x" * 60000
        for k in range(2000):  # bounded: loopback buffers are a few MB at most
            await alice.send(chat(f"bob@{D}", f"{k} {big}"))
            await alice.ping()  # routed: it is in bob's socket buffer or his outbox
            if session.statistics().queued:
                break
        else:
            pytest.fail("bob's socket buffers never filled")
        assert not session.closed  # still under [c2s] outbox_limit
        caplog.set_level(logging.INFO, logger="meshxmpp.node")
        elapsed = await stop_timed(n.node, timeout + 1.0)
        assert elapsed < timeout + 0.5
        assert await stream_error(carol) == ("system-shutdown", "")
        assert any("cut short" in r.getMessage() and "not flushed" in r.getMessage() for r in caplog.records)
        for client in (alice, bob, carol):
            await client.aclose(clean=False)


async def test_redirect_names_a_live_node_and_clients_carry_on_there() -> None:
    async with cluster(2, {"shutdown": {"redirect": True}}) as c:
        for u in ("alice", "bob", "carol"):
            await c.add_user(u)
        other = f"127.0.0.1:{c[0].node.c2s_port}"
        # Node 1 knows where node 0's clients connect (published at start, replicated).
        await c.wait(lambda: c.mesh(1).c2s_addresses() == {"node0": other}, "node 0's c2s address not seen")
        carol = await c.client(0, "carol", presence=True)
        alice = await c.client(1, "alice", presence=True, resource="a")
        bob = await c.client(1, "bob", presence=True, resource="b")
        await alice.ping()
        await bob.ping()
        await c.stop(1)
        for client in (alice, bob):
            assert await stream_error(client) == ("see-other-host", other)
            await client.aclose()
        # They reconnect to the node named and messages flow.
        alice = await connect(other, "alice", presence=True, resource="a")
        bob = await connect(other, "bob", presence=True, resource="b")
        await alice.send(chat(f"bob@{D}", "hello again"))
        await bob.wait_message("hello again", from_=f"alice@{D}/a")
        await carol.send(chat(f"alice@{D}", "hi alice"))
        await alice.wait_message("hi alice")
        for client in (alice, bob, carol):
            await client.aclose()


async def test_without_a_live_node_a_redirecting_node_says_system_shutdown() -> None:
    async with cluster(1, {"shutdown": {"redirect": True}}) as c:
        await c.add_user("alice")
        alice = await c.client(0, "alice")
        await c.stop(0)
        assert await stream_error(alice) == ("system-shutdown", "")
        await alice.aclose()


async def test_messages_sent_right_before_the_stop_are_delivered_or_stored_once() -> None:
    """alice (node 1) sends to bob (online on node 0), carol (online on node 1, the stopping node)
    and dave (offline), then node 1 stops at once, without waiting for the forwards. Every message
    alice got accepted (a ping after it was answered) arrives exactly once, online or from offline
    storage at the next login; those that were in the air arrive at most once."""
    async with cluster(2) as c:
        for u in ("alice", "bob", "carol", "dave"):
            await c.add_user(u)
        bob = await c.client(0, "bob", presence=True)
        carol = await c.client(1, "carol", presence=True)
        alice = await c.client(1, "alice")
        await bob.ping()
        await carol.ping()
        await c.session_visible(f"{carol.jid}")
        rcpts = ("bob", "carol", "dave")
        accepted: list[str] = []
        sent: list[str] = []
        for k in range(60):
            mid = f"m{k}"
            await alice.send(chat(f"{rcpts[k % 3]}@{D}", mid, mid))
            sent.append(mid)
        await alice.send(ping("p1"))
        await alice.wait_for(lambda el: el.get("id") == "p1", what="ping reply")
        accepted += sent
        # More in the air when the stop begins: sent, not acknowledged.
        for k in range(60, 120):
            await alice.send(chat(f"{rcpts[k % 3]}@{D}", f"m{k}", f"m{k}"))
            sent.append(f"m{k}")
        await c.stop(1)
        got: Counter[str] = Counter()
        # bob stays online on node 0: a ping shows everything routed to him so far has arrived.
        await c.settled()
        await bob.ping()
        got.update(el.get("id") or "" for el in bob.pending() if el.name == "message")
        # carol was on the stopping node: what reached her outbox came before the stream error.
        assert (await stream_error(carol))[0] == "system-shutdown"
        got.update(el.get("id") or "" for el in carol.pending() if el.name == "message")
        await carol.aclose()
        await alice.aclose(clean=False)
        # The rest is in offline storage, handed over at the next login (before the pong).
        for user in ("carol", "dave"):
            client = await c.client(0, user, presence=True)
            await client.ping()
            got.update(el.get("id") or "" for el in client.pending() if el.name == "message")
            await client.aclose()
        twice = {m: n for m, n in got.items() if n > 1}
        assert not twice, f"delivered more than once: {twice}"
        missing = [m for m in accepted if got[m] != 1]
        assert not missing, f"accepted but never delivered: {missing}"
        assert set(got) <= set(sent)
        await bob.aclose()
