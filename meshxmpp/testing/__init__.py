"""Public test helpers: start real nodes in-process and talk to them."""

from __future__ import annotations

from meshxmpp.testing._client import ClientError, TestClient
from meshxmpp.testing._node import RunningNode, node
from meshxmpp.testing._simnet import Packet, SimNet, SimNetError, SimNode
from meshxmpp.testing._thread import ThreadNode, run_in_thread

__all__ = [
    "ClientError",
    "Packet",
    "RunningNode",
    "SimNet",
    "SimNetError",
    "SimNode",
    "TestClient",
    "ThreadNode",
    "node",
    "run_in_thread",
]
