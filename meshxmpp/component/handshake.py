"""The server side of a XEP-0114 (jabber:component:accept) stream, as a sans-IO state machine.

The glue (``component.listener``) feeds the bytes it reads to :meth:`ComponentStream.feed` and
performs the returned effects in order: ``Send`` bytes, note ``Established`` (the component is
authenticated for a domain), hand each ``Stanza`` to the router, ``Close`` the stream (with a stream
error when a condition is set). The object owns its ``XmlStream`` (itself sans-IO), so the stream's
protections (stanza size and depth limits, no DTD or entities, only the jabber:component:accept
namespace) apply before anything else looks at the input.

The protocol (XEP-0114 section 3):

1. the component opens ``<stream:stream xmlns='jabber:component:accept' to='servicex.example.org'>``;
2. we answer with a header ``from`` that domain carrying a fresh stream ``id`` (an unknown domain gets
   ``<host-unknown/>``);
3. the component sends ``<handshake>`` hex(SHA-1(id + secret)) ``</handshake>``; a match (compared in
   constant time) gets an empty ``<handshake/>``, anything else ``<not-authorized/>`` and the end of
   the stream;
4. then stanzas flow both ways. A stanza from the component must carry a ``from`` in its domain
   (``servicex.example.org``, ``bot@servicex.example.org/x``), else ``<invalid-from/>``, and a
   ``to``, else ``<improper-addressing/>``; both end the stream (RFC 6120 4.9.3.9 and 4.9.3.14).

Accepted stanzas are moved from jabber:component:accept to jabber:client in place (the router and
every client stream speak jabber:client; a stanza written back to a component stream in jabber:client
serialises without ``xmlns``, which the component reads in its own namespace).

No trio, no sockets, no clock: the stream id comes from the ``rng`` argument.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import random
from collections.abc import Mapping
from dataclasses import dataclass

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent
from meshxmpp.xml.serialize import escape_attr, to_bytes
from meshxmpp.xml.stream import XmlStream

__all__ = [
    "TRANSITIONS",
    "Close",
    "ComponentStream",
    "Effect",
    "Established",
    "Input",
    "Send",
    "Stanza",
    "State",
    "classify",
    "handshake_digest",
    "header",
    "mermaid",
]


class State(enum.Enum):
    #: Waiting for the component's stream header.
    STREAM_START = "stream-start"
    #: Our header (with the stream id) is sent; waiting for <handshake/>.
    HANDSHAKE = "handshake"
    #: Authenticated: stanzas flow.
    ESTABLISHED = "established"
    #: Terminal.
    CLOSED = "closed"


class Input(enum.Enum):
    HEADER = "header"
    HANDSHAKE = "handshake"
    STANZA = "stanza"
    CLOSE = "close"  # the component's closing tag
    STREAM_ERROR = "stream-error"  # the component sent <stream:error/>
    UNKNOWN = "unknown"  # any other element


S, In = State, Input

#: Every (state, input) pair that is allowed; anything else is a protocol error that ends the stream.
TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.STREAM_START, In.HEADER): S.HANDSHAKE,
    (S.HANDSHAKE, In.HANDSHAKE): S.ESTABLISHED,
    (S.HANDSHAKE, In.CLOSE): S.CLOSED,
    (S.HANDSHAKE, In.STREAM_ERROR): S.CLOSED,
    (S.ESTABLISHED, In.STANZA): S.ESTABLISHED,
    (S.ESTABLISHED, In.CLOSE): S.CLOSED,
    (S.ESTABLISHED, In.STREAM_ERROR): S.CLOSED,
}

_STANZA_NAMES = frozenset({"message", "presence", "iq"})


# ------------------------------------------------------------------------------------ effects


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Established:
    """The handshake succeeded: the connection now speaks for ``domain``."""

    domain: str


@dataclass(frozen=True, slots=True)
class Stanza:
    """A checked stanza from the component (now in jabber:client), for the router."""

    element: Element


@dataclass(frozen=True, slots=True)
class Close:
    """End the stream: ``<stream:error>`` when ``condition`` is set, then the footer; close."""

    condition: str | None = None
    text: str | None = None


Effect = Send | Established | Stanza | Close


# ------------------------------------------------------------------------------------ helpers


def handshake_digest(stream_id: str, secret: str) -> str:
    """XEP-0114: lowercase hex of SHA-1(stream id + secret), both UTF-8."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


def classify(event: XmlEvent) -> Input:
    if isinstance(event, StreamOpened):
        return In.HEADER
    if isinstance(event, StreamClosed):
        return In.CLOSE
    el = event.element
    if el.ns == ns.STREAMS and el.name == "error":
        return In.STREAM_ERROR
    if el.ns == ns.COMPONENT:
        if el.name == "handshake":
            return In.HANDSHAKE
        if el.name in _STANZA_NAMES:
            return In.STANZA
    return In.UNKNOWN


def _condition_for(state: State, inp: Input) -> str:
    if inp is In.UNKNOWN:
        return "unsupported-stanza-type"
    if state is S.HANDSHAKE and inp is In.STANZA:
        return "not-authorized"  # stanzas before the handshake
    return "policy-violation"


def _to_client_ns(el: Element) -> None:
    """jabber:component:accept -> jabber:client, in place (the element is fresh from the parser)."""
    if el.ns == ns.COMPONENT:
        el.ns = ns.CLIENT
    el._bytes = None
    for child in el.children:
        if isinstance(child, Element):
            _to_client_ns(child)


def header(*, from_: str | None, id: str | None) -> bytes:
    """Our stream header. XEP-0114 streams carry no ``version`` (there are no stream features)."""
    parts = [f"<?xml version='1.0'?><stream:stream xmlns='{ns.COMPONENT}' xmlns:stream='{ns.STREAMS}'"]
    if from_ is not None:
        parts.append(f" from='{escape_attr(from_)}'")
    if id is not None:
        parts.append(f" id='{escape_attr(id)}'")
    parts.append(">")
    return "".join(parts).encode()


