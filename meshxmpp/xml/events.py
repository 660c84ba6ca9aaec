"""What ``XmlStream.feed`` returns."""

from __future__ import annotations

from dataclasses import dataclass

from .element import Element


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer's ``<stream:stream>`` header arrived."""

    attrs: dict[str, str]  # header attributes: to, from, id, version, xml:lang
    ns: str  # the header's default namespace (jabber:client for c2s)


@dataclass(frozen=True, slots=True)
class StanzaReceived:
    """A complete top-level element (stanza, or a negotiation element such as ``<auth/>``)."""

    element: Element


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """The peer sent ``</stream:stream>``."""


XmlEvent = StreamOpened | StanzaReceived | StreamClosed
