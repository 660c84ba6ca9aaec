"""Trio glue for client connections: accept, TLS, one nursery per connection, reader and writer.

Per connection (``handle_stream``): the connection's nursery runs the session's single writer task
(``Session.write_loop``) while this task reads. The reader feeds 64 KiB chunks to the sans-IO
``XmlStream``, hands the events to the sans-IO ``Negotiation`` and performs its effects until a
resource is bound, all under ``fail_after``-style deadlines from ``[c2s]``. After binding, every
complete stanza of one read is stamped with the session's JID and routed before the next ``await``;
the router's result is awaited only when it is awaitable (storage work), so one connection's
stanzas keep their order. What those stanzas queue for other sessions is written at the end of the
read by this task (``session.hold_wakeups``/``flush_held``), and on a plain TCP socket the bound
stream is read without ``receive_some`` (see ``_Connection._established``). Nothing raised inside
a connection escapes it.

Graceful shutdown (driven by ``Node``; docs/operations.md): ``stop_accepting()`` ends the accept
loops (connections already accepted keep running in their own nursery); ``stop_reading()`` makes every
reader stop at a stanza boundary (the stanza in hand is routed, nothing more is read; a reader
parked waiting for input is cancelled there), without ending the connection; ``close_for_shutdown()``
queues the stream error behind what the outbox holds, and the writer ends the connection once it is
written.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import random
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.c2s import tls
from meshxmpp.c2s.negotiation import (
    AuthFailed,
    AuthSucceeded,
    Bind,
    Close,
    Effect,
    Input,
    NeedCredentials,
    Negotiation,
    Send,
    Stanza,
    StartTLS,
    State,
    classify,
)
from meshxmpp.c2s.session import Session, flush_held, hold_wakeups, socket_fileno
from meshxmpp.jid import JID, InvalidJID
from meshxmpp.xml import ns
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.events import StanzaReceived, XmlEvent
from meshxmpp.xml.serialize import escape_text
from meshxmpp.xml.stream import XmlStream

if TYPE_CHECKING:
    from meshxmpp.c2s.sasl import ScramCredentials
    from meshxmpp.context import NodeContext

__all__ = ["AuthThrottle", "C2SListener", "ListenerStatistics", "shutdown_error"]

log = logging.getLogger("meshxmpp.c2s")

READ_SIZE = 65536
#: After our closing tag: how long to keep reading (and discarding) so that closing the socket with
#: unread input does not reset the connection before the client has read our stream error.
LINGER_TIMEOUT = 2.0
LINGER_MAX_BYTES = 1 << 20
#: Bound on the shielded cleanup (router.session_ended, aclose).
CLEANUP_TIMEOUT = 5.0
SECRET_FILE = "c2s-secret.key"
#: The idle deadline is extended by ``idle_timeout * IDLE_SLACK`` more than needed, so that it
#: moves once per that many seconds, not on every read (see ``_Connection._established``).
IDLE_SLACK = 1 / 16
_ROUTABLE = frozenset({"message", "presence", "iq"})
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)
_wait_readable = trio.lowlevel.wait_readable
_checkpoint = trio.lowlevel.checkpoint
_read = os.read


def shutdown_error(redirect: str | None = None) -> bytes:
    """The stream error of a node that shuts down: ``<see-other-host>host:port</see-other-host>``
    (RFC 6120 4.9.3.19; an IPv6 address in brackets) when ``redirect`` is given, else
    ``<system-shutdown/>`` (4.9.3.20)."""
    if redirect is None:
        body = f"<system-shutdown xmlns='{ns.STREAM_ERRORS}'/>"
    else:
        body = f"<see-other-host xmlns='{ns.STREAM_ERRORS}'>{escape_text(redirect)}</see-other-host>"
    return f"<stream:error>{body}</stream:error>".encode()


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    port: int
    accepted: int
    active: int
    auth_failures: int


class AuthThrottle:
    """Slows down repeated authentication failures from one address.

    The n-th failure within ``window`` seconds of the previous one costs ``base_delay * 2**(n-1)``
    seconds (at most ``max_delay``) before the client hears the answer. Unknown users and wrong
    passwords are counted alike. The table is bounded: past ``max_entries`` the stalest go.
    """

    def __init__(
        self,
        *,
        base_delay: float,
        clock: Callable[[], float],
        window: float = 900.0,
        max_delay: float = 30.0,
        max_entries: int = 65536,
    ) -> None:
        self.base_delay = base_delay
        self.window = window
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, last failure)

    def failed(self, address: str) -> float:
        """Record a failure; return the delay to apply before answering it."""
        now = self._clock()
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.window:
            count = 0
        count += 1
        self._failures[address] = (count, now)  # re-inserted: the dict stays ordered by recency
        if len(self._failures) > self.max_entries:
            self._prune(now)
        return min(self.max_delay, self.base_delay * 2.0 ** min(count - 1, 32))

    def failures(self, address: str) -> int:
        count, last = self._failures.get(address, (0, 0.0))
        return count if self._clock() - last <= self.window else 0

    def _prune(self, now: float) -> None:
        for address in [a for a, (_, last) in self._failures.items() if now - last > self.window]:
            del self._failures[address]
        while len(self._failures) > self.max_entries:
            del self._failures[next(iter(self._failures))]



def peer_name(stream: trio.SocketStream) -> str:
    """``host:port`` (``[v6]:port``) of the peer of an accepted socket, for logs; ``?`` if unknown."""
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

class C2SListener:
    """Client-to-server listener on ``[c2s] port`` (or ``direct_tls_port`` with ``direct_tls``).

    ``ssl_context``: defaults to ``tls.ssl_context(config)`` (configured or development
    certificate). ``clock`` drives the auth-failure throttle; ``rng`` the stream ids, nonces and
    generated resources; ``fake_salt_key`` defaults to a secret kept in ``data_dir``.
    """

    def __init__(
        self,
        ctx: NodeContext,
        *,
        direct_tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        fake_salt_key: bytes | None = None,
    ) -> None:
        self.ctx = ctx
        self.direct_tls = direct_tls
        config = ctx.config
        c2s = config.c2s
        configured = c2s.direct_tls_port if direct_tls else c2s.port
        self.port: int = configured or 0  # the bound port once run() has started
        self.ssl_context = ssl_context if ssl_context is not None else tls.ssl_context(config)
        self.rng = rng if rng is not None else random.SystemRandom()
        if fake_salt_key is None:
            fake_salt_key = tls.load_or_create_secret(Path(config.data_dir) / SECRET_FILE)
        self.fake_salt_key = fake_salt_key
        self.throttle = AuthThrottle(
            base_delay=c2s.auth_failure_delay, clock=clock if clock is not None else trio.current_time
        )
        self._accepted = 0
        self._active = 0
        self._auth_failures = 0
        self._connections: set[_Connection] = set()
        # Cancelled by stop_accepting(): ends the accept loops, not the connections.
        self._accepting = trio.CancelScope()
        #: Set once the listening sockets are closed (after stop_accepting(), or when run() ends).
        self.not_accepting = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)`` once listening."""
        c2s = self.ctx.config.c2s
        port = (c2s.direct_tls_port if self.direct_tls else c2s.port) or 0
        listeners = await trio.open_tcp_listeners(port, host=c2s.bind)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            # Connections live in their own nursery, so that the accept loops can end first.
            async with trio.open_nursery() as connections:
                with self._accepting:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(
                            functools.partial(trio.serve_listeners, handler_nursery=connections),
                            self._handle_socket,
                            listeners,
                        )
                        log.info(
                            "c2s%s listening on %s:%d",
                            " (direct TLS)" if self.direct_tls else "",
                            c2s.bind,
                            self.port,
                        )
                        task_status.started(self.port)
                await self._close_listeners(listeners)
                log.info("c2s%s on port %d: no longer accepting connections",
                         " (direct TLS)" if self.direct_tls else "", self.port)
                # The connections end as the node closes them; the nursery waits for them.
        finally:
            await self._close_listeners(listeners)

    async def _close_listeners(self, listeners: list[trio.SocketListener]) -> None:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        self.not_accepting.set()

    # ------------------------------------------------------------------ graceful shutdown

    def stop_accepting(self) -> None:
        """End the accept loops now; the listening sockets close at once (``not_accepting``)."""
        self._accepting.cancel()

    def connections(self) -> Iterator[_Connection]:
        """The open connections (a snapshot)."""
        return iter(list(self._connections))

    async def _handle_socket(self, stream: trio.SocketStream) -> None:
        await self.handle_stream(stream, peer_name(stream))

    async def handle_stream(self, stream: trio.abc.Stream, peer: str) -> None:
        """Serve one client connection on ``stream`` until it ends. Never raises (but Cancelled)."""
        self._accepted += 1
        self._active += 1
        conn = _Connection(self, stream, peer)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._active -= 1
            self._connections.discard(conn)
            conn.done.set()

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(
            port=self.port, accepted=self._accepted, active=self._active, auth_failures=self._auth_failures
        )


