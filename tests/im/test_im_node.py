"""The im features on a real node, through TestClient over loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshxmpp import testing
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

ALICE = "alice@example.org"
BOB = "bob@example.org"


@pytest.fixture
async def n() -> AsyncIterator[testing.RunningNode]:
    async with testing.node(domain="example.org") as node:
        await node.add_user("alice")
        await node.add_user("bob")
        yield node


def presence(type_: str | None = None, to: str | None = None, priority: int | None = None) -> Element:
    attrs = {}
    if type_:
        attrs["type"] = type_
    if to:
        attrs["to"] = to
    el = Element("presence", ns.CLIENT, attrs)
    if priority is not None:
        el.add("priority", ns.CLIENT, text=str(priority))
    return el


def roster_query(type_: str, item: dict[str, str] | None = None, groups: tuple[str, ...] = ()) -> Element:
    iq = Element("iq", ns.CLIENT, {"type": type_})
    query = iq.add("query", ns.ROSTER)
    if item is not None:
        it = query.add("item", ns.ROSTER, item)
        for g in groups:
            it.add("group", ns.ROSTER, text=g)
    return iq


def is_push(el: Element) -> bool:
    return el.name == "iq" and el.get("type") == "set" and el.find("query", ns.ROSTER) is not None


def push_item(el: Element) -> Element:
    item = el.find("query", ns.ROSTER).find("item", ns.ROSTER)  # type: ignore[union-attr]
    assert item is not None
    return item


def pres_from(jid: str, type_: str | None = None):  # type: ignore[no-untyped-def]
    return lambda el: el.name == "presence" and el.get("from") == jid and el.get("type") == type_


async def online(
    n: testing.RunningNode, local: str, resource: str, priority: int | None = None
) -> TestClient:
    c = await n.client(local, resource=resource)
    reply = await c.iq(roster_query("get"))
    assert reply.get("type") == "result"
    await c.send(presence(priority=priority))
    await c.ping()
    return c


async def test_roster_set_pushes_to_two_resources(n: testing.RunningNode) -> None:
    a1 = await online(n, "alice", "one")
    a2 = await online(n, "alice", "two")
    reply = await a1.iq(roster_query("set", {"jid": BOB, "name": "Bob"}, ("Friends",)))
    assert reply.get("type") == "result"
    for c in (a1, a2):
        push = await c.wait_for(is_push, what="roster push")
        item = push_item(push)
        assert (item.get("jid"), item.get("name"), item.get("subscription")) == (BOB, "Bob", "none")
        assert push.get("from") in (None, ALICE)
        await c.send(push.reply())  # clients acknowledge pushes; the server must swallow that
    got = await a2.iq(roster_query("get"))
    items = got.find("query", ns.ROSTER).findall("item", ns.ROSTER)  # type: ignore[union-attr]
    assert [(i.get("jid"), [g.text for g in i.findall("group", ns.ROSTER)]) for i in items] == [
        (BOB, ["Friends"])
    ]


async def test_handshake_presence_and_unavailable_on_dropped_connection(n: testing.RunningNode) -> None:
    a1 = await online(n, "alice", "one")
    a2 = await online(n, "alice", "two")
    bob = await online(n, "bob", "desk")
    await a1.send(presence("subscribe", BOB))
    req = await bob.wait_for(
        lambda el: el.name == "presence" and el.get("type") == "subscribe", what="request"
    )
    assert req.get("from") == ALICE
    await bob.send(presence("subscribed", ALICE))
    await a1.wait_for(pres_from(BOB, "subscribed"), what="approval")
    for c in (a1, a2):
        while True:
            push = await c.wait_for(is_push, what="push with to")
            if push_item(push).get("subscription") == "to":
                break
        await c.wait_for(pres_from("bob@example.org/desk"), what="bob's presence")
    # Bob subscribes back; alice approves from one resource.
    await bob.send(presence("subscribe", ALICE))
    await a2.wait_for(lambda el: el.name == "presence" and el.get("type") == "subscribe", what="request")
    await a2.send(presence("subscribed", BOB))
    await bob.wait_for(pres_from(ALICE, "subscribed"), what="approval")
    await bob.wait_for(pres_from("alice@example.org/one"), what="alice/one")
    await bob.wait_for(pres_from("alice@example.org/two"), what="alice/two")
    # Presence update reaches bob.
    await a1.send(presence(priority=7))
    got = await bob.wait_for(pres_from("alice@example.org/one"), what="alice's update")
    assert got.find("priority", ns.CLIENT).text == "7"  # type: ignore[union-attr]
    # Bob's TCP connection drops without a stream close.
    await bob.aclose(clean=False)
    for c in (a1, a2):
        await c.wait_for(pres_from("bob@example.org/desk", "unavailable"), what="bob unavailable")
    await a1.aclose()
    await a2.wait_for(pres_from("alice@example.org/one", "unavailable"), what="alice/one unavailable")
    await a2.aclose()


async def test_offline_message_delivered_once_with_delay(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    msg = Element("message", ns.CLIENT, {"to": ALICE, "type": "chat"})
    msg.add("body", ns.CLIENT, text="while you were out")
    await bob.send(msg)
    await bob.ping()
    assert await n.ctx.storage.offline.count(ALICE) == 1
    alice = await n.client("alice", resource="back")
    await alice.send(presence())
    got = await alice.wait_for(lambda el: el.name == "message", what="offline message")
    assert got.find("body", ns.CLIENT).text == "while you were out"  # type: ignore[union-attr]
    delay = got.find("delay", ns.DELAY)
    assert (
        delay is not None and delay.get("from") == "example.org" and (delay.get("stamp") or "").endswith("Z")
    )
    await alice.aclose()
    again = await n.client("alice", resource="again")
    await again.send(presence())
    await again.ping()
    assert [el for el in again.pending() if el.name == "message"] == []
    assert await n.ctx.storage.offline.count(ALICE) == 0


async def test_offline_quota() -> None:
    async with testing.node({"offline": {"max_per_user": 1}}, domain="example.org") as n:
        await n.add_user("alice")
        await n.add_user("bob")
        bob = await n.client("bob")
        for i in range(2):
            msg = Element("message", ns.CLIENT, {"to": ALICE, "type": "chat", "id": f"m{i}"})
            msg.add("body", ns.CLIENT, text=str(i))
            await bob.send(msg)
        err = await bob.wait_for(
            lambda el: el.name == "message" and el.get("type") == "error", what="quota error"
        )
        assert err.get("id") == "m1"
        assert err.find("error", ns.CLIENT).find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_server_iqs(n: testing.RunningNode) -> None:
    alice = await n.client("alice")
    info = Element("iq", ns.CLIENT, {"type": "get", "to": "example.org"})
    info.add("query", ns.DISCO_INFO)
    reply = await alice.iq(info)
    query = reply.find("query", ns.DISCO_INFO)
    assert query is not None
    ident = query.find("identity", ns.DISCO_INFO)
    assert ident is not None and (ident.get("category"), ident.get("type")) == ("server", "im")
    feats = {f.get("var") for f in query.findall("feature", ns.DISCO_INFO)}
    assert {ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.VERSION, "msgoffline"} <= feats
    await alice.ping()
    ver = Element("iq", ns.CLIENT, {"type": "get", "to": "example.org"})
    ver.add("query", ns.VERSION)
    reply = await alice.iq(ver)
    assert reply.find("query", ns.VERSION).find("name", ns.VERSION).text == "meshxmpp"  # type: ignore[union-attr]
    sess = Element("iq", ns.CLIENT, {"type": "set"})
    sess.add("session", ns.SESSION)
    assert (await alice.iq(sess)).get("type") == "result"
    unknown = Element("iq", ns.CLIENT, {"type": "get", "to": "example.org"})
    unknown.add("query", "urn:example:unknown")
    reply = await alice.iq(unknown)
    assert reply.find("error", ns.CLIENT).find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
    # Disco on another account: not without a subscription.
    other = Element("iq", ns.CLIENT, {"type": "get", "to": BOB})
    other.add("query", ns.DISCO_INFO)
    reply = await alice.iq(other)
    assert reply.find("error", ns.CLIENT).find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
