"""One multi-user chat room (XEP-0045) as a pure state machine: stanzas in, stanzas out.

The service hands the room stanzas already addressed to it (``room@conference.example.org``) or to an
occupant JID (``room@conference.example.org/nick``), with a trusted ``from`` (the sender's full JID),
and routes what the room returns: new elements whose ``to`` is an occupant resource's full JID or the
sender. No trio, no storage, no clock (``now`` is an argument).

Multi-session nicks: one occupant is one (nick, bare JID) with one or more resources. Joining with the
same nick from another resource of the same bare JID adds a resource: that resource gets the full join
sequence, the others see nothing new. Every broadcast goes to every resource; the occupant leaves (for
the others) when its last resource does.

The owner and admin use cases (muc#owner, muc#admin) live in ``_room_admin.py``, invitations in
``_room_invites.py``, IQs between occupants and self-ping in ``_room_iq.py``, the configuration form
and disco#info in ``_room_config.py``, occupants and stanza pieces in ``_room_stanzas.py``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from meshxmpp.jid import JID
from meshxmpp.muc import _room_admin, _room_invites, _room_iq
from meshxmpp.muc._room_config import RoomConfig, disco_info
from meshxmpp.muc._room_stanzas import (
    HistoryEntry,
    Occupant,
    default_role,
    parse_jid,
    parse_stamp,
    stamp,
    status_x,
    strip_presence,
)
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.serialize import to_str
from meshxmpp.xml.stream import parse_element

__all__ = ["Room", "RoomConfig"]


def _err(el: Element, condition: str, error_type: str) -> list[Element]:
    return [el.error_reply(error_type, condition)]


class Room:
    """A room's state: config, affiliations, subject, occupants and history."""

    def __init__(self, jid: JID, *, config: RoomConfig | None = None, affiliations: dict[str, str] | None = None,
                 subject: str | None = None, subject_by: str | None = None, locked: bool = False) -> None:
        self.jid: JID = jid.bare
        self.config: RoomConfig = config if config is not None else RoomConfig()
        self.affiliations: dict[str, str] = dict(affiliations or {})
        self.subject: str | None = subject
        self.subject_by: str | None = subject_by
        self.locked: bool = locked
        #: config / affiliations / subject changed (the service persists and clears it).
        self.changed: bool = False
        #: occupants, their resources, roles or presences changed (the service mirrors and clears it).
        self.occupants_changed: bool = False
        #: destroyed by its owner (or cancelled while locked): the service drops the room.
        self.destroyed: bool = False
        self._occupants: dict[str, Occupant] = {}  # nick -> occupant, in order of entry
        self._by_full: dict[JID, Occupant] = {}
        self._history: deque[HistoryEntry] = deque()
        self._created = False  # the creator's first entry gets status 201
        self._pending_iq: dict[str, tuple[JID, str | None, JID, str]] = {}
        self._iq_seq = 0

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def create(cls, jid: JID, creator: JID, *, instant_default: RoomConfig | None = None) -> Room:
        """A new room: ``creator`` is its owner; locked until the owner configures it (§10.1)."""
        room = cls(jid, config=instant_default.copy() if instant_default is not None else None,
                   affiliations={str(creator.bare): "owner"}, locked=True)
        room._created = True
        room.changed = True
        return room

    @classmethod
    def restore(cls, jid: JID, *, config: RoomConfig, affiliations: dict[str, str], subject: str | None,
                subject_by: str | None, occupants: list[dict[str, Any]], locked: bool = False,
                history: list[dict[str, Any]] | None = None) -> Room:
        """A room rebuilt from stored state and ``occupants_snapshot()`` (and ``history_snapshot()``)."""
        room = cls(jid, config=config, affiliations=affiliations, subject=subject, subject_by=subject_by,
                   locked=locked)
        for d in occupants:
            bare = parse_jid(d.get("jid"))
            if bare is None:
                continue
            occ = Occupant(str(d["nick"]), bare.bare, str(d.get("role", "participant")))
            presences: dict[str, str] = d.get("presences", {})
            for full_s in d.get("resources", []):
                full = parse_jid(full_s)
                if full is None or full.bare != occ.bare:
                    continue
                occ.update(full, _load_presence(presences.get(full_s)))
                room._by_full[full] = occ
            if occ.presences:
                room._occupants[occ.nick] = occ
        for h in history or []:
            try:
                msg = parse_element(h["message"], max_size=1 << 20, max_depth=256)
            except (StreamError, KeyError):
                continue
            room._history.append(HistoryEntry(msg, float(h.get("stamp", 0.0))))
        room._trim_history()
        return room

    # -- queries -----------------------------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self._occupants

    def affiliation(self, jid: JID) -> str:
        return self.affiliations.get(str(jid.bare), "none")

    def occupant_jids(self) -> set[JID]:
        return set(self._by_full)

    def occupants_snapshot(self) -> list[dict[str, Any]]:
        """JSON-ready occupants, enough for ``restore``: nick, bare jid, role, affiliation, resources
        (full JIDs, last updated last) and each resource's last presence (serialised)."""
        return [{
            "nick": o.nick,
            "jid": str(o.bare),
            "role": o.role,
            "affiliation": self.affiliation(o.bare),
            "resources": [str(r) for r in o.presences],
            "presences": {str(r): to_str(p) for r, p in o.presences.items()},
        } for o in self._occupants.values()]

    def history_snapshot(self) -> list[dict[str, Any]]:
        """JSON-ready history (oldest first) for ``restore(history=...)``."""
        return [{"message": to_str(h.message), "stamp": h.stamp} for h in self._history]

    def disco_info(self) -> Element:
        return disco_info(self.config, str(self.jid), occupants=len(self._occupants), subject=self.subject)

    # -- presence ----------------------------------------------------------------------------------

    def presence(self, el: Element, now: float) -> list[Element]:
        """Join, nick change, leave or availability update (XEP-0045 §7.2, §7.6, §7.7, §7.14)."""
        sender, to = parse_jid(el.get("from")), parse_jid(el.get("to"))
        if sender is None or sender.resource is None or to is None:
            return []
        type_ = el.get("type")
        occ = self._by_full.get(sender)
        if type_ == "unavailable":
            return self._leave(occ, sender, el) if occ is not None else []
        if type_ == "error":  # the occupant's server bounced our presence: it is gone
            return self.drop({sender}, "333") if occ is not None else []
        if type_ is not None:  # subscribe, probe...: meaningless for a room
            return []
        if self.destroyed:
            return _err(el, "item-not-found", "cancel")
        nick = to.resource
        if nick is None:
            return _err(el, "jid-malformed", "modify")
        if occ is None:
            return self._join(el, sender, nick, now)
        if occ.nick != nick:
            return self._change_nick(occ, sender, el, nick)
        occ.update(sender, strip_presence(el))
        self.occupants_changed = True
        if el.find("x", ns.MUC) is not None:  # a join again (client lost its state): the whole sequence
            return self._entry_sequence(occ, sender, el.find("x", ns.MUC), now, [])
        return self._broadcast(occ, source=sender)

    def _join_error(self, el: Element, sender: JID, nick: str) -> list[Element] | None:
        aff = self.affiliation(sender)
        existing = self._occupants.get(nick)
        if self.locked and aff != "owner":
            return _err(el, "item-not-found", "cancel")
        if aff == "outcast":
            return _err(el, "forbidden", "auth")
        if self.config.members_only and aff == "none":
            return _err(el, "registration-required", "auth")
        if self.config.password is not None:
            x = el.find("x", ns.MUC)
            given = x.findtext("password", ns.MUC) if x is not None else None
            if given != self.config.password:
                return _err(el, "not-authorized", "auth")
        if existing is not None and existing.bare != sender.bare:
            return _err(el, "conflict", "cancel")
        if (existing is None and self.config.max_users > 0 and len(self._occupants) >= self.config.max_users
                and aff not in ("owner", "admin")):
            return _err(el, "service-unavailable", "wait")
        return None

    def _join(self, el: Element, sender: JID, nick: str, now: float) -> list[Element]:
        error = self._join_error(el, sender, nick)
        if error is not None:
            return error
        occ = self._occupants.get(nick)
        out: list[Element] = []
        if occ is None:
            occ = Occupant(nick, sender.bare, default_role(self.affiliation(sender), self.config.moderated))
            occ.update(sender, strip_presence(el))
            others = list(self._occupants.values())
            self._occupants[nick] = occ
            self._by_full[sender] = occ
            for o in others:  # the newcomer, as the others see it
                for r in o.presences:
                    out.append(self._presence_of(occ, r, recipient=o, source=sender))
        else:  # another resource of the same occupant: the others see nothing new
            occ.update(sender, strip_presence(el))
            self._by_full[sender] = occ
        self.occupants_changed = True
        codes = ["100"] if self.config.anonymity == "non" else []
        if self._created and self.affiliation(sender) == "owner":
            codes.append("201")
            self._created = False
        return self._entry_sequence(occ, sender, el.find("x", ns.MUC), now, codes, before=out)

    def _entry_sequence(self, occ: Occupant, to: JID, x: Element | None, now: float, codes: list[str],
                        before: list[Element] | None = None) -> list[Element]:
        """What a joining resource gets (§7.2.3-§7.2.15): every other occupant's presence, its own
        (110), the history, then the subject. ``before`` (the broadcast to the others) goes between
        the existing occupants' presences and the joiner's own, as in the XEP's examples."""
        out = [self._presence_of(o, to, recipient=occ) for o in self._occupants.values() if o is not occ]
        out.extend(before or [])
        out.append(self._presence_of(occ, to, recipient=occ, self_=True, codes=codes, source=to))
        out.extend(self._history_for(to, x, now))
        subject = Element("message", ns.CLIENT, {
            "from": self._addr(self.subject_by) if self.subject_by else str(self.jid),
            "to": str(to), "type": "groupchat"})
        subject.add("subject", text=self.subject or None)
        out.append(subject)
        return out

    def _history_for(self, to: JID, x: Element | None, now: float) -> list[Element]:
        entries = list(self._history)
        limit = self.config.history_size
        h = x.find("history", ns.MUC) if x is not None else None
        if h is not None:
            if (v := h.get("maxstanzas")) is not None and v.isdigit():
                limit = min(limit, int(v))
            if (v := h.get("seconds")) is not None and v.isdigit():
                entries = [e for e in entries if e.stamp >= now - int(v)]
            if (v := h.get("since")) is not None and (t := parse_stamp(v)) is not None:
                entries = [e for e in entries if e.stamp > t]
            if (v := h.get("maxchars")) is not None and v.isdigit():
                budget, kept = int(v), 0
                for e in reversed(entries):
                    budget -= len(to_str(e.message))
                    if budget < 0:
                        break
                    kept += 1
                entries = entries[len(entries) - kept:]
        entries = entries[len(entries) - limit:] if limit > 0 else []
        out = []
        for e in entries:
            m = e.message.copy()
            m.set("to", str(to))
            m.add("delay", ns.DELAY, {"from": str(self.jid), "stamp": stamp(e.stamp)})
            out.append(m)
        return out

    def _leave(self, occ: Occupant, sender: JID, el: Element) -> list[Element]:
        base = Element("presence", ns.CLIENT, {}, [c.copy() for c in el.findall("status")])
        self.occupants_changed = True
        if len(occ.presences) > 1:  # one resource of a multi-session occupant: only it hears
            out = [self._presence_of(occ, sender, recipient=occ, self_=True, type_="unavailable", role="none",
                                     base=base, source=sender)]
            del occ.presences[sender]
            del self._by_full[sender]
            return out
        out = self._broadcast(occ, type_="unavailable", role="none", base=base, source=sender)
        self._remove(occ)
        return out

    def _change_nick(self, occ: Occupant, sender: JID, el: Element, new: str) -> list[Element]:
        """§7.6: 303 unavailable with the new nick, then available from the new nick, for every
        resource of the occupant (a multi-session occupant changes nick as a whole)."""
        if new in self._occupants:  # even for the same bare JID: merging two occupants is not supported
            return _err(el, "conflict", "cancel")
        occ.update(sender, strip_presence(el))
        out = self._broadcast(occ, type_="unavailable", codes=["303"], item_attrs={"nick": new},
                              base=Element("presence", ns.CLIENT), source=sender)
        del self._occupants[occ.nick]
        occ.nick = new
        self._occupants[new] = occ
        self.occupants_changed = True
        out.extend(self._broadcast(occ, source=sender))
        return out

    # -- building and broadcasting occupant presence ----------------------------------------------

    def _addr(self, nick: str) -> str:
        return f"{self.jid}/{nick}"

    def _sees_jids(self, recipient: Occupant | None) -> bool:
        return self.config.anonymity == "non" or (recipient is not None and recipient.role == "moderator")

    def _presence_of(self, occ: Occupant, to: JID, *, recipient: Occupant | None, self_: bool = False,
                     type_: str | None = None, codes: Iterable[str] = (), role: str | None = None,
                     base: Element | None = None, source: JID | None = None,
                     item_extra: Iterable[Element] = (), item_attrs: dict[str, str] | None = None,
                     x_extra: Iterable[Element] = ()) -> Element:
        """``occ``'s presence as ``to`` (a resource of ``recipient``) sees it."""
        src = source if source is not None else occ.current
        pres = base if base is not None else occ.presences.get(src)
        el = Element("presence", ns.CLIENT, {"from": self._addr(occ.nick), "to": str(to)},
                     [c if isinstance(c, str) else c.copy() for c in pres.children] if pres is not None else [])
        if type_ is not None:
            el.attrs["type"] = type_
        x = el.add("x", ns.MUC_USER)
        item = x.add("item", attrs={"affiliation": self.affiliation(occ.bare), "role": role or occ.role})
        if self_ or self._sees_jids(recipient):
            item.attrs["jid"] = str(src)
        if item_attrs:
            item.attrs.update(item_attrs)
        for e in item_extra:
            item.append(e.copy())
        all_codes = set(codes) | ({"110"} if self_ else set())
        for c in sorted(all_codes, key=int):
            x.add("status", attrs={"code": c})
        for e in x_extra:
            x.append(e.copy())
        return el

    def _broadcast(self, occ: Occupant, **kw: Any) -> list[Element]:
        """``occ``'s presence to every resource of every occupant (its own with 110)."""
        return [self._presence_of(occ, r, recipient=o, self_=o is occ, **kw)
                for o in list(self._occupants.values()) for r in o.presences]

    def _remove(self, occ: Occupant) -> None:
        if self._occupants.get(occ.nick) is occ:
            del self._occupants[occ.nick]
        for r in occ.presences:
            self._by_full.pop(r, None)
        self.occupants_changed = True

    def _expel(self, occ: Occupant, codes: list[str], *, actor: str | None = None,
               reason: str | None = None) -> list[Element]:
        """Remove a whole occupant (kick 307, ban 301, membership 321/322): every resource hears,
        its own with 110."""
        extra = []
        if actor is not None:
            extra.append(Element("actor", ns.MUC_USER, {"nick": actor}))
        if reason:
            extra.append(Element("reason", ns.MUC_USER, {}, [reason]))
        out = self._broadcast(occ, type_="unavailable", role="none", codes=codes, item_extra=extra,
                              base=Element("presence", ns.CLIENT))
        self._remove(occ)
        return out

    def drop(self, full_jids: set[JID], status: str = "333") -> list[Element]:
        """These resources are gone (their node died, or they bounced): an occupant whose last
        resource is among them leaves, announced once to the others with ``status``."""
        lost: list[tuple[Occupant, JID]] = []
        for full in sorted(full_jids, key=str):  # a stable order of announcements
            occ = self._by_full.pop(full, None)
            if occ is None:
                continue
            del occ.presences[full]
            self.occupants_changed = True
            if not occ.presences and all(o is not occ for o, _ in lost):
                lost.append((occ, full))
        out: list[Element] = []
        for occ, last in lost:
            self._remove(occ)
            out.extend(self._broadcast(occ, type_="unavailable", role="none", codes=[status],
                                       base=Element("presence", ns.CLIENT), source=last))
        return out

    def shutdown(self, status: str = "332") -> list[Element]:
        """Every occupant resource gets its own unavailable (110 + ``status``); the room is emptied."""
        out = [self._presence_of(o, r, recipient=o, self_=True, type_="unavailable", role="none",
                                 codes=[status], base=Element("presence", ns.CLIENT), source=r)
               for o in self._occupants.values() for r in o.presences]
        if self._occupants:
            self.occupants_changed = True
        self._occupants.clear()
        self._by_full.clear()
        return out

    def _trim_history(self) -> None:
        while len(self._history) > max(self.config.history_size, 0):
            self._history.popleft()

    # -- messages ----------------------------------------------------------------------------------

    def message(self, el: Element, now: float) -> list[Element]:
        """Groupchat, subject change, private message, mediated invitation or decline (§7.4-§7.9, §8.1)."""
        sender, to = parse_jid(el.get("from")), parse_jid(el.get("to"))
        if sender is None or to is None:
            return []
        type_ = el.get("type") or "normal"
        if type_ == "error":  # bounces are not answered
            return []
        if self.destroyed:
            return _err(el, "item-not-found", "cancel")
        occ = self._by_full.get(sender)
        if to.resource is not None:
            return self._private(el, sender, occ, to.resource)
        ux = el.find("x", ns.MUC_USER)
        if ux is not None and ux.find("decline", ns.MUC_USER) is not None:
            return _room_invites.decline(self, el, sender, ux)
        if ux is not None and ux.find("invite", ns.MUC_USER) is not None:
            return _room_invites.invite(self, el, sender, occ, ux)
        if type_ != "groupchat":
            return _err(el, "bad-request", "modify")
        if occ is None:
            return _err(el, "not-acceptable", "cancel")
        body, subject = el.find("body"), el.find("subject")
        if subject is not None and body is None:
            if not (occ.role == "moderator" or (self.config.change_subject and occ.role == "participant")):
                return _err(el, "forbidden", "auth")
            self.subject = subject.text or None
            self.subject_by = occ.nick
            self.changed = True
        elif occ.role not in ("participant", "moderator"):
            return _err(el, "forbidden", "auth")
        out = []
        for o in self._occupants.values():
            for r in o.presences:
                m = el.copy()
                m.attrs["from"] = self._addr(occ.nick)
                m.attrs["to"] = str(r)
                out.append(m)
        if body is not None and self.config.history_size > 0:
            kept = el.copy()
            kept.attrs["from"] = self._addr(occ.nick)
            kept.attrs.pop("to", None)
            self._history.append(HistoryEntry(kept, now))
            self._trim_history()
        return out

    def _private(self, el: Element, sender: JID, occ: Occupant | None, nick: str) -> list[Element]:
        if el.get("type") == "groupchat":
            return _err(el, "bad-request", "modify")
        if occ is None:
            return _err(el, "not-acceptable", "cancel")
        target = self._occupants.get(nick)
        if target is None:
            return _err(el, "item-not-found", "cancel")
        out = []
        for r in target.presences:
            m = el.copy()
            m.attrs["from"] = self._addr(occ.nick)
            m.attrs["to"] = str(r)
            if m.find("x", ns.MUC_USER) is None:
                m.add("x", ns.MUC_USER)
            out.append(m)
        return out

    # -- iq ----------------------------------------------------------------------------------------

    def iq(self, el: Element, now: float) -> list[Element]:
        """Owner and admin requests, disco, ping to the room; self-ping and forwarded IQs to occupants."""
        sender, to = parse_jid(el.get("from")), parse_jid(el.get("to"))
        if sender is None or to is None:
            return []
        type_ = el.get("type")
        if type_ in ("result", "error"):
            return _room_iq.answer(self, el, sender, to)
        if type_ not in ("get", "set"):
            return []
        if self.destroyed:
            return _err(el, "item-not-found", "cancel")
        child = next((c for c in el.children if isinstance(c, Element)), None)
        if child is None:
            return _err(el, "bad-request", "modify")
        if to.resource is not None:
            return _room_iq.to_occupant(self, el, sender, to.resource, child)
        if type_ == "get" and child.ns == ns.DISCO_INFO and child.name == "query":
            r = el.reply()
            info = self.disco_info()
            if child.get("node") is not None:
                info.attrs["node"] = child.attrs["node"]
            r.append(info)
            return [r]
        if type_ == "get" and child.ns == ns.DISCO_ITEMS and child.name == "query":
            r = el.reply()
            r.add("query", ns.DISCO_ITEMS)  # occupants are not listed (semi-anonymous by default)
            return [r]
        if type_ == "get" and child.ns == ns.PING:
            return [el.reply()]
        if child.ns == ns.MUC_ADMIN and child.name == "query":
            return _room_admin.admin_iq(self, el, sender, child)
        if child.ns == ns.MUC_OWNER and child.name == "query":
            return _room_admin.owner_iq(self, el, sender, child)
        return _err(el, "service-unavailable", "cancel")

    def _notify(self, codes: list[str]) -> list[Element]:
        """A status message from the room to every occupant resource (e.g. 172/173, §10.2.1)."""
        out = []
        for o in self._occupants.values():
            for r in o.presences:
                m = Element("message", ns.CLIENT, {"from": str(self.jid), "to": str(r), "type": "groupchat"})
                m.append(status_x(codes))
                out.append(m)
        return out


def _load_presence(data: str | None) -> Element:
    if data:
        try:
            return parse_element(data, max_size=1 << 20, max_depth=256)
        except StreamError:
            pass
    return Element("presence", ns.CLIENT)
