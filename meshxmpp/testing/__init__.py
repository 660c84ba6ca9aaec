"""Public test helpers: start real nodes in-process and talk to them."""

from __future__ import annotations

from meshxmpp.testing._client import ClientError, TestClient
from meshxmpp.testing._cluster import Cluster, cluster
from meshxmpp.testing._node import RunningNode, node
from meshxmpp.testing._simnet import Packet, SimNet, SimNetError, SimNode
from meshxmpp.testing._thread import ThreadCluster, ThreadNode, run_cluster_in_thread, run_in_thread

__all__ = [
    "ClientError",
    "Cluster",
    "Packet",
    "RunningNode",
    "SimNet",
    "SimNetError",
    "SimNode",
    "TestClient",
    "ThreadCluster",
    "ThreadNode",
    "cluster",
    "node",
    "run_cluster_in_thread",
    "run_in_thread",
]
