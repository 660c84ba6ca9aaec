"""Builders and readers for the room tests: stanzas as Elements, answers grouped by recipient."""

from __future__ import annotations

from collections import defaultdict

from meshxmpp.jid import JID
from meshxmpp.muc import Room, RoomConfig
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

ROOM = "room@conference.example.org"
ROOM_JID = JID.parse(ROOM)
OWNER = "owner@example.org/desk"


def occ(nick: str) -> str:
    return f"{ROOM}/{nick}"


def pres(frm: str, nick: str | None, *, type_: str | None = None, muc: bool = True,
         password: str | None = None, history: dict[str, str] | None = None, show: str | None = None,
         status: str | None = None) -> Element:
    el = Element("presence", ns.CLIENT, {"from": frm, "to": occ(nick) if nick is not None else ROOM})
    if type_ is not None:
        el.attrs["type"] = type_
    if show is not None:
        el.add("show", text=show)
    if status is not None:
        el.add("status", text=status)
    if muc:
        x = el.add("x", ns.MUC)
        if password is not None:
            x.add("password", text=password)
        if history is not None:
            x.add("history", attrs=history)
    return el


def msg(frm: str, to: str = ROOM, body: str | None = "hi", *, type_: str | None = "groupchat",
        subject: str | None = None, id_: str | None = None) -> Element:
    el = Element("message", ns.CLIENT, {"from": frm, "to": to})
    if type_ is not None:
        el.attrs["type"] = type_
    if id_ is not None:
        el.attrs["id"] = id_
    if subject is not None:
        el.add("subject", text=subject)
    if body is not None:
        el.add("body", text=body)
    return el


def iq(frm: str, type_: str, child: Element, to: str = ROOM, id_: str = "q1") -> Element:
    return Element("iq", ns.CLIENT, {"from": frm, "to": to, "type": type_, "id": id_}, [child])


def admin_query(*items: dict[str, str], reason: str | None = None) -> Element:
    q = Element("query", ns.MUC_ADMIN)
    for attrs in items:
        it = q.add("item", attrs=attrs)
        if reason is not None:
            it.add("reason", text=reason)
    return q


def submit(**fields: str | list[str]) -> Element:
    q = Element("query", ns.MUC_OWNER)
    x = q.add("x", ns.DATA_FORMS, {"type": "submit"})
    if fields:
        x.add("field", attrs={"var": "FORM_TYPE"}).add("value", text=ns.MUC_ROOMCONFIG)
    for var, value in fields.items():
        f = x.add("field", attrs={"var": var.replace("__", "#")})
        for v in [value] if isinstance(value, str) else value:
            f.add("value", text=v)
    return q


def by_to(out: list[Element]) -> dict[str, list[Element]]:
    d: dict[str, list[Element]] = defaultdict(list)
    for el in out:
        assert el.get("to") is not None and el.get("from") is not None, el
        d[el.attrs["to"]].append(el)
    return dict(d)


def codes(el: Element) -> set[str]:
    x = el.find("x", ns.MUC_USER)
    return set() if x is None else {s.attrs["code"] for s in x.findall("status", ns.MUC_USER)}


def item(el: Element) -> Element:
    x = el.find("x", ns.MUC_USER)
    assert x is not None, el
    it = x.find("item", ns.MUC_USER)
    assert it is not None, el
    return it


def error_of(el: Element) -> tuple[str, str]:
    """(error type, condition) of an error stanza."""
    assert el.get("type") == "error", el
    err = el.find("error")
    assert err is not None
    cond = next(c for c in err.children if isinstance(c, Element) and c.ns == ns.STANZA_ERRORS)
    return err.attrs["type"], cond.name


def presences(out: list[Element]) -> list[Element]:
    return [e for e in out if e.name == "presence"]


def open_room(*, affiliations: dict[str, str] | None = None, **cfg: object) -> Room:
    """An unlocked room whose owner is owner@example.org."""
    affs = {"owner@example.org": "owner"}
    affs.update(affiliations or {})
    return Room(ROOM_JID, config=RoomConfig(**cfg), affiliations=affs)  # type: ignore[arg-type]


def join(room: Room, frm: str, nick: str, now: float = 1000.0, **kw: object) -> list[Element]:
    out = room.presence(pres(frm, nick, **kw), now)  # type: ignore[arg-type]
    assert not any(e.get("type") == "error" for e in out), out
    return out
