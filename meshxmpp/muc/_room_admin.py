"""The owner and admin use cases of a room (XEP-0045 §8-§10): muc#admin and muc#owner IQs. Pure.

Functions over a ``Room`` (they use its private helpers: this module is the room's other half).
A muc#admin set is validated as a whole before any item is applied, so a request either applies
entirely or answers one error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.muc._room_config import FormError, apply_form, config_form
from meshxmpp.muc._room_stanzas import AFFILIATIONS, ROLES, Occupant, default_role
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import STANZA_CONDITIONS

if TYPE_CHECKING:
    from meshxmpp.muc.room import Room

__all__ = ["admin_iq", "owner_iq"]

_PRIVILEGED = ("owner", "admin")


class _Refused(Exception):
    def __init__(self, condition: str, error_type: str) -> None:
        super().__init__(condition)
        self.condition = condition
        self.error_type = error_type


@dataclass(slots=True)
class _RoleChange:
    target: Occupant
    role: str
    reason: str | None


@dataclass(slots=True)
class _AffiliationChange:
    bare: JID
    affiliation: str
    reason: str | None


def _error(el: Element, e: _Refused) -> list[Element]:
    return [el.error_reply(e.error_type, e.condition)]


def _is_moderator(room: Room, sender: JID) -> bool:
    occ = room._by_full.get(sender)
    return (occ is not None and occ.role == "moderator") or room.affiliation(sender) in _PRIVILEGED


# -- muc#admin ----------------------------------------------------------------------------------------

def admin_iq(room: Room, el: Element, sender: JID, query: Element) -> list[Element]:
    items = query.findall("item", ns.MUC_ADMIN)
    if not items:
        return [el.error_reply("modify", "bad-request")]
    try:
        if el.get("type") == "get":
            return _admin_get(room, el, sender, items[0])
        return _admin_set(room, el, sender, items)
    except _Refused as e:
        return _error(el, e)


def _admin_get(room: Room, el: Element, sender: JID, item: Element) -> list[Element]:
    """§9.5, §9.8 etc.: the list of one affiliation (admins and owners ask) or one role (moderators)."""
    r = el.reply()
    q = r.add("query", ns.MUC_ADMIN)
    aff, role = item.get("affiliation"), item.get("role")
    if aff in AFFILIATIONS and aff != "none":
        if room.affiliation(sender) not in _PRIVILEGED:
            raise _Refused("forbidden", "auth")
        nicks = {str(o.bare): o.nick for o in room._occupants.values()}
        for jid, a in sorted(room.affiliations.items()):
            if a == aff:
                it = q.add("item", attrs={"affiliation": a, "jid": jid})
                if jid in nicks:
                    it.attrs["nick"] = nicks[jid]
        return [r]
    if role in ROLES and role != "none":
        if not _is_moderator(room, sender):
            raise _Refused("forbidden", "auth")
        asker = room._by_full.get(sender)
        sees = room._sees_jids(asker) or room.affiliation(sender) in _PRIVILEGED
        for o in room._occupants.values():
            if o.role == role:
                it = q.add("item", attrs={"nick": o.nick, "role": o.role,
                                          "affiliation": room.affiliation(o.bare)})
                if sees:
                    it.attrs["jid"] = str(o.bare)
        return [r]
    raise _Refused("bad-request", "modify")


def _parse_changes(room: Room, sender: JID, items: list[Element]) -> list[_RoleChange | _AffiliationChange]:
    actor_aff = room.affiliation(sender)
    changes: list[_RoleChange | _AffiliationChange] = []
    new_affs = dict(room.affiliations)
    for item in items:
        reason = item.findtext("reason", ns.MUC_ADMIN)
        role, aff = item.get("role"), item.get("affiliation")
        if role is not None and aff is None:
            if role not in ROLES:
                raise _Refused("bad-request", "modify")
            if not _is_moderator(room, sender):
                raise _Refused("forbidden", "auth")
            target = room._occupants.get(item.get("nick") or "")
            if target is None:
                raise _Refused("item-not-found", "cancel")
            target_aff = room.affiliation(target.bare)
            if (role == "moderator" or target.role == "moderator") and actor_aff not in _PRIVILEGED:
                raise _Refused("forbidden", "auth")  # §8.6, §9.7: moderator status is an admin's to give
            if target_aff in _PRIVILEGED and role != "moderator":
                raise _Refused("not-allowed", "cancel")  # §8.2: admins and owners cannot be kicked or muted
            changes.append(_RoleChange(target, role, reason))
        elif aff is not None:
            if aff not in AFFILIATIONS:
                raise _Refused("bad-request", "modify")
            if actor_aff not in _PRIVILEGED:
                raise _Refused("forbidden", "auth")
            if item.get("jid") is not None:
                try:
                    bare = JID.parse(item.attrs["jid"]).bare
                except InvalidJID:
                    raise _Refused("jid-malformed", "modify") from None
            else:
                occ = room._occupants.get(item.get("nick") or "")
                if occ is None:
                    raise _Refused("bad-request", "modify")
                bare = occ.bare
            old = new_affs.get(str(bare), "none")
            if actor_aff != "owner" and (aff in _PRIVILEGED or old in _PRIVILEGED):
                raise _Refused("not-allowed" if old in _PRIVILEGED else "forbidden",
                               "cancel" if old in _PRIVILEGED else "auth")
            if aff == "none":
                new_affs.pop(str(bare), None)
            else:
                new_affs[str(bare)] = aff
            changes.append(_AffiliationChange(bare, aff, reason))
        else:
            raise _Refused("bad-request", "modify")
    if "owner" not in new_affs.values() and "owner" in room.affiliations.values():
        raise _Refused("conflict", "cancel")  # §10.6: the last owner stays
    return changes


def _admin_set(room: Room, el: Element, sender: JID, items: list[Element]) -> list[Element]:
    changes = _parse_changes(room, sender, items)
    actor_occ = room._by_full.get(sender)
    actor = actor_occ.nick if actor_occ is not None else None
    out: list[Element] = []
    for ch in changes:
        if isinstance(ch, _RoleChange):
            target = ch.target
            if room._occupants.get(target.nick) is not target:
                continue  # already removed by an earlier item
            if ch.role == "none":
                out.extend(room._expel(target, ["307"], actor=actor, reason=ch.reason))
            elif ch.role != target.role:
                target.role = ch.role
                room.occupants_changed = True
                out.extend(room._broadcast(target, item_extra=_reason(ch.reason)))
            continue
        key = str(ch.bare)
        if ch.affiliation == "none":
            room.affiliations.pop(key, None)
        else:
            room.affiliations[key] = ch.affiliation
        room.changed = True
        for o in [o for o in room._occupants.values() if o.bare == ch.bare]:
            if ch.affiliation == "outcast":
                out.extend(room._expel(o, ["301"], actor=actor, reason=ch.reason))
            elif ch.affiliation == "none" and room.config.members_only:
                out.extend(room._expel(o, ["321"], actor=actor, reason=ch.reason))
            else:
                o.role = default_role(ch.affiliation, room.config.moderated)
                room.occupants_changed = True
                out.extend(room._broadcast(o, item_extra=_reason(ch.reason)))
    out.append(el.reply())
    return out


def _reason(reason: str | None) -> list[Element]:
    return [Element("reason", ns.MUC_USER, {}, [reason])] if reason else []


# -- muc#owner ----------------------------------------------------------------------------------------

def owner_iq(room: Room, el: Element, sender: JID, query: Element) -> list[Element]:
    """§10.1 (instant and reserved rooms), §10.2 (configuration), §10.9 (destroy)."""
    if room.affiliation(sender) != "owner":
        return [el.error_reply("auth", "forbidden")]
    if el.get("type") == "get":
        r = el.reply()
        r.add("query", ns.MUC_OWNER).append(config_form(room.config, str(room.jid)))
        return [r]
    destroy = query.find("destroy", ns.MUC_OWNER)
    if destroy is not None:
        return destroy_room(room, el, destroy)
    x = query.find("x", ns.DATA_FORMS)
    if x is None:
        return [el.error_reply("modify", "bad-request")]
    if x.get("type") == "cancel":
        # §10.1.3: cancelling the initial configuration destroys the new room.
        return destroy_room(room, el, None) if room.locked else [el.reply()]
    if x.get("type") != "submit":
        return [el.error_reply("modify", "bad-request")]
    try:
        new = apply_form(room.config, x)
    except FormError as e:
        return [el.error_reply(STANZA_CONDITIONS.get(e.condition, "modify"), e.condition, e.text)]
    old, room.config = room.config, new
    room.locked = False
    room.changed = True
    room._trim_history()
    out: list[Element] = []
    if new.anonymity != old.anonymity:  # §10.2.1: 172 now non-anonymous, 173 now semi-anonymous
        out.extend(room._notify(["172" if new.anonymity == "non" else "173"]))
    if new.members_only and not old.members_only:  # §9.3: non-members leave with 322
        for o in [o for o in room._occupants.values() if room.affiliation(o.bare) == "none"]:
            out.extend(room._expel(o, ["322"]))
    out.append(el.reply())
    return out


def destroy_room(room: Room, el: Element, destroy: Element | None) -> list[Element]:
    """§10.9: every occupant resource gets its unavailable with ``<destroy/>``; the room is gone."""
    d = Element("destroy", ns.MUC_USER)
    if destroy is not None:
        if destroy.get("jid") is not None:
            d.attrs["jid"] = destroy.attrs["jid"]
        if reason := destroy.findtext("reason", ns.MUC_OWNER):
            d.add("reason", text=reason)
    out = [room._presence_of(o, r, recipient=o, self_=True, type_="unavailable", role="none",
                             base=Element("presence", ns.CLIENT), source=r, item_attrs={"affiliation": "none"},
                             x_extra=[d])
           for o in room._occupants.values() for r in o.presences]
    room._occupants.clear()
    room._by_full.clear()
    room.destroyed = True
    room.changed = True
    room.occupants_changed = True
    out.append(el.reply())
    return out
