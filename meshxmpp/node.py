"""Composition root: builds every part of one node from a Config and owns the top nursery."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import trio

from meshxmpp import im
from meshxmpp.c2s.listener import C2SListener
from meshxmpp.config import Config
from meshxmpp.context import NodeContext
from meshxmpp.http import HttpServer
from meshxmpp.hub import Hub
from meshxmpp.routing import policy
from meshxmpp.routing.router import Router
from meshxmpp.routing.table import SessionRegistry
from meshxmpp.storage import open_storage
from meshxmpp.storage.base import Storage

log = logging.getLogger("meshxmpp.node")


class Node:
    """One meshxmpp node. ``await nursery.start(node.run)`` returns once clients can connect."""

    def __init__(self, config: Config, *, storage: Storage | None = None, handle_signals: bool | None = None):
        self.config = config
        self._storage = storage
        self._handle_signals = handle_signals
        self.ctx: NodeContext | None = None
        self.c2s: C2SListener | None = None
        self.c2s_tls: C2SListener | None = None
        self.http: HttpServer | None = None
        self.components: Any = None  # component.listener.ComponentListener when [[components.service]] exist
        self.mesh: Any = None  # mesh.service.MeshService when [mesh] secret is set
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._killed = False
        self.stopped = trio.Event()

    @property
    def c2s_port(self) -> int:
        assert self.c2s is not None, "node not started"
        return self.c2s.port

    @property
    def direct_tls_port(self) -> int | None:
        return self.c2s_tls.port if self.c2s_tls is not None else None

    @property
    def component_port(self) -> int | None:
        """The component listener's bound port; None when no [[components.service]] is configured."""
        return self.components.port if self.components is not None else None

    @property
    def http_port(self) -> int | None:
        """The HTTP listener's bound port; None when ``[http] enabled = false``."""
        return self.http.port if self.http is not None else None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        storage = self._storage if self._storage is not None else open_storage(config)
        await storage.open()
        try:
            hub = Hub()
            sessions = SessionRegistry()
            router = Router(
                hub=hub,
                sessions=sessions,
                domain=config.domain,
                accounts=storage.accounts,
                policy_config=policy.PolicyConfig.from_routing_config(config.routing_dict()),
            )
            ctx = NodeContext(config=config, domain=config.domain, storage=storage, hub=hub,
                              sessions=sessions, router=router)
            self.ctx = ctx
            im.register_all(hub, ctx)
            async with trio.open_nursery() as nursery:
                ctx.nursery = self._nursery = nursery
                with trio.CancelScope() as self._cancel:
                    if config.mesh.enabled:
                        from meshxmpp.mesh.service import MeshService

                        mesh = MeshService(ctx)
                        ctx.mesh = router.mesh = mesh
                        ctx.node_name = mesh.name
                        self.mesh = mesh
                        # Joined (the cluster's sessions known) before any client can bind.
                        await nursery.start(mesh.run)
                    if config.components.service:
                        from meshxmpp.component.listener import ComponentListener

                        self.components = ComponentListener(ctx)
                        await nursery.start(self.components.run)  # hooks in before clients come
                    self.c2s = C2SListener(ctx)
                    await nursery.start(self.c2s.run)
                    if config.c2s.direct_tls_port is not None:
                        self.c2s_tls = C2SListener(ctx, direct_tls=True)
                        await nursery.start(self.c2s_tls.run)
                    if config.http.enabled:
                        self.http = HttpServer(ctx, bind=config.http.bind, port=config.http.port, node=self)
                        await nursery.start(self.http.run)
                    if self._want_signals():
                        nursery.start_soon(self._signals)
                    log.info("node serving %s: c2s on %s:%d", config.domain, config.c2s.bind, self.c2s_port)
                    task_status.started(self)
                    await trio.sleep_forever()
                # Shutdown: tell every client, let the connection tasks drain and end.
                if not self._killed:
                    await self._shutdown(ctx)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await storage.close()
            self.stopped.set()
            log.info("node stopped")

    def stop(self) -> None:
        """Begin a clean shutdown (sync; ``await node.stopped.wait()`` to wait for it)."""
        if self._cancel is not None:
            self._cancel.cancel()

    def kill(self) -> None:
        """Stop abruptly, as a crash would (for tests): no stream errors to clients, no goodbye to
        the mesh, nothing drained; every socket is simply closed. Storage is still closed."""
        self._killed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _shutdown(self, ctx: NodeContext) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            sessions = list(ctx.sessions.all())
            for session in sessions:
                session.close("system-shutdown")
            for session in sessions:
                await ctx.router.session_ended(session)
        if ctx.mesh is not None:
            # Unshielded: the forwards of the goodbyes above drain, then we leave the mesh.
            with trio.move_on_after(5):
                await ctx.mesh.shutdown()

    def _want_signals(self) -> bool:
        if self._handle_signals is not None:
            return self._handle_signals
        return threading.current_thread() is threading.main_thread()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                self.stop()
                return
