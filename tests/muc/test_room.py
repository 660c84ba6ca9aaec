"""The room state machine (XEP-0045 occupant use cases): joins, leaves, nick changes, messages,
subject, history, multi-session nicks, masking of real JIDs, drops and self-ping."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from room_helpers import (
    OWNER,
    ROOM,
    ROOM_JID,
    by_to,
    codes,
    error_of,
    iq,
    item,
    join,
    msg,
    occ,
    open_room,
    pres,
    presences,
)

from meshxmpp.jid import JID
from meshxmpp.muc import Room, RoomConfig
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

A1, A2 = "alice@example.org/phone", "alice@example.org/laptop"
B1 = "bob@example.org/home"
C1 = "carol@example.org/work"


# -- entering ---------------------------------------------------------------------------------------

def test_join_sequence_order_and_broadcast() -> None:
    room = open_room(history_size=5)
    join(room, A1, "alice")
    room.message(msg(A1, body="one"), 1001.0)
    out = room.presence(pres(B1, "bob", show="away"), 1002.0)
    to_bob = by_to(out)[B1]
    # alice's presence, bob's own (110), the history, the subject: in that order
    assert [e.name for e in to_bob] == ["presence", "presence", "message", "message"]
    assert to_bob[0].get("from") == occ("alice") and codes(to_bob[0]) == set()
    assert to_bob[1].get("from") == occ("bob") and codes(to_bob[1]) == {"110"}
    assert to_bob[1].findtext("show") == "away"
    assert to_bob[2].findtext("body") == "one" and to_bob[2].get("from") == occ("alice")
    delay = to_bob[2].find("delay", ns.DELAY)
    assert delay is not None and delay.attrs == {"from": ROOM, "stamp": "1970-01-01T00:16:41Z"}
    subject = to_bob[3]
    assert subject.get("type") == "groupchat" and subject.get("from") == ROOM
    assert subject.find("subject") is not None and subject.findtext("subject") == ""
    assert subject.find("body") is None
    # alice hears bob once, without 110, with bob's show; the muc <x/> of the join is not echoed
    to_alice = by_to(out)[A1]
    assert len(to_alice) == 1 and to_alice[0].get("from") == occ("bob") and codes(to_alice[0]) == set()
    assert to_alice[0].findtext("show") == "away" and to_alice[0].find("x", ns.MUC) is None
    assert set(by_to(out)) == {A1, B1}
    assert room.occupant_jids() == {JID.parse(A1), JID.parse(B1)}
    assert room.occupants_changed


def test_join_without_muc_x_is_accepted() -> None:
    room = open_room()
    out = room.presence(pres(A1, "alice", muc=False), 1.0)
    assert codes(presences(out)[-1]) == {"110"}


@pytest.mark.parametrize(("anonymity", "viewer_aff", "sees_jid"), [
    ("semi", None, False),
    ("semi", "admin", True),
    ("semi", "owner", True),
    ("non", None, True),
])
def test_real_jid_masking(anonymity: str, viewer_aff: str | None, sees_jid: bool) -> None:
    affs = {"viewer@example.org": viewer_aff} if viewer_aff else {}
    room = open_room(anonymity=anonymity, affiliations=affs)
    join(room, A1, "alice")
    out = room.presence(pres("viewer@example.org/v", "viewer"), 1.0)
    to_viewer = by_to(out)["viewer@example.org/v"]
    assert item(to_viewer[0]).get("jid") == (A1 if sees_jid else None)
    # its own presence always carries its jid; 100 only in a non-anonymous room
    assert item(to_viewer[1]).get("jid") == "viewer@example.org/v"
    assert codes(to_viewer[1]) == ({"110", "100"} if anonymity == "non" else {"110"})
    # alice (a participant) sees the viewer's jid only in a non-anonymous room
    assert item(by_to(out)[A1][0]).get("jid") == ("viewer@example.org/v" if anonymity == "non" else None)


def test_roles_from_affiliations() -> None:
    room = open_room(moderated=True, affiliations={"m@example.org": "member", "ad@example.org": "admin"})
    expected = {OWNER: ("owner", "moderator"), "ad@example.org/r": ("admin", "moderator"),
                "m@example.org/r": ("member", "participant"), "n@example.org/r": ("none", "visitor")}
    for i, (full, (aff, role)) in enumerate(expected.items()):
        out = join(room, full, f"n{i}")
        own = presences(out)[-1]
        assert (item(own).get("affiliation"), item(own).get("role")) == (aff, role)


@pytest.mark.parametrize(("setup", "joiner", "nick", "extra", "error"), [
    ({}, B1, "alice", {}, ("cancel", "conflict")),
    ({"members_only": True}, B1, "bob", {}, ("auth", "registration-required")),
    ({"affiliations": {"bob@example.org": "outcast"}}, B1, "bob", {}, ("auth", "forbidden")),
    ({"password": "s3cret"}, B1, "bob", {}, ("auth", "not-authorized")),
    ({"password": "s3cret"}, B1, "bob", {"password": "wrong"}, ("auth", "not-authorized")),
    ({"max_users": 1}, B1, "bob", {}, ("wait", "service-unavailable")),
    ({}, B1, None, {}, ("modify", "jid-malformed")),
])
def test_join_errors(setup: dict[str, object], joiner: str, nick: str | None, extra: dict[str, str],
                     error: tuple[str, str]) -> None:
    setup = dict(setup)
    affs: dict[str, str] = {"alice@example.org": "member", **setup.pop("affiliations", {})}  # type: ignore[dict-item]
    room = open_room(affiliations=affs, **setup)
    join(room, A1, "alice", password="s3cret" if "password" in setup else None)
    out = room.presence(pres(joiner, nick, **extra), 1.0)  # type: ignore[arg-type]
    assert len(out) == 1 and out[0].name == "presence"
    assert out[0].get("to") == joiner and out[0].get("from") == (occ(nick) if nick else ROOM)
    assert error_of(out[0]) == error
    assert JID.parse(joiner) not in room.occupant_jids()


def test_password_and_membership_accept() -> None:
    room = open_room(password="s3cret", members_only=True, affiliations={"bob@example.org": "member"})
    assert presences(join(room, B1, "bob", password="s3cret"))[-1].get("type") is None


def test_full_room_still_admits_owner() -> None:
    room = open_room(max_users=1)
    join(room, A1, "alice")
    join(room, OWNER, "boss")


def test_locked_room_admits_only_owner_and_says_201_once() -> None:
    room = Room.create(ROOM_JID, JID.parse(OWNER))
    assert room.locked and room.affiliations == {"owner@example.org": "owner"}
    own = presences(join(room, OWNER, "boss"))[-1]
    assert codes(own) == {"110", "201"}
    assert (item(own).get("affiliation"), item(own).get("role")) == ("owner", "moderator")
    assert error_of(room.presence(pres(A1, "alice"), 1.0)[0]) == ("cancel", "item-not-found")
    # another resource of the owner joins the same nick: no second 201
    assert codes(presences(join(room, "owner@example.org/phone", "boss"))[-1]) == {"110"}


def test_create_uses_instant_default() -> None:
    room = Room.create(ROOM_JID, JID.parse(OWNER), instant_default=RoomConfig(persistent=True, history_size=3))
    assert room.config.persistent and room.config.history_size == 3


# -- multi-session nick -----------------------------------------------------------------------------

def test_multi_session_join_is_one_occupant() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = join(room, A2, "alice")
    assert set(by_to(out)) == {A2}  # nobody else hears anything
    to_a2 = by_to(out)[A2]
    assert [e.get("from") for e in presences(to_a2)] == [occ("bob"), occ("alice")]
    assert codes(presences(to_a2)[-1]) == {"110"}
    assert to_a2[-1].find("subject") is not None
    assert len(room.occupants_snapshot()) == 2


def test_multi_session_broadcasts_reach_every_resource() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    # a groupchat goes to every resource of every occupant, the sender's included
    out = room.message(msg(B1, body="yo"), 2.0)
    assert sorted(by_to(out)) == sorted([A1, A2, B1])
    assert all(e.get("from") == occ("bob") for e in out)
    # a PM to the nick goes to both of alice's resources
    out = room.message(msg(B1, occ("alice"), body="psst", type_="chat"), 2.0)
    assert sorted(by_to(out)) == sorted([A1, A2])
    assert all(e.get("from") == occ("bob") and e.find("x", ns.MUC_USER) is not None for e in out)
    # a presence update from one resource reaches everyone; alice's resources with 110
    out = room.presence(pres(A2, "alice", muc=False, show="dnd"), 3.0)
    assert sorted(by_to(out)) == sorted([A1, A2, B1])
    assert codes(by_to(out)[A1][0]) == {"110"} and codes(by_to(out)[B1][0]) == set()


def test_multi_session_leave_only_on_last_resource() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    out = room.presence(pres(A1, "alice", type_="unavailable", muc=False), 4.0)
    assert len(out) == 1 and out[0].get("to") == A1 and out[0].get("type") == "unavailable"
    assert codes(out[0]) == {"110"} and item(out[0]).get("role") == "none"
    assert JID.parse(A1) not in room.occupant_jids()
    out = room.presence(pres(A2, "alice", type_="unavailable", muc=False, status="bye"), 5.0)
    assert sorted(by_to(out)) == sorted([A2, B1])
    assert codes(by_to(out)[A2][0]) == {"110"} and codes(by_to(out)[B1][0]) == set()
    assert by_to(out)[B1][0].findtext("status") == "bye"
    assert room.occupant_jids() == {JID.parse(B1)}


def test_other_bare_jid_cannot_share_a_nick_even_multi_session() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, A2, "alice")
    assert error_of(room.presence(pres(B1, "alice"), 1.0)[0]) == ("cancel", "conflict")


# -- leaving, nick change ---------------------------------------------------------------------------

def test_leave_and_unknown_leave() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = room.presence(pres(B1, "bob", type_="unavailable", muc=False), 1.0)
    assert {k: [codes(e) for e in v] for k, v in by_to(out).items()} == {A1: [set()], B1: [{"110"}]}
    assert all(e.get("type") == "unavailable" and item(e).get("role") == "none" for e in out)
    assert room.presence(pres(C1, "carol", type_="unavailable"), 1.0) == []
    room.presence(pres(A1, "alice", type_="unavailable"), 1.0)
    assert room.empty


def test_nick_change() -> None:
    room = open_room(anonymity="non")
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    out = room.presence(pres(A1, "ally", muc=False), 1.0)
    for full in (A1, A2, B1):
        gone, back = by_to(out)[full]
        own = full != B1
        assert (gone.get("from"), gone.get("type")) == (occ("alice"), "unavailable")
        assert item(gone).get("nick") == "ally" and item(gone).get("jid") == A1
        assert codes(gone) == ({"303", "110"} if own else {"303"})
        assert back.get("from") == occ("ally") and back.get("type") is None
        assert codes(back) == ({"110"} if own else set())
    assert room.message(msg(B1, occ("ally"), type_="chat"), 1.0)[0].get("to") in (A1, A2)
    assert error_of(room.presence(pres(A1, "bob", muc=False), 1.0)[0]) == ("cancel", "conflict")


def test_rejoin_from_joined_resource_replays_the_sequence() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = join(room, B1, "bob")
    assert set(by_to(out)) == {B1}
    assert [e.get("from") for e in presences(out)] == [occ("alice"), occ("bob")]


# -- groupchat, subject, history --------------------------------------------------------------------

def test_groupchat_errors() -> None:
    room = open_room(moderated=True)
    join(room, A1, "alice")  # a visitor: moderated room, no affiliation
    assert error_of(room.message(msg(C1), 1.0)[0]) == ("cancel", "not-acceptable")
    assert error_of(room.message(msg(A1), 1.0)[0]) == ("auth", "forbidden")
    assert error_of(room.message(msg(A1, type_="chat"), 1.0)[0]) == ("modify", "bad-request")
    assert room.message(msg(A1, type_="error"), 1.0) == []


def test_groupchat_broadcast_keeps_payload() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    m = msg(A1, body="hello", id_="m1")
    m.add("active", ns.CHATSTATES)
    out = room.message(m, 1.0)
    assert sorted(by_to(out)) == sorted([A1, B1])
    for e in out:
        assert (e.get("from"), e.get("type"), e.get("id"), e.findtext("body")) == (occ("alice"), "groupchat",
                                                                                 "m1", "hello")
        assert e.find("active", ns.CHATSTATES) is not None
    assert m.get("from") == A1  # the input is not mutated


@pytest.mark.parametrize(("history_size", "request_attrs", "expected"), [
    (20, None, ["m0", "m1", "m2", "m3", "m4"]),
    (3, None, ["m2", "m3", "m4"]),
    (0, None, []),
    (20, {"maxstanzas": "2"}, ["m3", "m4"]),
    (3, {"maxstanzas": "10"}, ["m2", "m3", "m4"]),
    (20, {"maxstanzas": "0"}, []),
    (20, {"maxchars": "0"}, []),
    (20, {"seconds": "25"}, ["m3", "m4"]),  # now = 150, messages at 100, 110, ... 140
    (20, {"since": "1970-01-01T00:01:55Z"}, ["m2", "m3", "m4"]),
])
def test_history_limits(history_size: int, request_attrs: dict[str, str] | None, expected: list[str]) -> None:
    room = open_room(history_size=history_size)
    join(room, A1, "alice")
    for i in range(5):
        room.message(msg(A1, body=f"m{i}"), 100.0 + 10 * i)
    room.message(msg(A1, body=None, subject="not history"), 145.0)
    out = room.presence(pres(B1, "bob", history=request_attrs), 150.0)
    bodies = [e.findtext("body") for e in by_to(out)[B1] if e.name == "message" and e.find("body") is not None]
    assert bodies == expected


def test_subject_changes() -> None:
    room = open_room()
    join(room, OWNER, "boss")
    join(room, A1, "alice")
    room.changed = False
    assert error_of(room.message(msg(A1, body=None, subject="mine"), 1.0)[0]) == ("auth", "forbidden")
    assert not room.changed
    out = room.message(msg(OWNER, body=None, subject="Topic"), 1.0)
    assert sorted(by_to(out)) == sorted([OWNER, A1])
    assert all(e.findtext("subject") == "Topic" and e.get("from") == occ("boss") for e in out)
    assert (room.subject, room.subject_by, room.changed) == ("Topic", "boss", True)
    subject = join(room, B1, "bob")[-1]
    assert (subject.get("from"), subject.findtext("subject")) == (occ("boss"), "Topic")
    room.config.change_subject = True
    assert room.message(msg(A1, body=None, subject="ours"), 1.0)
    assert room.subject == "ours"


# -- private messages -------------------------------------------------------------------------------

def test_private_message_errors() -> None:
    room = open_room()
    join(room, A1, "alice")
    assert error_of(room.message(msg(C1, occ("alice"), type_="chat"), 1.0)[0]) == ("cancel", "not-acceptable")
    assert error_of(room.message(msg(A1, occ("nobody"), type_="chat"), 1.0)[0]) == ("cancel", "item-not-found")
    assert error_of(room.message(msg(A1, occ("alice"), type_="groupchat"), 1.0)[0]) == ("modify", "bad-request")


# -- invitations ------------------------------------------------------------------------------------

def _invite(frm: str, to: str, reason: str | None = "join us") -> Element:
    m = Element("message", ns.CLIENT, {"from": frm, "to": ROOM})
    inv = m.add("x", ns.MUC_USER).add("invite", attrs={"to": to})
    if reason:
        inv.add("reason", text=reason)
    return m


def test_mediated_invitation() -> None:
    room = open_room(password="pw")
    join(room, A1, "alice", password="pw")
    out = room.message(_invite(A1, "dave@example.org"), 1.0)
    assert len(out) == 1
    m = out[0]
    assert (m.get("from"), m.get("to")) == (ROOM, "dave@example.org")
    x = m.find("x", ns.MUC_USER)
    assert x is not None
    inv = x.find("invite", ns.MUC_USER)
    assert inv is not None and inv.get("from") == "alice@example.org"
    assert inv.findtext("reason", ns.MUC_USER) == "join us" and x.findtext("password", ns.MUC_USER) == "pw"
    conf = m.find("x", ns.CONFERENCE)
    assert conf is not None and conf.attrs == {"jid": ROOM, "reason": "join us", "password": "pw"}


def test_invitation_rules() -> None:
    room = open_room(allow_invites=False, members_only=True, affiliations={"alice@example.org": "member"})
    join(room, A1, "alice")
    join(room, OWNER, "boss")
    assert error_of(room.message(_invite(A1, "dave@example.org"), 1.0)[0]) == ("auth", "forbidden")
    assert error_of(room.message(_invite(C1, "dave@example.org"), 1.0)[0]) == ("cancel", "not-acceptable")
    room.changed = False
    assert room.message(_invite(OWNER, "dave@example.org"), 1.0)[0].get("to") == "dave@example.org"
    assert room.affiliations["dave@example.org"] == "member" and room.changed


def test_decline_goes_to_inviter() -> None:
    room = open_room()
    m = Element("message", ns.CLIENT, {"from": "dave@example.org/x", "to": ROOM})
    m.add("x", ns.MUC_USER).add("decline", attrs={"to": "alice@example.org"}).add("reason", text="busy")
    out = room.message(m, 1.0)
    assert [(e.get("from"), e.get("to")) for e in out] == [(ROOM, "alice@example.org")]
    x = out[0].find("x", ns.MUC_USER)
    assert x is not None
    d = x.find("decline", ns.MUC_USER)
    assert d is not None and d.get("from") == "dave@example.org" and d.findtext("reason") == "busy"


# -- drop and shutdown ------------------------------------------------------------------------------

def test_drop_announces_333_once_per_lost_occupant() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    join(room, C1, "carol")
    # alice loses one resource only: nothing to anyone
    assert room.drop({JID.parse(A1)}) == []
    out = room.drop({JID.parse(A2), JID.parse(B1), JID.parse("ghost@example.org/x")})
    assert set(by_to(out)) == {C1}  # the dropped hear nothing: they are gone
    froms = sorted(e.get("from") or "" for e in by_to(out)[C1])
    assert froms == sorted([occ("alice"), occ("bob")])
    assert all(e.get("type") == "unavailable" and codes(e) == {"333"} for e in out)
    assert room.occupant_jids() == {JID.parse(C1)}


def test_presence_error_from_occupant_drops_it() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = room.presence(pres(B1, "bob", type_="error", muc=False), 1.0)
    assert [(e.get("to"), codes(e)) for e in out] == [(A1, {"333"})]


def test_shutdown_332() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, A2, "alice")
    join(room, B1, "bob")
    out = room.shutdown()
    assert sorted(by_to(out)) == sorted([A1, A2, B1])
    assert all(e.get("type") == "unavailable" and codes(e) == {"110", "332"} for e in out)
    assert room.empty and room.occupant_jids() == set()


# -- iq: self-ping, forwarding, disco ---------------------------------------------------------------

def test_self_ping() -> None:
    room = open_room()
    join(room, A1, "alice")
    ping = Element("ping", ns.PING)
    out = room.iq(iq(A1, "get", ping, to=occ("alice")), 1.0)
    assert [(e.get("type"), e.get("from"), e.get("to"), e.get("id")) for e in out] == [
        ("result", occ("alice"), A1, "q1")]
    out = room.iq(iq(B1, "get", ping.copy(), to=occ("alice")), 1.0)
    assert error_of(out[0]) == ("cancel", "not-acceptable")
    room.presence(pres(A1, "alice", type_="unavailable"), 1.0)
    assert error_of(room.iq(iq(A1, "get", ping.copy(), to=occ("alice")), 1.0)[0]) == ("cancel", "not-acceptable")


def test_iq_to_other_occupant_is_forwarded_and_answered_back() -> None:
    room = open_room()
    join(room, A1, "alice")
    join(room, B1, "bob")
    out = room.iq(iq(A1, "get", Element("query", ns.VERSION), to=occ("bob"), id_="v1"), 1.0)
    assert len(out) == 1
    fwd = out[0]
    assert (fwd.get("from"), fwd.get("to")) == (occ("alice"), B1) and fwd.get("id") != "v1"
    # a vCard request goes to the occupant's bare JID
    vc = room.iq(iq(A1, "get", Element("vCard", ns.VCARD), to=occ("bob"), id_="v2"), 1.0)[0]
    assert vc.get("to") == "bob@example.org"
    # someone else cannot answer in bob's place
    fake = Element("iq", ns.CLIENT, {"from": C1, "to": occ("alice"), "type": "result", "id": fwd.attrs["id"]})
    assert room.iq(fake, 1.0) == []
    answer = Element("iq", ns.CLIENT, {"from": B1, "to": occ("alice"), "type": "result", "id": fwd.attrs["id"]})
    back = room.iq(answer, 1.0)
    assert [(e.get("from"), e.get("to"), e.get("id")) for e in back] == [(occ("bob"), A1, "v1")]
    assert room.iq(answer, 1.0) == []  # answered once
    missing = room.iq(iq(A1, "get", Element("query", ns.VERSION), to=occ("zed")), 1.0)
    assert error_of(missing[0]) == ("cancel", "item-not-found")


def test_disco_info_features() -> None:
    room = open_room(name="Room", persistent=True, members_only=True, password="p", anonymity="non",
                     moderated=True, public=False)
    out = room.iq(iq(C1, "get", Element("query", ns.DISCO_INFO)), 1.0)
    q = out[0].find("query", ns.DISCO_INFO)
    assert out[0].get("type") == "result" and q is not None
    ident = q.find("identity")
    assert ident is not None and ident.attrs == {"category": "conference", "type": "text", "name": "Room"}
    features = {f.attrs["var"] for f in q.findall("feature")}
    assert {ns.MUC, "muc_persistent", "muc_membersonly", "muc_passwordprotected", "muc_nonanonymous",
            "muc_moderated", "muc_hidden"} <= features
    plain = {f.attrs["var"] for f in open_room().disco_info().findall("feature")}
    assert {"muc_temporary", "muc_open", "muc_unsecured", "muc_semianonymous", "muc_unmoderated",
            "muc_public"} <= plain
    assert room.iq(iq(C1, "get", Element("query", ns.DISCO_ITEMS)), 1.0)[0].get("type") == "result"
    assert error_of(room.iq(iq(C1, "get", Element("query", "urn:x:unknown")), 1.0)[0]) == (
        "cancel", "service-unavailable")


# -- persistence of state ---------------------------------------------------------------------------

def test_config_dict_round_trip_ignores_unknown_keys() -> None:
    cfg = RoomConfig(name="n", password="p", anonymity="non", max_users=5)
    d = cfg.to_dict()
    assert RoomConfig.from_dict({**d, "from_the_future": 1}) == cfg


def test_snapshot_restore_round_trip() -> None:
    room = open_room(history_size=5)
    join(room, A1, "alice", show="away")
    join(room, A2, "alice")
    join(room, B1, "bob")
    room.message(msg(A1, body="kept"), 10.0)
    snap = room.occupants_snapshot()
    assert {s["nick"]: sorted(s["resources"]) for s in snap} == {"alice": sorted([A1, A2]), "bob": [B1]}
    again = Room.restore(ROOM_JID, config=room.config, affiliations=room.affiliations, subject=room.subject,
                         subject_by=room.subject_by, occupants=snap, history=room.history_snapshot())
    assert again.occupant_jids() == room.occupant_jids()
    assert again.occupants_snapshot() == snap
    out = again.presence(pres(C1, "carol"), 20.0)
    to_carol = by_to(out)[C1]
    assert [e.get("from") for e in presences(to_carol)] == [occ("alice"), occ("bob"), occ("carol")]
    assert [e.findtext("body") for e in to_carol if e.find("body") is not None] == ["kept"]
    assert sorted(by_to(out)) == sorted([A1, A2, B1, C1])


def test_room_modules_are_sans_io() -> None:
    pkg = Path(__file__).resolve().parents[2] / "meshxmpp" / "muc"
    for path in [pkg / "__init__.py", pkg / "room.py", *pkg.glob("_room_*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Await | ast.AsyncFunctionDef), path
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("trio", "socket", "sqlite3", "time") for n in names), path
