"""Service X as an external component (XEP-0114) of a meshxmpp cluster, over real sockets.

A raw-socket component (tests/component/_raw.py) connects to one node; users log in on every node
with TestClient. The per-sender routing rule for servicex.example.org applies to what it sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.component._raw import RawComponent, stanza

pytestmark = pytest.mark.timeout(90)

DOMAIN = "example.org"
SX = "servicex.example.org"
ALERTS = "alerts.example.org"  # a second component without a sender rule: the default policy
SECRET = "servicex-secret"
CONFIG = {
    "domain": DOMAIN,
    "components": {"port": 0, "service": [{"domain": SX, "secret": SECRET},
                                          {"domain": ALERTS, "secret": "alerts-secret"}]},
    "routing": {"sender": [{"match": SX, "policy": "all-connected"}]},
}


@pytest.fixture
async def c() -> AsyncIterator[testing.Cluster]:
    async with testing.cluster(3, CONFIG) as cl:
        for user in ("alice", "bob", "carol"):
            await cl.add_user(user, "pw")
        yield cl


def port(c: testing.Cluster, i: int) -> int:
    p = c[i].node.component_port
    assert p is not None
    return p


async def component_everywhere(c: testing.Cluster, domain: str, on: int) -> None:
    """Every other node knows that ``domain`` is connected to node ``on``."""
    await c.wait(lambda: all(c.mesh(j).component_nodes(domain) == [f"node{on}"] for j in c.live() if j != on),
                 f"{domain} on node{on} not replicated")


def presence(priority: int) -> Element:
    p = Element("presence", ns.CLIENT)
    p.add("priority", ns.CLIENT, text=str(priority))
    return p


def is_msg(body: str):  # type: ignore[no-untyped-def]
    return lambda el: el.name == "message" and el.findtext("body", ns.CLIENT) == body


async def test_handshake_wrong_secret_and_spoofed_from(c: testing.Cluster) -> None:
    comp = await RawComponent.connect(port(c, 1), SX, SECRET)
    async with comp:
        assert comp.header_attrs["from"] == SX
    async with await RawComponent.open(port(c, 1), SX) as bad:
        with pytest.raises(AssertionError, match="not-authorized"):
            await bad.handshake("not-the-secret")
        assert bad.stream_error == "not-authorized"
    async with await RawComponent.connect(port(c, 1), SX, SECRET) as spoof:
        await spoof.send(stanza("message", {"from": "alice@example.org", "to": "bob@example.org"}, "spoof"))
        await spoof.wait_closed()
        assert spoof.stream_error == "invalid-from"


async def test_per_sender_policy_all_connected_across_nodes(c: testing.Cluster) -> None:
    # bob: phone (5) on node 0, laptop (1) and desk (bound, no presence) on node 1, bot (-1) on node 2
    phone = await c.client(0, "bob", "pw", resource="phone")
    laptop = await c.client(1, "bob", "pw", resource="laptop")
    desk = await c.client(1, "bob", "pw", resource="desk")
    bot = await c.client(2, "bob", "pw", resource="bot")
    for client, prio in ((phone, 5), (laptop, 1), (bot, -1)):
        await client.send(presence(prio))
    sx = await RawComponent.connect(port(c, 0), SX, SECRET)
    alerts = await RawComponent.connect(port(c, 2), ALERTS, "alerts-secret")
    async with phone, laptop, desk, bot, sx, alerts:
        for at, r, prio in ((0, "phone", 5), (1, "laptop", 1), (2, "bot", -1)):
            await c.records(at, f"bob@example.org/{r}", lambda rec, p=prio: rec.available and rec.priority == p)
        await c.session_visible("bob@example.org/desk")
        everyone = (phone, laptop, desk, bot)

        # Service X (rule: all-connected): a chat to the bare JID reaches every bound resource.
        await sx.send(stanza("message", {"from": SX, "to": "bob@example.org", "type": "chat"}, "sx-chat"))
        for client in everyone:
            got = await client.wait_for(is_msg("sx-chat"), what="Service X chat")
            assert got.get("from") == SX
        # ... and a headline too.
        await sx.send(stanza("message", {"from": f"news@{SX}", "to": "bob@example.org", "type": "headline"},
                             "sx-headline"))
        for client in everyone:
            await client.wait_for(is_msg("sx-headline"), what="Service X headline")

        # alerts (default policy top-priority-all): headline to every non-negative available resource,
        # chat to the top priority only.
        await alerts.send(stanza("message", {"from": ALERTS, "to": "bob@example.org", "type": "headline"},
                                 "alert-headline"))
        await alerts.send(stanza("message", {"from": ALERTS, "to": "bob@example.org", "type": "chat"},
                                 "alert-chat"))
        for client in (phone, laptop):
            await client.wait_for(is_msg("alert-headline"), what="alerts headline")
        await phone.wait_for(is_msg("alert-chat"), what="alerts chat")
        await c.settled()
        for client in everyone:
            await client.ping()
        for client in (desk, bot):
            await client.expect_nothing(lambda el: el.name == "message")
        await laptop.expect_nothing(is_msg("alert-chat"))


async def test_message_to_offline_user_is_stored_then_delivered(c: testing.Cluster) -> None:
    async with await RawComponent.connect(port(c, 2), SX, SECRET) as sx:
        await sx.send(stanza("message", {"from": f"bot@{SX}/x", "to": "carol@example.org", "type": "chat"},
                             "while you were away"))
        # a round trip through the node orders the stream: the message was routed (and stored) before
        await sx.iq(Element("iq", ns.COMPONENT, {"type": "get", "from": SX, "to": DOMAIN},
                            [Element("ping", ns.PING)]))
    with trio.fail_after(10):
        while not await c[0].ctx.storage.offline.count("carol@example.org"):  # noqa: ASYNC110
            await trio.sleep(0.02)
    carol = await c.client(1, "carol", "pw", resource="r", presence=True)
    async with carol:
        got = await carol.wait_for(is_msg("while you were away"), what="the stored message")
        assert got.get("from") == f"bot@{SX}/x"
        assert got.find("delay", ns.DELAY) is not None


async def test_iq_round_trips_both_ways_across_nodes(c: testing.Cluster) -> None:
    alice = await c.client(1, "alice", "pw", resource="a", presence=True)
    sx = await RawComponent.connect(port(c, 2), SX, SECRET)
    async with alice, sx:
        await component_everywhere(c, SX, 2)

        # user on node 1 -> component on node 2 -> back
        async def answer() -> None:
            q = await sx.wait_for(lambda el: el.name == "iq" and el.get("type") == "get", what="alice's iq")
            assert q.get("from") == "alice@example.org/a" and q.find("query", ns.VERSION) is not None
            reply = Element("iq", ns.COMPONENT, {"type": "result", "id": q.get("id") or "", "from": SX,
                                                 "to": q.get("from") or ""})
            reply.add("query", ns.VERSION).add("name", ns.VERSION, text="Service X")
            await sx.send(reply)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            result = await alice.iq(Element("iq", ns.CLIENT, {"type": "get", "to": SX},
                                            [Element("query", ns.VERSION)]))
        assert result.get("type") == "result" and result.get("from") == SX
        assert result.find("query", ns.VERSION).findtext("name", ns.VERSION) == "Service X"  # type: ignore[union-attr]

        # component on node 2 -> user on node 1 -> back
        async def user_answers() -> None:
            q = await alice.wait_for(lambda el: el.name == "iq" and el.get("type") == "get", what="Service X's iq")
            assert q.get("from") == f"bot@{SX}/r"
            await alice.send(Element("iq", ns.CLIENT, {"type": "result", "id": q.get("id") or "",
                                                      "to": q.get("from") or ""}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(user_answers)
            result = await sx.iq(Element("iq", ns.COMPONENT, {"type": "get", "from": f"bot@{SX}/r",
                                                              "to": "alice@example.org/a"},
                                         [Element("ping", ns.PING)]))
        assert result.get("type") == "result" and result.get("from") == "alice@example.org/a"

        # the component asks the server itself (the node it is connected to)
        result = await sx.iq(Element("iq", ns.COMPONENT, {"type": "get", "from": SX, "to": DOMAIN},
                                     [Element("ping", ns.PING)]))
        assert result.get("type") == "result"


async def test_component_on_node_2_reached_from_node_1_and_gone(c: testing.Cluster) -> None:
    alice = await c.client(1, "alice", "pw", resource="a", presence=True)
    async with alice:
        disco = Element("iq", ns.CLIENT, {"type": "get", "to": DOMAIN}, [Element("query", ns.DISCO_ITEMS)])
        sx = await RawComponent.connect(port(c, 2), SX, SECRET)
        async with sx:
            await component_everywhere(c, SX, 2)
            items = (await alice.iq(disco.copy())).find("query", ns.DISCO_ITEMS)
            assert SX in [i.get("jid") for i in items.findall("item")]  # type: ignore[union-attr]
            await alice.send(Element("message", ns.CLIENT, {"to": f"room@{SX}", "type": "chat"},
                                     [Element("body", ns.CLIENT, {}, ["hello X"])]))
            got = await sx.wait_for(lambda el: el.name == "message", what="alice's message")
            assert got.get("from") == "alice@example.org/a" and got.get("to") == f"room@{SX}"
            assert got.findtext("body", ns.COMPONENT) == "hello X"
        # disconnected everywhere: the record is gone and a message bounces
        await c.wait(lambda: all(not c.mesh(j).component_nodes(SX) for j in c.live()), "component record gone")
        await alice.send(Element("message", ns.CLIENT, {"to": SX, "type": "chat", "id": "m2"},
                                 [Element("body", ns.CLIENT, {}, ["anyone?"])]))
        err = await alice.wait_for(lambda el: el.name == "message" and el.get("type") == "error", what="bounce")
        assert err.get("from") == SX and err.get("id") == "m2"
        assert err.find("error").find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_component_on_two_nodes(c: testing.Cluster) -> None:
    """Service X connected to nodes 0 and 2: each of them delivers to its own connection, node 1
    forwards to one that has one (the first by name: each node with a connection has its own record
    in the replicated table, docs/components.md "Several nodes")."""
    alice = await c.client(1, "alice", "pw", resource="a", presence=True)
    bob = await c.client(0, "bob", "pw", resource="b", presence=True)
    carol = await c.client(2, "carol", "pw", resource="c", presence=True)
    a = await RawComponent.connect(port(c, 0), SX, SECRET)
    b = await RawComponent.connect(port(c, 2), SX, SECRET)
    async with alice, bob, carol, a, b:
        await c.wait(lambda: c.mesh(1).component_nodes(SX) == ["node0", "node2"], "both records on node1")
        for client, body in ((bob, "from node0"), (carol, "from node2"), (alice, "from node1")):
            await client.send(Element("message", ns.CLIENT, {"to": SX, "type": "chat"},
                                      [Element("body", ns.CLIENT, {}, [body])]))
        await a.wait_for(lambda el: el.findtext("body", ns.COMPONENT) == "from node0", what="node0's local delivery")
        await b.wait_for(lambda el: el.findtext("body", ns.COMPONENT) == "from node2", what="node2's local delivery")
        via = a
        await via.wait_for(lambda el: el.findtext("body", ns.COMPONENT) == "from node1", what="node1's forward")
