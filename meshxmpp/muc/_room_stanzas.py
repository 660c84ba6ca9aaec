"""Occupants and the stanza pieces a room builds (XEP-0045 §7, XEP-0203 stamps). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

__all__ = ["AFFILIATIONS", "ROLES", "HistoryEntry", "Occupant", "default_role", "parse_jid", "parse_stamp", "stamp",
           "status_x", "strip_presence"]

#: Ranked lowest first (XEP-0045 §5.2).
AFFILIATIONS = ("outcast", "none", "member", "admin", "owner")
#: Ranked lowest first (XEP-0045 §5.1).
ROLES = ("none", "visitor", "participant", "moderator")


def parse_jid(s: str | None) -> JID | None:
    """The JID in an attribute, or None when it is absent or invalid."""
    if s is None:
        return None
    try:
        return JID.parse(s)
    except InvalidJID:
        return None


def default_role(affiliation: str, moderated: bool) -> str:
    """The role an occupant with ``affiliation`` gets on entering (XEP-0045 §5.1, table 5)."""
    if affiliation in ("owner", "admin"):
        return "moderator"
    if affiliation == "member" or not moderated:
        return "participant"
    return "visitor"


@dataclass(slots=True)
class Occupant:
    """One nick in the room: a bare JID with one or more resources (multi-session nick).

    ``presences`` maps each resource's full JID to its last presence (children only, no addresses,
    no muc ``<x/>``); insertion order is update order, so the last key is the resource whose
    presence the room shows for the occupant.
    """

    nick: str
    bare: JID
    role: str
    presences: dict[JID, Element] = field(default_factory=dict)

    @property
    def current(self) -> JID:
        return next(reversed(self.presences))

    def update(self, full: JID, presence: Element) -> None:
        self.presences.pop(full, None)
        self.presences[full] = presence


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """A groupchat message as broadcast (from room/nick, no ``to``) and when the room got it."""

    message: Element
    stamp: float


def strip_presence(el: Element) -> Element:
    """What the room keeps of an occupant's presence: its children without the muc ``<x/>``s."""
    children: list[Element | str] = [
        c.copy() for c in el.children
        if isinstance(c, Element) and c.ns not in (ns.MUC, ns.MUC_USER)
    ]
    return Element("presence", ns.CLIENT, {}, children)


def status_x(codes: list[str] | tuple[str, ...] = ()) -> Element:
    x = Element("x", ns.MUC_USER)
    for c in codes:
        x.add("status", attrs={"code": c})
    return x


def stamp(now: float) -> str:
    """XEP-0082 DateTime in UTC."""
    dt = datetime.fromtimestamp(now, UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(s: str) -> float | None:
    """Seconds since the epoch of a XEP-0082 DateTime; None when it is not one."""
    try:
        dt = datetime.fromisoformat(s.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