def _address(peer: str) -> str:
    """The address part of ``host:port`` / ``[v6]:port``: failures are counted per address."""
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _Connection:
    """The state of one connection, alive for the duration of ``C2SListener.handle_stream``."""

    def __init__(self, listener: C2SListener, stream: trio.abc.Stream, peer: str) -> None:
        ctx = listener.ctx
        c2s = ctx.config.c2s
        self.listener = listener
        self.ctx = ctx
        self.c2s = c2s
        self.stream = stream
        self.peer = peer
        self.address = _address(peer)
        self.session = Session(
            stream,
            peer=peer,
            node=ctx.node_name,
            outbox_limit=c2s.outbox_limit,
            write_timeout=c2s.write_timeout,
            now=ctx.now(),
        )
        self.neg = Negotiation(
            domain=ctx.domain,
            rng=listener.rng,
            require_encryption=c2s.require_encryption,
            tls_available=listener.ssl_context is not None,
            encrypted=listener.direct_tls,
            max_auth_attempts=c2s.max_auth_attempts,
            fake_salt_key=listener.fake_salt_key,
        )
        self.xml = XmlStream(max_stanza_size=c2s.max_stanza_size_preauth, max_depth=c2s.max_depth)
        self.pending: deque[XmlEvent] = deque()
        self.in_handshake = False
        # Graceful shutdown: ``draining`` makes the reader stop at the next stanza boundary;
        # ``waiting`` is true only while the reader is parked waiting for input, the one place
        # where cancelling it (``read_scope``) cuts no stanza in half.
        self.draining = False
        self.waiting = False
        self.read_scope = trio.CancelScope()
        self.reader_done = trio.Event()
        self.writer_done = trio.Event()
        self.done = trio.Event()  # set by the listener once the connection is closed
        self._linger_scope: trio.CancelScope | None = None
        self._no_linger = False

    # ------------------------------------------------------------------ graceful shutdown

    def stop_reading(self) -> None:
        """Read no more: the stanza in hand is finished, the rest is left unread (``reader_done``
        is set once the reader has stopped). The connection stays open for what is queued."""
        self.draining = True
        if self.waiting:
            self.read_scope.cancel()

    def stop_lingering(self) -> None:
        """Close now rather than wait for the client's end of stream (the shutdown deadline)."""
        self._no_linger = True
        if self._linger_scope is not None:
            self._linger_scope.cancel()

    def close_for_shutdown(self, redirect: str | None) -> None:
        """Queue the shutdown stream error (after our stream header, if none was sent yet) behind
        what the outbox holds, then the footer; the writer ends the connection once written."""
        session = self.session
        if session.closed:
            return
        if self.in_handshake:
            session.abort("system-shutdown")  # no clean way to speak mid-handshake
            return
        for effect in self.neg.fail("system-shutdown"):
            if isinstance(effect, Send):
                session.send_bytes(effect.data)
        session.close("see-other-host" if redirect else "system-shutdown", error=shutdown_error(redirect))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        session = self.session
        try:
            async with trio.open_nursery() as nursery:
                session.cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                await self._reader()
        except Exception:  # a bug in the writer; the reader catches its own
            log.exception("%s: internal error in connection", self.peer)
            session.abort("internal-error")
        finally:
            await self._cleanup()

    async def _writer(self) -> None:
        try:
            await self.session.write_loop()
        finally:
            self.writer_done.set()
        # Everything is written (or the transport failed): end the connection, reader included.
        assert self.session.cancel_scope is not None
        self.session.cancel_scope.cancel()

    async def _reader(self) -> None:
        session = self.session
        try:
            with self.read_scope:
                await self._read()
        except _NETWORK_ERRORS as exc:
            # Connection reset, TLS failure (trio reports ssl errors as BrokenResourceError)...
            log.debug("%s: connection lost: %s", self.peer, exc)
            session.abort("connection-lost")
        except Exception:
            log.exception("%s: internal error", self.peer)
            self._fail("internal-server-error")
        finally:
            self.waiting = False
            self.reader_done.set()
            if not session.closed and not self.draining:
                session.abort("ended")
            # draining: the writer still writes what is queued, then the shutdown stream error.

    async def _read(self) -> None:
        session = self.session
        with trio.move_on_after(self.c2s.negotiation_timeout) as scope:
            if self.listener.direct_tls:
                await self._tls_handshake()
            bound = await self._negotiate()
        if scope.cancelled_caught:
            log.debug("%s: negotiation timed out in state %s", self.peer, self.neg.state.value)
            if self.in_handshake:
                session.abort("tls-timeout")  # no clean way to speak mid-handshake
            else:
                self._fail("connection-timeout")
        elif bound and not self.draining:
            await self._established()

    async def _cleanup(self) -> None:
        session = self.session
        # Cancelled from outside (node shutdown): no lingering, finish quickly.
        shutting_down = trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):
            if session.bound:
                with trio.move_on_after(CLEANUP_TIMEOUT):
                    try:
                        await self.ctx.router.session_ended(session)
                    except Exception:
                        log.exception("%s: router.session_ended failed", self.peer)
            if not session.aborted and not shutting_down and not self._no_linger:
                await self._linger()
            with trio.move_on_after(CLEANUP_TIMEOUT):
                try:
                    await self.stream.aclose()
                except (*_NETWORK_ERRORS, OSError, ssl.SSLError) as exc:
                    log.debug("%s: aclose: %s", self.peer, exc)
        log.debug("%s: connection closed (%s)", self.peer, session.close_reason)

    async def _linger(self) -> None:
        # Half-close, then drain what the client still sends for a short while: closing a socket
        # with unread input sends a RST, which can destroy our stream error before it is read.
        with trio.move_on_after(LINGER_TIMEOUT) as self._linger_scope:
            try:
                if isinstance(self.stream, trio.abc.HalfCloseableStream):
                    await self.stream.send_eof()
                drained = 0
                while drained < LINGER_MAX_BYTES:
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    drained += len(data)
            except (*_NETWORK_ERRORS, trio.BusyResourceError, OSError, ssl.SSLError):
                pass

    # ------------------------------------------------------------------ reading

    async def _receive(self) -> bool:
        """Read one chunk and parse it into ``pending``; False when the stream ended."""
        if self.xml.error_pending:
            # Every event before the violation has been handled: raise it now, before waiting on
            # a peer that may never send another byte.
            return self._feed(b"")
        if self.draining:
            return False
        self.waiting = True
        data = await self.stream.receive_some(READ_SIZE)
        self.waiting = False
        if self.draining:
            return False  # read while being stopped: none of it is handled
        if not data:
            log.debug("%s: peer closed the connection", self.peer)
            self.session.abort("eof")
            return False
        self.session.bytes_in += len(data)
        return self._feed(data)

    def _feed(self, data: bytes) -> bool:
        try:
            self.pending.extend(self.xml.feed(data))
        except StreamError as err:
            log.debug("%s: stream error from parser: %s", self.peer, err.condition)
            self._fail(err.condition, err.text)
            return False
        return True

    def _fail(self, condition: str, text: str | None = None) -> None:
        """Close with a stream error (after our stream header, if none was sent yet)."""
        for effect in self.neg.fail(condition, text):
            if isinstance(effect, Send):
                self.session.send_bytes(effect.data)
            elif isinstance(effect, Close):
                self.session.close(effect.condition, effect.text)

    async def _negotiate(self) -> bool:
        """Run the negotiation to a bound resource (True) or the end of the stream (False)."""
        neg, pending, session = self.neg, self.pending, self.session
        while True:
            while pending:
                await self._apply(neg.receive(pending.popleft()))
                if neg.state is State.BOUND:
                    return True
                if session.closed or self.draining:
                    return False
            if not await self._receive():
                return False

    async def _established(self) -> None:
        """The bound stream: route stanzas, keep the idle deadline.

        On a plain TCP transport the reader reads the socket itself, with fewer system calls and
        checkpoints than ``receive_some`` (which tries a read before every wait, and on an idle
        socket that read fails with EAGAIN): after a read that did not fill the buffer the socket
        is most likely drained, so it waits for readability first; after a full read it tries
        at once, behind a checkpoint (a client that keeps the socket full must not starve the
        other tasks). Errors map as in ``SocketStream``. Only this task reads this socket, and
        the connection closes it only after this task has returned; a closed socket reports
        descriptor -1, so a descriptor number reused by another connection is never read.

        The idle deadline is moved lazily: a read pushes it to ``now + idle * (1 + IDLE_SLACK)``
        only once less than ``idle`` is left, so a busy connection touches Trio's deadline heap
        about once per ``idle * IDLE_SLACK`` seconds instead of once per read. The stream is
        closed after between ``idle`` and ``idle * (1 + IDLE_SLACK)`` seconds without input."""
        session, neg, pending = self.session, self.neg, self.pending
        route = self.ctx.router.route
        now = self.ctx.now
        jid = session.jid_str
        idle = self.c2s.idle_timeout
        extend = idle * (1.0 + IDLE_SLACK)
        stream = self.stream
        fileno = socket_fileno(stream)
        client_ns = ns.CLIENT
        current_time = trio.current_time
        deadline = current_time() + idle
        drained = True  # the last read did not fill the buffer
        with trio.CancelScope(deadline=deadline) as idle_scope:
            while True:
                # Held wakeups (session.py): what the stanzas of this read queue for parked
                # writers is written by flush_held(). Invariant: no await while held, so every
                # await below is preceded by flush_held() (the finally covers the exits).
                hold_wakeups()
                try:
                    while pending:
                        if self.draining:
                            return  # shutting down: the stanza in hand was the last one
                        event = pending.popleft()
                        if type(event) is StanzaReceived:
                            el = event.element
                            name = el.name
                            if (
                                el.ns == client_ns
                                and name in _ROUTABLE
                                and (name != "iq" or classify(event) is not Input.SESSION)
                            ):
                                session.stanzas_in += 1
                                el.set("from", jid)  # never trust the client's
                                result = route(el, session)
                                if result is not None:
                                    flush_held()
                                    await result
                                    hold_wakeups()
                                if session.closed:
                                    return
                                continue
                        # the legacy session iq, the closing tag, a stream error, anything else
                        flush_held()
                        await self._apply(neg.receive(event))
                        hold_wakeups()
                        if session.closed:
                            return
                finally:
                    flush_held()
                if self.draining:
                    return
                self.waiting = True
                if fileno is None:
                    data = await stream.receive_some(READ_SIZE)
                else:
                    if drained:
                        fd = fileno()
                        if fd < 0:
                            raise trio.ClosedResourceError("socket was already closed")
                        await _wait_readable(fd)
                    else:
                        await _checkpoint()
                    while True:
                        fd = fileno()
                        if fd < 0:
                            raise trio.ClosedResourceError("socket was already closed")
                        try:
                            data = _read(fd, READ_SIZE)
                            break
                        except BlockingIOError:
                            pass
                        except OSError as exc:
                            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
                        await _wait_readable(fd)
                    drained = len(data) < READ_SIZE
                self.waiting = False
                if self.draining:
                    return  # read while being stopped: none of it is handled
                if not data:
                    log.debug("%s: peer closed the connection", self.peer)
                    session.abort("eof")
                    return
                t = current_time()
                if t + idle > deadline:
                    deadline = t + extend
                    idle_scope.deadline = deadline
                session.last_activity = now()
                session.bytes_in += len(data)
                if not self._feed(data):
                    return
        if idle_scope.cancelled_caught and not self.draining:
            log.debug("%s: idle for %.0f s", self.peer, idle)
            session.close("connection-timeout")

    # ------------------------------------------------------------------ effects

    async def _apply(self, effects: Iterable[Effect]) -> None:
        session = self.session
        for effect in effects:
            match effect:
                case Send(data=data):
                    session.send_bytes(data)
                case StartTLS():
                    await self._starttls()
                case NeedCredentials(username=username):
                    creds = await self._credentials(username)
                    await self._apply(self.neg.provide_credentials(creds))
                case AuthFailed():
                    await self._auth_failed(effect)
                case AuthSucceeded():
                    self._auth_succeeded(effect)
                case Bind():
                    await self._bind(effect)
                case Stanza(element=el):
                    el.set("from", session.jid_str)
                    session.stanzas_in += 1
                    result = self.ctx.router.route(el, session)
                    if result is not None:
                        await result
                case Close(condition=condition, text=text):
                    session.close(condition, text)
            if session.closed:
                return

    async def _starttls(self) -> None:
        trailing = self.xml.restart()
        if trailing.strip() or self.pending:
            # Plaintext sent after <starttls/> must never reach the encrypted stream (STARTTLS
            # command injection); the client broke the protocol, so just drop it.
            log.debug("%s: data after <starttls/>, dropping the connection", self.peer)
            self.session.abort("starttls-injection")
            return
        await self.session.wait_flushed()  # <proceed/> goes out in clear
        if self.session.closed:
            return
        await self._tls_handshake()
        await self._apply(self.neg.tls_established())

    async def _tls_handshake(self) -> None:
        ssl_stream = trio.SSLStream(self.stream, self.listener.ssl_context, server_side=True)
        self.in_handshake = True
        await ssl_stream.do_handshake()
        self.in_handshake = False
        self.stream = ssl_stream
        self.session.replace_stream(ssl_stream)

    async def _credentials(self, username: str) -> dict[str, ScramCredentials] | None:
        try:
            user = JID.parse(f"{username}@{self.ctx.domain}")
        except InvalidJID:
            return None
        return await self.ctx.storage.accounts.get_credentials(str(user.bare))

    async def _auth_failed(self, effect: AuthFailed) -> None:
        if effect.condition != "not-authorized":
            return  # protocol slips (bad base64, unknown mechanism...) prove nothing about passwords
        self.listener._auth_failures += 1
        delay = self.listener.throttle.failed(self.address)
        log.info(
            "%s: authentication failed for %r (attempt %d on this stream), answering in %.1f s",
            self.peer,
            effect.username,
            effect.attempts,
            delay,
        )
        self.waiting = True  # a shutdown may cut this wait short (stop_reading)
        await trio.sleep(delay)
        self.waiting = False

    def _auth_succeeded(self, effect: AuthSucceeded) -> None:
        log.info("%s: authenticated as %s", self.peer, effect.jid)
        # RFC 6120 6.4.6: the stream restarts; bytes after </success>'s trigger are the new header.
        trailing = self.xml.restart()
        self.xml.max_stanza_size = self.c2s.max_stanza_size
        if trailing:
            self._feed(trailing)

    async def _bind(self, effect: Bind) -> None:
        ctx, session = self.ctx, self.session
        session.bind(effect.jid, now=ctx.now())
        replaced = ctx.sessions.bind(session)
        if replaced is not None and replaced is not session:
            log.info("%s: %s replaces the session from %s", self.peer, effect.jid, replaced.peer)
            replaced.close("conflict", "Replaced by a new connection")
        log.debug("%s: bound %s", self.peer, effect.jid)
        result = ctx.hub.fire("session/bound", session)
        if inspect.isawaitable(result):
            await result
