"""Trio glue for mesh links on port 5701: listen, dial, authenticate, read frames, coalesce writes.

One task per connection, in the transport's one nursery. A connection first runs the sans-IO
``wire.Handshake`` under ``handshake_timeout``; nothing a peer sends is framed past the hello, and
nothing is queued for it, before it has proved the shared secret. Then it becomes a link: this
task reads (64 KiB chunks, every complete frame handed to ``on_frame`` before the next ``await``)
while a writer task drains the link's outbox with one ``send_all`` per wakeup (PERFORMANCE.md).

``send()`` never blocks: it appends to the link's bounded outbox, or, with no link yet, to the
outbox of a background dial (``dial_timeout``; a failed dial puts the address in exponential
backoff, during which ``send()`` returns False at once). Two links between one pair of nodes (both
dialled at once) resolve the same way on both ends: keep the one dialled by the lower node name
(same dialer: the newer). A link closes with BYE both ways: the side that closes stops writing,
keeps reading until the peer's BYE or EOF (``close_timeout``), so frames in flight are delivered.
A link with no frame either way for ``idle_timeout`` is closed; the next ``send()`` dials again.

With ``ssl_contexts`` (mutual TLS with a cluster CA, ``MeshConfig.ssl_contexts()``), every connection
first completes a TLS handshake, under the same ``handshake_timeout``, and the HMAC handshake then runs
inside TLS. A TLS failure counts as an auth failure.
"""

from __future__ import annotations

import logging
import math
import random
import secrets as _secrets
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio

from meshxmpp.mesh.wire import (
    APP_KINDS,
    NONCE_SIZE,
    Authenticated,
    AuthFailed,
    FrameDecoder,
    Handshake,
    Kind,
    WireError,
    bye_reason,
    encode_frame,
    frame_header,
)

__all__ = ["ConnectionClosed", "MeshTransport", "PeerStatistics", "TransportStatistics", "backoff_delay"]

log = logging.getLogger("meshxmpp.mesh")