# ------------------------------------------------------------------------------------ the machine


class ComponentStream:
    """One component connection from its first byte to its end.

    ``secrets`` maps each allowed component domain (normalised) to its shared secret.
    ``max_stanza_size`` applies before the handshake, ``max_stanza_size_after`` once established.
    """

    def __init__(
        self,
        secrets: Mapping[str, str],
        *,
        rng: random.Random,
        max_stanza_size: int = 8192,
        max_stanza_size_after: int = 262144,
        max_depth: int = 64,
    ) -> None:
        self.secrets = dict(secrets)
        self.state = S.STREAM_START
        self.domain: str | None = None  # the domain the header asked for; authenticated once ESTABLISHED
        self.stream_id = rng.randbytes(12).hex()
        self.max_stanza_size_after = max_stanza_size_after
        self.xml = XmlStream(max_stanza_size=max_stanza_size, max_depth=max_depth,
                             allowed_ns=frozenset({ns.COMPONENT}))
        self._header_sent = False
        self._out: list[Effect] = []

    @property
    def established(self) -> bool:
        return self.state is S.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self.state is S.CLOSED

    @property
    def error_pending(self) -> bool:
        """The parser found a violation after the events already returned (see ``XmlStream``)."""
        return self.xml.error_pending

    # ------------------------------------------------------------------ inputs

    def feed(self, data: bytes) -> list[Effect]:
        """Bytes from the component -> effects. ``feed(b"")`` surfaces a pending parser error."""
        out: list[Effect] = []
        if self.state is S.CLOSED:
            return out
        try:
            events = self.xml.feed(data)
        except StreamError as err:
            events = []
            error: StreamError | None = err
        else:
            error = None
        for event in events:
            out += self.receive(event)
            if self.closed:
                return out
        if error is not None:
            out += self.fail(error.condition, error.text)
        return out

    def receive(self, event: XmlEvent) -> list[Effect]:
        """One parsed event -> effects."""
        out: list[Effect] = []
        self._out = out
        if self.state is S.CLOSED:
            return out
        inp = classify(event)
        try:
            self._advance(inp)
            self._handle(inp, event)
        except StreamError as err:
            self._fail(err)
        return out

    def fail(self, condition: str, text: str | None = None) -> list[Effect]:
        """Close with a stream error found by the glue (parser limits, timeouts...)."""
        self._out = []
        if self.state is not S.CLOSED:
            self._fail(StreamError(condition, text))
        return self._out

    # ------------------------------------------------------------------ the table

    def _advance(self, inp: Input) -> None:
        nxt = TRANSITIONS.get((self.state, inp))
        if nxt is None:
            state = self.state
            self.state = S.CLOSED
            raise StreamError(_condition_for(state, inp), f"unexpected {inp.value} in state {state.value}")
        self.state = nxt

    def _fail(self, err: StreamError) -> None:
        self.state = S.CLOSED
        if not self._header_sent:
            # RFC 6120 4.9.1.1: an error before our header still opens the stream first.
            self._send(header(from_=None, id=self.stream_id))
            self._header_sent = True
        self._out.append(Close(err.condition, err.text))

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    # ------------------------------------------------------------------ handlers

    def _handle(self, inp: Input, event: XmlEvent) -> None:
        if inp is In.HEADER:
            assert isinstance(event, StreamOpened)
            self._on_header(event)
        elif inp in (In.CLOSE, In.STREAM_ERROR):
            self._out.append(Close())
        elif inp is In.HANDSHAKE:
            assert isinstance(event, StanzaReceived)
            self._on_handshake(event.element)
        elif inp is In.STANZA:
            assert isinstance(event, StanzaReceived)
            self._on_stanza(event.element)

    def _on_header(self, opened: StreamOpened) -> None:
        if opened.ns != ns.COMPONENT:
            raise StreamError("invalid-namespace", "the default namespace must be jabber:component:accept")
        try:
            to = JID.parse(opened.attrs.get("to") or "")
        except InvalidJID:
            to = None
        if to is None or to.local is not None or to.resource is not None or to.domain not in self.secrets:
            raise StreamError("host-unknown", None)
        self.domain = to.domain
        self._send(header(from_=to.domain, id=self.stream_id))
        self._header_sent = True

    def _on_handshake(self, el: Element) -> None:
        assert self.domain is not None
        expected = handshake_digest(self.stream_id, self.secrets[self.domain]).encode()
        given = el.text.strip().lower().encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise StreamError("not-authorized", None)
        self.xml.max_stanza_size = self.max_stanza_size_after
        self._send(to_bytes(Element("handshake", ns.COMPONENT), ns.COMPONENT))
        self._out.append(Established(self.domain))

    def _on_stanza(self, el: Element) -> None:
        domain = self.domain
        try:
            sender = JID.parse(el.attrs.get("from") or "")
        except InvalidJID:
            sender = None
        if sender is None or sender.domain != domain:
            self.state = S.CLOSED
            raise StreamError("invalid-from", f"'from' must be in {domain}")
        to = el.attrs.get("to")
        if not to:
            self.state = S.CLOSED
            raise StreamError("improper-addressing", "a stanza from a component needs a 'to'")
        _to_client_ns(el)
        self._out.append(Stanza(el))


def mermaid() -> str:
    """The table as a Mermaid state diagram (for docs/components.md)."""
    lines = ["stateDiagram-v2"]
    for (state, inp), nxt in TRANSITIONS.items():
        lines.append(f"    {state.name} --> {nxt.name}: {inp.value}")
    return "\n".join(lines)
