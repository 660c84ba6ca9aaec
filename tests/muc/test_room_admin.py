"""Owner and admin use cases of the room: configuration form, instant rooms, destroy, kick, ban,
affiliation and role changes, member lists (XEP-0045 §8-§10)."""

from __future__ import annotations

import pytest
from room_helpers import (
    OWNER,
    ROOM,
    ROOM_JID,
    admin_query,
    by_to,
    codes,
    error_of,
    iq,
    item,
    join,
    occ,
    open_room,
    pres,
    presences,
    submit,
)

from meshxmpp.jid import JID
from meshxmpp.muc import Room
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

A1, A2 = "alice@example.org/phone", "alice@example.org/laptop"
B1 = "bob@example.org/home"
ADMIN = "admin@example.org/a"


def _fields(form: Element) -> dict[str, str | None]:
    return {f.attrs["var"]: f.findtext("value") for f in form.findall("field", ns.DATA_FORMS)}


def _owner_form(room: Room, frm: str = OWNER) -> Element:
    out = room.iq(iq(frm, "get", Element("query", ns.MUC_OWNER)), 1.0)
    assert len(out) == 1 and out[0].get("type") == "result", out
    q = out[0].find("query", ns.MUC_OWNER)
    assert q is not None
    x = q.find("x", ns.DATA_FORMS)
    assert x is not None and x.get("type") == "form"
    return x


# -- owner: configuration ---------------------------------------------------------------------------

def test_owner_form_fields() -> None:
    room = open_room(name="Room", password="pw", anonymity="non", history_size=7)
    fields = _fields(_owner_form(room))
    assert fields["FORM_TYPE"] == ns.MUC_ROOMCONFIG
    assert fields["muc#roomconfig_roomname"] == "Room"
    assert fields["muc#roomconfig_passwordprotectedroom"] == "1"
    assert fields["muc#roomconfig_roomsecret"] == "pw"
    assert fields["muc#roomconfig_whois"] == "anyone"
    assert fields["muc#roomconfig_historylength"] == "7"
    for var in ("persistentroom", "publicroom", "membersonly", "moderatedroom", "changesubject",
                "allowinvites", "maxusers"):
        assert f"muc#roomconfig_{var}" in fields


def test_owner_only() -> None:
    room = open_room(affiliations={"admin@example.org": "admin"})
    for frm in (ADMIN, B1):
        assert error_of(room.iq(iq(frm, "get", Element("query", ns.MUC_OWNER)), 1.0)[0]) == ("auth", "forbidden")
        assert error_of(room.iq(iq(frm, "set", submit()), 1.0)[0]) == ("auth", "forbidden")


def test_instant_room() -> None:
    room = Room.create(ROOM_JID, JID.parse(OWNER))
    join(room, OWNER, "boss")
    room.changed = False
    out = room.iq(iq(OWNER, "set", submit()), 1.0)
    assert [(e.get("type"), e.get("to")) for e in out] == [("result", OWNER)]
    assert not room.locked and room.changed
    join(room, A1, "alice")  # others may enter now


def test_reserved_room_submit_applies_and_unlocks() -> None:
    room = Room.create(ROOM_JID, JID.parse(OWNER))
    join(room, OWNER, "boss")
    form = submit(**{
        "muc__roomconfig_roomname": "Lounge", "muc__roomconfig_roomdesc": "chat",
        "muc__roomconfig_persistentroom": "1", "muc__roomconfig_publicroom": "false",
        "muc__roomconfig_membersonly": "0", "muc__roomconfig_passwordprotectedroom": "1",
        "muc__roomconfig_roomsecret": "pw", "muc__roomconfig_whois": "anyone",
        "muc__roomconfig_moderatedroom": "1", "muc__roomconfig_changesubject": "1",
        "muc__roomconfig_allowinvites": "0", "muc__roomconfig_maxusers": "30",
        "muc__roomconfig_historylength": "4"})
    out = room.iq(iq(OWNER, "set", form), 1.0)
    assert out[-1].get("type") == "result"
    # the owner, alone in the room, hears 172 (the room became non-anonymous)
    assert [codes(e) for e in out[:-1]] == [{"172"}]
    c = room.config
    assert (c.name, c.description, c.persistent, c.public, c.members_only, c.password, c.anonymity,
            c.moderated, c.change_subject, c.allow_invites, c.max_users, c.history_size) == (
        "Lounge", "chat", True, False, False, "pw", "non", True, True, False, 30, 4)
    assert not room.locked
    assert error_of(room.presence(pres(A1, "alice"), 1.0)[0]) == ("auth", "not-authorized")


