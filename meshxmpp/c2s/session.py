"""One client connection: its bound JID, presence state, and the coalescing outbox.

The write path (PERFORMANCE.md): ``send()`` is synchronous and never blocks. It serialises the
element once (``serialize.to_bytes`` caches the bytes on the element, so fan-out to many sessions
serialises once) and appends them to a ``bytearray``; then it wakes the connection's single writer
task if that task is parked. The writer takes everything queued and writes it with one
``send_all``, so every stanza produced for this connection during one scheduling tick leaves in one
system call. The outbox is bounded: a client that reads slower than it is sent to is disconnected
instead of growing our memory.

On a plain TCP transport (``trio.SocketStream``) the writer first writes the outbox with one
synchronous non-blocking ``write(2)`` on the socket's descriptor. While the client keeps up that is
all it takes, without ``send_all``'s checkpoints and the ``fail_after`` cancel scope, which cost
more than the system call itself. Only a partial write (the socket buffer is full) falls back to
``await send_all(rest)`` under the write timeout; a write error aborts the session like a failed
``send_all``. The descriptor is asked from the socket before every write, never kept: a closed
socket reports -1, so a descriptor number reused by another connection is never written. (The
listener closes the stream only after the writer task has ended anyway.) TLS transports always
take the ``send_all`` path.

Held wakeups: while a connection's reader handles the stanzas of one read (between
``hold_wakeups()`` and ``flush_held()``, with no ``await`` in between), a stanza queued for a
session whose writer is parked on a plain TCP socket does not wake that writer; the session is
noted, and ``flush_held()`` writes each noted outbox with the same synchronous write, from the
reader's task. Fan-out still leaves in one system call per recipient, and a delivery to a client
that keeps up costs no task switch at all. A write that is partial, fails, or ends the stream
(or a ``wait_flushed()`` waiting) hands over to the writer task. The state is per thread (each
thread may run its own Trio loop); stanzas queued outside a held section wake the writer as before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from meshxmpp.xml.serialize import STREAM_FOOTER, stream_error, to_bytes

if TYPE_CHECKING:
    from meshxmpp.jid import JID
    from meshxmpp.xml.element import Element

__all__ = ["Session", "SessionStatistics", "flush_held", "hold_wakeups", "socket_fileno"]

log = logging.getLogger("meshxmpp.c2s")

_reschedule = trio.lowlevel.reschedule
_write = os.write


def socket_fileno(stream: object) -> Callable[[], int] | None:
    """For a plain TCP stream, the ``fileno`` method of its socket (the fast paths' way to the
    descriptor: it returns -1 once the socket is closed); None for any other stream.

    It is the stdlib socket's bound method (Trio forwards the attribute), looked up once: going
    through Trio's ``__getattr__`` on every read and write costs more than the call."""
    return stream.socket.fileno if isinstance(stream, trio.SocketStream) else None


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    bytes_in: int
    bytes_out: int  # written to the transport
    stanzas_in: int
    stanzas_out: int  # queued with send()
    queued: int  # bytes in the outbox now
    closed: bool


def _write_now(fileno: Callable[[], int], data: bytearray) -> int:
    """One non-blocking write on a socket; the number of bytes taken (0: it would block).

    Raises like ``SocketStream.send_all``: ClosedResourceError for a closed socket (its descriptor
    is -1 from close() on, so a descriptor number reused by another connection is never written),
    BrokenResourceError for EPIPE, ECONNRESET and any other OSError."""
    fd = fileno()
    if fd < 0:
        raise trio.ClosedResourceError("socket was already closed")
    try:
        return _write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class _Held(threading.local):
    """Per thread: whether wakeups are held, and the sessions whose writer a flush must do."""

    active = False

    def __init__(self) -> None:
        self.sessions: list[Session] = []


_held = _Held()


def hold_wakeups() -> None:
    """Start a synchronous section after which ``flush_held()`` is called (before any await)."""
    _held.active = True


def flush_held() -> None:
    """End the section: write the outboxes of the sessions queued to during it."""
    held = _held
    held.active = False
    sessions = held.sessions
    if sessions:
        held.sessions = []
        for session in sessions:
            session._flush_held()