Address = tuple[str, int]
READ_SIZE = 65536
HANDSHAKE_READ_SIZE = 4096
_APP = frozenset(int(k) for k in APP_KINDS)
_NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_WILDCARDS = ("", "0.0.0.0", "::")
SSLContexts = tuple[ssl.SSLContext, ssl.SSLContext]  # (server side, client side)


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    addr: Address | None  # where we would dial it
    connected: bool
    outbound: bool | None  # we dialled the current link (None: no link)
    bytes_in: int
    bytes_out: int
    frames_in: int
    frames_out: int
    queued: int  # bytes in the current link's outbox


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    port: int
    links: int  # authenticated peers with a current link
    connections: int  # open sockets: handshaking, linked, closing
    dials: int
    dial_failures: int
    auth_failures: int  # a proof that matched no secret, either direction, or a failed TLS handshake
    handshake_failures: int  # any other failed handshake (timeout, garbage, EOF, our own name)
    protocol_errors: int  # an authenticated peer broke the framing
    duplicates: int  # connections closed because another link to the same peer won
    outbox_overflows: int
    refused: int  # inbound connections refused: too many handshakes, or shutting down
    backoff: tuple[Address, ...]  # addresses send() refuses now
    peers: Mapping[str, PeerStatistics]


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Reported to ``on_connection_closed`` for every connection that ends, and for failed dials."""

    peer: str | None  # None: it never authenticated
    remote: str  # host:port of the socket, or of the dial target
    outbound: bool
    dial_addr: Address | None
    reason: str


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random) -> float:
    """How long an address stays unreachable after its ``failures``-th failed dial in a row:
    ``base * 2**(failures-1)`` capped at ``cap``, the upper half jittered."""
    delay = min(cap, base * 2.0 ** min(failures - 1, 60))
    return delay / 2 + rng.uniform(0, delay / 2)


class _Counters:
    __slots__ = ("bytes_in", "bytes_out", "frames_in", "frames_out")

    def __init__(self) -> None:
        self.bytes_in = self.bytes_out = self.frames_in = self.frames_out = 0


class _Dial:
    """A dial in progress and the frames queued for it; they move onto the link once it is up."""

    __slots__ = ("addr", "aborted", "expected", "frames", "outbox", "scope")

    def __init__(self, addr: Address, expected: str | None) -> None:
        self.addr = addr
        self.expected = expected  # the peer name send() asked for, if it asked by name
        self.outbox = bytearray()
        self.frames = 0
        self.aborted = False
        self.scope: trio.CancelScope | None = None

    def abort(self) -> None:
        self.aborted = True
        if self.scope is not None:
            self.scope.cancel()


class _Link:
    """One connection: handshaking, then a link to ``peer``."""

    __slots__ = (
        "aborted", "closing", "counters", "current", "decoder", "dial_addr", "last_sent", "outbound",
        "outbox", "parked", "peer", "peer_bye", "read_scope", "reason", "remote", "scope", "sequence",
        "settled", "stream", "writing",
    )  # fmt: skip

    def __init__(self, stream: trio.SocketStream, *, outbound: bool, dial_addr: Address | None) -> None:
        self.stream: trio.abc.Stream = stream  # a trio.SSLStream around it once TLS is up
        self.outbound = outbound
        self.dial_addr = dial_addr
        try:
            host, port = stream.socket.getpeername()[:2]
            self.remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except OSError:
            self.remote = "?"
        self.peer: str | None = None
        self.sequence = 0
        self.counters = _Counters()
        self.decoder: FrameDecoder | None = None
        self.outbox = bytearray()
        self.current = False  # it is transport._links[peer]
        self.closing = False  # our BYE is queued: nothing more may be queued
        self.aborted = False
        self.writing = False
        self.peer_bye: str | None = None
        self.reason: str | None = None
        self.last_sent = 0.0
        self.parked: Any = None  # the writer task, while it waits for data
        self.scope = trio.CancelScope()
        self.read_scope: trio.CancelScope | None = None
        self.settled: trio.Event | None = None  # set when a link waiting to be replaced is done

    def wake(self) -> None:
        task = self.parked
        if task is not None:
            self.parked = None
            trio.lowlevel.reschedule(task)

    def _abort_park(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self.parked = None
        return trio.lowlevel.Abort.SUCCEEDED


def _ignore(*args: object) -> None:
    pass


class _TLSFailed(Exception):
    """The TLS layer refused the peer, or the peer refused us: counted and logged as an auth failure."""


# The first byte of a TLS record (change_cipher_spec, alert, handshake, application_data) followed by
# major version 3. A mesh frame cannot start this way: its length would exceed any max_frame.
_TLS_RECORD_TYPES = frozenset(range(0x14, 0x18))
_TLS_HANDSHAKE_RECORD = 0x16
_TLS_ALERTS = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")
# What a peer that hangs up looks like, from inside TLS or under it.
_CLOSED = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)
_REFUSED_AFTER_TLS = "the peer closed the connection after the TLS handshake (did it refuse our certificate?)"
_BYE_REQUIRED = encode_frame(Kind.BYE, b"this node requires TLS on mesh links")
_BYE_NO_TLS = encode_frame(Kind.BYE, b"this node does not use TLS on mesh links")


def _looks_like_tls(data: bytes) -> bool:
    return len(data) >= 2 and data[0] in _TLS_RECORD_TYPES and data[1] == 3


def _bye_in(data: bytes) -> str | None:
    """The reason of a BYE frame at the start of ``data``, if there is one."""
    try:
        frames = FrameDecoder().feed(data)
    except WireError:
        return None
    return bye_reason(frames[0][1]) if frames and frames[0][0] == Kind.BYE else None


def _check_ssl_contexts(contexts: SSLContexts) -> None:
    """Refuse contexts that would not give mutual TLS: both must require and verify the peer's
    certificate, and the client side must not check host names (nodes are named by the HMAC)."""
    if not (isinstance(contexts, tuple) and len(contexts) == 2):
        raise ValueError("ssl_contexts must be a (server_context, client_context) pair")
    server, client = contexts
    for side, ctx in (("server", server), ("client", client)):
        if not isinstance(ctx, ssl.SSLContext):
            raise ValueError(f"ssl_contexts: the {side} context is not an ssl.SSLContext")
        if ctx.verify_mode != ssl.CERT_REQUIRED:
            raise ValueError(f"ssl_contexts: the {side} context must have verify_mode CERT_REQUIRED")
    if client.check_hostname:
        raise ValueError("ssl_contexts: the client context must have check_hostname off")


def _tls_failure(exc: BaseException) -> str | None:
    """Why TLS failed, from what trio raised; None when the peer just hung up (or the socket broke)."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate refused: {cause.verify_message or cause.reason}"
    if isinstance(cause, _CLOSED) or not isinstance(cause, ssl.SSLError):
        return None
    reason = cause.reason or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "the peer sent no certificate"
    if reason.startswith(_TLS_ALERTS):
        return f"TLS alert from the peer: {reason.lower()}"
    return f"TLS error: {(reason or str(cause)).lower()}"


