"""Three meshxmpp nodes in one process: cut one off, watch the mesh notice, heal, converge, chat again.

`meshxmpp.testing.cluster(3)` starts three real nodes on loopback (client, HTTP and mesh listeners on free
ports, one shared SQLite database, the fast ``test`` failure-detection timings) and waits until every
node sees the others alive. Faults are injected on the mesh links: here a partition.

Run: python examples/cluster_partition.py   (CI runs it through tests/test_examples.py)
"""

from __future__ import annotations

import trio

from meshxmpp import testing


def views(c: testing.Cluster) -> str:
    return "; ".join(f"node{i} sees " + ", ".join(f"{name}={state}" for name, state in c.members(i).items())
                     for i in c.live())


async def main() -> None:
    async with testing.cluster(3, domain="example.org") as c:
        print("started:", views(c))
        await c.add_user("alice")
        await c.add_user("bob")
        alice = await c.client(0, "alice", resource="desk", presence=True)
        bob = await c.client(2, "bob", resource="phone", presence=True)
        await c.session_visible("bob@example.org/phone")

        await alice.send_message("bob@example.org/phone", "before the partition")
        print("bob got:", (await bob.wait_message("before the partition")).findtext("body", "jabber:client"))

        started = trio.current_time()
        c.partition({0, 1}, {2})
        await c.wait(lambda: c.members(0)["node2"] == "dead" and c.members(2)["node0"] == "dead",
                     "the two sides never declared each other dead", timeout=15)
        print(f"partitioned; after {trio.current_time() - started:.1f} s:", views(c))

        c.heal()
        started = trio.current_time()
        await c.converged(timeout=15)
        print(f"healed; converged after {trio.current_time() - started:.1f} s:", views(c))

        await c.session_visible("bob@example.org/phone")
        await alice.send_message("bob@example.org/phone", "after the heal")
        print("bob got:", (await bob.wait_message("after the heal", timeout=10)).findtext("body", "jabber:client"))
        await alice.aclose()
        await bob.aclose()


if __name__ == "__main__":
    trio.run(main)
