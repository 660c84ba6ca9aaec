"""Sans-IO XML stream parser: bytes in, ``XmlEvent``s out.

Built on the standard library's pyexpat (C speed, namespace processing in C) with the protections
of defusedxml applied by hand: defusedxml's own parsers are SAX/DOM front ends whose per-node
Python dispatch would double the cost of every stanza, so we install its handler approach
(``StartDoctypeDeclHandler``/``EntityDeclHandler``/``ExternalEntityRefHandler`` raising its
``DTDForbidden``/``EntitiesForbidden``/``ExternalReferenceForbidden``) directly on a raw expat
parser. Unlike defusedxml's defaults we forbid every DTD, because RFC 6120 §11.1 restricts XMPP
to a subset of XML without DTDs, entities other than the predefined five, processing
instructions or comments; all of those end the stream with ``restricted-xml``.

How input reaches expat (and why):

* No event can complete before a ``>``, so bytes after the last ``<`` of the input are held back
  while no ``>`` follows it: expat never sees a half-received tag, so a sender trickling a large
  tag byte by byte costs O(1) per byte instead of expat re-scanning the partial token each time
  (expat < 2.6 re-parses a partial token on every call; its 2.6 "reparse deferral" would instead
  delay events, so we switch it off where ``SetReparseDeferralEnabled`` exists). Text is fed
  immediately (expat reports partial text), so garbage is detected as soon as it arrives.
* The one case where expat still holds a partial token is a ``>`` inside a quoted attribute value
  (or inside a comment/PI/DTD). When expat holds more than ``_STALL`` unconsumed bytes, a small
  quote-aware scanner takes over for that tag and only hands the bytes to expat once the tag is
  complete; comments, PIs and DTDs are refused right there.
* Input longer than 64 KiB is fed in 64 KiB pieces, and after each piece the bytes of the current
  top-level element (counted from its ``<``, or the unconsumed bytes when between stanzas) are
  checked against ``max_stanza_size``: a 10 MiB stanza is refused one piece after the limit,
  never buffered whole. Complete stanzas are checked again when they end.

Stream restarts (ARCHITECTURE convention 5): the handlers record the byte offset (expat's
``CurrentByteIndex``) of the start and end tags of the last top-level event; after every feed the
exact end of that event is computed (a quote-aware match over its start tag) and only the bytes
after it are kept. ``restart()`` returns exactly those bytes. When an error is detected after some
events of the same ``feed()``, those events are returned first and the error is raised by the next
``feed()`` (so the events before an error never depend on chunking), unless ``restart()`` comes
first: then the offending bytes belong to the next stream, and are returned for it.
"""

from __future__ import annotations

import pyexpat
import re
from typing import Any

from defusedxml import (  # type: ignore[import-untyped, unused-ignore]
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)

from . import ns
from .element import Element
from .errors import StreamError
from .events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent

__all__ = ["XmlStream", "parse_element"]

_PIECE = 65536  # largest slice handed to expat at once (size limits are checked between slices)
_STALL = 256  # bytes expat may hold in a partial token before the tag scanner takes over
_CACHE_LIMIT = 4096  # bounds the shared name caches against streams of random element names

_XML_NS = ns.XML
_STREAMS = ns.STREAMS
_TAG_END = re.compile(rb"<[^'\">]*(?:(?:'[^']*'|\"[^\"]*\")[^'\">]*)*>")
_TAG_STOP = re.compile(rb"['\">]")

_E = pyexpat.errors


def _codes(*messages: str) -> frozenset[int]:
    return frozenset(_E.codes[m] for m in messages)


_RESTRICTED_CODES = _codes(
    _E.XML_ERROR_UNDEFINED_ENTITY,
    _E.XML_ERROR_MISPLACED_XML_PI,
    _E.XML_ERROR_RECURSIVE_ENTITY_REF,
    _E.XML_ERROR_EXTERNAL_ENTITY_HANDLING,
    _E.XML_ERROR_PARAM_ENTITY_REF,
    _E.XML_ERROR_BINARY_ENTITY_REF,
    _E.XML_ERROR_ATTRIBUTE_EXTERNAL_ENTITY_REF,
    _E.XML_ERROR_ENTITY_DECLARED_IN_PE,
    _E.XML_ERROR_ASYNC_ENTITY,
)
_ENCODING_CODES = _codes(_E.XML_ERROR_UNKNOWN_ENCODING, _E.XML_ERROR_INCORRECT_ENCODING)