@pytest.mark.parametrize(("fields", "condition"), [
    ({"muc__roomconfig_persistentroom": "maybe"}, "not-acceptable"),
    ({"muc__roomconfig_whois": "everyone"}, "not-acceptable"),
    ({"muc__roomconfig_maxusers": "lots"}, "not-acceptable"),
    ({"muc__roomconfig_passwordprotectedroom": "1"}, "not-acceptable"),  # no secret
])
def test_bad_submissions(fields: dict[str, str], condition: str) -> None:
    room = open_room()
    before = room.config.copy()
    out = room.iq(iq(OWNER, "set", submit(**fields)), 1.0)
    assert error_of(out[0])[1] == condition
    assert room.config == before


def test_wrong_form_type() -> None:
    room = open_room()
    q = submit(muc__roomconfig_roomname="x")
    x = q.find("x", ns.DATA_FORMS)
    assert x is not None
    value = x.findall("field")[0].find("value")
    assert value is not None
    value.children = ["urn:other"]
    assert error_of(room.iq(iq(OWNER, "set", q), 1.0)[0]) == ("modify", "bad-request")


def test_members_only_switch_expels_non_members_322() -> None:
    room = open_room(affiliations={"alice@example.org": "member"})
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = room.iq(iq(OWNER, "set", submit(muc__roomconfig_membersonly="1")), 1.0)
    gone = [e for e in presences(out) if e.get("from") == occ("bob")]
    assert sorted(e.attrs["to"] for e in gone) == sorted([OWNER, A1, B1])
    assert all(e.get("type") == "unavailable" and "322" in codes(e) for e in gone)
    assert JID.parse(B1) not in room.occupant_jids()


def test_cancel_on_locked_room_destroys_it() -> None:
    room = Room.create(ROOM_JID, JID.parse(OWNER))
    join(room, OWNER, "boss")
    q = Element("query", ns.MUC_OWNER)
    q.add("x", ns.DATA_FORMS, {"type": "cancel"})
    out = room.iq(iq(OWNER, "set", q), 1.0)
    assert [(e.name, e.get("type"), e.get("to")) for e in out] == [
        ("presence", "unavailable", OWNER), ("iq", "result", OWNER)]
    assert room.destroyed and room.empty
    # cancel on a configured room does nothing
    room2 = open_room()
    assert room2.iq(iq(OWNER, "set", q.copy()), 1.0)[0].get("type") == "result" and not room2.destroyed


def test_destroy() -> None:
    room = open_room()
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, A2, "alice")
    q = Element("query", ns.MUC_OWNER)
    q.add("destroy", attrs={"jid": "new@conference.example.org"}).add("reason", text="moving")
    out = room.iq(iq(OWNER, "set", q), 1.0)
    assert out[-1].get("type") == "result" and out[-1].get("to") == OWNER
    gone = out[:-1]
    assert sorted(e.attrs["to"] for e in gone) == sorted([OWNER, A1, A2])
    for e in gone:
        assert e.get("type") == "unavailable"
        assert (item(e).get("affiliation"), item(e).get("role")) == ("none", "none")
        x = e.find("x", ns.MUC_USER)
        assert x is not None
        d = x.find("destroy", ns.MUC_USER)
        assert d is not None and d.get("jid") == "new@conference.example.org" and d.findtext("reason") == "moving"
    assert room.destroyed and room.empty and room.changed
    assert error_of(room.presence(pres(B1, "bob"), 1.0)[0]) == ("cancel", "item-not-found")


