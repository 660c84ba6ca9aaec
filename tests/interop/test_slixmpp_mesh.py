"""slixmpp clients spread over three in-process nodes: the same results as on one node (issue 5).

The routing-policy scenario of test_slixmpp_policies.py runs again with bob's three devices on other
nodes than alice (phone and laptop on node 1, tablet on node 2, alice on node 0), and must give exactly
the recipients written down there for one node. Every connection negotiates STARTTLS and SCRAM-SHA-256.

Across nodes, one extra wait is needed where one node is ordered by a single connection: after a device
sends presence, the test waits until alice's node holds the replicated record (priority and
availability), and after alice sends, until every forwarded stanza was acked (it is then in the
device's outbox, so the device's next ping answer comes after it). The most-available tie-break reads the
last activity that the directory replicates, stamped when a presence is handled: presences are sent one
after another, in DEVICES order, as the one-node test's pings order activity.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshxmpp.jid import JID
from meshxmpp.testing import ThreadCluster, run_cluster_in_thread
from tests.interop.slix import Slix
from tests.interop.test_slixmpp_policies import (
    ALL,
    CHAT,
    CONFIGS,
    DEVICES,
    DOMAIN,
    HEADLINE,
    POLICIES,
    expected,
)

pytestmark = pytest.mark.timeout(120)

TLS: dict[str, Any] = {"c2s": {"require_encryption": True}}
NODE_OF = {"phone": 1, "tablet": 2, "laptop": 1}
ALICE_NODE = 0


def replicated(c: ThreadCluster, device: str, priority: int) -> None:
    """Block until alice's node sees bob/<device> available with ``priority``."""
    full = JID.parse(f"bob@{DOMAIN}/{device}")
    c.call(c.running.wait, lambda: (r := c.running.mesh(ALICE_NODE).remote_get(full)) is not None
           and r.available and r.priority == priority, f"bob/{device} priority {priority} not replicated")


async def set_priorities(c: ThreadCluster, devices: dict[str, Slix], priorities: tuple[int | None, ...]) -> None:
    for (name, client), priority in zip(devices.items(), priorities, strict=True):
        if priority is None:
            continue
        client.xmpp.send_presence(ppriority=priority)
        await client.ping_server()
        await asyncio.to_thread(replicated, c, name, priority)
    for client in devices.values():
        assert [m["body"] for m in client.drain_messages()] == [], client.jid


async def received(c: ThreadCluster, devices: dict[str, Slix], sender: Slix) -> dict[str, list[str]]:
    await sender.ping_server()  # alice's node has routed (and forwarded) everything she sent
    await asyncio.to_thread(c.call, c.running.settled)  # every forward acked: in the devices' outboxes
    out = {}
    for name, client in devices.items():
        await client.ping_server()
        out[name] = sorted(m["body"] for m in client.drain_messages())
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_bare_jid_delivery_per_policy_across_nodes(policy: str) -> None:
    with run_cluster_in_thread(3, {**TLS, "routing": {"policy": policy}}, domain=DOMAIN) as c:
        c.add_user("alice", "alice-pw")
        c.add_user("bob", "bob-pw")

        async def scenario() -> None:
            devices = {name: Slix(f"bob@{DOMAIN}/{name}", "bob-pw") for name in DEVICES}
            for name, client in devices.items():
                await client.connect(c.c2s_address(NODE_OF[name]))
            alice = Slix(f"alice@{DOMAIN}/desk", "alice-pw")
            await alice.connect(c.c2s_address(ALICE_NODE))
            for config, priorities in CONFIGS.items():
                await set_priorities(c, devices, priorities)
                alice.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody=f"chat {config}", mtype="chat")
                alice.xmpp.send_message(mto=f"bob@{DOMAIN}", mbody=f"headline {config}", mtype="headline")
                got = await received(c, devices, alice)
                headline = ALL if policy == "all-connected" else HEADLINE[config]
                assert got == expected({f"chat {config}": CHAT[config, policy],
                                        f"headline {config}": headline}), (policy, config, priorities)
                assert [m["type"] for m in alice.drain_messages()] == [], (policy, config)
            for client in (alice, *devices.values()):
                await client.disconnect()

        asyncio.run(scenario())
        assert c.call(c.running[0].ctx.storage.offline.count, f"bob@{DOMAIN}") == 0


def test_im_across_nodes_with_slixmpp() -> None:
    """alice/one on node 0, alice/two on node 1, bob on node 2: messages to full and bare JIDs, a ping
    iq between clients, the subscription handshake, roster pushes to both of alice's resources,
    presence both ways and unavailable on a dropped connection."""
    with run_cluster_in_thread(3, TLS, domain=DOMAIN) as c:
        c.add_user("alice", "alice-pw")
        c.add_user("bob", "bob-pw")

        async def scenario() -> None:
            a1 = Slix(f"alice@{DOMAIN}/one", "alice-pw")
            a2 = Slix(f"alice@{DOMAIN}/two", "alice-pw")
            bob = Slix(f"bob@{DOMAIN}/desk", "bob-pw")
            for i, client in enumerate((a1, a2, bob)):
                await client.connect(c.c2s_address(i))
                await client.xmpp.get_roster()
                client.xmpp.send_presence()
                await client.ping_server()
            for resource, node in (("one", 0), ("two", 1)):
                await asyncio.to_thread(c.call, c.running.records, node, f"alice@{DOMAIN}/{resource}",
                                        lambda r: r.available)
            await asyncio.to_thread(replicated, c, "desk", 0)
            # Messages: to alice's bare JID (both resources, same priority) and to one full JID.
            bob.xmpp.send_message(mto=f"alice@{DOMAIN}", mbody="to bare", mtype="chat")
            bob.xmpp.send_message(mto=f"alice@{DOMAIN}/two", mbody="to two", mtype="chat")
            assert (await a1.next_message())["body"] == "to bare"
            assert [(await a2.next_message())["body"] for _ in range(2)] == ["to bare", "to two"]
            # An iq between clients on nodes 0 and 2 (XEP-0199, answered by slixmpp itself).
            await a1.xmpp.plugin["xep_0199"].send_ping(f"bob@{DOMAIN}/desk", timeout=10)
            # Subscription handshake: alice asks bob; slixmpp's bob auto-authorises and subscribes back.
            a1.xmpp.send_presence(pto=f"bob@{DOMAIN}", ptype="subscribe")
            await bob.wait_presence(lambda p: p["type"] == "subscribe" and p["from"].bare == f"alice@{DOMAIN}",
                                    "subscribe from alice")
            await a1.wait_presence(lambda p: p["type"] == "subscribed", "subscribed from bob")
            for client in (a1, a2):  # roster pushes to both interested resources, on two nodes
                async with asyncio.timeout(15):
                    while client.xmpp.client_roster[f"bob@{DOMAIN}"]["subscription"] not in ("to", "both"):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)  # bounded poll of slixmpp's roster
            for client in (a1, a2):
                await client.wait_presence(lambda p: p["from"] == f"bob@{DOMAIN}/desk" and p["type"] == "available",
                                           "bob available")
            await bob.wait_presence(lambda p: p["from"].bare == f"alice@{DOMAIN}" and p["type"] == "available",
                                    "alice available")
            bob.abort()
            for client in (a1, a2):
                await client.wait_presence(
                    lambda p: p["from"] == f"bob@{DOMAIN}/desk" and p["type"] == "unavailable",
                    "bob unavailable after a dropped connection")
            for client in (a1, a2):
                await client.disconnect()

        asyncio.run(scenario())
