"""Three real nodes in-process with ``[mesh] discovery = "database"`` and no static peers (issue 7): they
find each other through the heartbeat table of their shared SQLite database, a message crosses nodes, and
a killed node's row expires while SWIM declares it dead.

The 3-node test runs on SQLite and on a real PostgreSQL (``postgres_server``, meshxmpp/testing/_postgres.py:
it fails naming the install step when PostgreSQL is missing).
"""

from __future__ import annotations

import logging

import pytest
import trio

from meshxmpp.mesh.discovery import ProtocolMismatch
from meshxmpp.mesh.wire import PROTOCOL_VERSION
from meshxmpp.storage.cluster import Heartbeat, SqliteClusterStore, open_cluster_store
from meshxmpp.testing._cluster import SECRET, cluster
from meshxmpp.testing._node import node
from meshxmpp.testing._postgres import PostgresServer, postgres_server

__all__ = ["postgres_server"]  # the fixture, offered to this module's tests

pytestmark = pytest.mark.timeout(120)

DISCOVERY = {"mesh": {"peers": [], "discovery": "database", "heartbeat_interval": 0.2,
                      "heartbeat_expiry": 2.0}}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_three_nodes_find_each_other_through_the_database(backend: str,
                                                                request: pytest.FixtureRequest) -> None:
    overrides: dict[str, object] = dict(DISCOVERY)
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        overrides["storage"] = {"backend": "postgres", "dsn": server.fresh_dsn()}
    async with cluster(3, overrides) as c:  # converged: every node sees the three alive
        for i in range(3):
            assert c[i].config.mesh.peers == () and c[i].config.storage.backend == backend
        store = open_cluster_store(c[0].config)
        await store.open()
        try:
            rows = await store.live(2.0)
            assert [r.name for r in rows] == ["node0", "node1", "node2"]
            assert {r.port for r in rows} == {c.mesh(i).transport.port for i in range(3)}
            assert all(r.protocol == PROTOCOL_VERSION for r in rows)
            # A message crosses nodes.
            await c.add_user("alice")
            await c.add_user("bob")
            alice = await c.client(0, "alice", resource="desk")
            bob = await c.client(2, "bob", resource="phone")
            await bob.send_presence()
            await c.records(2, "bob@localhost/phone", lambda r: r.available)
            await alice.send_message("bob@localhost/phone", "through the database")
            got = await bob.wait_message("through the database")
            assert got.get("from") == "alice@localhost/desk"
            # A killed node stops heartbeating: its row expires and it leaves the mesh.
            c.kill(2)
            await c.wait_dead(2)

            async def expired() -> None:
                while "node2" in {r.name for r in await store.live(2.0)}:  # noqa: ASYNC110
                    await trio.sleep(0.1)  # bounded poll of the table (no change event)

            with trio.fail_after(10):
                await expired()
            assert [r.name for r in await store.live(2.0)] == ["node0", "node1"]
            # It comes back (new epoch, same database) and is found again with no peer list.
            await c.start(2)
            await c.converged()
            await alice.aclose()
            await bob.aclose()
        finally:
            await store.close()


async def test_a_node_found_later_is_added_as_a_seed() -> None:
    """Two nodes started while the table was empty (so each began alone) merge once they read each
    other's rows: `MeshCore.add_seeds`."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "shared.sqlite3")

        def overrides(name: str, interval: float) -> dict[str, object]:
            return {"storage": {"path": db},
                    "mesh": {"secret": SECRET, "discovery": "database", "profile": "test", "bind": "127.0.0.1",
                             "port": 0, "node_name": name, "heartbeat_interval": interval,
                             "heartbeat_expiry": 5.0, "join_timeout": 0}}

        # a heartbeats every 2 s, so its row stays away for a while once removed.
        async with node(overrides("a", 2.0), data_dir=os.path.join(tmp, "a")) as a:
            store = SqliteClusterStore(db)
            await store.open()
            try:
                # Hide a's row from b's start: b begins alone, as if both started at the same time.
                await store.remove("a")
                async with node(overrides("b", 0.2), data_dir=os.path.join(tmp, "b")) as b:
                    assert b.node.mesh.core._seeds == []  # began alone

                    def both(n: object) -> bool:
                        return [m.name for m in n.node.mesh.core.membership.alive()] == ["a", "b"]  # type: ignore[attr-defined]

                    with trio.fail_after(10):
                        while not (both(a) and both(b)):  # noqa: ASYNC110
                            await trio.sleep(0.05)
            finally:
                await store.close()


async def test_a_node_of_another_protocol_version_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "shared.sqlite3")
        store = SqliteClusterStore(db)
        await store.open()
        try:
            # The cluster (one live node) speaks a newer version than this release.
            await store.heartbeat(Heartbeat("future", "127.0.0.1", 9, 1, PROTOCOL_VERSION + 1))
            overrides = {"storage": {"path": db},
                         "mesh": {"secret": SECRET, "discovery": "database", "profile": "test",
                                  "bind": "127.0.0.1", "port": 0, "node_name": "old"}}
            with caplog.at_level(logging.ERROR, logger="meshxmpp.mesh"), pytest.raises(BaseException) as info:
                async with node(overrides, data_dir=tmp):
                    pass
            leaves = [info.value]
            while isinstance(leaves[0], BaseExceptionGroup):
                leaves = list(leaves[0].exceptions)
            assert isinstance(leaves[0], ProtocolMismatch)
            lines = [r.getMessage() for r in caplog.records if "refusing to join" in r.getMessage()]
            assert lines and f"speaks version {PROTOCOL_VERSION + 1}" in lines[0] and "future" in lines[0]
            assert [r.name for r in await store.live(30.0)] == ["future"]  # it wrote no row
        finally:
            await store.close()
