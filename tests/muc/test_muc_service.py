"""The conference service on one real node, through TestClient over loopback sockets."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable

import pytest

from meshxmpp import testing
from meshxmpp.jid import JID
from meshxmpp.muc.service import MUCService, owner_of, service_of
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

MUC = "conference.example.org"
ROOM = f"lounge@{MUC}"
CONF = {"muc": {"domain": MUC}}


@pytest.fixture
async def n() -> AsyncIterator[testing.RunningNode]:
    async with testing.node(CONF, domain="example.org") as node:
        for user in ("alice", "bob", "carol"):
            await node.add_user(user)
        yield node


def join(room_nick: str, *, x: bool = True, history: dict[str, str] | None = None) -> Element:
    el = Element("presence", ns.CLIENT, {"to": room_nick})
    if x:
        mx = el.add("x", ns.MUC)
        if history is not None:
            mx.add("history", ns.MUC, history)
    return el


def leave(room_nick: str) -> Element:
    return Element("presence", ns.CLIENT, {"to": room_nick, "type": "unavailable"})


def groupchat(body: str, room: str = ROOM) -> Element:
    el = Element("message", ns.CLIENT, {"to": room, "type": "groupchat"})
    el.add("body", ns.CLIENT, text=body)
    return el


def codes(el: Element) -> set[str]:
    x = el.find("x", ns.MUC_USER)
    return {s.get("code") or "" for s in x.findall("status", ns.MUC_USER)} if x is not None else set()


def pres(frm: str, type_: str | None = None, code: str | None = None) -> Callable[[Element], bool]:
    return lambda el: (el.name == "presence" and el.get("from") == frm and el.get("type") == type_
                       and (code is None or code in codes(el)))


def msg(frm: str, body: str | None = None) -> Callable[[Element], bool]:
    return lambda el: (el.name == "message" and el.get("from") == frm
                       and (body is None or el.findtext("body") == body))


def subject_msg(el: Element) -> bool:
    return el.name == "message" and el.find("subject") is not None


async def instant(owner: TestClient, room: str = ROOM, **fields: str) -> None:
    """Unlock a new room: the owner submits the configuration form (empty: instant room)."""
    iq = Element("iq", ns.CLIENT, {"type": "set", "to": room})
    x = iq.add("query", ns.MUC_OWNER).add("x", ns.DATA_FORMS, {"type": "submit"})
    if fields:
        f = x.add("field", ns.DATA_FORMS, {"var": "FORM_TYPE"})
        f.add("value", ns.DATA_FORMS, text=ns.MUC_ROOMCONFIG)
    for var, value in fields.items():
        x.add("field", ns.DATA_FORMS, {"var": var}).add("value", ns.DATA_FORMS, text=value)
    result = await owner.iq(iq)
    assert result.get("type") == "result", result


async def create(c: TestClient, nick: str = "alice", room: str = ROOM, **fields: str) -> None:
    await c.send(join(f"{room}/{nick}"))
    own = await c.wait_for(pres(f"{room}/{nick}"), what="own presence")
    assert {"110", "201"} <= codes(own), own
    await c.wait_for(subject_msg, what="subject")
    await instant(c, room, **fields)


async def enter(c: TestClient, nick: str, room: str = ROOM) -> Element:
    await c.send(join(f"{room}/{nick}"))
    own = await c.wait_for(pres(f"{room}/{nick}", code="110"), what=f"{nick}'s own presence")
    await c.wait_for(subject_msg, what="subject")
    return own


def muc(n: testing.RunningNode) -> MUCService:
    service = service_of(n.ctx)
    assert service is not None
    return service


async def test_service_disco_and_host_items(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a:
        info = await a.iq(Element("iq", ns.CLIENT, {"type": "get", "to": MUC},
                                  [Element("query", ns.DISCO_INFO)]))
        assert info.get("type") == "result" and info.get("from") == MUC
        query = info.find("query", ns.DISCO_INFO)
        assert query is not None
        identity = query.find("identity", ns.DISCO_INFO)
        assert identity is not None and (identity.get("category"), identity.get("type")) == ("conference", "text")
        assert ns.MUC in {f.get("var") for f in query.findall("feature", ns.DISCO_INFO)}
        # the server lists the service among its items
        items = await a.iq(Element("iq", ns.CLIENT, {"type": "get", "to": "example.org"},
                                   [Element("query", ns.DISCO_ITEMS)]))
        jids = {i.get("jid") for i in items.find("query", ns.DISCO_ITEMS).findall("item", ns.DISCO_ITEMS)}  # type: ignore[union-attr]
        assert MUC in jids
        # anything else to the service itself
        bad = await a.iq(Element("iq", ns.CLIENT, {"type": "set", "to": MUC}, [Element("query", "urn:x")]))
        assert bad.get("type") == "error"
        # a room that does not exist
        missing = await a.iq(Element("iq", ns.CLIENT, {"type": "get", "to": f"nowhere@{MUC}"},
                                     [Element("query", ns.DISCO_INFO)]))
        assert missing.get("type") == "error" and missing.find("error").find("item-not-found", ns.STANZA_ERRORS)  # type: ignore[union-attr]


async def test_create_join_talk_subject_pm_leave(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a, await n.client("bob") as b:
        await create(a, room=ROOM, **{"muc#roomconfig_roomname": "The Lounge"})
        # public rooms are listed by the service
        items = await a.iq(Element("iq", ns.CLIENT, {"type": "get", "to": MUC}, [Element("query", ns.DISCO_ITEMS)]))
        listed = [(i.get("jid"), i.get("name")) for i in items.find("query", ns.DISCO_ITEMS).findall("item")]  # type: ignore[union-attr]
        assert listed == [(ROOM, "The Lounge")]

        await enter(b, "bob")
        await a.wait_for(pres(f"{ROOM}/bob"), what="bob joins, as alice sees it")

        await b.send(groupchat("hello all"))
        for c in (a, b):
            got = await c.wait_for(msg(f"{ROOM}/bob", "hello all"), what="groupchat")
            assert got.get("type") == "groupchat" and got.get("to") == str(c.jid)

        # subject: the owner (a moderator) may set it
        subject = Element("message", ns.CLIENT, {"to": ROOM, "type": "groupchat"})
        subject.add("subject", ns.CLIENT, text="Tea time")
        await a.send(subject)
        for c in (a, b):
            got = await c.wait_for(subject_msg, what="subject change")
            assert got.findtext("subject") == "Tea time" and got.get("from") == f"{ROOM}/alice"

        # private message through the room
        pm = Element("message", ns.CLIENT, {"to": f"{ROOM}/alice", "type": "chat"})
        pm.add("body", ns.CLIENT, text="psst")
        await b.send(pm)
        got = await a.wait_for(msg(f"{ROOM}/bob", "psst"), what="private message")
        assert got.get("type") == "chat"

        await b.send(leave(f"{ROOM}/bob"))
        await b.wait_for(pres(f"{ROOM}/bob", "unavailable", code="110"), what="bob's own leave")
        await a.wait_for(pres(f"{ROOM}/bob", "unavailable"), what="bob leaves, as alice sees it")

        # the last occupant leaves a non-persistent room: it is gone, from memory and storage
        await a.send(leave(f"{ROOM}/alice"))
        await a.wait_for(pres(f"{ROOM}/alice", "unavailable"), what="alice's own leave")
        service = muc(n)
        await service.flush()
        assert JID.parse(ROOM) not in service.rooms
        assert await n.ctx.storage.rooms.get(ROOM) is None


async def test_occupant_mirror_follows_joins_and_leaves(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a, await n.client("bob") as b:
        await create(a)
        await enter(b, "bob")
        service = muc(n)
        await service.flush()
        record = await n.ctx.storage.rooms.get(ROOM)
        assert record is not None and record.node == service.me
        assert sorted(o["nick"] for o in record.occupants) == ["alice", "bob"]
        assert record.affiliations == {"alice@example.org": "owner"}
        await b.send(leave(f"{ROOM}/bob"))
        await a.wait_for(pres(f"{ROOM}/bob", "unavailable"), what="bob leaves")
        await service.flush()
        record = await n.ctx.storage.rooms.get(ROOM)
        assert record is not None and [o["nick"] for o in record.occupants] == ["alice"]


async def test_session_end_without_unavailable_leaves_the_room(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a:
        await create(a)
        b = await n.client("bob", resource="gone")
        await enter(b, "bob")
        await a.wait_for(pres(f"{ROOM}/bob"), what="bob joins")
        await b.aclose()  # no unavailable presence to the room
        await a.wait_for(pres(f"{ROOM}/bob", "unavailable"), what="bob gone with his session")


async def test_message_to_a_room_that_does_not_exist(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a:
        await a.send(groupchat("anyone?", f"empty@{MUC}"))
        err = await a.wait_for(lambda el: el.name == "message" and el.get("type") == "error", what="error")
        assert err.get("from") == f"empty@{MUC}"
        assert err.find("error").find("item-not-found", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
        # a join without a nick creates nothing
        await a.send(Element("presence", ns.CLIENT, {"to": f"empty@{MUC}"}))
        err = await a.wait_for(lambda el: el.name == "presence" and el.get("type") == "error", what="error")
        assert err.find("error").find("jid-malformed", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
        assert await n.ctx.storage.rooms.list() == []


async def test_other_domains_are_not_taken(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a:
        await a.send(groupchat("hi", "room@elsewhere.example"))
        err = await a.wait_for(lambda el: el.name == "message" and el.get("type") == "error", what="error")
        assert err.find("error").find("remote-server-not-found", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]


async def test_persistent_room_survives_a_restart() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        async with testing.node(CONF, domain="example.org", data_dir=data_dir) as n:
            await n.add_user("alice")
            await n.add_user("bob")
            async with await n.client("alice") as a:
                await create(a, **{"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Kept",
                                   "muc#roomconfig_membersonly": "1"})
                subject = Element("message", ns.CLIENT, {"to": ROOM, "type": "groupchat"})
                subject.add("subject", ns.CLIENT, text="Still here")
                await a.send(subject)
                await a.wait_for(subject_msg, what="subject")
                await muc(n).flush()
            # alice's session ended: she left, the persistent room stays (empty) in storage
            await n.session_count("alice@example.org", 0)
            await muc(n).flush()
            record = await n.ctx.storage.rooms.get(ROOM)
            assert record is not None and record.persistent and record.occupants == []

        async with testing.node(CONF, domain="example.org", data_dir=data_dir) as n:
            async with await n.client("bob") as b:
                # members-only survived: bob is not a member
                await b.send(join(f"{ROOM}/bob"))
                err = await b.wait_for(pres(f"{ROOM}/bob", "error"), what="refusal")
                assert err.find("error").find("registration-required", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
            async with await n.client("alice") as a:
                await a.send(join(f"{ROOM}/alice"))
                own = await a.wait_for(pres(f"{ROOM}/alice", code="110"), what="alice re-enters")
                assert "201" not in codes(own), "not created again"
                got = await a.wait_for(subject_msg, what="subject")
                assert got.findtext("subject") == "Still here"
                info = await a.iq(Element("iq", ns.CLIENT, {"type": "get", "to": ROOM},
                                          [Element("query", ns.DISCO_INFO)]))
                identity = info.find("query", ns.DISCO_INFO).find("identity", ns.DISCO_INFO)  # type: ignore[union-attr]
                assert identity is not None and identity.get("name") == "Kept"


async def test_config_change_is_committed_before_the_result(n: testing.RunningNode) -> None:
    async with await n.client("alice") as a:
        await create(a)
        await instant(a, **{"muc#roomconfig_persistentroom": "1", "muc#roomconfig_roomname": "Now"})
        # no flush: the result came after the commit
        record = await n.ctx.storage.rooms.get(ROOM)
        assert record is not None and record.persistent and record.config["name"] == "Now"


def test_owner_of_is_rendezvous_hashing() -> None:
    members = [f"node{i}" for i in range(5)]
    rooms = [f"r{i}@{MUC}" for i in range(300)]
    owners = {r: owner_of(r, members) for r in rooms}
    assert owner_of(ROOM, []) is None
    assert owner_of(ROOM, ["only"]) == "only"
    assert owners == {r: owner_of(r, list(reversed(members))) for r in rooms}, "order does not matter"
    assert len(set(owners.values())) == 5, "every member gets rooms"
    # removing a member moves only its rooms
    fewer = [m for m in members if m != "node2"]
    for r in rooms:
        if owners[r] != "node2":
            assert owner_of(r, fewer) == owners[r]
