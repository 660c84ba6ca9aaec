"""RFC 6121 section 8 on one node, through real sessions (TestClient over loopback)."""

from __future__ import annotations

import pytest

from meshxmpp import testing
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element


def message(to: str, body: str, type_: str = "chat") -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": type_})
    el.add("body", ns.CLIENT, text=body)
    return el


def bodies(client: TestClient) -> list[str]:
    out = []
    for el in client.pending():
        if el.name == "message":
            body = el.find("body", ns.CLIENT)
            if body is not None:
                out.append(body.text)
    return out


def is_message(el: Element) -> bool:
    return el.name == "message"


async def presence(client: TestClient, priority: int | None = None) -> None:
    el = Element("presence", ns.CLIENT)
    if priority is not None:
        el.add("priority", ns.CLIENT, text=str(priority))
    await client.send(el)
    await client.ping()


@pytest.fixture
async def two_users():  # type: ignore[no-untyped-def]
    async with testing.node(domain="example.org") as n:
        await n.add_user("alice")
        await n.add_user("bob")
        yield n


async def test_from_is_stamped_by_the_server(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice", resource="a")
    bob = await n.client("bob", resource="b")
    forged = message("bob@example.org/b", "forged")
    forged.set("from", "mallory@example.org/evil")
    await alice.send(forged)
    got = await bob.wait_for(is_message, what="the message")
    assert got.get("from") == "alice@example.org/a"


async def test_full_jid_of_absent_resource_falls_back_to_bare_for_chat(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice", resource="a")
    bob = await n.client("bob", resource="b")
    await presence(bob)
    await alice.send(message("bob@example.org/gone", "fallback"))
    got = await bob.wait_for(is_message, what="re-routed chat")
    assert got.find("body", ns.CLIENT).text == "fallback"  # type: ignore[union-attr]


async def test_iq_to_unavailable_full_jid_is_an_error(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice", resource="a")
    iq = Element("iq", ns.CLIENT, {"type": "get", "to": "bob@example.org/nowhere"})
    iq.add("query", "urn:example:custom")
    reply = await alice.iq(iq)
    assert reply.get("type") == "error"
    error = reply.find("error", ns.CLIENT)
    assert error is not None and error.find("service-unavailable", ns.STANZA_ERRORS) is not None


async def test_iq_between_full_jids_is_delivered(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice", resource="a")
    bob = await n.client("bob", resource="b")
    iq = Element("iq", ns.CLIENT, {"type": "get", "to": "bob@example.org/b", "id": "q1"})
    iq.add("query", "urn:example:custom")
    await alice.send(iq)
    got = await bob.wait_for(lambda el: el.name == "iq", what="the iq")
    assert got.get("from") == "alice@example.org/a" and got.get("id") == "q1"
    await bob.send(got.reply())
    reply = await alice.wait_for(lambda el: el.name == "iq", what="the result")
    assert reply.get("type") == "result" and reply.get("id") == "q1"


async def test_unknown_server_iq_is_service_unavailable(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice")
    iq = Element("iq", ns.CLIENT, {"type": "get", "to": "example.org"})
    iq.add("query", "urn:example:nothing-here")
    reply = await alice.iq(iq)
    assert reply.get("type") == "error"
    assert reply.find("error", ns.CLIENT).find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_malformed_to_is_jid_malformed(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice")
    await alice.send(message("bad@@example.org", "x"))
    err = await alice.wait_for(lambda el: el.get("type") == "error", what="the error")
    assert err.find("error", ns.CLIENT).find("jid-malformed", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_remote_domain_is_unreachable(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice")
    await alice.send(message("someone@elsewhere.example", "x"))
    err = await alice.wait_for(lambda el: el.get("type") == "error", what="the error")
    assert err.find("error", ns.CLIENT).find("remote-server-not-found", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_headline_to_offline_user_is_dropped_not_stored(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice")
    await alice.send(message("bob@example.org", "news", "headline"))
    await alice.ping()
    assert n.ctx.storage is not None
    assert await n.ctx.storage.offline.count("bob@example.org") == 0
    assert [el for el in alice.pending() if el.get("type") == "error"] == []


async def test_bare_jid_chat_with_equal_top_priorities_reaches_both(two_users: testing.RunningNode) -> None:
    n = two_users
    alice = await n.client("alice")
    b1 = await n.client("bob", resource="one")
    b2 = await n.client("bob", resource="two")
    b3 = await n.client("bob", resource="three")
    await presence(b1, 5)
    await presence(b2, 5)
    await presence(b3, -1)
    await alice.send(message("bob@example.org", "both of you"))
    for b in (b1, b2):
        got = await b.wait_for(is_message, what="bare-JID chat")
        assert got.find("body", ns.CLIENT).text == "both of you"  # type: ignore[union-attr]
    await b3.ping()
    assert bodies(b3) == []


async def test_second_login_with_same_full_jid_replaces_the_first(two_users: testing.RunningNode) -> None:
    n = two_users
    first = await n.client("alice", resource="same")
    second = await n.client("alice", resource="same")
    await first.wait_closed()
    assert first.stream_error == "conflict"
    await second.ping()
    await n.session_count("alice@example.org", 1)
