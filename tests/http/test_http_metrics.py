"""GET /metrics: the exposition (escaping, both formats) checked with prometheus-client's parsers, and
the values a real node and a 2-node cluster report after real traffic."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_prometheus

from meshxmpp import testing
from meshxmpp.http import api, metrics
from meshxmpp.http.api import Request
from meshxmpp.http.metrics import Family
from meshxmpp.routing import policy
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.http._support import TOKEN, request


def samples(text: str, *, openmetrics: bool = False) -> dict[str, Any]:
    """{family name: {sample name + sorted labels: value}}; the parser raises on malformed text."""
    out: dict[str, Any] = {}
    parser = parse_openmetrics if openmetrics else parse_prometheus
    for family in parser(text):
        out[family.name] = {"type": family.type, "help": family.documentation,
                            "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}}
    return out


def value(parsed: dict[str, Any], family: str, **labels: str) -> float:
    fam = parsed[f"meshxmpp_{family}"]
    name = f"meshxmpp_{family}_total" if fam["type"] == "counter" else f"meshxmpp_{family}"
    return float(fam["samples"][(name, tuple(sorted(labels.items())))])


# -- exposition -----------------------------------------------------------------------------------------

AWKWARD = 'back\\slash "quoted"\nnew line, ünïcode'
FAMILIES = [
    Family("weird", "gauge", f"Help with {AWKWARD}.", (((("node", AWKWARD), ("k", "")), 1.5),)),
    Family.by("things", "counter", "Things.", "kind", {"a": 3, "b": 0}),
    Family.one("big", "gauge", "Floats and infinities.", float("inf")),
]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_render_round_trips_through_the_parsers(openmetrics: bool) -> None:
    text = metrics.render(FAMILIES, openmetrics=openmetrics)
    parsed = samples(text, openmetrics=openmetrics)
    assert parsed["meshxmpp_weird"]["help"] == f"Help with {AWKWARD}."
    assert parsed["meshxmpp_weird"]["samples"] == {("meshxmpp_weird", (("k", ""), ("node", AWKWARD))): 1.5}
    assert parsed["meshxmpp_things"]["type"] == "counter"
    assert parsed["meshxmpp_things"]["samples"] == {("meshxmpp_things_total", (("kind", "a"),)): 3,
                                                   ("meshxmpp_things_total", (("kind", "b"),)): 0}
    assert value(parsed, "big") == float("inf")
    assert text.endswith("# EOF\n") is openmetrics


def test_prometheus_format_names_counters_with_total() -> None:
    text = metrics.render(FAMILIES)
    assert "# TYPE meshxmpp_things_total counter\n" in text
    assert 'meshxmpp_weird{node="back\\\\slash \\"quoted\\"\\nnew line, ünïcode",k=""} 1.5\n' in text
    om = metrics.render(FAMILIES, openmetrics=True)
    assert "# TYPE meshxmpp_things counter\n" in om


@pytest.mark.parametrize(("accept", "openmetrics"), [
    ("", False), ("*/*", False), ("text/plain", False),
    ("application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
    ("application/openmetrics-text;q=0", False),
])
def test_format_follows_accept(accept: str, openmetrics: bool) -> None:
    assert metrics.wants_openmetrics(accept) is openmetrics


# -- a real node --------------------------------------------------------------------------------------


def is_message(el: Element) -> bool:
    return el.name == "message" and el.findtext("body", ns.CLIENT) is not None


def chat(to: str, body: str) -> Element:
    return Element("message", ns.CLIENT, {"to": to, "type": "chat"}, [Element("body", ns.CLIENT, children=[body])])


async def scrape(address: tuple[str, int], *, openmetrics: bool = False) -> dict[str, Any]:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    answer = await request(address, "GET", "/metrics", headers=headers)
    assert answer.status == 200, answer
    want = metrics.OPENMETRICS if openmetrics else metrics.PROMETHEUS
    assert answer.headers["content-type"] == want
    return samples(answer.body.decode("utf-8"), openmetrics=openmetrics)


def wire(running: Iterable[Any]) -> None:
    """Give each node's HTTP server its Node, as `HttpServer(node=...)` would (for the c2s families)."""
    for n in running:
        if n.node.http.node is None:
            n.node.http.node = n.node