# Shared by all streams: expat's name-intern table and our split of "uri local" names. Both are
# bounded (cleared / no longer filled past _CACHE_LIMIT) so random names can't grow them forever.
_intern: dict[Any, Any] = {}
_names: dict[str, tuple[str, str]] = {}


def _split_name(name: str) -> tuple[str, str]:
    uri, sep, local = name.rpartition(" ")
    t = (uri, local) if sep else ("", name)
    if len(_names) < _CACHE_LIMIT:
        _names[name] = t
    return t


def _fix_attrs(attrs: dict[str, str]) -> dict[str, str]:
    # Namespaced attributes arrive as "uri local": xml:* keeps its prefix, others become {uri}local.
    out: dict[str, str] = {}
    for k, v in attrs.items():
        uri, sep, local = k.rpartition(" ")
        if sep:
            k = "xml:" + local if uri == _XML_NS else "{" + uri + "}" + local
        out[k] = v
    return out


def _coalesce(children: list[Element | str]) -> None:
    # Text split across feed() calls arrives in pieces; join adjacent strings once, at element end.
    out: list[Element | str] = []
    run: list[str] = []
    for c in children:
        if isinstance(c, str):
            run.append(c)
        else:
            if run:
                out.append("".join(run))
                run = []
            out.append(c)
    if run:
        out.append("".join(run))
    children[:] = out


def _from_expat(exc: pyexpat.ExpatError) -> StreamError:
    code = exc.code
    if code in _RESTRICTED_CODES:
        return StreamError("restricted-xml", str(exc))
    if code in _ENCODING_CODES:
        return StreamError("unsupported-encoding", str(exc))
    return StreamError("not-well-formed", str(exc))


def _cut(view: bytes | bytearray, held: int, new: int) -> int:
    """How far to feed expat: up to the last '<' when no '>' follows it, else everything.

    ``view[held:new]`` are bytes held back earlier (empty, or a '<' and no '>'), ``view[new:]``
    the bytes that just arrived; so each byte is searched once however the input is chunked.
    """
    lt = view.rfind(b"<", new)
    if lt < 0:
        if held == new:
            return len(view)
        lt = held
    if view.find(b">", lt if lt > new else new) >= 0:
        return len(view)
    return lt


def _scan_tag(view: bytes | bytearray, i: int, state: int) -> tuple[int, int]:
    """Continue scanning a start tag from ``view[i]`` in ``state`` (0 outside quotes, else the
    quote byte). Returns (index after the closing '>', 0) or (-1, state) when it hasn't ended."""
    while True:
        if state == 0:
            m = _TAG_STOP.search(view, i)
            if m is None:
                return -1, 0
            i = m.end()
            c = view[i - 1]
            if c == 62:  # '>'
                return i, 0
            state = c
        else:
            j = view.find(state, i)
            if j < 0:
                return -1, state
            i = j + 1
            state = 0


def _event_end(view: bytes | bytearray, base: int, start: int | None, end: int | None) -> int:
    """Exact offset just after a top-level event, from the offsets expat reported for its start
    tag (``start``) and end (``end``: where its end tag starts, or where an empty element ends).

    Only ``start``: the '>' of that start tag (stream header). Only ``end``: the '>' of the end tag
    there (stream close). Both: an element, empty when its start tag ends in "/>".
    """
    if start is None:
        return base + view.index(b">", end - base) + 1  # type: ignore[operator]
    m = _TAG_END.match(view, start - base)
    if m is None:  # pragma: no cover - expat accepted this tag, so it matches
        raise StreamError("internal-server-error", "cannot locate tag end")
    t = m.end()
    if end is None or view[t - 2] == 47:  # 47 == '/': "<x .../>" ended where it started
        return base + t
    return base + view.index(b">", end - base) + 1


class _Closed(Exception):
    """Raised by the root's end handler to stop expat right after </stream:stream>."""


