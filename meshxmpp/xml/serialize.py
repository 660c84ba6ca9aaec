"""Element -> bytes: escaping, namespace declarations, stream header/footer/error.

Attributes are quoted with ``'``; ``& < > " '`` are escaped in them (and tab/CR/LF as character
references so they survive attribute-value normalisation). ``& < >`` and CR are escaped in text.
Characters XML 1.0 cannot carry (C0 controls other than tab/LF/CR, lone surrogates, U+FFFE/U+FFFF)
become U+FFFD: a stanza must never make the peer's parser fail. The parser never produces them, so
only hand-built strings pay for this.

``xmlns`` is emitted only where an element's namespace differs from its parent's (the parent of a
top-level element is ``default_ns``). Elements in the streams namespace are written with the
``stream:`` prefix the stream header declares (RFC 6120 §4.8.5) and do not change the default
namespace of their children.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import ns
from .errors import STREAM_CONDITIONS

if TYPE_CHECKING:
    from .element import Element

STREAM_FOOTER: bytes = b"</stream:stream>"

_BAD = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_TEXT_SPECIAL = re.compile(f"[&<>\r{_BAD}]")
_ATTR_SPECIAL = re.compile(f"[&<>\"'\t\n\r{_BAD}]")
_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&apos;",
    "\t": "&#9;",
    "\n": "&#10;",
    "\r": "&#13;",
}
_STREAMS = ns.STREAMS
_XML = ns.XML


def _escape_match(m: re.Match[str]) -> str:
    return _ESCAPES.get(m.group(), "\ufffd")


_text_search = _TEXT_SPECIAL.search
_text_sub = _TEXT_SPECIAL.sub
_attr_search = _ATTR_SPECIAL.search
_attr_sub = _ATTR_SPECIAL.sub


def escape_text(s: str) -> str:
    """Escape character data."""
    return _text_sub(_escape_match, s) if _text_search(s) else s


def escape_attr(s: str) -> str:
    """Escape an attribute value for quoting with ``'`` (or ``"``)."""
    return _attr_sub(_escape_match, s) if _attr_search(s) else s


def _clark_attrs(attrs: dict[str, str]) -> str:
    # Slow path, only for attributes in a namespace ({uri}local keys): declare a prefix per URI on
    # the element itself. xml: needs no declaration.
    parts: list[str] = []
    decls: dict[str, str] = {}
    for k, v in attrs.items():
        if k[:1] == "{":
            uri, _, local = k[1:].partition("}")
            if uri == _XML:
                k = "xml:" + local
            else:
                prefix = decls.get(uri)
                if prefix is None:
                    prefix = decls[uri] = f"ns{len(decls)}"
                    parts.append(f" xmlns:{prefix}='{escape_attr(uri)}'")
                k = f"{prefix}:{local}"
        parts.append(f" {k}='{_attr_sub(_escape_match, v) if _attr_search(v) else v}'")
    return "".join(parts)


def _write(el: Element, parent_ns: str, out: list[str]) -> None:
    name = el.name
    ens = el.ns
    if ens is None or ens == parent_ns:
        ens = parent_ns
        start = "<" + name
    elif ens == _STREAMS:
        name = "stream:" + name
        start = "<" + name
        ens = parent_ns
    else:
        start = f"<{name} xmlns='{escape_attr(ens)}'"
    attrs = el.attrs
    if attrs:
        parts = [start]
        for k, v in attrs.items():
            if k[:1] == "{":
                parts = [start, _clark_attrs(attrs)]
                break
            parts.append(f" {k}='{_attr_sub(_escape_match, v) if _attr_search(v) else v}'")
        start = "".join(parts)
    children = el.children
    if not children:
        out.append(start + "/>")
        return
    out.append(start + ">")
    for c in children:
        if c.__class__ is str:
            out.append(_text_sub(_escape_match, c) if _text_search(c) else c)
        else:
            _write(c, ens, out)  # type: ignore[arg-type]
    out.append(f"</{name}>")


def to_str(el: Element, default_ns: str = ns.CLIENT) -> str:
    """The serialisation as ``str`` (what storage keeps); never cached."""
    out: list[str] = []
    _write(el, default_ns, out)
    return "".join(out)


def to_bytes(el: Element, default_ns: str = ns.CLIENT) -> bytes:
    """UTF-8 serialisation; cached in ``el._bytes`` when ``default_ns`` is jabber:client."""
    if default_ns == ns.CLIENT:
        b = el._bytes
        if b is None:
            out: list[str] = []
            _write(el, default_ns, out)
            b = el._bytes = "".join(out).encode()
        return b
    out = []
    _write(el, default_ns, out)
    return "".join(out).encode()


def stream_header(
    *,
    from_: str | None,
    to: str | None,
    id: str | None,
    version: str = "1.0",
    default_ns: str = ns.CLIENT,
    lang: str | None = "en",
) -> bytes:
    """``<?xml version='1.0'?>`` and the opening ``<stream:stream>`` tag; None values are left out."""
    parts = [
        "<?xml version='1.0'?><stream:stream xmlns='",
        escape_attr(default_ns),
        "' xmlns:stream='",
        _STREAMS,
        "'",
    ]
    for key, value in (("from", from_), ("to", to), ("id", id), ("version", version), ("xml:lang", lang)):
        if value is not None:
            parts.append(f" {key}='{escape_attr(value)}'")
    parts.append(">")
    return "".join(parts).encode()


def stream_error(condition: str, text: str | None = None) -> bytes:
    """``<stream:error><condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>[<text/>]</stream:error>``."""
    if condition not in STREAM_CONDITIONS:
        raise ValueError(f"unknown stream error condition {condition!r}")
    body = f"<{condition} xmlns='{ns.STREAM_ERRORS}'/>"
    if text is not None:
        body += f"<text xmlns='{ns.STREAM_ERRORS}'>{escape_text(text)}</text>"
    return f"<stream:error>{body}</stream:error>".encode()
