"""Mediated invitations and declines (XEP-0045 §7.8.2, §7.8.3; XEP-0249's element rides along). Pure.

Functions over a ``Room`` (they use its private helpers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshxmpp.jid import JID
from meshxmpp.muc._room_stanzas import Occupant, parse_jid
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.muc.room import Room

__all__ = ["decline", "invite"]


def _err(el: Element, condition: str, error_type: str) -> list[Element]:
    return [el.error_reply(error_type, condition)]


def invite(room: Room, el: Element, sender: JID, occ: Occupant | None, ux: Element) -> list[Element]:
    """§7.8.2 mediated invitation; XEP-0249's ``<x xmlns='jabber:x:conference'/>`` rides along."""
    if occ is None:
        return _err(el, "not-acceptable", "cancel")
    privileged = room.affiliation(sender) in ("owner", "admin")
    if not privileged and not room.config.allow_invites:
        return _err(el, "forbidden", "auth")
    invites = ux.findall("invite", ns.MUC_USER)
    targets = [parse_jid(i.get("to")) for i in invites]
    if any(t is None for t in targets):
        return _err(el, "jid-malformed", "modify")
    out = []
    for inv, target in zip(invites, targets, strict=True):
        assert target is not None
        reason = inv.findtext("reason", ns.MUC_USER)
        m = Element("message", ns.CLIENT, {"from": str(room.jid), "to": str(target)})
        if el.get("id") is not None:
            m.attrs["id"] = el.attrs["id"]
        x = m.add("x", ns.MUC_USER)
        i = x.add("invite", attrs={"from": str(sender.bare)})
        if reason:
            i.add("reason", text=reason)
        if room.config.password is not None:
            x.add("password", text=room.config.password)
        conf = m.add("x", ns.CONFERENCE, {"jid": str(room.jid)})
        if reason:
            conf.attrs["reason"] = reason
        if room.config.password is not None:
            conf.attrs["password"] = room.config.password
        out.append(m)
        if room.config.members_only and privileged and room.affiliation(target) == "none":
            room.affiliations[str(target.bare)] = "member"  # §9.3: an admin's invitation adds a member
            room.changed = True
    return out


def decline(room: Room, el: Element, sender: JID, ux: Element) -> list[Element]:
    decline = ux.find("decline", ns.MUC_USER)
    assert decline is not None
    inviter = parse_jid(decline.get("to"))
    if inviter is None:
        return _err(el, "bad-request", "modify")
    m = Element("message", ns.CLIENT, {"from": str(room.jid), "to": str(inviter)})
    d = m.add("x", ns.MUC_USER).add("decline", attrs={"from": str(sender.bare)})
    if reason := decline.findtext("reason", ns.MUC_USER):
        d.add("reason", text=reason)
    return [m]
