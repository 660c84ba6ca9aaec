"""Three real nodes in-process on loopback, one shared SQLite database, clients spread over them (issue 5).

Each node runs the whole stack (c2s, router, im, MeshService over authenticated TCP links on loopback)
with the ``test`` timing profile. The waits are bounded polls of the mesh state (`Cluster.wait`) or waits
for stanzas with deadlines; nothing sleeps to let something happen.
"""

from __future__ import annotations

import time

import pytest

from meshxmpp.testing import TestClient
from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

pytestmark = pytest.mark.timeout(120)

D = "localhost"


def chat(to: str, body: str, type_: str = "chat") -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": type_})
    el.add("body", ns.CLIENT, text=body)
    return el


def presence(to: str | None = None, type_: str | None = None, priority: int | None = None) -> Element:
    el = Element("presence", ns.CLIENT, {})
    if to:
        el.set("to", to)
    if type_:
        el.set("type", type_)
    if priority is not None:
        el.add("priority", ns.CLIENT, text=str(priority))
    return el


def body_is(text: str):  # type: ignore[no-untyped-def]
    return lambda el: el.name == "message" and el.findtext("body", ns.CLIENT) == text


def is_presence(frm: str, type_: str | None = None):  # type: ignore[no-untyped-def]
    return lambda el: el.name == "presence" and el.get("from") == frm and el.get("type") == type_


async def online(c: Cluster, i: int, user: str, resource: str, priority: int = 0) -> TestClient:
    client = await c.client(i, user, resource=resource)
    await client.send(presence(priority=priority))
    await client.ping()
    await c.records(i, f"{user}@{D}/{resource}", lambda r: r.available and r.priority == priority)
    return client


async def befriend(a: TestClient, b: TestClient) -> None:
    """a and b subscribe to each other (both ways), through the server, wherever they are."""
    assert a.jid is not None and b.jid is not None
    for x, y in ((a, b), (b, a)):
        await x.send(presence(str(y.jid.bare), "subscribe"))
        await y.wait_for(lambda el, x=x: el.name == "presence" and el.get("type") == "subscribe"
                         and el.get("from") == str(x.jid.bare), what="subscription request")
        await y.send(presence(str(x.jid.bare), "subscribed"))
        await x.wait_for(lambda el, y=y: el.name == "presence" and el.get("type") is None
                         and el.get("from") == str(y.jid), what="presence after approval")


async def test_messages_iq_presence_roster_across_nodes() -> None:
    async with cluster(3) as c:
        for u in ("alice", "bob"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 2, "bob", "phone", priority=5)
        # Full and bare JID messages, both ways.
        await alice.send(chat(f"bob@{D}", "to bare"))
        await bob.wait_for(body_is("to bare"), what="bare message across nodes")
        await alice.send(chat(f"bob@{D}/phone", "to full"))
        got = await bob.wait_for(body_is("to full"), what="full message across nodes")
        assert got.get("from") == f"alice@{D}/desk"
        await bob.send(chat(f"alice@{D}/desk", "reply"))
        await alice.wait_for(body_is("reply"), what="reply across nodes")
        # An iq to a full JID on another node is answered by that client.
        ping = Element("iq", ns.CLIENT, {"type": "get", "to": f"bob@{D}/phone", "id": "p1"})
        ping.add("ping", ns.PING)
        await alice.send(ping)
        req = await bob.wait_for(lambda el: el.name == "iq" and el.get("id") == "p1", what="forwarded iq")
        assert req.get("from") == f"alice@{D}/desk"
        await bob.send(req.reply())
        res = await alice.wait_for(lambda el: el.name == "iq" and el.get("id") == "p1", what="iq result")
        assert res.get("type") == "result" and res.get("from") == f"bob@{D}/phone"
        # An iq to a full JID bound nowhere: service-unavailable from the server.
        ping2 = Element("iq", ns.CLIENT, {"type": "get", "to": f"bob@{D}/nowhere", "id": "p2"})
        ping2.add("ping", ns.PING)
        err = await alice.iq(ping2)
        assert err.get("type") == "error" and err.find("error") is not None
        # Subscriptions both ways through different nodes, roster pushes, presence.
        await befriend(alice, bob)
        roster = Element("iq", ns.CLIENT, {"type": "get", "id": "r1"})
        roster.add("query", ns.ROSTER)
        for client, other in ((alice, "bob"), (bob, "alice")):
            result = await client.iq(roster)
            items = {i.get("jid"): i.get("subscription") for i in result.find("query", ns.ROSTER).findall("item")}
            assert items == {f"{other}@{D}": "both"}
        # A second resource of bob on node 1 sees bob/phone's presence (own resources across nodes),
        # and alice sees the new resource come online.
        bob2 = await c.client(1, "bob", resource="laptop")
        await bob2.send(presence(priority=1))
        await bob2.wait_for(is_presence(f"bob@{D}/phone"), what="own other resource's presence")
        await alice.wait_for(is_presence(f"bob@{D}/laptop"), what="contact's new resource")
        # bob goes offline on node 2: alice and bob/laptop see it exactly once.
        await bob.aclose()
        await alice.wait_for(is_presence(f"bob@{D}/phone", "unavailable"), what="unavailable across nodes")
        await bob2.wait_for(is_presence(f"bob@{D}/phone", "unavailable"), what="unavailable to own resource")
        for client in (alice, bob2):
            await client.aclose()


