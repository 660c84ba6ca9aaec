"""Trio glue for external component connections (XEP-0114) on ``[components] bind:port``.

One task per connection reads 64 KiB chunks, feeds them to the sans-IO
`component.handshake.ComponentStream` and performs its effects in order; a second task, the
connection's writer, is ``c2s.session.Session.write_loop`` (the same coalescing, bounded outbox as a
client: ``[c2s] outbox_limit`` and ``write_timeout``). The handshake must finish within
``[c2s] negotiation_timeout``, an established connection is closed after ``[c2s] idle_timeout``
without input, and the parser limits are the client ones (``max_stanza_size_preauth`` before the
handshake, ``max_stanza_size`` and ``max_depth`` after). An accepted stanza goes to
``ctx.router.route(el, None)``; an awaitable result is awaited before the next stanza is handled, so
one connection's stanzas keep their order. Nothing raised inside a connection escapes it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.c2s.listener import peer_name
from meshxmpp.c2s.session import Session, flush_held, hold_wakeups
from meshxmpp.component.handshake import Close, ComponentStream, Effect, Established, Send, Stanza
from meshxmpp.component.routing import ComponentRouter

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext

__all__ = ["ComponentListener", "ComponentListenerStatistics"]

log = logging.getLogger("meshxmpp.component")

READ_SIZE = 65536
LINGER_TIMEOUT = 2.0
LINGER_MAX_BYTES = 1 << 20
CLEANUP_TIMEOUT = 5.0
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class ComponentListenerStatistics:
    port: int
    accepted: int
    active: int
    established: int  # connections that passed the handshake (since start)
    handshake_failures: int
    domains: tuple[str, ...]  # component domains connected to this node now


class ComponentListener:
    """Listens on ``[components] bind:port`` for the components of ``[[components.service]]``.

    ``router``: the node's `ComponentRouter` (one is made and registered on ``ctx.hub`` if not
    given). ``rng`` draws the stream ids (default: the system's CSPRNG)."""

    def __init__(self, ctx: NodeContext, *, router: ComponentRouter | None = None,
                 rng: random.Random | None = None) -> None:
        self.ctx = ctx
        if router is None:
            router = ComponentRouter(ctx)
            router.register(ctx.hub)
        self.router = router
        self.rng = rng if rng is not None else random.SystemRandom()
        self.secrets = {s.domain: s.secret for s in ctx.config.components.service}
        self.port: int = ctx.config.components.port  # the bound port once run() has started
        self._accepted = 0
        self._active = 0
        self._connections: set[_Connection] = set()
        self._idle = trio.Event()
        self._idle.set()
        self._established = 0
        self._failures = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)`` once listening."""
        cfg = self.ctx.config.components
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.bind)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle_socket, listeners)
                log.info("components listening on %s:%d for %s", cfg.bind, self.port,
                         ", ".join(sorted(self.secrets)) or "nobody")
                task_status.started(self.port)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _handle_socket(self, stream: trio.SocketStream) -> None:
        await self.handle_stream(stream, peer_name(stream))

    async def handle_stream(self, stream: trio.abc.Stream, peer: str) -> None:
        """Serve one component connection on ``stream`` until it ends. Never raises (but Cancelled)."""
        self._accepted += 1
        self._active += 1
        conn = _Connection(self, stream, peer)
        self._connections.add(conn)
        self._idle = trio.Event()
        try:
            await conn.run()
        finally:
            self._active -= 1
            self._connections.discard(conn)
            if not self._connections:
                self._idle.set()

    async def shutdown(self) -> None:
        """The node stops: every component gets ``<system-shutdown/>`` after what its outbox holds;
        returns once their connections ended (the caller bounds the wait)."""
        for conn in list(self._connections):
            conn.out.close("system-shutdown")
        await self._idle.wait()

    def statistics(self) -> ComponentListenerStatistics:
        return ComponentListenerStatistics(
            port=self.port, accepted=self._accepted, active=self._active, established=self._established,
            handshake_failures=self._failures, domains=tuple(self.router.local_domains()),
        )


class _Connection:
    def __init__(self, listener: ComponentListener, stream: trio.abc.Stream, peer: str) -> None:
        ctx = listener.ctx
        c2s = ctx.config.c2s
        self.listener = listener
        self.ctx = ctx
        self.c2s = c2s
        self.stream = stream
        self.peer = peer
        # The component's outbox: a Session used only for its coalescing writer (never bound, never
        # in the session registry).
        self.out = Session(stream, peer=peer, node=ctx.node_name, outbox_limit=c2s.outbox_limit,
                           write_timeout=c2s.write_timeout, now=ctx.now())
        self.cs = ComponentStream(listener.secrets, rng=listener.rng,
                                  max_stanza_size=c2s.max_stanza_size_preauth,
                                  max_stanza_size_after=c2s.max_stanza_size, max_depth=c2s.max_depth)
        self.domain: str | None = None  # set once the handshake succeeded

    async def run(self) -> None:
        out = self.out
        try:
            async with trio.open_nursery() as nursery:
                out.cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                await self._reader()
        except Exception:  # a bug in the writer; the reader catches its own
            log.exception("%s: internal error in component connection", self.peer)
            out.abort("internal-error")
        finally:
            await self._cleanup()

    async def _writer(self) -> None:
        await self.out.write_loop()
        assert self.out.cancel_scope is not None
        self.out.cancel_scope.cancel()

    async def _reader(self) -> None:
        out, cs = self.out, self.cs
        try:
            with trio.CancelScope(deadline=trio.current_time() + self.c2s.negotiation_timeout) as scope:
                while True:
                    if cs.error_pending:
                        data = b""  # every event before the violation is handled: raise it now
                    else:
                        data = await self.stream.receive_some(READ_SIZE)
                        if not data:
                            log.debug("%s: component closed the connection", self.peer)
                            out.abort("eof")
                            return
                        out.bytes_in += len(data)
                    await self._apply(cs.feed(data))
                    if out.closed:
                        return
                    if self.domain is not None:  # established: from now on the idle deadline
                        scope.deadline = trio.current_time() + self.c2s.idle_timeout
            if scope.cancelled_caught:
                if self.domain is None:
                    log.info("%s: component handshake timed out", self.peer)
                    self.listener._failures += 1
                else:
                    log.info("%s: component %s idle for %.0f s", self.peer, self.domain, self.c2s.idle_timeout)
                await self._apply(cs.fail("connection-timeout"))
        except _NETWORK_ERRORS as exc:
            log.debug("%s: connection lost: %s", self.peer, exc)
            out.abort("connection-lost")
        except Exception:
            log.exception("%s: internal error", self.peer)
            await self._apply(cs.fail("internal-server-error"))
        finally:
            if not out.closed:
                out.abort("ended")

    async def _apply(self, effects: Iterable[Effect]) -> None:
        # Held wakeups (c2s/session.py): deliveries to clients during one read are written once per
        # recipient at the end, from this task; flush_held() before every await (and in finally).
        hold_wakeups()
        try:
            await self._apply_held(effects)
        finally:
            flush_held()

    async def _apply_held(self, effects: Iterable[Effect]) -> None:
        out = self.out
        route = self.ctx.router.route
        for effect in effects:
            if type(effect) is Stanza:
                out.stanzas_in += 1
                result = route(effect.element, None)
                if result is not None:
                    flush_held()
                    await result
                    hold_wakeups()
            elif type(effect) is Send:
                out.send_bytes(effect.data)
            elif type(effect) is Established:
                self.domain = effect.domain
                self.listener._established += 1
                self.listener.router.attach(effect.domain, out)
                log.info("%s: component %s connected", self.peer, effect.domain)
            elif type(effect) is Close:
                if effect.condition in ("not-authorized", "host-unknown"):
                    self.listener._failures += 1
                    log.info("%s: component refused (%s) for %r", self.peer, effect.condition, self.cs.domain)
                elif effect.condition is not None:
                    log.info("%s: closing component stream (%s: %s)", self.peer, effect.condition, effect.text)
                out.close(effect.condition, effect.text)
            if out.closed:
                return

    async def _cleanup(self) -> None:
        out = self.out
        if self.domain is not None:
            self.listener.router.detach(self.domain, out)
            log.info("%s: component %s disconnected (%s)", self.peer, self.domain, out.close_reason)
        shutting_down = trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):
            if not out.aborted and not shutting_down:
                await self._linger()
            with trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await self.stream.aclose()
                except (*_NETWORK_ERRORS, OSError) as exc:
                    log.debug("%s: aclose: %s", self.peer, exc)

    async def _linger(self) -> None:
        # Half-close, then drain for a short while: closing with unread input sends a RST, which can
        # destroy our stream error before the component has read it.
        with trio.move_on_after(LINGER_TIMEOUT):
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < LINGER_MAX_BYTES:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    drained += len(data)
            except (*_NETWORK_ERRORS, trio.BusyResourceError, OSError):
                pass
