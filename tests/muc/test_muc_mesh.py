"""Rooms in a mesh of three real nodes (in-process, loopback, one shared SQLite): placement, forwarding,
multi-session nicks across nodes, and a room whose node dies (docs/muc.md)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from meshxmpp.jid import JID
from meshxmpp.muc.service import owner_of, service_of
from meshxmpp.testing import TestClient
from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

pytestmark = pytest.mark.timeout(120)

D = "localhost"
MUC = f"conference.{D}"
CONF = {"muc": {"domain": MUC}}
NODES = ["node0", "node1", "node2"]


def room_owned_by(node: str, prefix: str = "room") -> str:
    """A room JID that rendezvous hashing places on ``node`` when all three nodes are alive."""
    for i in range(1000):
        room = f"{prefix}{i}@{MUC}"
        if owner_of(room, NODES) == node:
            return room
    raise AssertionError("no such room")


def join(room_nick: str) -> Element:
    el = Element("presence", ns.CLIENT, {"to": room_nick})
    el.add("x", ns.MUC)
    return el


def groupchat(room: str, body: str) -> Element:
    el = Element("message", ns.CLIENT, {"to": room, "type": "groupchat"})
    el.add("body", ns.CLIENT, text=body)
    return el


def codes(el: Element) -> set[str]:
    x = el.find("x", ns.MUC_USER)
    return {s.get("code") or "" for s in x.findall("status", ns.MUC_USER)} if x is not None else set()


def pres(frm: str, type_: str | None = None, code: str | None = None) -> Callable[[Element], bool]:
    return lambda el: (el.name == "presence" and el.get("from") == frm and el.get("type") == type_
                       and (code is None or code in codes(el)))


def msg(frm: str, body: str) -> Callable[[Element], bool]:
    return lambda el: el.name == "message" and el.get("from") == frm and el.findtext("body") == body


def subject_msg(el: Element) -> bool:
    return el.name == "message" and el.find("subject") is not None


async def online(c: Cluster, i: int, user: str, resource: str) -> TestClient:
    client = await c.client(i, user, resource=resource)
    await client.send(Element("presence", ns.CLIENT))
    await client.ping()
    await c.session_visible(f"{user}@{D}/{resource}")
    return client


async def create(c: TestClient, room: str, nick: str) -> None:
    await c.send(join(f"{room}/{nick}"))
    own = await c.wait_for(pres(f"{room}/{nick}", code="110"), what="own presence")
    assert "201" in codes(own), own
    await c.wait_for(subject_msg, what="subject")
    iq = Element("iq", ns.CLIENT, {"type": "set", "to": room})
    iq.add("query", ns.MUC_OWNER).add("x", ns.DATA_FORMS, {"type": "submit"})
    assert (await c.iq(iq)).get("type") == "result"


async def enter(c: TestClient, room: str, nick: str) -> Element:
    await c.send(join(f"{room}/{nick}"))
    own = await c.wait_for(pres(f"{room}/{nick}", code="110"), what=f"{nick}'s own presence")
    await c.wait_for(subject_msg, what="subject")
    return own


def held_by(c: Cluster, room: str) -> list[str]:
    jid = JID.parse(room)
    out = []
    for i in c.live():
        service = service_of(c[i].ctx)
        if service is not None and jid in service.rooms:
            out.append(f"node{i}")
    return out


async def test_occupants_on_three_nodes_and_a_multi_session_nick() -> None:
    async with cluster(3, CONF) as c:
        for u in ("alice", "bob", "carol", "dave"):
            await c.add_user(u)
        room = room_owned_by("node1")
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 1, "bob", "desk")
        carol = await online(c, 2, "carol", "desk")
        await create(alice, room, "alice")
        assert held_by(c, room) == ["node1"], "held by its owner only, not by the creator's node"
        await enter(bob, room, "bob")
        await enter(carol, room, "carol")
        for client in (alice, bob):
            await client.wait_for(pres(f"{room}/carol"), what="carol joins")

        await carol.send(groupchat(room, "from node2"))
        for client in (alice, bob, carol):
            await client.wait_for(msg(f"{room}/carol", "from node2"), what="groupchat across nodes")

        # one user, one nick, resources on two nodes
        d0 = await online(c, 0, "dave", "zero")
        d2 = await online(c, 2, "dave", "two")
        await enter(d0, room, "dave")
        for client in (alice, bob):
            await client.wait_for(pres(f"{room}/dave"), what="dave joins")
        await enter(d2, room, "dave")
        await bob.send(groupchat(room, "hi dave"))
        for client in (d0, d2, alice):
            await client.wait_for(msg(f"{room}/bob", "hi dave"), what="both of dave's resources get it")
        await alice.ping()
        await bob.ping()
        # the others saw one occupant: one available presence from room/dave each
        for client in (alice, bob):
            assert [el for el in client.pending() if pres(f"{room}/dave")(el)] == []
        # one resource leaves: the occupant stays
        await d2.send(Element("presence", ns.CLIENT, {"to": f"{room}/dave", "type": "unavailable"}))
        await d2.wait_for(pres(f"{room}/dave", "unavailable", code="110"), what="d2's own leave")
        await alice.send(groupchat(room, "still there?"))
        await d0.wait_for(msg(f"{room}/alice", "still there?"), what="d0 still in")
        await alice.wait_for(msg(f"{room}/alice", "still there?"), what="echo")
        assert [el for el in alice.pending() if pres(f"{room}/dave", "unavailable")(el)] == []
        # the last resource leaves: now the others see dave go
        await d0.send(Element("presence", ns.CLIENT, {"to": f"{room}/dave", "type": "unavailable"}))
        await alice.wait_for(pres(f"{room}/dave", "unavailable"), what="dave leaves")
        for client in (alice, bob, carol, d0, d2):
            await client.aclose()


async def test_owner_node_dies_room_moves_and_its_occupants_are_announced_once() -> None:
    async with cluster(3, CONF) as c:
        for u in ("alice", "bob", "carol"):
            await c.add_user(u)
        room = room_owned_by("node2")
        heir = owner_of(room, ["node0", "node1"])
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 1, "bob", "desk")
        carol = await online(c, 2, "carol", "doomed")
        await create(alice, room, "alice")
        await enter(bob, room, "bob")
        await enter(carol, room, "carol")
        await alice.send(groupchat(room, "before"))
        for client in (alice, bob, carol):
            await client.wait_for(msg(f"{room}/alice", "before"), what="before the kill")
        assert held_by(c, room) == ["node2"]
        await c.settled()
        for i in (0, 1, 2):
            service = service_of(c[i].ctx)
            assert service is not None
            await service.flush()

        killed_at = time.monotonic()
        c.kill(2)
        # alice talks at once: her message waits in the mesh (forwarded to the dead node, re-routed
        # when its death is known) and reaches bob through the room's new node.
        await alice.send(groupchat(room, "during"))
        await bob.wait_for(msg(f"{room}/alice", "during"), what="message sent right after the kill", timeout=15)
        for client in (alice, bob):
            gone = await client.wait_for(pres(f"{room}/carol", "unavailable", code="333"),
                                         what="carol announced gone", timeout=15)
            assert gone.get("to") == str(client.jid)
        moved = time.monotonic() - killed_at
        assert moved < 10.0, f"the room took {moved:.1f} s to move"
        assert held_by(c, room) == [heir]

        # the survivors keep talking, both ways
        await bob.send(groupchat(room, "after"))
        for client in (alice, bob):
            await client.wait_for(msg(f"{room}/bob", "after"), what="after the move")
        # exactly once: another round trip through the room, then nothing more about carol
        await alice.send(groupchat(room, "sync"))
        for client in (alice, bob):
            await client.wait_for(msg(f"{room}/alice", "sync"), what="round trip")
            await client.ping()
            assert [el for el in client.pending() if pres(f"{room}/carol", "unavailable")(el)] == []
        # the mirror says who holds the room now, without carol
        service = service_of(c[0 if heir == "node0" else 1].ctx)
        assert service is not None
        await service.flush()
        record = await c[0].ctx.storage.rooms.get(room)
        assert record is not None and record.node == heir
        assert sorted(o["nick"] for o in record.occupants) == ["alice", "bob"]
        for client in (alice, bob):
            await client.aclose()