# -- admin: kick, ban, affiliations, roles ----------------------------------------------------------

def test_kick_307_reaches_everyone_including_every_kicked_resource() -> None:
    room = open_room()
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    out = room.iq(iq(OWNER, "set", admin_query({"nick": "alice", "role": "none"}, reason="spam")), 1.0)
    assert out[-1].get("type") == "result"
    kicked = out[:-1]
    assert sorted(by_to(kicked)) == sorted([OWNER, A1, A2, B1])
    for e in kicked:
        own = e.attrs["to"] in (A1, A2)
        assert e.get("from") == occ("alice") and e.get("type") == "unavailable"
        assert codes(e) == ({"307", "110"} if own else {"307"})
        it = item(e)
        assert it.get("role") == "none" and it.findtext("reason") == "spam"
        actor = it.find("actor")
        assert actor is not None and actor.get("nick") == "boss"
    assert room.occupant_jids() == {JID.parse(OWNER), JID.parse(B1)}


@pytest.mark.parametrize(("actor_aff", "actor_role_nick", "request_item", "error"), [
    (None, "bob", {"nick": "alice", "role": "none"}, ("auth", "forbidden")),          # a participant
    ("admin", "adm", {"nick": "boss", "role": "none"}, ("cancel", "not-allowed")),   # kick the owner
    ("admin", "adm", {"nick": "boss", "role": "visitor"}, ("cancel", "not-allowed")),
    ("admin", "adm", {"jid": "owner@example.org", "affiliation": "outcast"}, ("cancel", "not-allowed")),
    ("admin", "adm", {"jid": "bob@example.org", "affiliation": "admin"}, ("auth", "forbidden")),
    ("member", "bob", {"jid": "alice@example.org", "affiliation": "outcast"}, ("auth", "forbidden")),
    ("owner", "bob", {"jid": "owner@example.org", "affiliation": "member"}, ("cancel", "conflict")),
    ("admin", "adm", {"nick": "nobody", "role": "none"}, ("cancel", "item-not-found")),
    ("admin", "adm", {"nick": "alice", "role": "king"}, ("modify", "bad-request")),
    ("admin", "adm", {"jid": "not a jid@@", "affiliation": "member"}, ("modify", "jid-malformed")),
])
def test_admin_refusals(actor_aff: str | None, actor_role_nick: str, request_item: dict[str, str],
                        error: tuple[str, str]) -> None:
    actor = f"{actor_role_nick}@example.org/r"
    affs = {f"{actor_role_nick}@example.org": actor_aff} if actor_aff else {}
    if actor_aff == "owner":  # the other owner leaves: the actor is the last owner asking to step down
        affs = {f"{actor_role_nick}@example.org": "owner"}
    room = open_room(affiliations=affs)
    if actor_aff == "owner":
        room.affiliations.pop("owner@example.org")
        request_item = {**request_item, "jid": f"{actor_role_nick}@example.org"}
    else:
        join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, actor, actor_role_nick)
    before = dict(room.affiliations)
    out = room.iq(iq(actor, "set", admin_query(request_item)), 1.0)
    assert len(out) == 1 and error_of(out[0]) == error
    assert room.affiliations == before


def test_admin_set_is_all_or_nothing() -> None:
    room = open_room(affiliations={"admin@example.org": "admin"})
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, ADMIN, "adm")
    out = room.iq(iq(ADMIN, "set", admin_query({"nick": "alice", "role": "none"},
                                               {"nick": "boss", "role": "none"})), 1.0)
    assert len(out) == 1 and error_of(out[0]) == ("cancel", "not-allowed")
    assert JID.parse(A1) in room.occupant_jids()


