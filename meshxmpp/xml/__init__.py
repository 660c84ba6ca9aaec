"""XML layer: elements, serialisation and the sans-IO stream parser."""

from __future__ import annotations

from . import ns
from .element import Element
from .errors import STANZA_CONDITIONS, STANZA_ERROR_TYPES, STREAM_CONDITIONS, StanzaError, StreamError
from .events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent
from .serialize import STREAM_FOOTER, escape_attr, escape_text, stream_error, stream_header, to_bytes, to_str
from .stream import XmlStream, parse_element

__all__ = [
    "STANZA_CONDITIONS",
    "STANZA_ERROR_TYPES",
    "STREAM_CONDITIONS",
    "STREAM_FOOTER",
    "Element",
    "StanzaError",
    "StanzaReceived",
    "StreamClosed",
    "StreamError",
    "StreamOpened",
    "XmlEvent",
    "XmlStream",
    "escape_attr",
    "escape_text",
    "ns",
    "parse_element",
    "stream_error",
    "stream_header",
    "to_bytes",
    "to_str",
]
