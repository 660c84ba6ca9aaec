"""One client connection: its bound JID, presence state, and the coalescing outbox.

The write path (PERFORMANCE.md): ``send()`` is synchronous and never blocks. It serialises the
element once (``serialize.to_bytes`` caches the bytes on the element, so fan-out to many sessions
serialises once) and appends them to a ``bytearray``; then it wakes the connection's single writer
task if that task is parked. The writer takes everything queued and writes it with one
``send_all``, so every stanza produced for this connection during one scheduling tick leaves in one
system call. The outbox is bounded: a client that reads slower than it is sent to is disconnected
instead of growing our memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from meshxmpp.xml.serialize import STREAM_FOOTER, stream_error, to_bytes

if TYPE_CHECKING:
    from meshxmpp.jid import JID
    from meshxmpp.xml.element import Element

__all__ = ["Session", "SessionStatistics"]

log = logging.getLogger("meshxmpp.c2s")


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    bytes_in: int
    bytes_out: int  # written to the transport
    stanzas_in: int
    stanzas_out: int  # queued with send()
    queued: int  # bytes in the outbox now
    closed: bool


class Session:
    """A client connection; once bound (``jid`` set) the router and features see it.

    Attributes listed in docs/internals.md are public; the outbox machinery is driven by
    ``c2s.listener`` (``write_loop``, ``wait_flushed``, ``replace_stream``, ``abort``).
    """

    __slots__ = (
        "__weakref__",
        "_aborted",
        "_flushed",
        "_jid_str",
        "_outbox",
        "_outbox_limit",
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
        self._outbox = bytearray()
        self._outbox_limit = outbox_limit
        self._write_timeout = write_timeout
        self._parked: trio.lowlevel.Task | None = None
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
            self._parked = None
            trio.lowlevel.reschedule(task)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """End the stream: queue ``<stream:error>`` (when ``condition``) and the footer; the
        connection closes once they are written. Sync; a second call does nothing."""
        if self.closed:
            return
        if condition is not None:
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
        """The connection's only writer: drain the outbox with one ``send_all`` per wakeup.

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
