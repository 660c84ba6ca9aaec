"""A raw-socket XEP-0114 component for tests: no library between the test and the wire."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from meshxmpp.component.handshake import handshake_digest
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened
from meshxmpp.xml.serialize import STREAM_FOOTER, to_bytes
from meshxmpp.xml.stream import XmlStream


def header(domain: str) -> bytes:
    return (f"<?xml version='1.0'?><stream:stream xmlns='{ns.COMPONENT}' xmlns:stream='{ns.STREAMS}' "
            f"to='{domain}'>").encode()


class RawComponent:
    """One component connection. Stanzas it receives are parsed in jabber:component:accept."""

    def __init__(self, stream: trio.SocketStream, domain: str, *, timeout: float = 10.0) -> None:
        self.stream = stream
        self.domain = domain
        self.timeout = timeout
        self.stream_id: str | None = None
        self.header_attrs: dict[str, str] = {}
        self.stream_error: str | None = None
        self.closed = False
        self.received: list[Element] = []
        self._parser = XmlStream(max_stanza_size=1 << 24, max_depth=1000, allowed_ns=frozenset({ns.COMPONENT}))
        self._ids = 0

    @classmethod
    async def open(cls, port: int, domain: str, *, timeout: float = 10.0) -> RawComponent:  # noqa: ASYNC109
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(stream, domain, timeout=timeout)

    @classmethod
    async def connect(cls, port: int, domain: str, secret: str, *, timeout: float = 10.0  # noqa: ASYNC109
                      ) -> RawComponent:
        """Open, handshake, and return once the server answered <handshake/>."""
        comp = await cls.open(port, domain, timeout=timeout)
        try:
            reply = await comp.handshake(secret)
            assert reply.name == "handshake" and not reply.children, reply
        except BaseException:
            await comp.aclose()
            raise
        return comp

    async def handshake(self, secret: str, *, header_domain: str | None = None) -> Element:
        await self.send_raw(header(header_domain or self.domain))
        await self._until(lambda: self.stream_id is not None or self.closed, "the server's stream header")
        if self.stream_id is None:
            raise AssertionError(f"no stream id; stream error {self.stream_error}")
        await self.send_raw(f"<handshake>{handshake_digest(self.stream_id, secret)}</handshake>".encode())
        return await self.wait_for(lambda el: True, what="the handshake answer")

    def next_id(self) -> str:
        self._ids += 1
        return f"c{self._ids}"

    async def send_raw(self, data: bytes) -> None:
        with trio.fail_after(self.timeout):
            await self.stream.send_all(data)

    async def send(self, el: Element | str) -> None:
        await self.send_raw(el.encode() if isinstance(el, str) else to_bytes(el, ns.COMPONENT))

    async def _read(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return
        for event in self._parser.feed(data):
            if isinstance(event, StreamOpened):
                self.header_attrs = dict(event.attrs)
                self.stream_id = event.attrs.get("id")
            elif isinstance(event, StreamClosed):
                self.closed = True
            elif isinstance(event, StanzaReceived):
                el = event.element
                if el.name == "error" and el.ns == ns.STREAMS:
                    self.stream_error = next(c.name for c in el.children if isinstance(c, Element))
                else:
                    self.received.append(el)

    async def _until(self, cond: Callable[[], bool], what: str) -> None:
        with trio.move_on_after(self.timeout) as scope:
            while not cond():
                await self._read()
        if scope.cancelled_caught:
            raise TimeoutError(f"timed out waiting for {what}; received {self.received!r}")

    async def wait_for(self, predicate: Callable[[Element], bool], *, what: str = "a stanza") -> Element:
        found: list[Element] = []

        def match() -> bool:
            for i, el in enumerate(self.received):
                if predicate(el):
                    found.append(self.received.pop(i))
                    return True
            if self.closed:
                raise AssertionError(f"stream closed ({self.stream_error}) while waiting for {what}")
            return False

        await self._until(match, what)
        return found[0]

    async def wait_closed(self) -> None:
        await self._until(lambda: self.closed, "the end of the stream")

    async def iq(self, el: Element) -> Element:
        el.set("id", el.get("id") or self.next_id())
        iq_id = el.get("id")
        await self.send(el)
        return await self.wait_for(lambda r: r.name == "iq" and r.get("id") == iq_id
                                   and r.get("type") in ("result", "error"), what=f"iq reply {iq_id}")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            if not self.closed:
                try:
                    await self.stream.send_all(STREAM_FOOTER)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await self.stream.aclose()

    async def __aenter__(self) -> RawComponent:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def stanza(name: str, attrs: dict[str, str], body: str | None = None) -> Element:
    el = Element(name, ns.COMPONENT, attrs)
    if body is not None:
        el.add("body", ns.COMPONENT, text=body)
    return el
