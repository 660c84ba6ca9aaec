"""What a feature module receives in ``register(hub, ctx)``: the node's shared services."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import trio

    from meshxmpp.config import Config
    from meshxmpp.hub import Hub
    from meshxmpp.mesh.service import MeshService
    from meshxmpp.routing.router import Router
    from meshxmpp.routing.table import SessionRegistry
    from meshxmpp.storage.base import Storage


@attrs.define(kw_only=True)
class NodeContext:
    config: Config
    domain: str
    storage: Storage
    hub: Hub
    sessions: SessionRegistry
    router: Router
    node_name: str = "local"
    # The mesh service when [mesh] secret is set (the node joins or starts a cluster), else None.
    mesh: MeshService | None = None
    # Set when a graceful shutdown begins: GET /readyz answers 503 from then on (load balancers drain).
    stopping: bool = False
    # The node's own nursery, for background work that outlives one connection (set by Node.run).
    nursery: trio.Nursery | None = None
    # Wall clock for stamps (XEP-0203 delay, last activity); injectable for tests.
    now: Callable[[], float] = time.time
