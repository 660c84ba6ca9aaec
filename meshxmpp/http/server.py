"""h11 <-> Trio glue for the HTTP listener (``[http]``), shaped like h11's examples/trio-server.py.

h11 is the protocol (sans-IO); this module only moves bytes and enforces limits:

- one task per connection, in a nursery the server owns; keep-alive (HTTP/1.1 and pipelining);
- a deadline on every read and every write (``timeout``, via ``fail_after``) and on each whole
  request, head and body (``request_timeout``), so a slow client cannot hold a task for long. A
  connection that times out between requests is closed quietly; in the middle of one it gets 408;
- size caps: the request head (line and headers, ``max_header_size``, 16 KiB: h11's
  ``max_incomplete_event_size``, 431 beyond) and the body (``max_body_size``, 64 KiB, 413 beyond,
  refused from ``Content-Length`` before it is read);
- malformed bytes get h11's ``error_status_hint`` (400 mostly); a route that raises gets 500; an
  answer never carries a traceback (the log does). A failed write is reported to h11 with
  ``send_failed()`` and ends the connection.

The routes are `http.api` functions; a test can pass any ``handler`` (``Request -> Response``).
With the default routes the server also counts what ``/metrics`` shows of it: its own requests, the
messages handed to offline storage and (given the ``node``) its client listeners' statistics, added
through the hub event ``metrics/collect``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from meshxmpp.http import api
from meshxmpp.http.api import Request, Response, error_response
from meshxmpp.http.metrics import COLLECT_EVENT, Collection, Family, OfflineCounter

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext

__all__ = ["HttpServer", "HttpStatistics"]

log = logging.getLogger("meshxmpp.http")

Handler = Callable[[Request], Awaitable[Response]]

READ_SIZE = 16384
TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
MAX_HEADER_SIZE = 16 * 1024
MAX_BODY_SIZE = 64 * 1024
MAX_QUERY_FIELDS = 64
#: After an error answer: how long (at most) to read and discard what the client still sends, so
#: that closing with unread input (which sends a RST) does not destroy the answer before it is read.
LINGER_TIMEOUT = 2.0
LINGER_MAX_BYTES = 1 << 20
_SERVER = f"meshxmpp {h11.PRODUCT_ID}".encode("ascii")
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class HttpStatistics:
    port: int
    accepted: int
    active: int
    requests: int


class _Gone(Exception):
    """The peer stopped reading (or writing timed out): nothing more can be said."""


class _TooLarge(Exception):
    pass


class HttpServer:
    """The HTTP listener: ``await nursery.start(server.run)`` returns the bound port.

    ``handler`` answers each request; by default `api.handle` on ``ctx`` (so ``ctx`` may be None
    only with a handler). ``timeout`` bounds each read and write, ``request_timeout`` each whole
    request and each handler call. ``node`` (the `meshxmpp.node.Node`, settable later as
    ``server.node``) lets ``/metrics`` read the client and component listeners' statistics.
    """

    def __init__(
        self,
        ctx: NodeContext | None,
        *,
        bind: str,
        port: int,
        handler: Handler | None = None,
        timeout: float = TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_header_size: int = MAX_HEADER_SIZE,
        max_body_size: int = MAX_BODY_SIZE,
        node: Any = None,
    ) -> None:
        self.ctx = ctx
        self.node = node
        self.offline: OfflineCounter | None = None
        self.bind = bind
        self.port = port  # the bound port once run() has started
        if handler is None:
            if ctx is None:
                raise ValueError("HttpServer needs a NodeContext or a handler")
            handler = functools.partial(api.handle, ctx)
            hub = getattr(ctx, "hub", None)
            if hub is not None:
                self.offline = OfflineCounter(hub)
                hub.hook(COLLECT_EVENT, self._collect)
        self.handler: Handler = handler
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._accepted = 0
        self._active = 0
        self._requests = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started(port)`` once listening."""
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.bind)
        except OSError as exc:
            # Say which listener: "cannot start: [Errno 98] HTTP listener on 127.0.0.1:5280: ..."
            raise OSError(exc.errno, f"HTTP listener on {self.bind}:{self.port}: {exc.strerror or exc}") from exc
        try:
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(
                    trio.serve_listeners, self._handle_socket, listeners, handler_nursery=nursery))
                log.info("http listening on %s:%d", self.bind, self.port)
                task_status.started(self.port)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    async def _handle_socket(self, stream: trio.SocketStream) -> None:
        try:
            peer = str(stream.socket.getpeername()[0])
        except OSError:
            peer = ""
        await self.handle_stream(stream, peer)

    async def handle_stream(self, stream: trio.abc.HalfCloseableStream, peer: str) -> None:
        """Serve one connection until it ends. Never raises (but Cancelled)."""
        self._accepted += 1
        self._active += 1
        conn = _Connection(self, stream, peer)
        try:
            await conn.serve()
        except Exception:
            log.exception("http %s: internal error", peer)
        finally:
            self._active -= 1
            await conn.close()

    def statistics(self) -> HttpStatistics:
        return HttpStatistics(port=self.port, accepted=self._accepted, active=self._active,
                              requests=self._requests)

    def _collect(self, collection: Collection) -> None:
        """``metrics/collect``: this listener, the offline hand-offs, and the node's other listeners."""
        stats = self.statistics()
        collection.add(Family.one("http_connections", "gauge", "Open HTTP connections.", stats.active))
        collection.add(Family.one("http_requests", "counter", "HTTP requests read.", stats.requests))
        if self.offline is not None:
            collection.extend(self.offline.families())
        node = self.node
        if node is None:
            return
        listeners = {"starttls": getattr(node, "c2s", None), "direct-tls": getattr(node, "c2s_tls", None)}
        c2s = {name: listener.statistics() for name, listener in listeners.items() if listener is not None}
        if c2s:
            collection.add(Family.by("c2s_connections", "gauge", "Open client connections (bound or not), "
                                     "by listener.", "listener", {k: s.active for k, s in c2s.items()}))
            collection.add(Family.by("c2s_connections_accepted", "counter", "Client connections accepted, "
                                     "by listener.", "listener", {k: s.accepted for k, s in c2s.items()}))
            collection.add(Family.one("c2s_auth_failures", "counter", "Failed client logins (SASL "
                                      "not-authorized: unknown user or wrong password).",
                                      sum(s.auth_failures for s in c2s.values())))
        components = getattr(node, "components", None)
        if components is not None:
            cs = components.statistics()
            collection.add(Family.one("component_connections", "gauge", "Open external component "
                                      "connections.", getattr(cs, "active", 0)))
            collection.add(Family.one("component_handshake_failures", "counter", "Failed component "
                                      "handshakes.", getattr(cs, "handshake_failures", 0)))


