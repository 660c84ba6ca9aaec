"""The component listener on one node, over real loopback sockets (raw component, TestClient users)."""

from __future__ import annotations

import pytest
import trio

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.component._raw import RawComponent, header, stanza

DOMAIN = "example.org"
SX = "servicex.example.org"
SECRET = "servicex-secret"
CONFIG = {"components": {"port": 0, "service": [{"domain": SX, "secret": SECRET},
                                                {"domain": "other.example.org", "secret": "other"}]}}


@pytest.fixture
async def node():  # type: ignore[no-untyped-def]
    async with testing.node(CONFIG, domain=DOMAIN) as n:
        await n.add_user("alice", "pw")
        yield n


def port(n: testing.RunningNode) -> int:
    p = n.node.component_port
    assert p is not None
    return p


async def test_no_listener_without_services() -> None:
    async with testing.node(domain=DOMAIN) as n:
        assert n.node.component_port is None
        assert n.node.components is None


async def test_handshake_and_server_header(node: testing.RunningNode) -> None:
    comp = await RawComponent.connect(port(node), SX, SECRET)
    async with comp:
        assert comp.header_attrs.get("from") == SX
        assert comp.stream_id and len(comp.stream_id) >= 16
        stats = node.node.components.statistics()
        assert stats.established == 1 and stats.domains == (SX,)


async def test_two_connections_get_different_stream_ids(node: testing.RunningNode) -> None:
    a = await RawComponent.connect(port(node), SX, SECRET)
    b = await RawComponent.connect(port(node), "other.example.org", "other")
    async with a, b:
        assert a.stream_id != b.stream_id


async def test_wrong_secret_is_not_authorized(node: testing.RunningNode) -> None:
    async with await RawComponent.open(port(node), SX) as comp:
        with pytest.raises(AssertionError, match="not-authorized"):
            await comp.handshake("wrong")
        await comp.wait_closed()
        assert comp.stream_error == "not-authorized"
    assert node.node.components.statistics().handshake_failures == 1
    assert node.node.components.statistics().domains == ()


async def test_unknown_domain_is_host_unknown(node: testing.RunningNode) -> None:
    async with await RawComponent.open(port(node), "nope.example.org") as comp:
        await comp.send_raw(header("nope.example.org"))
        await comp.wait_closed()
        assert comp.stream_error == "host-unknown"


async def test_handshake_timeout() -> None:
    cfg = {**CONFIG, "c2s": {"negotiation_timeout": 0.3}}
    async with testing.node(cfg, domain=DOMAIN) as n, await RawComponent.open(port(n), SX) as comp:
        await comp.send_raw(header(SX))
        await comp.wait_closed()
        assert comp.stream_error == "connection-timeout"


async def test_idle_timeout() -> None:
    cfg = {**CONFIG, "c2s": {"idle_timeout": 0.3}}
    async with testing.node(cfg, domain=DOMAIN) as n:
        comp = await RawComponent.connect(port(n), SX, SECRET)
        async with comp:
            await comp.wait_closed()
            assert comp.stream_error == "connection-timeout"


async def test_spoofed_from_closes_the_stream_and_nothing_is_delivered(node: testing.RunningNode) -> None:
    alice = await node.client("alice", "pw", resource="a", presence=True)
    comp = await RawComponent.connect(port(node), SX, SECRET)
    async with alice, comp:
        await comp.send(stanza("message", {"from": "bob@example.org", "to": "alice@example.org/a"}, "spoof"))
        await comp.wait_closed()
        assert comp.stream_error == "invalid-from"
        await alice.ping()
        await alice.expect_nothing(lambda el: el.name == "message")
    # The connection is gone: the domain is no longer connected.
    with trio.fail_after(5):
        while node.node.components.statistics().domains:  # noqa: ASYNC110 (bounded poll)
            await trio.sleep(0.01)


async def test_oversized_stanza_is_a_policy_violation() -> None:
    cfg = {**CONFIG, "c2s": {"max_stanza_size": 4096}}
    async with testing.node(cfg, domain=DOMAIN) as n:
        comp = await RawComponent.connect(port(n), SX, SECRET)
        async with comp:
            await comp.send(stanza("message", {"from": SX, "to": "alice@example.org"}, "x" * 10000))
            await comp.wait_closed()
            assert comp.stream_error == "policy-violation"