async def test_kill_detects_purges_announces_once_and_loses_nothing() -> None:
    async with cluster(3) as c:
        for u in ("alice", "carol", "bob"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        carol = await online(c, 1, "carol", "desk")
        bob_doomed = await online(c, 2, "bob", "phone", priority=5)
        await befriend(alice, bob_doomed)
        await befriend(carol, bob_doomed)
        await c.settled()
        alice.pending().clear()
        carol.pending().clear()
        killed_at = time.monotonic()
        c.kill(2)
        # Messages sent to bob's bare JID after the kill: each accepted (the iq round trip after it
        # orders it), and each must end up delivered to bob or stored offline.
        sent = []
        for n in range(20):
            body = f"after kill {n}"
            await alice.send(chat(f"bob@{D}", body))
            sent.append(body)
            await alice.ping()
        await c.wait_dead(2, timeout=10)
        detected = time.monotonic() - killed_at
        assert detected < 5.0, f"death detected after {detected:.2f} s"
        for client in (alice, carol):
            unavailable = await client.wait_for(is_presence(f"bob@{D}/phone", "unavailable"),
                                                what="unavailable for the lost resource", timeout=10)
            assert unavailable.get("to") == str(client.jid.bare)
        await c.settled()
        # Exactly one each: another round trip through both nodes, then nothing more came.
        for client in (alice, carol):
            await client.ping()
            assert [el for el in client.pending() if is_presence(f"bob@{D}/phone", "unavailable")(el)] == []
        # No bounce reached alice for any message.
        assert [el for el in alice.pending() if el.get("type") == "error"] == []
        # bob comes back on a surviving node: every message after the kill is there, once.
        bob = await c.client(1, "bob", resource="phone2")
        await bob.send(presence(priority=1))
        bodies = []
        for _ in sent:
            el = await bob.wait_for(lambda el: el.name == "message" and el.findtext("body", ns.CLIENT) is not None,
                                    what=f"offline messages ({len(bodies)} of {len(sent)} so far)")
            bodies.append(el.findtext("body", ns.CLIENT))
        assert sorted(bodies) == sorted(sent)
        await bob.ping()
        assert [el for el in bob.pending() if el.name == "message"] == []
        for client in (alice, carol, bob):
            await client.aclose()


@pytest.mark.parametrize("policy", ["top-priority-all", "all-connected"])
async def test_messages_in_flight_to_a_killed_node_are_rerouted_once(policy: str) -> None:
    """bob has a resource on node 1 (priority 1) and one on node 2 (priority 5); node 2 dies with the
    stanzas node 0 forwarded to it unacked. top-priority-all sent them to bob/two only: they are routed
    again, to bob/one. all-connected also gave bob/one its own copy: nothing is duplicated."""
    async with cluster(3, routing={"policy": policy}) as c:
        for u in ("alice", "bob"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        bob1 = await online(c, 1, "bob", "one", priority=1)
        await online(c, 2, "bob", "two", priority=5)
        # Nodes 0 and 2 stop hearing each other before the kill, so what node 0 forwards there stays
        # unacked and comes back when node 2 is declared dead. (Were node 2 to take a stanza and die
        # before its ack got out, node 0 would route it again too: forwarding is at least once,
        # docs/mesh.md.)
        c.partition({0, 1}, {1, 2})
        sent = [f"m{n}" for n in range(5)]
        for body in sent:
            await alice.send(chat(f"bob@{D}", body))
        await alice.ping()
        assert c.mesh(0).core.forwarder.in_flight("node2") == 5
        c.kill(2)
        await c.wait_dead(2)
        got = []
        for _ in sent:
            el = await bob1.wait_for(lambda el: el.name == "message", what=f"messages on bob/one ({got})")
            got.append(el.findtext("body", ns.CLIENT))
        assert sorted(got) == sent
        await c.settled()
        await bob1.ping()
        assert [el for el in bob1.pending() if el.name == "message"] == []
        assert [el for el in alice.pending() if el.get("type") == "error"] == []
        await alice.aclose()
        await bob1.aclose()


async def test_partition_heal_converges_with_one_conflict() -> None:
    async with cluster(3) as c:
        for u in ("alice", "dave", "erin"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        erin = await online(c, 2, "erin", "desk")
        await befriend(alice, erin)
        await c.settled()
        c.partition({0, 1}, {2})
        await c.wait(lambda: all(c.mesh(i).core.membership.member("node2").state == "dead" for i in (0, 1))
                     and c.mesh(2).core.membership.member("node0").state == "dead",
                     "the partition was not detected")
        # Under load: alice keeps sending to a user on her side while dave logs in on both sides with the
        # same full JID (node 2's login is the newer one).
        dave_a = await c.client(1, "dave", resource="r")
        await dave_a.send(presence())
        dave_b = await c.client(2, "dave", resource="r")
        await dave_b.send(presence())
        await dave_b.ping()
        for n in range(10):
            await alice.send(chat(f"dave@{D}/r", f"during {n}"))
        # erin (node 2) was told once that alice (node 0) is gone, by node 2, the only survivor she sees.
        await erin.wait_for(is_presence(f"alice@{D}/desk", "unavailable"), what="alice unavailable to erin")
        erin.pending().clear()
        heal_at = time.monotonic()
        c.heal()
        await c.converged(timeout=15)
        healed = time.monotonic() - heal_at
        assert healed < 10, healed
        # Exactly one session remains: the newer bind (node 2); the other got <conflict/>.
        await dave_a.wait_closed(timeout=10)
        assert dave_a.stream_error == "conflict"
        await dave_b.ping()
        assert not dave_b.closed_by_server
        for i in c.live():
            records = [r for r in c.mesh(i).core.directory.of(dave_b.jid.bare)]
            assert [(str(r.jid), r.node) for r in records] == [(f"dave@{D}/r", "node2")], i
        # Every live session is in every table.
        for i in c.live():
            assert c[i].ctx.router.session_at(alice.jid) is not None
        # The node that said alice was gone says she is back: erin sees her presence again, and alice
        # sees erin's (node 0 announced erin unavailable during the partition).
        await erin.wait_for(is_presence(f"alice@{D}/desk"), what="alice available again after the heal")
        await alice.wait_for(is_presence(f"erin@{D}/desk"), what="erin available again after the heal")
        # Messages now reach the surviving session across the healed link.
        await alice.send(chat(f"dave@{D}/r", "after heal"))
        await dave_b.wait_for(body_is("after heal"), what="message after the heal")
        for client in (alice, dave_b, erin):
            await client.aclose()


async def test_node_with_a_wrong_secret_cannot_join() -> None:
    async with cluster(2) as c:
        c._overrides = {"mesh": {"secret": "not-the-cluster-secret", "join_timeout": 1.0}}
        intruder = await c.start(2)  # dials node 0 with the wrong secret; serves alone after join_timeout
        await c.wait(lambda: c.mesh(0).transport.statistics().auth_failures >= 1, "no failed handshake logged")
        # Several probe and push-pull intervals later, nobody has learnt anything from the other side.
        await c.wait(lambda: intruder.node.mesh.core.membership.statistics().push_pulls_sent >= 3,
                     "the intruder stopped trying")
        assert [m.name for m in c.mesh(0).core.membership.members()] == ["node0", "node1"]
        assert [m.name for m in c.mesh(1).core.membership.members()] == ["node0", "node1"]
        assert [m.name for m in intruder.node.mesh.core.membership.members()] == ["node2"]
        assert not intruder.node.mesh.joined.is_set()
        assert c.mesh(0).transport.peers() == ("node1",)
        await c.stop(2)


async def test_restart_faster_than_detection_announces_lost_sessions_once() -> None:
    """node 2 crashes and is back (same name and ports, new epoch) before anyone declares it dead: its
    old sessions are gone all the same, and alice hears that bob left exactly once."""
    async with cluster(3) as c:
        for u in ("alice", "bob"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 2, "bob", "phone")
        await befriend(alice, bob)
        await c.settled()
        alice.pending().clear()
        old_epoch = c.mesh(2).epoch
        c.kill(2)
        await c.start(2)
        await c.wait(lambda: c.mesh(0).core.directory.digest().versions["node2"].epoch > old_epoch,
                     "node 2's new life not seen by node 0")
        await alice.wait_for(is_presence(f"bob@{D}/phone", "unavailable"), what="bob/phone unavailable")
        await c.converged()
        await c.settled()
        await alice.ping()
        assert [el for el in alice.pending() if is_presence(f"bob@{D}/phone", "unavailable")(el)] == []
        for i in c.live():
            assert c.mesh(i).core.directory.records_of("node2") == []
        await alice.aclose()


async def test_carbons_and_resource_conflict_across_nodes() -> None:
    async with cluster(2) as c:
        for u in ("alice", "bob"):
            await c.add_user(u)
        desk = await online(c, 0, "alice", "desk")
        phone = await online(c, 1, "alice", "phone")
        bob = await online(c, 1, "bob", "x")
        for client in (desk, phone):
            enable = Element("iq", ns.CLIENT, {"type": "set"})
            enable.add("enable", ns.CARBONS)
            assert (await client.iq(enable)).get("type") == "result"
        await c.records(1, f"alice@{D}/phone", lambda r: r.carbons)
        await c.records(0, f"alice@{D}/desk", lambda r: r.carbons)
        # bob -> alice/desk (node 0): alice/phone (node 1) gets a <received/> copy.
        await bob.send(chat(f"alice@{D}/desk", "to desk"))
        await desk.wait_for(body_is("to desk"), what="the message itself")
        copy = await phone.wait_for(lambda el: el.find("received", ns.CARBONS) is not None, what="received carbon")
        assert copy.get("to") == f"alice@{D}/phone"
        # alice/desk -> bob: alice/phone gets a <sent/> copy across nodes.
        await desk.send(chat(f"bob@{D}/x", "from desk"))
        await bob.wait_for(body_is("from desk"), what="message to bob")
        await phone.wait_for(lambda el: el.find("sent", ns.CARBONS) is not None, what="sent carbon")
        # A second login with alice/desk's full JID on node 1: the newer one wins, node 0's gets <conflict/>.
        desk2 = await c.client(1, "alice", resource="desk")
        await desk.wait_closed(timeout=10)
        assert desk.stream_error == "conflict"
        await c.wait(lambda: c.mesh(0).remote_get(desk2.jid) is not None and c[0].ctx.sessions.get(desk2.jid) is None,
                     "node 0 still holds alice/desk")
        await bob.send(chat(f"alice@{D}/desk", "to the new desk"))
        await desk2.wait_for(body_is("to the new desk"), what="message to the winning session")
        for client in (phone, bob, desk2):
            await client.aclose()


async def test_cluster_over_mutual_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("meshxmpp-node")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "node.pem"))
    tls = {"tls_ca": str(tmp_path / "ca.pem"), "tls_cert": str(tmp_path / "node.pem"),
           "tls_key": str(tmp_path / "node.key")}
    async with cluster(2, {"mesh": tls}) as c:
        for u in ("alice", "bob"):
            await c.add_user(u)
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 1, "bob", "phone")
        await alice.send(chat(f"bob@{D}", "over tls"))
        await bob.wait_for(body_is("over tls"), what="message over a TLS mesh link")
        assert c.mesh(0).transport.statistics().auth_failures == 0
        for client in (alice, bob):
            await client.aclose()