def _forbid_dtd(name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
    raise DTDForbidden(name, sysid, pubid)


def _forbid_entity(
    name: str,
    is_pe: bool,
    value: str | None,
    base: str | None,
    sysid: str | None,
    pubid: str | None,
    notation: str | None,
) -> None:
    raise EntitiesForbidden(name, value, base, sysid, pubid, notation)


def _forbid_unparsed(
    name: str, base: str | None, sysid: str | None, pubid: str | None, notation: str | None
) -> None:
    raise EntitiesForbidden(name, None, base, sysid, pubid, notation)


def _forbid_external(context: str, base: str | None, sysid: str | None, pubid: str | None) -> int:
    raise ExternalReferenceForbidden(context, base, sysid, pubid)


def _forbid_notation(*args: Any) -> None:
    raise StreamError("restricted-xml", "notation declaration")


def _forbid_pi(target: str, data: str) -> None:
    raise StreamError("restricted-xml", "processing instruction")


def _forbid_comment(data: str) -> None:
    raise StreamError("restricted-xml", "comment")


def _xml_decl(version: str | None, encoding: str | None, standalone: int) -> None:
    if encoding is not None and encoding.lower() not in ("utf-8", "utf8"):
        raise StreamError("unsupported-encoding", encoding)


class XmlStream:
    """Incremental parser for one XML stream (until the next ``restart()``).

    ``max_stanza_size`` (settable at any time) bounds the raw bytes of one top-level element;
    ``max_depth`` bounds nesting inside a stanza (the stanza itself is depth 1; read when the
    parser is created, i.e. at construction and on ``restart()``).
    """

    __slots__ = (
        "max_stanza_size",
        "max_depth",
        "allowed_ns",
        "_parser",
        "_stack",
        "_events",
        "_buf",
        "_base",
        "_fed",
        "_consumed",
        "_mark",
        "_last",
        "_last_end",
        "_root_start",
        "_root_empty",
        "_default_ns",
        "_scan",
        "_closed",
        "_fresh",
        "_error",
        "_pending",
    )

    def __init__(
        self,
        *,
        max_stanza_size: int = 8192,
        max_depth: int = 64,
        allowed_ns: frozenset[str] = frozenset({ns.CLIENT}),
    ) -> None:
        self.max_stanza_size = max_stanza_size
        self.max_depth = max_depth
        self.allowed_ns = allowed_ns
        self._error: StreamError | None = None
        self._reset()

    def _reset(self) -> None:
        self._stack: list[Element] = []
        self._events: list[XmlEvent] = []
        self._buf: bytes | bytearray = b""  # bytes from offset _base: kept for restart + not yet fed
        self._base = 0  # stream offset of _buf[0]; always == _last_end after a feed
        self._fed = 0  # stream offset up to which expat has been fed
        self._consumed = 0  # stream offset up to which expat has consumed (the rest is a partial token)
        self._mark: int | None = None  # offset of the open top-level element's '<'
        self._last: tuple[int | None, int | None] | None = None  # see _event_end()
        self._last_end = 0  # exact offset after the last event returned
        self._root_start = 0
        self._root_empty = False
        self._default_ns: str | None = None
        self._scan: tuple[int, int] | None = None  # (scanner state, offset) while a tag stalls expat
        self._closed = False
        self._fresh = True  # nothing but whitespace seen yet
        self._pending: StreamError | None = None
        self._parser: Any = self._make_parser()

    # -- public API -------------------------------------------------------------------------------

    @property
    def error_pending(self) -> bool:
        """A violation follows the events already returned: the next ``feed`` raises it."""
        return self._pending is not None

    def feed(self, data: bytes) -> list[XmlEvent]:
        """Parse ``data``; return the events it completed. Raises ``StreamError`` on a violation."""
        if self._error is not None:
            raise self._error
        if self._pending is not None:
            self._error, self._pending = self._pending, None
            raise self._error
        if not data:
            return []
        if data.__class__ is not bytes:
            data = bytes(data)
        if self._closed:
            # Nothing after </stream:stream> is parsed; keep (a bounded amount) for restart().
            if len(self._buf) + len(data) <= self.max_stanza_size:
                self._buf = bytes(self._buf) + data
            return []
        if self._fresh:
            # Whitespace between streams (keepalives around a restart) would put the XML
            # declaration off the start of the document; drop it before anything is counted.
            data = data.lstrip(b" \t\r\n")
            if not data:
                return []
            self._fresh = False
        try:
            if len(data) <= _PIECE:
                self._feed(data)
            else:
                for i in range(0, len(data), _PIECE):
                    self._feed(data[i : i + _PIECE])
                    if self._closed:
                        self._buf = bytes(self._buf) + data[i + _PIECE :]
                        break
        except StreamError as exc:
            return self._fail(exc)
        except pyexpat.ExpatError as exc:
            return self._fail(_from_expat(exc))
        except DefusedXmlException as exc:
            return self._fail(StreamError("restricted-xml", type(exc).__name__))
        except RecursionError:  # pragma: no cover - defensive
            return self._fail(StreamError("policy-violation", "too deeply nested"))
        if len(_intern) > _CACHE_LIMIT:
            _intern.clear()
        events = self._events
        if not events:
            return []
        out = events.copy()
        events.clear()
        return out

    def restart(self) -> bytes:
        """Start a new stream (after STARTTLS or SASL success); return the bytes fed after the last
        event returned, which the caller feeds to this (now fresh) parser again."""
        if self._error is not None:
            raise self._error
        tail = bytes(self._buf)
        self._reset()
        return tail

    # -- internals --------------------------------------------------------------------------------

    def _fail(self, err: StreamError) -> list[XmlEvent]:
        self._parser = None
        try:
            self._retain()
        except Exception:  # pragma: no cover - only affects restart() after an error
            pass
        events = self._events
        if events:
            self._pending = err
            out = events.copy()
            events.clear()
            return out
        self._error = err
        raise err

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            if buf.__class__ is not bytearray:
                buf = bytearray(buf)
            new = len(buf)
            buf += data
            view: bytes | bytearray = buf
        else:
            new = 0
            view = data
        self._buf = view
        base = self._base
        start = self._fed - base
        if self._scan is not None:
            state, pos = self._scan
            end, state = _scan_tag(view, pos - base, state)
            if end < 0:
                self._scan = (state, base + len(view))
                cut = start
            else:
                self._scan = None
                cut = _cut(view, end, end)
        else:
            cut = _cut(view, start, new if new > start else start)
        if cut > start:
            self._fed = base + cut
            p = self._parser
            try:
                p.Parse(view if start == 0 and cut == len(view) else view[start:cut], False)
            except _Closed:
                self._retain()
                return
            consumed = self._consumed = p.CurrentByteIndex
            if base + cut - consumed > _STALL and self._scan is None:
                self._stalled(view, consumed - base)
        mark = self._mark
        if base + len(view) - (self._consumed if mark is None else mark) > self.max_stanza_size:
            raise StreamError("policy-violation", "stanza too large")
        self._retain()

    def _stalled(self, view: bytes | bytearray, tok: int) -> None:
        # expat holds a long partial token: the '>'s we fed it were inside that token.
        head = view[tok : tok + 2]
        if head in (b"<!", b"<?"):
            raise StreamError("restricted-xml", "comment, processing instruction or DTD")
        if head[:1] == b"&":
            raise StreamError("restricted-xml", "entity reference")
        if head[:1] == b"<":
            end, state = _scan_tag(view, tok + 1, 0)
            if end < 0:  # always: expat would have consumed a complete tag
                self._scan = (state, self._base + len(view))

    def _retain(self) -> None:
        view = self._buf
        base = self._base
        last = self._last
        if last is not None:
            self._last = None
            self._last_end = _event_end(view, base, last[0], last[1])
        k = self._last_end - base
        if k > 0:
            if k >= len(view):
                self._buf = b""
            elif view.__class__ is bytearray:
                del view[:k]
            else:
                self._buf = view[k:]
            self._base = self._last_end

    def _open(self, el: Element, start: int) -> None:
        if el.ns != _STREAMS or el.name != "stream":
            raise StreamError("invalid-namespace", f"root element is not {{{_STREAMS}}}stream")
        default_ns = self._default_ns
        if default_ns is None or default_ns not in self.allowed_ns:
            raise StreamError("invalid-namespace", f"unsupported default namespace {default_ns!r}")
        self._parser.StartNamespaceDeclHandler = None
        self._root_start = start
        tag_end = _event_end(self._buf, self._base, start, None) - self._base
        self._root_empty = self._buf[tag_end - 2] == 47  # "<stream:stream .../>"
        self._last = (start, None)
        self._events.append(StreamOpened(el.attrs, default_ns))

    def _make_parser(self) -> Any:
        p = pyexpat.ParserCreate("utf-8", " ", intern=_intern)
        if hasattr(p, "SetReparseDeferralEnabled"):  # expat >= 2.6: see the module docstring
            p.SetReparseDeferralEnabled(False)
        p.buffer_text = True
        # The text buffer is allocated per parser (8 KiB by default), i.e. per connection; 1 KiB
        # holds a typical body in one callback and saves 7 KiB per idle connection. Longer text
        # arrives in pieces, which end() coalesces.
        p.buffer_size = 1024
        p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = _forbid_dtd
        p.EntityDeclHandler = _forbid_entity
        p.UnparsedEntityDeclHandler = _forbid_unparsed
        p.ExternalEntityRefHandler = _forbid_external
        p.NotationDeclHandler = _forbid_notation
        p.ProcessingInstructionHandler = _forbid_pi
        p.CommentHandler = _forbid_comment
        p.XmlDeclHandler = _xml_decl

        # The three handlers below run once per XML node: closures over locals, no attribute
        # lookups on self except at stanza boundaries, no copies of the attrs dict expat built.
        stack = self._stack
        append_event = self._events.append
        names = _names
        split = _split_name
        fix = _fix_attrs
        El = Element
        # A frozen dataclass's __init__ goes through object.__setattr__; filling the slot
        # directly builds the same event in about half the time.
        new_event = StanzaReceived.__new__
        set_element = vars(StanzaReceived)["element"].__set__
        max_depth = self.max_depth
        merge: list[Element] = []  # elements whose text arrived in pieces
        me = self

        def ns_decl(prefix: str | None, uri: str) -> None:
            if prefix is None:
                me._default_ns = uri

        def start(name: str, attrs: dict[str, str]) -> None:
            try:
                uri, local = names[name]
            except KeyError:
                uri, local = split(name)
            if attrs:
                for k in attrs:
                    if " " in k:
                        attrs = fix(attrs)
                        break
            el = El(local, uri, attrs, [])
            n = len(stack)
            if n > 1:
                if n > max_depth:
                    raise StreamError("policy-violation", "too deeply nested")
                stack[-1].children.append(el)
            elif n == 1:
                me._mark = p.CurrentByteIndex
            else:
                me._open(el, p.CurrentByteIndex)
            stack.append(el)

        def end(name: str) -> None:
            el = stack.pop()
            if merge and merge[-1] is el:
                merge.pop()
                _coalesce(el.children)
            n = len(stack)
            if n == 1:
                e = p.CurrentByteIndex
                s: int = me._mark  # type: ignore[assignment]
                me._mark = None
                me._last = (s, e)
                if e - s > me.max_stanza_size - 256:  # near the limit: count exactly
                    if _event_end(me._buf, me._base, s, e) - s > me.max_stanza_size:
                        raise StreamError("policy-violation", "stanza too large")
                ev = new_event(StanzaReceived)
                set_element(ev, el)
                append_event(ev)
            elif n == 0:
                if me._root_empty:  # <stream:stream .../>: closed where it opened
                    me._last = (me._root_start, None)
                else:
                    me._last = (None, p.CurrentByteIndex)
                me._closed = True
                append_event(StreamClosed())
                raise _Closed

        def text(data: str) -> None:
            if len(stack) > 1:
                cur = stack[-1]
                ch = cur.children
                if ch and ch[-1].__class__ is str:
                    if not merge or merge[-1] is not cur:
                        merge.append(cur)
                ch.append(data)
            # character data at stream level (whitespace keepalives) is ignored

        p.StartNamespaceDeclHandler = ns_decl
        p.StartElementHandler = start
        p.EndElementHandler = end
        p.CharacterDataHandler = text
        return p


def parse_element(
    data: str | bytes, *, default_ns: str = ns.CLIENT, max_size: int = 1 << 20, max_depth: int = 64
) -> Element:
    """Parse one serialised element (as ``to_str``/``to_bytes`` wrote it, e.g. from storage) with
    the same protections as a stream; raises ``StreamError``."""
    from .serialize import stream_header

    s = XmlStream(max_stanza_size=max_size, max_depth=max_depth, allowed_ns=frozenset({default_ns}))
    s.feed(stream_header(from_=None, to=None, id=None, default_ns=default_ns))
    events = s.feed(data.encode() if isinstance(data, str) else data)
    s.feed(b"")  # raises an error found after the element
    if len(events) != 1 or not isinstance(events[0], StanzaReceived) or s.restart().strip():
        raise StreamError("not-well-formed", "expected exactly one element")
    return events[0].element