async def test_message_both_ways_and_component_namespace_on_the_wire(node: testing.RunningNode) -> None:
    alice = await node.client("alice", "pw", resource="a", presence=True)
    comp = await RawComponent.connect(port(node), SX, SECRET)
    async with alice, comp:
        msg = Element("message", ns.CLIENT, {"to": "echo@servicex.example.org", "type": "chat", "id": "m1"})
        msg.add("body", ns.CLIENT, text="ping <&>")
        await alice.send(msg)
        got = await comp.wait_for(lambda el: el.name == "message")
        assert got.ns == ns.COMPONENT and got.find("body", ns.COMPONENT).text == "ping <&>"  # type: ignore[union-attr]
        assert got.get("from") == "alice@example.org/a"
        await comp.send(stanza("message", {"from": "echo@servicex.example.org/bot", "to": "alice@example.org/a",
                                           "type": "chat"}, "pong"))
        reply = await alice.wait_for(lambda el: el.name == "message")
        assert reply.ns == ns.CLIENT and reply.findtext("body", ns.CLIENT) == "pong"
        assert reply.get("from") == "echo@servicex.example.org/bot"


async def test_not_connected_component_bounces(node: testing.RunningNode) -> None:
    alice = await node.client("alice", "pw", resource="a", presence=True)
    async with alice:
        reply = await alice.iq(Element("iq", ns.CLIENT, {"type": "get", "to": SX},
                                       [Element("query", ns.DISCO_INFO)]))
        assert reply.get("type") == "error" and reply.get("from") == SX
        assert reply.find("error").find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
        # a domain that is not a component: as before, no server-to-server
        reply = await alice.iq(Element("iq", ns.CLIENT, {"type": "get", "to": "elsewhere.org"},
                                       [Element("query", ns.DISCO_INFO)]))
        assert reply.find("error").find("remote-server-not-found", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_disco_items_list_connected_components(node: testing.RunningNode) -> None:
    alice = await node.client("alice", "pw", resource="a", presence=True)
    async with alice:
        query = Element("iq", ns.CLIENT, {"type": "get", "to": DOMAIN}, [Element("query", ns.DISCO_ITEMS)])
        reply = await alice.iq(query.copy())
        assert SX not in [i.get("jid") for i in reply.find("query", ns.DISCO_ITEMS).findall("item")]  # type: ignore[union-attr]
        async with await RawComponent.connect(port(node), SX, SECRET):
            reply = await alice.iq(query.copy())
            assert SX in [i.get("jid") for i in reply.find("query", ns.DISCO_ITEMS).findall("item")]  # type: ignore[union-attr]


async def test_newest_connection_of_a_domain_gets_the_stanzas(node: testing.RunningNode) -> None:
    alice = await node.client("alice", "pw", resource="a", presence=True)
    old = await RawComponent.connect(port(node), SX, SECRET)
    new = await RawComponent.connect(port(node), SX, SECRET)
    async with alice, old, new:
        await alice.send(Element("message", ns.CLIENT, {"to": SX, "type": "normal"}, [Element("body", ns.CLIENT, {}, ["1"])]))
        await new.wait_for(lambda el: el.name == "message")
        router = node.node.components.router
        newest = router.link(SX)
        await new.aclose()
        with trio.fail_after(5):
            while router.link(SX) is newest:  # noqa: ASYNC110 (bounded poll)
                await trio.sleep(0.01)
        assert router.connected(SX)
        await alice.send(Element("message", ns.CLIENT, {"to": SX, "type": "normal"}, [Element("body", ns.CLIENT, {}, ["2"])]))
        got = await old.wait_for(lambda el: el.name == "message")
        assert got.findtext("body", ns.COMPONENT) == "2"


async def test_node_stop_tells_components_system_shutdown() -> None:
    async with testing.node(CONFIG, domain=DOMAIN) as n:
        comp = await RawComponent.connect(port(n), SX, SECRET)
        async with comp:
            n.node.stop()
            await comp.wait_closed()
            assert comp.stream_error == "system-shutdown"
            await n.node.stopped.wait()