def test_ban_301_and_stays_out() -> None:
    room = open_room()
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, A2, "alice")
    room.changed = False
    out = room.iq(iq(OWNER, "set", admin_query({"jid": "alice@example.org/whatever", "affiliation": "outcast"})),
                  1.0)
    assert out[-1].get("type") == "result"
    banned = out[:-1]
    assert sorted(by_to(banned)) == sorted([OWNER, A1, A2])
    assert all(e.get("type") == "unavailable" and "301" in codes(e) for e in banned)
    assert all(item(e).get("affiliation") == "outcast" for e in banned)
    assert room.affiliations["alice@example.org"] == "outcast" and room.changed
    assert room.occupant_jids() == {JID.parse(OWNER)}
    assert error_of(room.presence(pres(A1, "alice"), 1.0)[0]) == ("auth", "forbidden")
    # the ban of someone absent is recorded too; lifting it removes the entry
    room.iq(iq(OWNER, "set", admin_query({"jid": "bob@example.org", "affiliation": "outcast"})), 1.0)
    room.iq(iq(OWNER, "set", admin_query({"jid": "bob@example.org", "affiliation": "none"})), 1.0)
    assert "bob@example.org" not in room.affiliations


def test_affiliation_change_updates_role_and_is_broadcast() -> None:
    room = open_room()
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = room.iq(iq(OWNER, "set", admin_query({"nick": "alice", "affiliation": "admin"})), 1.0)
    assert out[-1].get("type") == "result"
    updates = out[:-1]
    assert sorted(by_to(updates)) == sorted([OWNER, A1, B1])
    for e in updates:
        assert e.get("from") == occ("alice") and e.get("type") is None
        assert (item(e).get("affiliation"), item(e).get("role")) == ("admin", "moderator")
    assert codes(by_to(updates)[A1][0]) == {"110"}
    # as a moderator alice now sees real JIDs of newcomers
    out = room.presence(pres("carol@example.org/c", "carol"), 1.0)
    assert item(by_to(out)[A1][0]).get("jid") == "carol@example.org/c"
    assert item(by_to(out)[B1][0]).get("jid") is None


def test_membership_revoked_in_members_only_room_321() -> None:
    room = open_room(members_only=True, affiliations={"alice@example.org": "member"})
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    out = room.iq(iq(OWNER, "set", admin_query({"jid": "alice@example.org", "affiliation": "none"})), 1.0)
    assert all("321" in codes(e) for e in presences(out))
    assert room.occupant_jids() == {JID.parse(OWNER)}


def test_voice_in_moderated_room() -> None:
    room = open_room(moderated=True)
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    assert room.message(Element("message", ns.CLIENT, {"from": A1, "to": ROOM, "type": "groupchat"},
                                [Element("body", ns.CLIENT, {}, ["x"])]), 1.0)[0].get("type") == "error"
    out = room.iq(iq(OWNER, "set", admin_query({"nick": "alice", "role": "participant"})), 1.0)
    assert all(item(e).get("role") == "participant" for e in presences(out))
    ok = room.message(Element("message", ns.CLIENT, {"from": A1, "to": ROOM, "type": "groupchat"},
                              [Element("body", ns.CLIENT, {}, ["x"])]), 1.0)
    assert sorted(by_to(ok)) == sorted([OWNER, A1])


def test_member_and_role_lists() -> None:
    room = open_room(affiliations={"alice@example.org": "member", "zed@example.org": "member",
                                   "admin@example.org": "admin"})
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    out = room.iq(iq(OWNER, "get", admin_query({"affiliation": "member"})), 1.0)
    q = out[0].find("query", ns.MUC_ADMIN)
    assert q is not None
    assert [it.attrs for it in q.findall("item")] == [
        {"affiliation": "member", "jid": "alice@example.org", "nick": "alice"},
        {"affiliation": "member", "jid": "zed@example.org"}]
    out = room.iq(iq(OWNER, "get", admin_query({"role": "moderator"})), 1.0)
    q = out[0].find("query", ns.MUC_ADMIN)
    assert q is not None and [it.get("nick") for it in q.findall("item")] == ["boss"]
    assert error_of(room.iq(iq(A1, "get", admin_query({"affiliation": "member"})), 1.0)[0]) == ("auth", "forbidden")
    assert error_of(room.iq(iq(A1, "get", admin_query({"role": "participant"})), 1.0)[0]) == ("auth", "forbidden")
