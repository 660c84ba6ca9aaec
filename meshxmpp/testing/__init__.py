"""Public test helpers: start real nodes in-process and talk to them (docs/testing.md is the guide).

- `node` / `cluster`: real nodes on free loopback ports (`RunningNode`, `Cluster` with fault injection);
- `TestClient`: a minimal XMPP client with deadlines on every wait;
- `run_in_thread` / `run_cluster_in_thread`: the same in a background thread, for asyncio and sync suites;
- `SimCluster`: deterministic mode, mesh cores on a simulated network with a seed and a fake clock;
- `SimNet`: the simulated network itself, for any sans-IO core;
- the pytest plugin is `meshxmpp.testing.pytest_plugin` (fixtures ``meshxmpp_node``, ``meshxmpp_cluster``...).
"""

from __future__ import annotations

from meshxmpp.testing._client import ClientError, TestClient
from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.testing._node import RunningNode, node
from meshxmpp.testing._sim import Death, SimCluster, SimTimeout, TraceEvent
from meshxmpp.testing._simmesh import SimMeshNode
from meshxmpp.testing._simnet import Packet, SimNet, SimNetError, SimNode
from meshxmpp.testing._thread import ThreadCluster, ThreadNode, run_cluster_in_thread, run_in_thread

__all__ = [
    "ClientError",
    "Cluster",
    "Death",
    "Packet",
    "RunningNode",
    "SimCluster",
    "SimMeshNode",
    "SimNet",
    "SimNetError",
    "SimNode",
    "SimTimeout",
    "TestClient",
    "ThreadCluster",
    "ThreadNode",
    "TraceEvent",
    "cluster",
    "node",
    "run_cluster_in_thread",
    "run_in_thread",
]
