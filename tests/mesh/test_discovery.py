"""Discovery (meshxmpp.mesh.discovery) and MeshCore.add_seeds, without real nodes: the heartbeat stores,
the protocol version check, DNS lookups of names that need no network, and two cores that were started
alone finding each other on a simulated network through `add_seeds`."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import pytest
import trio

from meshxmpp.config import load_config
from meshxmpp.jid import JID
from meshxmpp.mesh._records import SessionRecord
from meshxmpp.mesh.core import MeshCore
from meshxmpp.mesh.discovery import DatabaseDiscovery, DnsDiscovery, ProtocolMismatch, make_discovery
from meshxmpp.mesh.membership import PROFILES
from meshxmpp.mesh.wire import PROTOCOL_VERSION
from meshxmpp.storage.cluster import (
    Heartbeat,
    MemoryClusterStore,
    SqliteClusterStore,
    open_cluster_store,
)
from meshxmpp.storage.memory import MemoryStorage
from meshxmpp.testing._simmesh import PORT, SimMeshNode
from meshxmpp.testing._simnet import SimNet

SECRET = "a-test-secret-of-some-length"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- stores


async def check_store(store: object, advance: object) -> None:
    s = store  # a ClusterStore
    await s.open()  # type: ignore[attr-defined]
    try:
        await s.heartbeat(Heartbeat("a", "10.0.0.1", 5701, 1, PROTOCOL_VERSION))  # type: ignore[attr-defined]
        await s.heartbeat(Heartbeat("b", "10.0.0.2", 5701, 2, PROTOCOL_VERSION))  # type: ignore[attr-defined]
        await s.heartbeat(Heartbeat("a", "10.0.0.9", 5702, 3, PROTOCOL_VERSION))  # type: ignore[attr-defined]
        rows = await s.live(10.0)  # type: ignore[attr-defined]
        assert [(r.name, r.host, r.port, r.epoch) for r in rows] == [("a", "10.0.0.9", 5702, 3),
                                                                     ("b", "10.0.0.2", 5701, 2)]
        await advance(11.0)  # type: ignore[operator]
        await s.heartbeat(Heartbeat("b", "10.0.0.2", 5701, 2, PROTOCOL_VERSION))  # type: ignore[attr-defined]
        assert [r.name for r in await s.live(10.0)] == ["b"]  # type: ignore[attr-defined]
        await s.remove("b")  # type: ignore[attr-defined]
        assert await s.live(10.0) == []  # type: ignore[attr-defined]
        assert await s.settings() == {}  # type: ignore[attr-defined]
        await s.set_setting("routing.policy", '"all-connected"')  # type: ignore[attr-defined]
        await s.set_setting("routing.policy", '"most-available"')  # type: ignore[attr-defined]
        assert await s.settings() == {"routing.policy": '"most-available"'}  # type: ignore[attr-defined]
        assert await s.delete_setting("routing.policy")  # type: ignore[attr-defined]
        assert not await s.delete_setting("routing.policy")  # type: ignore[attr-defined]
    finally:
        await s.close()  # type: ignore[attr-defined]


async def test_memory_store() -> None:
    clock = Clock()

    async def advance(dt: float) -> None:
        clock.t += dt

    await check_store(MemoryClusterStore(clock=clock), advance)


async def test_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import meshxmpp.storage.cluster as cluster

    now = [1000.0]
    monkeypatch.setattr(cluster.time, "time", lambda: now[0])

    async def advance(dt: float) -> None:
        now[0] += dt

    path = tmp_path / "db.sqlite3"
    await check_store(SqliteClusterStore(path), advance)
    with sqlite3.connect(path) as conn:  # plain tables, readable by an operator
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"mesh_heartbeats", "cluster_settings"} <= names


async def test_store_choice_follows_the_storage(tmp_path: Path) -> None:
    config = load_config(None, {"data_dir": str(tmp_path)})
    assert isinstance(open_cluster_store(config), SqliteClusterStore)
    memory = MemoryStorage()
    a, b = open_cluster_store(config, memory), open_cluster_store(config, memory)
    await a.heartbeat(Heartbeat("x", "h", 1, 1, PROTOCOL_VERSION))
    assert [r.name for r in await b.live(60)] == ["x"]  # one MemoryStorage: one set of tables
    assert await open_cluster_store(config, MemoryStorage()).live(60) == []
    mem = load_config(None, {"storage": {"backend": "memory"}})
    assert await open_cluster_store(mem).live(60) == []


async def test_postgres_store_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from meshxmpp.storage.cluster import ClusterStoreError, PostgresClusterStore

    real = builtins.__import__

    def fake(name: str, *a: object, **kw: object) -> object:
        if name == "psycopg":
            raise ImportError("no psycopg")
        return real(name, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ClusterStoreError, match="psycopg"):
        await PostgresClusterStore("postgresql://nowhere/db").open()


# --------------------------------------------------------------------------- database discovery


async def test_database_discovery_seeds_from_live_rows_and_adds_new_ones() -> None:
    clock = Clock()
    tables = MemoryClusterStore(clock=clock)
    store = MemoryClusterStore(tables._t, clock=clock)
    await store.heartbeat(Heartbeat("old", "10.0.0.3", 5701, 1, PROTOCOL_VERSION))
    clock.t += 20
    await store.heartbeat(Heartbeat("n1", "10.0.0.1", 5701, 1, PROTOCOL_VERSION))
    await store.heartbeat(Heartbeat("me", "10.0.0.7", 5701, 1, PROTOCOL_VERSION))  # our last run
    d = DatabaseDiscovery(store, name="me", epoch=5, interval=1.0, expiry=10.0)
    assert await d.start(("10.0.0.9", 5701)) == [("10.0.0.1", 5701)]
    rows = {r.name: r for r in await store.live(10.0)}
    assert (rows["me"].host, rows["me"].epoch, rows["me"].protocol) == ("10.0.0.9", 5, PROTOCOL_VERSION)
    found: list[list[tuple[str, int]]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(d.run, found.append)
        await store.heartbeat(Heartbeat("n2", "10.0.0.2", 5701, 1, PROTOCOL_VERSION))
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert found[-1] == [("10.0.0.1", 5701), ("10.0.0.2", 5701)]
    await d.leave()
    assert "me" not in {r.name for r in await store.live(10.0)}


async def test_another_protocol_version_is_refused_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryClusterStore()
    await store.heartbeat(Heartbeat("n1", "10.0.0.1", 5701, 1, PROTOCOL_VERSION + 1))
    d = DatabaseDiscovery(store, name="me", epoch=5, interval=1.0, expiry=10.0)
    with caplog.at_level(logging.ERROR, logger="meshxmpp.mesh"), pytest.raises(ProtocolMismatch) as info:
        await d.start(("10.0.0.9", 5701))
    line = caplog.records[-1].getMessage()
    assert "refusing to join" in line and f"version {PROTOCOL_VERSION + 1}" in line and "n1" in line
    assert str(info.value) == line
    assert [r.name for r in await store.live(10.0)] == ["n1"]  # no row written: it did not join


def test_make_discovery_follows_the_config() -> None:
    static = load_config(None, {"mesh": {"secret": SECRET}})
    assert make_discovery(static.mesh, config=static, storage=None, name="n", epoch=1) is None
    db = load_config(None, {"mesh": {"secret": SECRET, "discovery": "database"}})
    d = make_discovery(db.mesh, config=db, storage=MemoryStorage(), name="n", epoch=1)
    assert isinstance(d, DatabaseDiscovery) and (d.interval, d.expiry) == (5.0, 30.0)
    dns = load_config(None, {"mesh": {"secret": SECRET, "discovery": "dns", "dns": "localhost"}})
    assert isinstance(make_discovery(dns.mesh, config=dns, storage=None, name="n", epoch=1), DnsDiscovery)


# --------------------------------------------------------------------------- DNS discovery


async def test_dns_discovery_resolves_at_the_mesh_port_and_skips_itself() -> None:
    d = DnsDiscovery("127.0.0.1", interval=1.0)
    assert await d.start(("10.0.0.9", 5701)) == [("127.0.0.1", 5701)]
    me = DnsDiscovery("127.0.0.1", interval=1.0)
    assert await me.start(("127.0.0.1", 5701)) == []  # our own address
    nowhere = DnsDiscovery("no-such-host.invalid", interval=1.0)
    assert await nowhere.start(("10.0.0.9", 5701)) == []


# --------------------------------------------------------------------------- MeshCore.add_seeds


def test_cores_started_alone_join_through_add_seeds() -> None:
    net = SimNet(7)
    nodes = []
    for i in range(3):
        core = MeshCore(f"n{i}", (f"n{i}", PORT), timing=PROFILES["test"], rng=random.Random(i), now=net.now,
                        epoch=100 + i, repair_interval=1.0)
        node = SimMeshNode(core)
        net.add((f"n{i}", PORT), node)
        nodes.append(node)
    nodes[0].core.put_session(SessionRecord(jid=JID.parse("a@x/r"), node="n0", bound_at=1.0))
    net.run_for(1.0)
    assert all(len(n.core.membership.alive()) == 1 for n in nodes)
    assert nodes[1].core.add_seeds(net.now, [("n0", PORT), ("n1", PORT)]) == [("n0", PORT)]  # not itself
    assert nodes[2].core.add_seeds(net.now, [("n1", PORT)]) == [("n1", PORT)]
    assert net.run_for(10.0, until=lambda: all(len(n.core.membership.alive()) == 3 for n in nodes))
    assert net.run_for(5.0, until=lambda: all(n.core.directory.of(JID.parse("a@x")) for n in nodes))
    assert nodes[2].core.add_seeds(net.now, [("n0", PORT), ("n1", PORT)]) == []  # members already
