"""``async with meshxmpp.testing.cluster(3) as c``: a mesh of real nodes in-process on loopback.

Every node listens on free loopback ports (client, HTTP and mesh), shares one temporary SQLite database
(each node with its own connection, as nodes on one host do), and uses the ``test``
timing profile; node ``i`` is named ``node{i}`` and joins through node 0. Faults: `kill` (abrupt: no
leave, no stream errors, as a crash), `stop` (graceful), `restart`, `partition` / `heal` (frames between
groups are dropped on arrival), `drop` (a fraction of mesh frames lost on arrival, decided by a generator
seeded from ``c.seed``) and `delay` (mesh frames held before the node sees them, order per peer kept);
`clear_faults` ends them all. Waits (`converged`, `wait_dead`, ...) have deadlines and say what was
missing when they fail. docs/testing.md is the user's guide.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshxmpp.config import load_config
from meshxmpp.node import Node
from meshxmpp.testing._client import TestClient
from meshxmpp.testing._faults import Delay, FrameTap
from meshxmpp.testing._node import RunningNode, _merge

__all__ = ["Cluster", "cluster"]

SECRET = "meshxmpp-testing-cluster-secret"


class Cluster:
    """The running nodes (``c[i]`` is a `RunningNode`, None while killed or stopped) and fault injection."""

    def __init__(self, nursery: trio.Nursery, tmp: str, overrides: dict[str, Any], *,
                 seed: int | None = None) -> None:
        #: Seeds the generators that decide which frames `drop` loses (and `delay`'s ranges): printed in
        #: failure messages; set it (``cluster(3, seed=7)`` or ``MESHXMPP_TEST_SEED``) to replay a choice.
        env = os.environ.get("MESHXMPP_TEST_SEED")
        self.seed = seed if seed is not None else int(env) if env else random.randrange(2**32)
        self._nursery = nursery
        self._tmp = tmp
        self._overrides = overrides
        self.nodes: list[RunningNode | None] = []
        self._mesh_ports: list[int] = []
        self._c2s_ports: list[int] = []
        self._groups: list[set[int]] | None = None
        self._drop: dict[int | None, float] = {}  # node index (None: every node) -> rate
        self._delay: dict[int | None, Delay | None] = {}
        self._taps: dict[int, FrameTap] = {}
        self._starts = 0

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
        self._starts += 1
        self._taps.pop(i, None)
        if self._groups is not None:
            self._apply_partition()
        self._apply_taps()
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
        """End the partition (`drop` and `delay` stay: `clear_faults` ends everything)."""
        self._groups = None
        for i in self.live():
            self[i].node.mesh.blocked.clear()

    def drop(self, rate: float = 0.1, *, nodes: Iterable[int] | None = None) -> None:
        """Lose each mesh frame arriving at ``nodes`` (default: every node, also ones started later) with
        probability ``rate``; ``drop(0)`` ends it. The links stay up: the mesh's own retransmissions,
        refutations and repair have to cope, as with a lossy network."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"drop rate must be within [0, 1], got {rate}")
        if nodes is None:
            self._drop = {None: rate}
        for i in self._targets(nodes):
            self._drop[i] = rate
        self._apply_taps()

    def delay(self, seconds: Delay | None, *, nodes: Iterable[int] | None = None) -> None:
        """Hold each mesh frame arriving at ``nodes`` (default: every node) for ``seconds``, or a time drawn
        from ``(min, max)`` per frame, before the node sees it; frames from one peer stay in order.
        ``delay(None)`` (or 0) ends it; frames already held are still delivered when due."""
        if isinstance(seconds, tuple):
            lo, hi = seconds
            if not 0.0 <= lo <= hi:
                raise ValueError(f"delay range must be 0 <= min <= max, got {seconds}")
        elif seconds is not None and seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        if nodes is None:
            self._delay = {None: seconds or None}
        for i in self._targets(nodes):
            self._delay[i] = seconds or None
        self._apply_taps()

    def clear_faults(self) -> None:
        """End every fault: partition, drop and delay."""
        self.heal()
        self._drop.clear()
        self._delay.clear()
        self._apply_taps()

    def fault_stats(self) -> dict[int, dict[str, int]]:
        """Frames each live node's tap dropped, delayed and passed (nodes without a tap are absent)."""
        return {i: {"dropped": t.dropped, "delayed": t.delayed, "passed": t.passed}
                for i, t in self._taps.items() if self.nodes[i] is not None}

    def _targets(self, nodes: Iterable[int] | None) -> list[int]:
        if nodes is None:
            return []
        out: list[int] = []
        for i in nodes:
            if not 0 <= i < len(self.nodes):
                raise IndexError(f"no node {i} in a cluster of {len(self.nodes)}")
            out.append(i)
        return out

    def _apply_taps(self) -> None:
        for i in self.live():
            rate = self._drop.get(i, self._drop.get(None, 0.0))
            delay = self._delay.get(i, self._delay.get(None))
            tap = self._taps.get(i)
            if tap is None:
                if not rate and delay is None:
                    continue  # no tap until a fault needs one: frames go straight to the mesh
                running = self[i].node
                transport = running.mesh.transport
                tap = FrameTap(transport.on_frame, random.Random(f"{self.seed}/{i}/{self._starts}"))
                transport.on_frame = tap
                self._taps[i] = tap
                self._nursery.start_soon(tap.run, running.stopped)
            tap.drop_rate, tap.delay = rate, delay

    def _apply_partition(self) -> None:
        assert self._groups is not None
        member_of = {i: {n for n, g in enumerate(self._groups) if i in g} for i in range(len(self.nodes))}
        for i in self.live():
            self[i].node.mesh.blocked = {f"node{j}" for j in range(len(self.nodes)) if j != i
                                         and member_of[i] and member_of[j] and not member_of[i] & member_of[j]}

    # ------------------------------------------------------------------ helpers

    def mesh(self, i: int) -> Any:
        return self[i].node.mesh

    def members(self, i: int) -> dict[str, str]:
        """Node ``i``'s view of the membership: name -> alive | suspect | dead | left (itself included)."""
        return {m.name: m.state for m in self.mesh(i).core.membership.members()}

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
        faults = ""
        if self._groups is not None or any(self._drop.values()) or any(self._delay.values()):
            faults = (f" (faults: partition {self._groups}, drop {self._drop}, delay {self._delay};"
                      f" seed {self.seed})")
        raise TimeoutError(f"after {timeout} s: {what() if callable(what) else what}{faults}")

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
async def cluster(n: int = 3, overrides: dict[str, Any] | None = None, *, seed: int | None = None,
                  **top_level: Any) -> AsyncIterator[Cluster]:
    """Start ``n`` nodes (node 0 first, the others joining through it) and wait until they converge.

    ``overrides`` is a nested dict shaped like the TOML file, applied to every node; keyword arguments set
    top-level keys (``domain="example.org"``); ``seed`` seeds the fault generators (`Cluster.seed`)."""
    with tempfile.TemporaryDirectory(prefix="meshxmpp-cluster-") as tmp:
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, tmp, _merge(top_level, overrides or {}), seed=seed)
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
