"""An outside user's view of `meshxmpp.testing`: a 3-node cluster with faults (only public names used)."""

from __future__ import annotations

import pytest

from meshxmpp import testing

pytestmark = pytest.mark.timeout(120)


async def online(c: testing.Cluster, i: int, user: str, resource: str) -> testing.TestClient:
    client = await c.client(i, user, resource=resource)
    await client.send_presence()
    await client.ping()
    await c.session_visible(f"{user}@{c.domain}/{resource}")
    return client


async def test_partition_heal_converge_and_deliver() -> None:
    async with testing.cluster(3) as c:
        d = c.domain
        await c.add_user("alice")
        await c.add_user("bob")
        alice = await online(c, 0, "alice", "desk")
        bob = await online(c, 2, "bob", "phone")
        await alice.send_message(f"bob@{d}/phone", "before")
        await bob.wait_message("before", from_=f"alice@{d}/desk")

        c.partition({0, 1}, {2})
        # Each side declares the other dead and drops its sessions from the table.
        await c.wait(lambda: c.members(0).get("node2") == "dead" and c.members(2).get("node0") == "dead",
                     "the two sides never declared each other dead", timeout=15)
        c.heal()
        await c.converged(timeout=15)
        await c.session_visible(f"bob@{d}/phone")
        await alice.send_message(f"bob@{d}/phone", "after heal")
        await bob.wait_message("after heal", timeout=10)
        await bob.send_message(f"alice@{d}/desk", "reply")
        await alice.wait_message("reply", from_=f"bob@{d}")
        await alice.aclose()
        await bob.aclose()


async def test_kill_then_restart_rejoins() -> None:
    async with testing.cluster(3) as c:
        c.kill(2)
        await c.wait_dead(2, timeout=10)
        assert c.live() == [0, 1]
        with pytest.raises(RuntimeError, match="not running"):
            c[2]
        await c.restart(2)
        await c.converged(timeout=15)
        await c.add_user("carol")
        carol = await online(c, 2, "carol", "r")
        await c.add_user("dave")
        dave = await online(c, 0, "dave", "r")
        await dave.send_message(f"carol@{c.domain}/r", "welcome back")
        await carol.wait_message("welcome back")
        await carol.aclose()
        await dave.aclose()


async def test_drop_and_delay_leave_delivery_intact() -> None:
    async with testing.cluster(3, seed=1234) as c:
        assert c.seed == 1234
        d = c.domain
        await c.add_user("alice")
        await c.add_user("bob")
        alice = await online(c, 0, "alice", "a")
        bob = await online(c, 1, "bob", "b")
        c.drop(rate=0.1)
        c.delay((0.001, 0.02))
        for k in range(20):
            await alice.send_message(f"bob@{d}/b", f"m{k}")
        got = [(await bob.wait_message(f"m{k}", timeout=15)).findtext("body", "jabber:client") for k in range(20)]
        assert got == [f"m{k}" for k in range(20)]
        stats = c.fault_stats()
        assert sum(s["dropped"] for s in stats.values()) > 0, stats
        assert sum(s["delayed"] for s in stats.values()) > 0, stats
        c.clear_faults()
        await c.converged(timeout=15)
        await alice.aclose()
        await bob.aclose()


async def test_wait_failure_names_what_was_missing() -> None:
    async with testing.cluster(2, seed=5) as c:
        c.partition({0}, {1})
        await c.wait(lambda: c.members(0)["node1"] == "dead", "node1 never seen dead by node0")
        with pytest.raises(TimeoutError, match=r"not converged.*seed 5"):
            await c.converged(timeout=0.3)
        c.heal()
        await c.converged()


async def test_node_helpers() -> None:
    async with testing.node(domain="example.org") as n:
        jid, password = await n.add_user("alice", "pw")
        assert jid == "alice@example.org" and password == "pw"
        host, port = n.c2s_address
        assert host == "127.0.0.1" and port > 0
        a1 = await n.client("alice", "pw", resource="one")
        a2 = await n.client("alice", "pw", resource="two")
        await n.session_count(jid, 2)
        with pytest.raises(TimeoutError, match="has 2 sessions, wanted 3"):
            await n.session_count(jid, 3, timeout=0.2)
        await a1.send_message("alice@example.org/two", "to myself")
        assert (await a2.wait_message("to myself")).get("from") == "alice@example.org/one"
        with pytest.raises(TimeoutError, match="body 'never'"):
            await a2.wait_message("never", timeout=0.2)
        await a1.aclose()
        await a2.aclose()
