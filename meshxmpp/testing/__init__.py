"""Public test helpers: start real nodes in-process and talk to them."""

from __future__ import annotations

from meshxmpp.testing._client import ClientError, TestClient
from meshxmpp.testing._node import RunningNode, node

__all__ = ["ClientError", "RunningNode", "TestClient", "node"]
