"""IQs between occupants (XEP-0045 §7.5-style forwarding) and XEP-0410 self-ping. Pure.

A forwarded IQ gets a fresh id so the answer can be routed back to the requester (and ids of
different requesters never collide); at most ``MAX_PENDING_IQ`` are remembered, oldest forgotten first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshxmpp.jid import JID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.muc.room import Room

__all__ = ["MAX_PENDING_IQ", "answer", "to_occupant"]

MAX_PENDING_IQ = 256


def _err(el: Element, condition: str, error_type: str) -> list[Element]:
    return [el.error_reply(error_type, condition)]


def to_occupant(room: Room, el: Element, sender: JID, nick: str, child: Element) -> list[Element]:
    occ = room._by_full.get(sender)
    if occ is None:  # XEP-0410: "not joined"
        return _err(el, "not-acceptable", "cancel")
    target = room._occupants.get(nick)
    if target is None:
        return _err(el, "item-not-found", "cancel")
    if target is occ and child.ns == ns.PING:  # XEP-0410 self-ping: answered by the room
        return [el.reply()]
    # §7.5-style forwarding under a fresh id, so the answer can be routed back (and ids of
    # different requesters never collide). vCards go to the bare JID (XEP-0054).
    room._iq_seq += 1
    new_id = f"muc-{room._iq_seq}"
    room._pending_iq[new_id] = (sender, el.get("id"), target.bare, nick)
    while len(room._pending_iq) > MAX_PENDING_IQ:
        del room._pending_iq[next(iter(room._pending_iq))]
    fwd = el.copy()
    fwd.attrs["from"] = room._addr(occ.nick)
    fwd.attrs["to"] = str(target.bare if child.ns == ns.VCARD else target.current)
    fwd.attrs["id"] = new_id
    return [fwd]


def answer(room: Room, el: Element, sender: JID, to: JID) -> list[Element]:
    pending = room._pending_iq.get(el.get("id") or "")
    if to.resource is None or pending is None:
        return []
    requester, orig_id, target_bare, target_nick = pending
    if sender.bare != target_bare:
        return []
    del room._pending_iq[el.attrs["id"]]
    out = el.copy()
    out.attrs["from"] = room._addr(target_nick)
    out.attrs["to"] = str(requester)
    if orig_id is None:
        del out.attrs["id"]
    else:
        out.attrs["id"] = orig_id
    return [out]