class _Watched(trio.abc.Stream):
    """The socket under a TLS stream. Keeps the first bytes the peer sent, which tell a failed TLS
    handshake with a peer that does not use TLS (or that hung up at once) from a refused one."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.first: bytes | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.first is None and data:
            self.first = bytes(data[:512])
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class MeshTransport:
    """Authenticated node-to-node links (see the module docstring and docs/mesh/transport.md).

    Callbacks, set by the owner before ``run``; all are called synchronously and must not block:
    ``on_frame(peer, kind, payload)`` from the link's reader, in order per link;
    ``on_link_up(peer, addr)`` when a peer gets its first link, ``addr`` being where it can be
    dialled (advertised or dialled address, or None); ``on_link_down(peer)`` when it has none left
    (frames queued for it and not acknowledged by the owner's protocol must be taken as lost);
    ``on_connection_closed(ConnectionClosed)`` for every connection or dial that ends.
    """

    def __init__(
        self,
        *,
        node_name: str,
        bind: str,
        port: int,
        secrets: Sequence[bytes],
        advertise: Address | None = None,
        dial_timeout: float = 3.0,
        handshake_timeout: float = 3.0,
        write_timeout: float = 5.0,
        close_timeout: float = 2.0,
        idle_timeout: float = 300.0,
        max_frame: int = 1 << 20,
        outbox_limit: int = 4 << 20,
        max_handshakes: int = 64,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rng: random.Random | None = None,
        ssl_contexts: SSLContexts | None = None,
    ) -> None:
        if ssl_contexts is not None:
            _check_ssl_contexts(ssl_contexts)
        Handshake(
            "dialer", node_name=node_name, secrets=secrets, nonce=bytes(NONCE_SIZE), advertise=advertise
        )
        self.node_name = node_name
        self.bind = bind
        self.port = port  # the bound port once run() has started
        self.secrets = tuple(secrets)
        self.advertise = advertise
        self.dial_timeout = dial_timeout
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self.idle_timeout = idle_timeout
        self.max_frame = max_frame
        self.outbox_limit = outbox_limit
        self.max_handshakes = max_handshakes
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.rng = rng if rng is not None else random.Random()
        self.ssl_contexts = ssl_contexts
        self.on_frame: Callable[[str, int, bytes], object] = _ignore
        self.on_link_up: Callable[[str, Address | None], object] = _ignore
        self.on_link_down: Callable[[str], object] = _ignore
        self.on_connection_closed: Callable[[ConnectionClosed], object] = _ignore
        self._nursery: trio.Nursery | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._closing = False
        self._links: dict[str, _Link] = {}  # peer name -> current link
        self._conns: set[_Link] = set()
        self._changed = trio.Event()
        self._dials: dict[Address, _Dial] = {}
        self._backoff: dict[Address, tuple[int, float]] = {}  # addr -> (failures, until)
        self._addr_of: dict[str, Address] = {}
        self._name_at: dict[Address, str] = {}
        self._counters: dict[str, _Counters] = {}
        self._sequence = 0
        self._handshaking = 0
        self._stats = dict.fromkeys(
            ("dials", "dial_failures", "auth_failures", "handshake_failures", "protocol_errors",
             "duplicates", "outbox_overflows", "refused"), 0
        )  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled or ``aclose``; ``task_status.started(port)`` once listening."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.bind or None)
        try:
            self.port = listeners[0].socket.getsockname()[1]
            if self.advertise is None and self.bind not in _WILDCARDS:
                self.advertise = (self.bind, self.port)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._serve, listeners, nursery)
                log.info("mesh %s listening on %s:%d", self.node_name, self.bind, self.port)
                task_status.started(self.port)
        finally:
            self._nursery = None
            self._closing = True
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
            self._stopped.set()

    async def _serve(
        self, listeners: list[trio.SocketListener], nursery: trio.Nursery, *, task_status: Any
    ) -> None:
        with trio.CancelScope() as self._serve_scope:
            await trio.serve_listeners(
                self._accept, listeners, handler_nursery=nursery, task_status=task_status
            )

    async def aclose(self) -> None:
        """Close every link with BYE, wait (bounded) until they are done, and stop ``run``."""
        nursery = self._nursery
        if nursery is None:
            return
        self._closing = True
        if self._serve_scope is not None:
            self._serve_scope.cancel()
        for dial in list(self._dials.values()):
            dial.abort()
        self._dials.clear()
        for link in list(self._conns):
            if link.peer is None:
                self._abort(link, "shutdown")
            else:
                self._close(link, "shutdown")
        with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout + self.write_timeout):
            while self._conns:
                await self._changed.wait()
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout):
            await self._stopped.wait()

    # ------------------------------------------------------------------ sending (sync)

    def send(self, dest: Address | str, kind: int, payload: bytes) -> bool:
        """Queue a frame for a peer (by name) or an address. Never blocks.

        False when it cannot be queued: not running, unknown peer name, address in backoff, or the
        outbox over ``outbox_limit`` (then the link is dropped). True means queued, not delivered.
        Raises ``ValueError`` for a kind that is not an application kind or an oversized payload.
        """
        if kind not in _APP:
            raise ValueError(f"not an application frame kind: {kind!r}")
        if len(payload) > self.max_frame:
            raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame ({self.max_frame})")
        if self._nursery is None or self._closing:
            return False
        if isinstance(dest, str):
            link = self._links.get(dest)
            if link is not None:
                return self._queue(link, kind, payload)
            addr = self._addr_of.get(dest)
            if addr is None:
                return False
            return self._queue_dial(addr, dest, kind, payload)
        dest = (dest[0], dest[1])
        name = self._name_at.get(dest)
        if name is not None and (link := self._links.get(name)) is not None:
            return self._queue(link, kind, payload)
        return self._queue_dial(dest, None, kind, payload)

    def _queue(self, link: _Link, kind: int, payload: bytes) -> bool:
        outbox = link.outbox
        outbox += frame_header(kind, len(payload))
        outbox += payload
        if len(outbox) > self.outbox_limit:
            log.info("mesh link to %s: outbox over %d bytes, dropping the link", link.peer, self.outbox_limit)
            self._stats["outbox_overflows"] += 1
            self._abort(link, "outbox overflow")
            return False
        link.counters.frames_out += 1
        link.wake()
        return True

    def _queue_dial(self, addr: Address, expected: str | None, kind: int, payload: bytes) -> bool:
        dial = self._dials.get(addr)
        if dial is None:
            backoff = self._backoff.get(addr)
            if backoff is not None and trio.current_time() < backoff[1]:
                return False
            assert self._nursery is not None
            dial = _Dial(addr, expected)
            try:
                self._nursery.start_soon(self._dial, dial)
            except RuntimeError:  # the nursery is closing
                return False
            self._dials[addr] = dial
            self._stats["dials"] += 1
        dial.outbox += frame_header(kind, len(payload))
        dial.outbox += payload
        dial.frames += 1
        if len(dial.outbox) > self.outbox_limit:
            log.info("mesh dial to %s:%d: outbox over %d bytes, giving up", *addr, self.outbox_limit)
            self._stats["outbox_overflows"] += 1
            del self._dials[addr]
            dial.abort()
            return False
        return True

    def disconnect(self, peer: str) -> bool:
        """Close the link to ``peer`` with BYE (``on_link_down`` fires now); False if there is none."""
        link = self._links.get(peer)
        if link is None:
            return False
        self._close(link, "disconnect")
        return True

    # ------------------------------------------------------------------ introspection

    def peers(self) -> tuple[str, ...]:
        """Names of the peers with a link now, sorted."""
        return tuple(sorted(self._links))

    def statistics(self) -> TransportStatistics:
        now = trio.current_time() if self._nursery is not None else math.inf
        peers = {}
        for name, c in self._counters.items():
            link = self._links.get(name)
            peers[name] = PeerStatistics(
                addr=self._addr_of.get(name),
                connected=link is not None,
                outbound=link.outbound if link is not None else None,
                bytes_in=c.bytes_in,
                bytes_out=c.bytes_out,
                frames_in=c.frames_in,
                frames_out=c.frames_out,
                queued=len(link.outbox) if link is not None else 0,
            )
        return TransportStatistics(
            port=self.port,
            links=len(self._links),
            connections=len(self._conns),
            backoff=tuple(sorted(a for a, (_, until) in self._backoff.items() if until > now)),
            peers=MappingProxyType(peers),
            **self._stats,
        )

    # ------------------------------------------------------------------ connections

    async def _accept(self, stream: trio.SocketStream) -> None:
        if self._closing or self._handshaking >= self.max_handshakes:
            self._stats["refused"] += 1
            log.info(
                "mesh: refusing a connection (%s)",
                "shutting down" if self._closing else "too many handshakes",
            )
            with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout):
                await stream.aclose()
            return
        await self._connection(_Link(stream, outbound=False, dial_addr=None), None)

    async def _dial(self, dial: _Dial) -> None:
        host, port = dial.addr
        try:
            with trio.CancelScope() as dial.scope:
                if dial.aborted:
                    return
                try:
                    with trio.fail_after(self.dial_timeout):
                        stream = await trio.open_tcp_stream(host, port)
                except (OSError, trio.TooSlowError) as exc:
                    reason = "dial timeout" if isinstance(exc, trio.TooSlowError) else f"dial failed: {exc}"
                    self._dial_failed(dial, reason)
                    self._report(ConnectionClosed(None, f"{host}:{port}", True, dial.addr, reason))
                    return
                await self._connection(_Link(stream, outbound=True, dial_addr=dial.addr), dial)
        finally:
            if self._dials.get(dial.addr) is dial:  # aborted or cancelled: its frames are lost
                del self._dials[dial.addr]

    def _dial_failed(self, dial: _Dial, reason: str, level: int = logging.INFO) -> None:
        if self._dials.get(dial.addr) is dial:
            del self._dials[dial.addr]
        failures = self._backoff.get(dial.addr, (0, 0.0))[0] + 1
        delay = backoff_delay(failures, base=self.backoff_base, cap=self.backoff_max, rng=self.rng)
        self._backoff[dial.addr] = (failures, trio.current_time() + delay)
        self._stats["dial_failures"] += 1
        log.log(level, "mesh dial to %s:%d: %s; unreachable for %.1f s", *dial.addr, reason, delay)

    async def _connection(self, link: _Link, dial: _Dial | None) -> None:
        """Serve one connection until it ends. Never raises (but Cancelled)."""
        self._conns.add(link)
        try:
            with link.scope:
                trailing = await self._handshake(link, dial)
                if trailing is not None and not link.aborted:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._write_loop, link)
                        await self._read_loop(link, trailing)
        except Exception:
            log.exception("mesh connection %s: internal error", link.remote)
            link.reason = link.reason or "internal error"
        finally:
            if link.current:
                self._unlink(link)
            with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout):
                try:
                    await link.stream.aclose()
                except _NETWORK_ERRORS:
                    pass
            self._conns.discard(link)
            self._changed.set()
            self._changed = trio.Event()
            self._report(
                ConnectionClosed(
                    link.peer, link.remote, link.outbound, link.dial_addr, link.reason or "closed"
                )
            )

    async def _handshake(self, link: _Link, dial: _Dial | None) -> bytes | None:
        """Authenticate the peer and adopt the link; the bytes that followed the handshake, or None."""
        hs = Handshake(
            "dialer" if link.outbound else "listener",
            node_name=self.node_name,
            secrets=self.secrets,
            nonce=_secrets.token_bytes(NONCE_SIZE),
            advertise=self.advertise,
            sequence=self._next_sequence() if link.outbound else 0,
        )
        stream = link.stream
        self._handshaking += 1
        level, detail = logging.INFO, ""
        tls = self.ssl_contexts is not None
        received = False  # any bytes from the peer in the HMAC handshake
        try:
            with trio.fail_after(self.handshake_timeout):
                if tls:
                    stream = await self._start_tls(link)
                out = hs.start()
                while hs.result is None:
                    # Under TLS 1.3 the listener checks the dialer's certificate after the dialer's
                    # TLS handshake has returned: a dialer whose certificate is refused learns it here,
                    # as a connection closed before the listener's first byte.
                    refused_cert = tls and link.outbound and not received
                    try:
                        if out:
                            await stream.send_all(out)
                        data = await stream.receive_some(HANDSHAKE_READ_SIZE)
                    except _NETWORK_ERRORS as exc:
                        why = _tls_failure(exc) if tls else None
                        if why is None and refused_cert:
                            why = _REFUSED_AFTER_TLS
                        if why is not None:
                            raise _TLSFailed(why) from None
                        raise
                    if not data:
                        if refused_cert:
                            raise _TLSFailed(_REFUSED_AFTER_TLS)
                        raise WireError("connection closed during the handshake")
                    if not received and not tls and _looks_like_tls(data):
                        raise WireError(
                            "the peer uses TLS on mesh links and this node does not", reply=_BYE_NO_TLS
                        )
                    received = True
                    out = hs.feed(data)
        except _TLSFailed as exc:
            self._stats["auth_failures"] += 1
            link.reason, level = f"TLS failed: {exc}", logging.WARNING
        except WireError as exc:
            if isinstance(exc, AuthFailed):
                self._stats["auth_failures"] += 1
                link.reason, level = "auth failed", logging.WARNING
                detail = "" if str(exc) == "auth failed" else f" ({exc})"
            else:
                self._stats["handshake_failures"] += 1
                link.reason = f"handshake: {exc}"
            if exc.reply:
                with trio.move_on_after(self.close_timeout):
                    try:
                        await stream.send_all(exc.reply)
                    except _NETWORK_ERRORS:
                        pass
        except trio.TooSlowError:
            self._stats["handshake_failures"] += 1
            link.reason = "handshake timeout"
        except _NETWORK_ERRORS as exc:
            self._stats["handshake_failures"] += 1
            link.reason = f"handshake: connection lost: {exc}"
        finally:
            self._handshaking -= 1
        if hs.result is None:
            # One line per failure, no traceback; the name a stranger claims is only a claim.
            if hs.claimed_name:
                detail += f" (claims to be {hs.claimed_name!r})"
            if dial is not None:
                self._dial_failed(dial, f"{link.reason}{detail}", level)
            else:
                log.log(level, "mesh peer %s: %s%s; dropped", link.remote, link.reason, detail)
            return None
        link.outbox += out  # the listener's AUTH_OK goes first
        self._adopt(link, hs.result, dial)
        return hs.trailing

    async def _start_tls(self, link: _Link) -> trio.SSLStream:
        """The TLS handshake (mutual, against the cluster CA); ``link.stream`` becomes the TLS stream.

        Raises ``_TLSFailed``, or ``WireError`` when the peer hung up before sending anything (as
        without TLS). Until it succeeds ``link.stream`` stays the bare socket, so closing a connection
        whose TLS failed never waits on TLS."""
        assert self.ssl_contexts is not None
        server_ctx, client_ctx = self.ssl_contexts
        raw = link.stream
        assert isinstance(raw, trio.SocketStream)
        watched = _Watched(raw)
        if link.outbound:
            # No host name: no SNI, and nothing checks a name (check_hostname is off).
            tls = trio.SSLStream(watched, client_ctx, server_hostname=None)
        else:
            tls = trio.SSLStream(watched, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
        except _NETWORK_ERRORS as exc:
            first = watched.first
            why = _tls_failure(exc)
            if first is None and why is None:
                raise WireError("connection closed during the handshake") from None
            if not link.outbound and first is not None and first[0] != _TLS_HANDSHAKE_RECORD:
                # Most likely a node without TLS: tell it why, in its own framing.
                with trio.move_on_after(self.close_timeout):
                    try:
                        await raw.send_all(_BYE_REQUIRED)
                    except _NETWORK_ERRORS:
                        pass
                raise _TLSFailed("the peer does not use TLS") from None
            if link.outbound and first is not None and not _looks_like_tls(first):
                said = _bye_in(first)
                raise _TLSFailed(
                    "the peer does not use TLS" + (f" (it says {said!r})" if said else "")
                ) from None
            raise _TLSFailed(
                why
                or "the peer closed the connection during the TLS handshake (did it refuse our certificate?)"
            ) from None
        link.stream = tls
        return tls

    def _next_sequence(self) -> int:
        # Wall-clock based so that a restarted node's new link outranks its stale one on the peer.
        self._sequence = max(self._sequence + 1, time.time_ns())
        return self._sequence

    def _adopt(self, link: _Link, auth: Authenticated, dial: _Dial | None) -> None:
        name = auth.peer_name
        link.peer, link.sequence = name, auth.sequence
        link.counters = self._counters.setdefault(name, _Counters())
        link.decoder = FrameDecoder(self.max_frame)
        link.last_sent = trio.current_time()
        addr = auth.peer_addr_advertised or link.dial_addr
        for known in (auth.peer_addr_advertised, link.dial_addr):
            if known is not None:
                self._name_at[known] = name
                self._backoff.pop(known, None)
        if addr is not None and (auth.peer_addr_advertised is not None or name not in self._addr_of):
            self._addr_of[name] = addr
        if dial is not None:
            if self._dials.get(dial.addr) is dial:
                del self._dials[dial.addr]
            dial.scope = None  # from now on the link's own scope governs
            if dial.expected not in (None, name):
                log.info(
                    "mesh dial to %s:%d reached %s, not %s: dropping %d frames",
                    *dial.addr,
                    name,
                    dial.expected,
                    dial.frames,
                )
            else:
                link.outbox += dial.outbox
                link.counters.frames_out += dial.frames
        log.info("mesh link %s %s (%s) authenticated", "to" if link.outbound else "from", name, link.remote)
        current = self._links.get(name)
        if current is None:
            self._links[name] = link
            link.current = True
            self._callback(self.on_link_up, name, addr)
        elif self._prefer(link, current):
            self._stats["duplicates"] += 1
            self._links[name] = link
            link.current, current.current = True, False
            self._close(current, "duplicate")
        else:
            self._stats["duplicates"] += 1
            self._close(link, "duplicate")

    def _prefer(self, new: _Link, old: _Link) -> bool:
        """Whether ``new`` replaces ``old``; both ends of a pair of links decide alike."""
        peer = new.peer
        assert peer is not None
        new_dialer = self.node_name if new.outbound else peer
        old_dialer = self.node_name if old.outbound else peer
        if new_dialer != old_dialer:
            return new_dialer == min(self.node_name, peer)
        return new.sequence >= old.sequence

    # ------------------------------------------------------------------ a link's life

    async def _read_loop(self, link: _Link, trailing: bytes) -> None:
        end = self._deliver(link, trailing) if trailing else None
        while end is None:
            with trio.CancelScope(deadline=trio.current_time() + self.idle_timeout) as scope:
                link.read_scope = scope
                if link.closing:
                    scope.deadline = trio.current_time() + self.close_timeout
                try:
                    end = await self._read_frames(link, scope)
                except _NETWORK_ERRORS as exc:
                    log.info("mesh link %s: connection lost: %s", link.peer, exc)
                    self._abort(link, "connection lost")
                    return
            if scope.cancelled_caught:
                if link.closing or link.aborted:
                    return  # the peer did not answer our BYE in time
                if trio.current_time() - link.last_sent < self.idle_timeout:
                    continue
                log.info("mesh link %s: idle for %.0f s, closing", link.peer, self.idle_timeout)
                self._close(link, "idle")
        if end == "eof" and not link.closing:
            log.info("mesh link %s: connection closed by the peer", link.peer)
            self._abort(link, "eof")
        elif end == "bye" and not link.closing:
            if link.peer_bye == "duplicate" and link.current:
                # The peer keeps another link to us that we have not adopted yet: keep sending on
                # this one (the peer reads until our BYE) until that link replaces it.
                link.settled = trio.Event()
                with trio.move_on_after(self.close_timeout):
                    await link.settled.wait()
                self._close(link, "duplicate")
            else:
                log.info("mesh link %s: closed by the peer (%s)", link.peer, link.peer_bye)
                self._close(link, f"closed by peer: {link.peer_bye}")

    async def _read_frames(self, link: _Link, scope: trio.CancelScope) -> str:
        stream, counters, idle = link.stream, link.counters, self.idle_timeout
        while True:
            data = await stream.receive_some(READ_SIZE)
            if not data:
                return "eof"
            counters.bytes_in += len(data)
            if not link.closing:
                scope.deadline = trio.current_time() + idle
            end = self._deliver(link, data)
            if end is not None:
                return end

    def _deliver(self, link: _Link, data: bytes) -> str | None:
        """Hand every complete frame in ``data`` to ``on_frame``; "bye" or "error" ends the reading.

        Frames before a malformed one are delivered: they came whole from an authenticated peer."""
        decoder = link.decoder
        assert decoder is not None and link.peer is not None
        peer, counters, on_frame = link.peer, link.counters, self.on_frame
        try:
            decoder.receive(data)
            while (frame := decoder.next_frame()) is not None:
                kind, payload = frame
                if kind in _APP:
                    counters.frames_in += 1
                    try:
                        on_frame(peer, kind, payload)
                    except Exception:
                        log.exception("mesh link %s: on_frame failed", peer)
                        self._close(link, "internal error")
                        return "error"
                elif kind == Kind.BYE:
                    link.peer_bye = bye_reason(payload)
                    return "bye"
                else:
                    return self._protocol_error(link, f"unexpected frame kind {kind}")
        except WireError as exc:
            return self._protocol_error(link, str(exc))
        return None

    def _protocol_error(self, link: _Link, message: str) -> str:
        log.info("mesh link %s: protocol error: %s", link.peer, message)
        self._stats["protocol_errors"] += 1
        self._close(link, f"protocol error: {message}")
        return "error"

    async def _write_loop(self, link: _Link) -> None:
        """The link's only writer: one ``send_all`` per wakeup; after our BYE, EOF."""
        stream = link.stream
        try:
            while not link.aborted:
                if not link.outbox:
                    if link.closing:
                        # TLS has no half-close (trio.SSLStream has no send_eof): our BYE says it.
                        if isinstance(stream, trio.abc.HalfCloseableStream):
                            with trio.move_on_after(self.close_timeout):
                                await stream.send_eof()
                        return
                    link.parked = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(link._abort_park)
                    continue
                data, link.outbox = link.outbox, bytearray()
                link.writing = True
                with trio.fail_after(self.write_timeout):
                    await stream.send_all(data)
                link.writing = False
                link.counters.bytes_out += len(data)
                link.last_sent = trio.current_time()
        except trio.TooSlowError:
            log.info("mesh link %s: write timed out, dropping the link", link.peer)
            self._abort(link, "write timeout")
        except _NETWORK_ERRORS as exc:
            log.info("mesh link %s: write failed: %s", link.peer, exc)
            self._abort(link, "write failed")

    def _close(self, link: _Link, reason: str) -> None:
        """Queue BYE behind what is queued; stop taking frames; read until the peer's BYE or EOF."""
        if link.closing or link.aborted:
            return
        link.closing = True
        link.reason = link.reason or reason
        if link.current:
            self._unlink(link)
        link.outbox += encode_frame(Kind.BYE, reason.encode()[:200])
        link.wake()
        if link.read_scope is not None:
            link.read_scope.deadline = min(link.read_scope.deadline, trio.current_time() + self.close_timeout)
        if link.settled is not None:
            link.settled.set()

    def _abort(self, link: _Link, reason: str) -> None:
        """Drop the connection now, writing nothing more."""
        if link.aborted:
            return
        link.aborted = True
        link.reason = link.reason or reason
        if link.current:
            self._unlink(link)
        link.outbox = bytearray()
        link.wake()
        link.scope.cancel()
        if link.settled is not None:
            link.settled.set()

    def _unlink(self, link: _Link) -> None:
        assert link.peer is not None
        link.current = False
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
            self._callback(self.on_link_down, link.peer)

    # ------------------------------------------------------------------ callbacks

    def _callback(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("mesh: %s callback failed", getattr(fn, "__name__", fn))

    def _report(self, event: ConnectionClosed) -> None:
        self._callback(self.on_connection_closed, event)