class Session:
    """A client connection; once bound (``jid`` set) the router and features see it.

    Attributes listed in docs/internals.md are public; the outbox machinery is driven by
    ``c2s.listener`` (``write_loop``, ``wait_flushed``, ``replace_stream``, ``abort``, and the
    module's ``hold_wakeups``/``flush_held``).
    """

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_flushed",
        "_jid_str",
        "_outbox",
        "_outbox_limit",
        "_fileno",
        "_held",
        "_parked",
        "_stream",
        "_write_timeout",
        "_writing",
        "available",
        "bare",
        "bound_at",
        "bytes_in",
        "bytes_out",
        "cancel_scope",
        "carbons",
        "close_reason",
        "closed",
        "directed",
        "ended",
        "interested",
        "jid",
        "last_activity",
        "node",
        "peer",
        "presence",
        "priority",
        "show",
        "stanzas_in",
        "stanzas_out",
    )

    jid: JID  # full JID; set by bind(), absent before
    bare: JID

    def __init__(
        self,
        stream: trio.abc.SendStream,
        *,
        peer: str = "",
        node: str = "local",
        outbox_limit: int = 1 << 20,
        write_timeout: float = 30.0,
        now: float = 0.0,
    ) -> None:
        self.node = node
        self.peer = peer
        self.available = False
        self.priority = 0
        self.show: str | None = None
        self.presence: Element | None = None
        self.interested = False
        self.directed: set[JID] = set()
        self.carbons = False
        self.bound_at = 0.0
        self.last_activity = now
        self.closed = False
        self.ended = False  # the router has run session/end for it (once)
        # Why the session ended: a stream error condition, "eof", "slow-consumer", ... (for logs)
        self.close_reason: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.stanzas_in = 0
        self.stanzas_out = 0
        # The connection's cancel scope: cancelled once the last bytes are written, or at once
        # on abort. Set by the listener before the writer starts.
        self.cancel_scope: trio.CancelScope | None = None
        self._stream = stream
        self._fileno = socket_fileno(stream)
        self._outbox = bytearray()
        self._outbox_limit = outbox_limit
        self._write_timeout = write_timeout
        self._parked: trio.lowlevel.Task | None = None
        self._held = False  # in the current held section's list
        self._writing = False
        self._aborted = False
        self._flushed: trio.Event | None = None
        self._jid_str = ""

    # ------------------------------------------------------------------ identity

    @property
    def bound(self) -> bool:
        return self._jid_str != ""

    def bind(self, jid: JID, *, now: float) -> None:
        """Give the session its full JID (called by the listener just before the registry sees it)."""
        self.jid = jid
        self.bare = jid.bare
        self._jid_str = str(jid)
        self.bound_at = now
        self.last_activity = now

    @property
    def aborted(self) -> bool:
        """Closed without a clean end of stream (peer gone, slow consumer, write failure)."""
        return self._aborted

    @property
    def jid_str(self) -> str:
        """``str(self.jid)``, computed once: the listener stamps it on every stanza."""
        return self._jid_str

    def __repr__(self) -> str:
        who = self._jid_str or f"unbound {self.peer}"
        return f"<Session {who}{' closed' if self.closed else ''}>"

    # ------------------------------------------------------------------ sending (sync)

    def send(self, el: Element) -> None:
        """Queue a stanza. Never blocks; a session over its outbox limit is closed instead."""
        if self.closed:
            return
        self.stanzas_out += 1
        self._queue(to_bytes(el))

    def send_bytes(self, data: bytes) -> None:
        """Queue raw bytes (stream headers, negotiation elements)."""
        if self.closed:
            return
        self._queue(data)

    def _queue(self, data: bytes) -> None:
        outbox = self._outbox
        outbox += data
        if len(outbox) > self._outbox_limit:
            # The writer has been stuck on a full socket while this much piled up behind it:
            # the client does not read. Its last bytes are half-written, so no stream error can
            # follow them cleanly; drop the connection (RFC 6120 4.4 allows closing the TCP
            # connection without the footer when the peer is unresponsive).
            log.info("%r: outbox over %d bytes, disconnecting slow client", self, self._outbox_limit)
            self.abort("slow-consumer")
            return
        task = self._parked
        if task is not None:
            if _held.active and self._fileno is not None:
                if not self._held:
                    self._held = True
                    _held.sessions.append(self)
            else:
                self._parked = None
                _reschedule(task)

    def _flush_held(self) -> None:
        """``flush_held()``: do the parked writer's work, or hand it over to the writer."""
        self._held = False
        task = self._parked
        if task is None:
            return  # woken meanwhile (abort): the writer does the rest
        data = self._outbox
        fileno = self._fileno
        if data and fileno is not None:
            self._outbox = bytearray()
            try:
                sent = _write_now(fileno, data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("%r: write failed: %s", self, exc)
                self.abort("write-failed")  # wakes the writer, which ends the connection
                return
            self.bytes_out += sent
            if sent < len(data):
                del data[:sent]
                self._outbox = data  # nothing can have been queued since: no await in between
            elif not self.closed and self._flushed is None:
                return
        # The rest must wait for room, the footer went out, or wait_flushed() waits: the writer.
        self._parked = None
        _reschedule(task)

    def close(self, condition: str | None = None, text: str | None = None, *, error: bytes | None = None) -> None:
        """End the stream: queue ``<stream:error>`` (when ``condition``) and the footer; the
        connection closes once they are written. Sync; a second call does nothing.

        ``error``: the ``<stream:error/>`` bytes to send instead of the one built from ``condition``
        (which then only names the reason), for errors with content such as ``<see-other-host/>``."""
        if self.closed:
            return
        if error is not None:
            self._queue(error)
        elif condition is not None:
            self._queue(stream_error(condition, text))
        if self._aborted:  # the error itself overflowed the outbox
            return
        self._queue(STREAM_FOOTER)
        self.closed = True
        self.close_reason = condition or "closed"

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now without writing anything more (peer gone, slow consumer)."""
        if self._aborted:
            return
        self._aborted = True
        self.closed = True
        if self.close_reason is None:
            self.close_reason = reason
        self._outbox = bytearray()
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    # ------------------------------------------------------------------ the writer (async)

    async def write_loop(self) -> None:
        """The connection's only writer: drain the outbox with one write per wakeup.

        Returns when the session is closed and everything queued is written, or when the write
        fails (then the session is aborted). Expected network errors never escape."""
        try:
            while not self._aborted:
                if not self._outbox:
                    if self.closed:
                        return
                    flushed = self._flushed
                    if flushed is not None:
                        self._flushed = None
                        flushed.set()
                    self._parked = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._abort_park)
                    continue
                data = self._outbox
                self._outbox = bytearray()
                fileno = self._fileno
                if fileno is not None:
                    # Fast path: no checkpoint between here and the next park (or send_all), so
                    # this loop writes at most once per scheduling tick, like send_all did.
                    sent = _write_now(fileno, data)
                    self.bytes_out += sent
                    if sent == len(data):
                        continue
                    data = memoryview(data)[sent:]  # the socket buffer is full: wait for room
                self._writing = True
                with trio.fail_after(self._write_timeout):
                    await self._stream.send_all(data)
                self._writing = False
                self.bytes_out += len(data)
        except trio.TooSlowError:
            log.info("%r: write timed out, disconnecting", self)
            self.abort("write-timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("%r: write failed: %s", self, exc)
            self.abort("write-failed")
        finally:
            self._writing = False
            flushed, self._flushed = self._flushed, None
            if flushed is not None:
                flushed.set()

    def _abort_park(self, raise_cancel: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait_flushed(self) -> None:
        """Wait until everything queued so far is written (or the session is aborted)."""
        while (self._outbox or self._writing) and not self._aborted:
            if self._flushed is None:
                self._flushed = trio.Event()
            await self._flushed.wait()

    def replace_stream(self, stream: trio.abc.SendStream) -> None:
        """Switch the transport (STARTTLS); only between writes, after ``wait_flushed``."""
        assert not self._outbox and not self._writing
        self._stream = stream
        self._fileno = socket_fileno(stream)

    # ------------------------------------------------------------------ introspection

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            stanzas_in=self.stanzas_in,
            stanzas_out=self.stanzas_out,
            queued=len(self._outbox),
            closed=self.closed,
        )