def _to_request(event: h11.Request, body: bytes, peer: str) -> Request:
    """h11's request as an `api.Request`; ValueError when the target cannot be decoded."""
    target = event.target.decode("ascii")  # h11 lets bytes >= 0x80 through: refused here
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True, encoding="utf-8", errors="strict",
                     max_num_fields=MAX_QUERY_FIELDS)
    headers: dict[str, str] = {}
    for name, value in event.headers:
        key = name.decode("ascii")  # h11 lowercases names and allows only token characters
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(event.method.decode("ascii"), parts.path or "/", query, headers, body, peer)


class _Connection:
    """One HTTP connection, alive for the duration of ``HttpServer.handle_stream``."""

    def __init__(self, server: HttpServer, stream: trio.abc.HalfCloseableStream, peer: str) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_header_size)
        self.method: bytes | None = None  # of the request being answered
        self.linger = False  # closing early: the client may still be sending

    async def serve(self) -> None:
        try:
            while await self._exchange():
                if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    return  # MUST_CLOSE (HTTP/1.0, Connection: close) or an unfinished request
                self.conn.start_next_cycle()
        except _Gone:
            return

    async def _exchange(self) -> bool:
        """Read one request and answer it; False when the connection is to be closed."""
        server = self.server
        self.method = None
        try:
            with trio.fail_after(server.request_timeout):
                event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return False  # the client closed between requests (or PAUSED: not reusable)
                self.method = event.method
                body = await self._read_body(event)
        except trio.TooSlowError:
            if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
                return False  # idle keep-alive connection: close quietly
            await self._fail(408, "request timeout")
            return False
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431:
                message = f"request line and headers larger than {server.max_header_size} bytes"
            else:
                message = f"bad request: {exc}"  # h11's one-line reason, never a traceback
            await self._fail(status, message)
            return False
        except _TooLarge:
            await self._fail(413, f"request body larger than {server.max_body_size} bytes")
            return False
        server._requests += 1
        try:
            request = _to_request(event, body, self.peer)
        except ValueError:
            await self._fail(400, "bad request: undecodable target or query")
            return False
        await self._send_response(await self._answer(request))
        return True

    async def _answer(self, request: Request) -> Response:
        try:
            with trio.move_on_after(self.server.request_timeout) as scope:
                return await self.server.handler(request)
        except Exception:
            log.exception("http %s: %s %s failed", self.peer, request.method, request.path)
            return error_response(500, "internal server error")
        assert scope.cancelled_caught
        log.warning("http %s: %s %s took longer than %.1f s", self.peer, request.method, request.path,
                    self.server.request_timeout)
        return error_response(503, "the request took too long")

    # -- reading ------------------------------------------------------------------------------------

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                await self._receive()
                continue
            return event

    async def _receive(self) -> None:
        if self.conn.they_are_waiting_for_100_continue:
            await self._send_event(h11.InformationalResponse(status_code=100, headers=self._headers()))
        size = READ_SIZE
        if self.conn.their_state is h11.IDLE:
            # h11 checks max_incomplete_event_size only while a head is incomplete; reading no
            # further than one byte past the cap makes the cap exact (431), however the bytes arrive.
            size = max(1, min(size, self.server.max_header_size + 1 - len(self.conn.trailing_data[0])))
        with trio.fail_after(self.server.timeout):
            try:
                data = await self.stream.receive_some(size)
            except _GONE:
                data = b""
        self.conn.receive_data(data)

    async def _read_body(self, request: h11.Request) -> bytes:
        limit = self.server.max_body_size
        for name, value in request.headers:
            if name == b"content-length" and int(value) > limit:  # h11 checked it is digits
                raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:  # chunked bodies have no Content-Length to check up front
                    raise _TooLarge
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:  # ConnectionClosed mid-body is a RemoteProtocolError in h11; be safe anyway
                raise h11.RemoteProtocolError("connection closed in the request body", 400)

    # -- writing ------------------------------------------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Date", formatdate(usegmt=True).encode("ascii")), (b"Server", _SERVER)]

    async def _send_event(self, event: Any) -> None:
        data = self.conn.send(event)
        if not data:
            return
        try:
            with trio.fail_after(self.server.timeout):
                await self.stream.send_all(data)
        except (*_GONE, trio.TooSlowError) as exc:
            self.conn.send_failed()
            raise _Gone from exc

    async def _send_response(self, response: Response, *, close: bool = False) -> None:
        headers = self._headers()
        if response.status not in (204, 304):  # RFC 9110 8.6: neither carries a body or its length
            headers.append((b"Content-Type", response.content_type.encode("latin-1")))
            headers.append((b"Content-Length", str(len(response.body)).encode("ascii")))
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if close:
            headers.append((b"Connection", b"close"))
        await self._send_event(h11.Response(status_code=response.status, headers=headers))
        if response.body and self.method != b"HEAD" and response.status not in (204, 304):  # h11 frames a HEAD answer without a body
            await self._send_event(h11.Data(data=response.body))
        await self._send_event(h11.EndOfMessage())

    async def _fail(self, status: int, message: str) -> None:
        """Answer with an error and close, if an answer can still be sent."""
        log.debug("http %s: %d %s", self.peer, status, message)
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        self.linger = True
        await self._send_response(error_response(status, message), close=True)

    async def close(self) -> None:
        # Shielded and bounded: runs on node shutdown too (no lingering then).
        shutting_down = trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):
            if self.linger and not shutting_down:
                with trio.move_on_after(min(LINGER_TIMEOUT, self.server.timeout)):
                    try:
                        await self.stream.send_eof()
                        drained = 0
                        while drained < LINGER_MAX_BYTES:
                            data = await self.stream.receive_some(READ_SIZE)
                            if not data:
                                break
                            drained += len(data)
                    except (*_GONE, trio.BusyResourceError, OSError):
                        pass
            with trio.move_on_after(LINGER_TIMEOUT):
                try:
                    await self.stream.aclose()
                except (*_GONE, OSError):
                    pass
