"""Composition root: builds every part of one node from a Config and owns the top nursery.

Graceful shutdown (``stop()``, SIGTERM, SIGINT; docs/operations.md), all within ``[shutdown] timeout``:
the client listeners stop accepting; every client reader finishes the stanza in hand and reads no more;
the sessions end (unbound, so what arrives for them from now on goes to other resources or offline
storage; contacts see them leave); each client gets, behind what its outbox holds,
``<see-other-host/>`` naming a live node (``[shutdown] redirect``) or ``<system-shutdown/>``; the outboxes
are flushed (bounded); then the node leaves the mesh (``MeshService.shutdown``: forwards drained, LEFT,
links closed). Whatever the deadline cuts short is logged. ``kill()`` stays abrupt.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Awaitable, Callable
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

_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
#: With a mesh, the share of ``[shutdown] timeout`` the clients get (readers stopped, sessions ended,
#: outboxes flushed); the rest is for leaving the mesh. Without a mesh they get all of it.
CLIENT_SHARE = 0.5
#: Of the mesh's share, what is kept for saying goodbye (LEFT) after the forwards have drained.
LEAVE_RESERVE = 1.0
#: At the end, how long connections may still linger for the client's end of stream.
SHUTDOWN_LINGER = 0.5


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
        self.settings: Any = None  # cluster_settings.SettingsWatcher once running
        self.litestream: Any = None  # storage.litestream.Litestream while [storage.litestream] replicates
        self._cancel: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._killed = False
        #: True from ``stop()`` on (a graceful shutdown is running or about to).
        self.stopping = False
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
        storage = self._storage if self._storage is not None else open_storage(self.config)
        # [storage.litestream]: restored if missing and replicating before the storage opens (so
        # before any client connects); stopped after it closed, the node's last write (its final
        # sync ships that write). storage/litestream.py; a no-op without a replica.
        from meshxmpp.storage.litestream import replication

        async with replication(self.config, storage) as self.litestream:
            await self._run(storage, task_status=task_status)

    async def _run(self, storage: Storage, *, task_status: Any) -> None:
        config = self.config
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
                    # Cluster settings from the database override the file's (meshxmpp.cluster_settings).
                    from meshxmpp.cluster_settings import SettingsWatcher

                    self.settings = await nursery.start(SettingsWatcher(ctx).run)
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
                    if ctx.mesh is not None:
                        address = self.c2s_address()
                        if address is not None:
                            ctx.mesh.publish_c2s_address(address)  # where others redirect clients to
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

    def c2s_address(self) -> str | None:
        """The client address this node publishes for see-other-host redirects: ``[shutdown]
        advertise``; else, with ``[shutdown] redirect`` on (the nodes of a cluster share it), the c2s
        bind address and port when bind is a specific address; else None (nothing published)."""
        shutdown = self.config.shutdown
        if shutdown.advertise is not None:
            return shutdown.advertise
        bind = self.config.c2s.bind
        if not shutdown.redirect:
            return None
        if bind in _WILDCARDS or self.c2s is None:
            return None
        host = f"[{bind}]" if ":" in bind else bind
        return f"{host}:{self.c2s_port}"

    def stop(self) -> None:
        """Begin a graceful shutdown (sync; ``await node.stopped.wait()`` to wait for it)."""
        self.stopping = True
        if self.ctx is not None:
            self.ctx.stopping = True
        if self._cancel is not None:
            self._cancel.cancel()

    def kill(self) -> None:
        """Stop abruptly, as a crash would (for tests): no stream errors to clients, no goodbye to
        the mesh, nothing drained; every socket is simply closed. Storage is still closed."""
        self._killed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _shutdown(self, ctx: NodeContext) -> None:
        timeout = self.config.shutdown.timeout
        began = trio.current_time()
        deadline = began + timeout
        mesh = ctx.mesh
        clients_deadline = began + timeout * (CLIENT_SHARE if mesh is not None else 1.0)
        log.info("shutting down (at most %.1f s)", timeout)
        cut: list[str] = []

        async def bounded(what: str, until: float, work: Callable[[], Awaitable[object]]) -> None:
            with trio.move_on_at(until) as scope:
                await work()
            if scope.cancelled_caught:
                cut.append(what)

        listeners = [x for x in (self.c2s, self.c2s_tls) if x is not None]
        # 1. No new clients; no more redirects to us from nodes that stop at the same time.
        for listener in listeners:
            listener.stop_accepting()
        if mesh is not None:
            mesh.publish_c2s_address(None)

        async def not_accepting() -> None:
            for listener in listeners:
                await listener.not_accepting.wait()

        await bounded("closing the client listeners", clients_deadline, not_accepting)
        # 2. Every reader finishes the stanza in hand (routed: delivered, forwarded or stored) and
        #    reads no more: what a client sent after it was never accepted.
        conns = [conn for listener in listeners for conn in listener.connections()]
        for conn in conns:
            conn.stop_reading()

        async def readers_stopped() -> None:
            for conn in conns:
                await conn.reader_done.wait()

        await bounded("stopping the client readers", clients_deadline, readers_stopped)
        # 3. End the sessions while their connections are still open: from now on what arrives for
        #    these users goes to their other resources or to offline storage, and contacts see them
        #    leave. What was delivered before is in the outboxes, ahead of the stream error.
        sessions = list({id(s): s for s in [c.session for c in conns if c.session.bound]
                         + list(ctx.sessions.all())}.values())

        async def end_sessions() -> None:
            for session in sessions:
                await ctx.router.session_ended(session)

        await bounded("ending the sessions", clients_deadline, end_sessions)
        # 4. Tell every client, behind what its outbox holds.
        targets = self._redirect_targets(ctx)
        conns.sort(key=lambda c: (c.session.jid_str, c.peer))
        for k, conn in enumerate(conns):
            conn.close_for_shutdown(targets[k % len(targets)] if targets else None)
        for session in sessions:  # any not among the connections (none today): at least close them
            session.close("system-shutdown")
        if targets:
            log.info("redirecting %d clients to %s", len(conns), ", ".join(targets))

        # 5. Flush the outboxes (a client that does not read is cut off at the deadline).
        async def flushed() -> None:
            for conn in conns:
                await conn.writer_done.wait()

        await bounded("flushing the client outboxes", clients_deadline, flushed)
        unflushed = [c for c in conns if not c.writer_done.is_set()]
        for conn in unflushed:
            conn.session.abort("shutdown-timeout")
        if unflushed:
            cut[-1] += f" ({len(unflushed)} clients not flushed and disconnected)"
        # 5b. External components are told too (their stanzas in flight were routed like a client's).
        if self.components is not None:
            await bounded("closing the component connections", clients_deadline, self.components.shutdown)
        # 6. Leave the mesh: the forwards of what the clients sent drain, then LEFT, then the links close.
        if mesh is not None:
            core = mesh.core

            async def drained() -> None:
                while mesh.busy or (core is not None and core.forwarder.statistics().in_flight):  # noqa: ASYNC110
                    await trio.sleep(0.01)  # bounded poll of two counters while the network drains

            leave_at = max(trio.current_time(), deadline - min(LEAVE_RESERVE, timeout / 4))
            await bounded("draining forwarded stanzas", leave_at, drained)
            await bounded("leaving the mesh", deadline, mesh.shutdown)

        # 7. Connections still lingering (reading until the client's end of stream, so that closing
        #    does not reset the connection before the client has read the stream error) get a little
        #    longer, within the deadline.
        async def closed() -> None:
            for conn in conns:
                await conn.done.wait()

        with trio.move_on_at(min(deadline, trio.current_time() + SHUTDOWN_LINGER)):
            await closed()
        for conn in conns:
            conn.stop_lingering()
        elapsed = trio.current_time() - began
        if cut:
            log.warning("shutdown: cut short after %.1f s ([shutdown] timeout): %s", elapsed, "; ".join(cut))
        else:
            log.info("shutdown: clients told and flushed%s in %.2f s",
                     ", mesh left" if mesh is not None else "", elapsed)

    @staticmethod
    def _redirect_targets(ctx: NodeContext) -> list[str]:
        """Live nodes' client addresses, in node-name order (clients are spread round-robin)."""
        if not ctx.config.shutdown.redirect or ctx.mesh is None:
            return []
        addresses = ctx.mesh.c2s_addresses()
        return [addresses[name] for name in sorted(addresses)]

    def _want_signals(self) -> bool:
        if self._handle_signals is not None:
            return self._handle_signals
        return threading.current_thread() is threading.main_thread()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopping:
                    log.warning("received %s again, stopping now", name)
                    self.kill()
                    return
                log.info("received %s, shutting down gracefully", name)
                self.stop()
