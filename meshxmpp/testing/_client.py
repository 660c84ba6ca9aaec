"""A minimal XMPP client for tests: log in, send, wait for a stanza matching a predicate.

It needs no external library and every wait has a deadline with a clear failure message.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Callable
from typing import Any

import trio

from meshxmpp.c2s import sasl
from meshxmpp.jid import JID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened
from meshxmpp.xml.serialize import STREAM_FOOTER, stream_header, to_bytes
from meshxmpp.xml.stream import XmlStream

Predicate = Callable[[Element], bool]


class ClientError(Exception):
    pass


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    # The node's development certificate is self-signed: tests do not verify it.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TestClient:
    __test__ = False  # not a pytest test class

    def __init__(self, stream: trio.abc.Stream, domain: str, *, timeout: float = 10.0) -> None:
        self.stream: trio.abc.Stream = stream
        self.domain = domain
        self.timeout = timeout
        self.jid: JID | None = None
        self.features: Element | None = None
        self.stream_error: str | None = None
        self.closed_by_server = False
        self._parser = XmlStream(max_stanza_size=10 * 1024 * 1024, max_depth=1000,
                                 allowed_ns=frozenset({ns.CLIENT}))
        self._pending: list[Element] = []
        self._ids = 0

    # -- connecting -------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        jid: str,
        password: str,
        *,
        resource: str | None = None,
        starttls: bool = True,
        mechanism: str = "SCRAM-SHA-256",
        presence: bool = False,
        timeout: float = 10.0,
    ) -> TestClient:
        stream = await trio.open_tcp_stream(host, port)
        user = JID.parse(jid)
        client = cls(stream, user.domain, timeout=timeout)
        try:
            await client.login(user.local or "", password, resource=resource, starttls=starttls,
                               mechanism=mechanism)
            if presence:
                await client.send(Element("presence", ns.CLIENT))
        except BaseException:
            await client.aclose()
            raise
        return client

    async def open_stream(self) -> Element:
        """Send a stream header and return the <stream:features/> element."""
        self._parser = XmlStream(max_stanza_size=10 * 1024 * 1024, max_depth=1000,
                                 allowed_ns=frozenset({ns.CLIENT}))
        await self.send_raw(stream_header(from_=None, to=self.domain, id=None))
        el = await self.next_stanza()
        if el.name != "features":
            raise ClientError(f"expected stream features, got {el!r}")
        self.features = el
        return el

    async def login(self, username: str, password: str, *, resource: str | None = None,
                    starttls: bool = True, mechanism: str = "SCRAM-SHA-256") -> JID:
        features = await self.open_stream()
        if starttls:
            if features.find("starttls", ns.TLS) is None:
                raise ClientError("server offers no STARTTLS")
            await self.send(Element("starttls", ns.TLS))
            answer = await self.next_stanza()
            if answer.name != "proceed":
                raise ClientError(f"STARTTLS refused: {answer!r}")
            self.stream = trio.SSLStream(self.stream, _insecure_context(), server_hostname=self.domain)
            await self.stream.do_handshake()
            features = await self.open_stream()
        await self.authenticate(username, password, mechanism)
        features = await self.open_stream()
        return await self.bind(resource)

    async def authenticate(self, username: str, password: str, mechanism: str) -> None:
        auth = Element("auth", ns.SASL, {"mechanism": mechanism})
        if mechanism == "PLAIN":
            auth.append(base64.b64encode(sasl.plain_client(username, password)).decode())
            await self.send(auth)
            answer = await self.next_stanza()
        else:
            hash_name = mechanism.removeprefix("SCRAM-")
            client = sasl.ScramClient(hash_name, username, password, base64.b64encode(os.urandom(18)))
            auth.append(base64.b64encode(client.first()).decode())
            await self.send(auth)
            answer = await self.next_stanza()
            if answer.name == "challenge":
                final = client.final(base64.b64decode(answer.text))
                await self.send(Element("response", ns.SASL, children=[base64.b64encode(final).decode()]))
                answer = await self.next_stanza()
                if answer.name == "success" and not client.verify(base64.b64decode(answer.text)):
                    raise ClientError("server signature did not verify")
        if answer.name != "success":
            condition = next((c.name for c in answer.children if isinstance(c, Element)), "?")
            raise ClientError(f"authentication failed: {condition}")

    async def bind(self, resource: str | None = None) -> JID:
        iq = Element("iq", ns.CLIENT, {"type": "set", "id": self.next_id()})
        bind = iq.add("bind", ns.BIND)
        if resource is not None:
            bind.add("resource", ns.BIND, text=resource)
        result = await self.iq(iq)
        jid_el = result.find("bind", ns.BIND)
        assert jid_el is not None and jid_el.find("jid", ns.BIND) is not None, result
        self.jid = JID.parse(jid_el.find("jid", ns.BIND).text)  # type: ignore[union-attr]
        return self.jid

    # -- sending and receiving ----------------------------------------------------------------------

    def next_id(self) -> str:
        self._ids += 1
        return f"t{self._ids}"

    async def send_raw(self, data: bytes) -> None:
        with trio.fail_after(self.timeout):
            await self.stream.send_all(data)

    async def send(self, el: Element | str) -> None:
        await self.send_raw(el.encode() if isinstance(el, str) else to_bytes(el))

    async def _read_events(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.closed_by_server = True
            raise ClientError("connection closed by the server")
        for event in self._parser.feed(data):
            if isinstance(event, StanzaReceived):
                el = event.element
                if el.name == "error" and el.ns == ns.STREAMS:
                    self.stream_error = next(
                        (c.name for c in el.children if isinstance(c, Element) and c.ns == ns.STREAM_ERRORS), "?")
                self._pending.append(el)
            elif isinstance(event, StreamClosed):
                self.closed_by_server = True
            elif isinstance(event, StreamOpened):
                pass

    async def next_stanza(self, timeout: float | None = None) -> Element:
        return await self.wait_for(lambda el: True, timeout=timeout, what="any stanza")

    async def wait_for(self, predicate: Predicate, *, timeout: float | None = None, what: str = "") -> Element:
        """Return (and remove) the first received stanza matching ``predicate``."""
        deadline = trio.current_time() + (timeout if timeout is not None else self.timeout)
        while True:
            for i, el in enumerate(self._pending):
                if predicate(el):
                    del self._pending[i]
                    return el
            if self.closed_by_server:
                raise ClientError(f"stream closed while waiting for {what or 'a stanza'}"
                                  f" (stream error: {self.stream_error}); pending: {self._pending!r}")
            with trio.move_on_at(deadline) as scope:
                await self._read_events()
            if scope.cancelled_caught:
                raise TimeoutError(f"timed out waiting for {what or 'a stanza'}; pending: {self._pending!r}")

    async def expect_nothing(self, predicate: Predicate = lambda el: True, *, within: float = 0.2) -> None:
        """Assert no matching stanza arrives; use after a round trip that orders the stream."""
        for el in self._pending:
            if predicate(el):
                raise AssertionError(f"unexpected stanza {el!r}")

    async def iq(self, el: Element, *, timeout: float | None = None) -> Element:
        if "id" not in el.attrs:
            el.set("id", self.next_id())
        iq_id = el.attrs["id"]
        await self.send(el)
        return await self.wait_for(
            lambda r: r.name == "iq" and r.attrs.get("id") == iq_id and r.attrs.get("type") in ("result", "error"),
            timeout=timeout, what=f"iq reply {iq_id}")

    async def send_message(self, to: str, body: str, *, type_: str = "chat", id_: str | None = None) -> None:
        """Send ``<message to type><body/></message>`` (the server stamps our full JID as ``from``)."""
        el = Element("message", ns.CLIENT, {"to": to, "type": type_})
        if id_ is not None:
            el.set("id", id_)
        el.add("body", ns.CLIENT, text=body)
        await self.send(el)

    async def send_presence(self, *, to: str | None = None, type_: str | None = None,
                            priority: int | None = None) -> None:
        """Send a presence: available broadcast by default, or ``type_`` (subscribe, unavailable...)."""
        el = Element("presence", ns.CLIENT, {})
        if to is not None:
            el.set("to", to)
        if type_ is not None:
            el.set("type", type_)
        if priority is not None:
            el.add("priority", ns.CLIENT, text=str(priority))
        await self.send(el)

    async def wait_message(self, body: str | None = None, *, from_: str | None = None,
                           timeout: float | None = None) -> Element:
        """The first received ``<message/>`` with this body text and/or sender (full or bare JID)."""
        def match(el: Element) -> bool:
            if el.name != "message":
                return False
            if body is not None and el.findtext("body", ns.CLIENT) != body:
                return False
            if from_ is not None:
                sender = el.get("from") or ""
                if sender != from_ and sender.split("/", 1)[0] != from_:
                    return False
            return True

        what = "a message" + (f" with body {body!r}" if body is not None else "") + \
            (f" from {from_}" if from_ is not None else "")
        return await self.wait_for(match, timeout=timeout, what=what)

    async def ping(self) -> None:
        """Round trip to the server: everything the server sent before the pong has arrived."""
        reply = await self.iq(Element("iq", ns.CLIENT, {"type": "get", "to": self.domain},
                                      children=[Element("ping", ns.PING)]))
        assert reply.attrs.get("type") == "result", reply

    def pending(self) -> list[Element]:
        return list(self._pending)

    async def wait_closed(self, timeout: float | None = None) -> None:
        with trio.fail_after(timeout if timeout is not None else self.timeout):
            while not self.closed_by_server:
                try:
                    await self._read_events()
                except (ClientError, trio.BrokenResourceError):
                    self.closed_by_server = True

    async def aclose(self, *, clean: bool = True) -> None:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            if clean and not self.closed_by_server:
                try:
                    await self.stream.send_all(STREAM_FOOTER)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await self.stream.aclose()

    async def __aenter__(self) -> TestClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