async def test_node_metrics_after_traffic() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        wire([n])
        await n.add_user("alice")
        await n.add_user("bob")
        await n.add_user("carol")
        with pytest.raises(Exception):  # noqa: B017 - a failed login, whatever the client raises
            await n.client("alice", "wrong password")
        alice = await n.client("alice", presence=True)
        bob = await n.client("bob", presence=True)
        async with alice, bob:
            await alice.send(chat("bob@localhost", "hi"))
            await bob.wait_for(is_message)
            await alice.send(chat("carol@localhost", "offline one"))
            await alice.send(chat("carol@localhost", "offline two"))
            await alice.ping()
            parsed = await scrape(n.http_address)
            om = await scrape(n.http_address, openmetrics=True)
    assert value(parsed, "sessions") == 2
    assert value(parsed, "mesh_sessions", node="local") == 2
    assert value(parsed, "c2s_connections", listener="starttls") == 2
    assert value(parsed, "c2s_connections_accepted", listener="starttls") == 3
    assert value(parsed, "c2s_auth_failures") == 1
    assert value(parsed, "stanzas_routed", rule="message/offline/store") == 2
    rules = {dict(labels)["rule"] for _, labels in parsed["meshxmpp_stanzas_routed"]["samples"]}
    assert rules == set(policy.RULES_BY_NAME)  # every rule listed, unused ones at 0
    assert sum(v for (name, _), v in parsed["meshxmpp_stanzas_routed"]["samples"].items()) >= 3
    assert value(parsed, "offline_handoffs", type="chat") == 2
    assert value(parsed, "offline_handoffs", type="normal") == 0
    assert value(parsed, "http_requests") >= 1
    info = parsed["meshxmpp_info"]["samples"]
    ((_, labels),) = info
    assert dict(labels)["domain"] == "localhost"
    assert "meshxmpp_mesh_members" not in parsed  # no mesh on this node
    assert om.keys() == parsed.keys()
    assert value(om, "c2s_auth_failures") == 1


async def test_metrics_needs_no_token() -> None:
    async with testing.node({"http": {"admin_token": TOKEN}}) as n:
        response = await api.handle(n.ctx, Request("GET", "/metrics", {}, {}, b"", "203.0.113.5"))
    assert response.status == 200
    assert "meshxmpp_sessions 0\n" in response.body.decode()


async def test_the_node_wires_its_listeners_into_the_metrics() -> None:
    async with testing.node() as n:
        parsed = await scrape(n.http_address)
        n.node.http.node = None  # an HttpServer built without the node reports no listener families
        bare = await scrape(n.http_address)
    assert "meshxmpp_c2s_connections" in parsed
    assert "meshxmpp_c2s_connections" not in bare
    assert value(parsed, "sessions") == 0


async def test_cluster_metrics() -> None:
    async with testing.cluster(2) as c:
        wire(c[i] for i in c.live())
        await c.add_user("bob")
        await c.add_user("alice")
        bob = await c.client(1, "bob", resource="phone", presence=True)
        alice = await c.client(0, "alice", presence=True)
        async with bob, alice:
            await c.session_visible("bob@localhost/phone")
            await alice.send(chat("bob@localhost", "across"))
            await bob.wait_for(is_message)
            p0 = await scrape(c[0].http_address)
            p1 = await scrape(c[1].http_address, openmetrics=True)
    for parsed in (p0, p1):
        assert value(parsed, "mesh_members", state="alive") == 2
        assert value(parsed, "mesh_members", state="dead") == 0
        assert value(parsed, "mesh_joined") == 1
        assert value(parsed, "mesh_sessions", node="node0") == 1
        assert value(parsed, "mesh_sessions", node="node1") == 1
        assert value(parsed, "mesh_links") >= 1
        assert value(parsed, "mesh_probes") >= 0
    assert value(p0, "mesh_forwards_accepted") >= 1
    assert value(p1, "mesh_forwards_received") >= 1
    assert value(p0, "mesh_forwards_in_flight") >= 0
    assert sum(p0["meshxmpp_stanzas_routed"]["samples"].values()) >= 1
