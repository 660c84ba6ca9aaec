"""slixmpp, an independent client library, against a real node over loopback sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from meshxmpp.testing import ThreadNode, run_in_thread
from tests.interop.slix import Slix

pytestmark = pytest.mark.timeout(90)

TLS = {"c2s": {"require_encryption": True}}


@pytest.fixture
def server() -> Iterator[ThreadNode]:
    with run_in_thread(TLS, domain="example.org") as n:
        n.add_user("alice", "alice-pw")
        n.add_user("bob", "bob-pw")
        yield n


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_scram_sha_256_login_after_starttls(server: ThreadNode) -> None:
    async def scenario() -> None:
        c = Slix("alice@example.org/laptop", "alice-pw", mech="SCRAM-SHA-256")
        await c.connect(server.c2s_address)
        assert c.xmpp.is_connected()
        # slixmpp negotiated TLS before SASL and bound the requested resource.
        assert c.jid == "alice@example.org/laptop"
        assert c.xmpp.features.issuperset({"starttls", "mechanisms", "bind"}) or "bind" in c.xmpp.features
        await c.ping_server()
        await c.disconnect()

    run(scenario())


def test_wrong_password_and_unknown_user_rejected_alike(server: ThreadNode) -> None:
    async def scenario() -> None:
        wrong = Slix("alice@example.org/x", "not-her-password")
        unknown = Slix("nobody@example.org/x", "whatever")
        assert not await wrong.try_login(server.c2s_address)
        assert not await unknown.try_login(server.c2s_address)
        wrong.abort()
        unknown.abort()

    run(scenario())


def test_roster_subscription_presence_and_unavailable(server: ThreadNode) -> None:
    async def scenario() -> None:
        a1 = Slix("alice@example.org/one", "alice-pw")
        a2 = Slix("alice@example.org/two", "alice-pw")
        bob = Slix("bob@example.org/desk", "bob-pw")
        for c in (a1, a2, bob):
            await c.connect(server.c2s_address)
            await c.xmpp.get_roster()
            c.xmpp.send_presence()
        # Subscription handshake: alice asks bob; slixmpp's bob auto-authorises and subscribes back.
        a1.xmpp.send_presence(pto="bob@example.org", ptype="subscribe")
        await bob.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == "alice@example.org",
                                "subscribe from alice")
        await a1.wait_presence(lambda p: p["type"] == "subscribed", "subscribed from bob")
        # Roster push to both of alice's interested resources.
        for c in (a1, a2):
            async with asyncio.timeout(15):
                while c.xmpp.client_roster["bob@example.org"]["subscription"] not in ("to", "both"):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # bounded poll of slixmpp's roster
        # Presence broadcast: alice's resources see bob available, bob sees alice's resources.
        for c in (a1, a2):
            await c.wait_presence(lambda p: p["from"] == "bob@example.org/desk" and p["type"] == "available",
                                  "bob available")
        await bob.wait_presence(lambda p: p["from"].bare == "alice@example.org" and p["type"] == "available",
                                "alice available")
        # Unavailable on disconnect, also on a dropped TCP connection.
        bob.abort()
        for c in (a1, a2):
            await c.wait_presence(lambda p: p["from"] == "bob@example.org/desk" and p["type"] == "unavailable",
                                  "bob unavailable after a dropped connection")
        for c in (a1, a2):
            await c.disconnect()

    run(scenario())


def test_full_jid_reaches_only_that_resource(server: ThreadNode) -> None:
    async def scenario() -> None:
        a1 = Slix("alice@example.org/one", "alice-pw")
        a2 = Slix("alice@example.org/two", "alice-pw")
        bob = Slix("bob@example.org/desk", "bob-pw")
        for c in (a1, a2, bob):
            await c.connect(server.c2s_address)
            c.xmpp.send_presence()
        bob.xmpp.send_message(mto="alice@example.org/two", mbody="for two only", mtype="chat")
        msg = await a2.next_message()
        assert msg["body"] == "for two only"
        await a1.ping_server()
        assert [m["body"] for m in a1.drain_messages()] == []
        for c in (a1, a2, bob):
            await c.disconnect()

    run(scenario())


def test_bare_jid_reaches_top_priority_never_negative(server: ThreadNode) -> None:
    async def scenario() -> None:
        hi1 = Slix("alice@example.org/hi1", "alice-pw")
        hi2 = Slix("alice@example.org/hi2", "alice-pw")
        low = Slix("alice@example.org/low", "alice-pw")
        neg = Slix("alice@example.org/neg", "alice-pw")
        bob = Slix("bob@example.org/desk", "bob-pw")
        for c, prio in ((hi1, 10), (hi2, 10), (low, 1), (neg, -1), (bob, 0)):
            await c.connect(server.c2s_address)
            c.xmpp.send_presence(ppriority=prio)
        for c in (hi1, hi2, low, neg):
            await c.ping_server()  # the presence (with its priority) has been processed
        bob.xmpp.send_message(mto="alice@example.org", mbody="to the bare jid", mtype="chat")
        for c in (hi1, hi2):
            assert (await c.next_message())["body"] == "to the bare jid"
        for c in (low, neg):
            await c.ping_server()
            assert [m["body"] for m in c.drain_messages()] == []
        for c in (hi1, hi2, low, neg, bob):
            await c.disconnect()

    run(scenario())


def test_offline_message_delivered_exactly_once(server: ThreadNode) -> None:
    async def scenario() -> None:
        bob = Slix("bob@example.org/desk", "bob-pw")
        await bob.connect(server.c2s_address)
        bob.xmpp.send_message(mto="alice@example.org", mbody="while you were out", mtype="chat")
        await bob.ping_server()
        alice = Slix("alice@example.org/back", "alice-pw")
        await alice.connect(server.c2s_address)
        alice.xmpp.send_presence()
        msg = await alice.next_message()
        assert msg["body"] == "while you were out"
        assert msg["delay"]["stamp"] is not None
        await alice.disconnect()
        # Next login: nothing again.
        again = Slix("alice@example.org/again", "alice-pw")
        await again.connect(server.c2s_address)
        again.xmpp.send_presence()
        await again.ping_server()
        await again.ping_server()
        assert [m["body"] for m in again.drain_messages()] == []
        await again.disconnect()
        await bob.disconnect()

    run(scenario())


def test_message_to_unknown_user_is_service_unavailable(server: ThreadNode) -> None:
    async def scenario() -> None:
        bob = Slix("bob@example.org/desk", "bob-pw")
        await bob.connect(server.c2s_address)
        bob.xmpp.send_message(mto="nobody@example.org", mbody="hello?", mtype="chat")
        err = await bob.next_message(lambda m: m["type"] == "error")
        assert err["error"]["condition"] == "service-unavailable"
        assert err["from"] == "nobody@example.org"
        await bob.disconnect()

    run(scenario())
