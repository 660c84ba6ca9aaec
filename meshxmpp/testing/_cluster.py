"""``async with meshxmpp.testing.cluster(3) as c``: a mesh of real nodes in-process on loopback.

Every node listens on free loopback ports (client, HTTP and mesh), shares one temporary SQLite database
(each node with its own connection, as nodes on one host do), and uses the ``test``
timing profile; node ``i`` is named ``node{i}`` and joins through node 0. Faults: `kill` (abrupt: no
leave, no stream errors, as a crash), `stop` (graceful), `restart`, `partition` / `heal` (frames between
groups are dropped on arrival). Waits (`converged`, `wait_dead`, ...) have deadlines and say what was
missing when they fail.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshxmpp.config import load_config
from meshxmpp.node import Node
from meshxmpp.testing._client import TestClient
from meshxmpp.testing._node import RunningNode, _merge

__all__ = ["Cluster", "cluster"]

SECRET = "meshxmpp-testing-cluster-secret"


class Cluster:
    """The running nodes (``c[i]`` is a `RunningNode`, None while killed or stopped) and fault injection."""

    def __init__(self, nursery: trio.Nursery, tmp: str, overrides: dict[str, Any]) -> None:
        self._nursery = nursery
        self._tmp = tmp
        self._overrides = overrides
        self.nodes: list[RunningNode | None] = []
        self._mesh_ports: list[int] = []
        self._c2s_ports: list[int] = []
        self._groups: list[set[int]] | None = None

    def __getitem__(self, i: int) -> RunningNode:
        node = self.nodes[i]
        if node is None:
            raise RuntimeError(f"node {i} is not running (killed or stopped)")
        return node

    def __len__(self) -> int:
        return len(self.nodes)

    def live(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n is not None]

    @property
    def domain(self) -> str:
        return str(self._overrides.get("domain", "localhost"))

    # ------------------------------------------------------------------ starting and stopping

    def _config(self, i: int) -> Any:
        first = next((p for p in self._mesh_ports if p), None)
        peers = [f"127.0.0.1:{first}"] if first and i != 0 else []
        if i < len(self._mesh_ports) and self._mesh_ports[i]:
            port, c2s = self._mesh_ports[i], self._c2s_ports[i]  # a restart keeps its addresses
            peers = [f"127.0.0.1:{p}" for j, p in enumerate(self._mesh_ports) if p and j != i][:1]
        else:
            port = c2s = 0
        data_dir = os.path.join(self._tmp, f"node{i}")
        os.makedirs(data_dir, exist_ok=True)
        base: dict[str, Any] = {
            "domain": "localhost",
            "data_dir": data_dir,
            "c2s": {"bind": "127.0.0.1", "port": c2s, "require_encryption": False},
            "http": {"bind": "127.0.0.1", "port": 0},
            "storage": {"path": os.path.join(self._tmp, "cluster.sqlite3")},
            "mesh": {"bind": "127.0.0.1", "port": port, "secret": SECRET, "profile": "test",
                     "node_name": f"node{i}", "peers": peers, "join_timeout": 3.0},
        }
        return load_config(None, _merge(base, self._overrides))

    async def start(self, i: int) -> RunningNode:
        """Start node ``i`` (a new one when ``i == len(c)``); returns once it serves clients."""
        if i == len(self.nodes):
            self.nodes.append(None)
            self._mesh_ports.append(0)
            self._c2s_ports.append(0)
        if self.nodes[i] is not None:
            raise RuntimeError(f"node {i} is running")
        the_node = Node(self._config(i), handle_signals=False)
        await self._nursery.start(the_node.run)
        running = RunningNode(the_node)
        self.nodes[i] = running
        self._mesh_ports[i] = the_node.mesh.transport.port
        self._c2s_ports[i] = the_node.c2s_port
        if self._groups is not None:
            self._apply_partition()
        return running

    def kill(self, i: int) -> None:
        """Crash node ``i``: sockets closed, no goodbye to the mesh or its clients."""
        self[i].node.kill()
        self.nodes[i] = None

    async def stop(self, i: int) -> None:
        """Stop node ``i`` gracefully (clients get <system-shutdown/>, it leaves the mesh)."""
        node = self[i].node
        node.stop()
        await node.stopped.wait()
        self.nodes[i] = None

    async def restart(self, i: int) -> RunningNode:
        if self.nodes[i] is not None:
            await self.stop(i)
        return await self.start(i)

    # ------------------------------------------------------------------ faults

    def partition(self, *groups: Iterable[int]) -> None:
        """Drop every frame between two nodes that share no group (both ways) until `heal`; a node in
        no group talks to everyone. Groups may overlap: ``partition({0, 1}, {1, 2})`` cuts 0 from 2."""
        self._groups = [set(g) for g in groups]
        self._apply_partition()

    def heal(self) -> None:
        self._groups = None
        for i in self.live():
            self[i].node.mesh.blocked.clear()

    def _apply_partition(self) -> None:
        assert self._groups is not None
        member_of = {i: {n for n, g in enumerate(self._groups) if i in g} for i in range(len(self.nodes))}
        for i in self.live():
            self[i].node.mesh.blocked = {f"node{j}" for j in range(len(self.nodes)) if j != i
                                         and member_of[i] and member_of[j] and not member_of[i] & member_of[j]}

    # ------------------------------------------------------------------ helpers

    def mesh(self, i: int) -> Any:
        return self[i].node.mesh

    async def add_user(self, local: str, password: str = "secret") -> tuple[str, str]:
        return await self[self.live()[0]].add_user(local, password)

    async def client(self, i: int, local: str, password: str = "secret", **kw: Any) -> TestClient:
        return await self[i].client(local, password, **kw)

    async def wait(self, condition: Callable[[], bool], what: Callable[[], str] | str, *,
                   timeout: float = 10.0) -> None:
        """Bounded poll of ``condition`` (the mesh state has no change event); ``what`` says what was
        not true when it fails."""
        with trio.move_on_after(timeout):
            while not condition():  # noqa: ASYNC110
                await trio.sleep(0.01)
            return
        raise TimeoutError(f"after {timeout} s: {what() if callable(what) else what}")

    def _views(self) -> dict[int, tuple[list[str], list[tuple[str, str]]]]:
        out = {}
        for i in self.live():
            core = self.mesh(i).core
            alive = sorted(m.name for m in core.membership.alive())
            records = sorted((str(r.jid), r.node) for n in core.directory.nodes()
                             for r in core.directory.records_of(n))
            out[i] = (alive, records)
        return out

    async def converged(self, *, timeout: float = 10.0) -> None:
        """Every live node sees exactly the live nodes alive and holds the same session table."""
        want = sorted(f"node{i}" for i in self.live())

        def ok() -> bool:
            views = self._views()
            return all(v[0] == want for v in views.values()) and len({str(v[1]) for v in views.values()}) == 1

        await self.wait(ok, lambda: f"not converged: want members {want}, views {self._views()}", timeout=timeout)

    async def settled(self, *, timeout: float = 10.0) -> None:
        """Every forwarded stanza has been acked and no node has forwarded work queued: what was routed
        before this call has reached its recipients' outboxes (or offline storage)."""
        def ok() -> bool:
            for i in self.live():
                mesh = self.mesh(i)
                stats = mesh.core.forwarder.statistics()
                if stats.in_flight or stats.backlog or mesh.busy:
                    return False
            return True

        await self.wait(ok, "forwarded stanzas still in flight", timeout=timeout)

    async def records(self, i: int, jid: str, check: Callable[[Any], bool], *, timeout: float = 10.0) -> None:
        """Wait until every live node other than ``i``... sees the full JID ``jid`` (bound on node ``i``)
        with a record for which ``check(record)`` is true (e.g. its priority after a presence)."""
        from meshxmpp.jid import JID

        full = JID.parse(jid)

        def ok() -> bool:
            for j in self.live():
                if j == i:
                    continue
                record = self.mesh(j).remote_get(full)
                if record is None or not check(record):
                    return False
            return True

        await self.wait(ok, f"{jid} not replicated as expected", timeout=timeout)

    async def wait_dead(self, i: int, *, timeout: float = 10.0) -> None:
        """Every live node sees node ``i`` dead or left and holds none of its sessions."""
        name = f"node{i}"

        def ok() -> bool:
            for j in self.live():
                core = self.mesh(j).core
                m = core.membership.member(name)
                if m is None or m.state not in ("dead", "left") or core.directory.records_of(name):
                    return False
            return True

        await self.wait(ok, f"{name} not seen dead everywhere", timeout=timeout)

    async def session_visible(self, jid: str, *, timeout: float = 10.0) -> None:
        """Every live node knows the full JID ``jid`` (locally bound or in its directory)."""
        from meshxmpp.jid import JID

        full = JID.parse(jid)
        await self.wait(lambda: all(self[i].ctx.router.session_at(full) is not None for i in self.live()),
                        f"{jid} not visible on every node", timeout=timeout)


@asynccontextmanager
async def cluster(n: int = 3, overrides: dict[str, Any] | None = None, **top_level: Any) -> AsyncIterator[Cluster]:
    """Start ``n`` nodes (node 0 first, the others joining through it) and wait until they converge."""
    with tempfile.TemporaryDirectory(prefix="meshxmpp-cluster-") as tmp:
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, tmp, _merge(top_level, overrides or {}))
            try:
                for i in range(n):
                    await c.start(i)
                await c.converged()
                yield c
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(15):
                    for i in c.live():
                        c[i].node.stop()
                    for node in c.nodes:
                        if node is not None:
                            await node.node.stopped.wait()
                nursery.cancel_scope.cancel()
