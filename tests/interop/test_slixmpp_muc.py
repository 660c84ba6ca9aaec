"""slixmpp's XEP-0045 plugin against the conference service of a real node over loopback sockets."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from slixmpp.exceptions import PresenceError

from meshxmpp.testing import ThreadNode, run_in_thread
from tests.interop.slix import Slix

pytestmark = pytest.mark.timeout(90)

D = "example.org"
MUC = f"conference.{D}"
ROOM = f"lounge@{MUC}"
CONF = {"c2s": {"require_encryption": True}, "muc": {"domain": MUC}}
USERS = ("alice", "bob", "carol")


@pytest.fixture
def server() -> Iterator[ThreadNode]:
    with run_in_thread(CONF, domain=D) as n:
        for u in USERS:
            n.add_user(u, f"{u}-pw")
        yield n


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


class MucSlix(Slix):
    """Slix with the MUC plugin; room presences are recorded from its ``groupchat_presence`` event
    (slixmpp's generic ``presence`` event skips a room's second occupant: one roster item per room)."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.xmpp.register_plugin("xep_0004")
        self.xmpp.register_plugin("xep_0045")
        self.room_presences: list[Any] = []
        self.room_event = asyncio.Event()
        self.xmpp.add_event_handler("groupchat_presence", self._on_room_presence)
        self.xmpp.add_event_handler("groupchat_subject", self.messages.put_nowait)  # no <body/>: not 'message'

    def _on_room_presence(self, pres: Any) -> None:
        self.room_presences.append(pres)
        self.room_event.set()

    async def wait_room_presence(self, pred: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(15):
                while True:
                    for p in self.room_presences:
                        if pred(p):
                            return p
                    self.room_event.clear()
                    await self.room_event.wait()
        except TimeoutError:
            raise AssertionError(f"{self.jid}: no room presence {what}; got {self.room_presences}") from None


async def login(server: ThreadNode, user: str, resource: str = "desk") -> MucSlix:
    c = MucSlix(f"{user}@{D}/{resource}", f"{user}-pw")
    await c.connect(server.c2s_address)
    c.xmpp.send_presence()
    return c


def muc(c: MucSlix) -> Any:
    return c.xmpp.plugin["xep_0045"]


async def create(c: MucSlix, nick: str, room: str = ROOM, **fields: Any) -> None:
    """Join a new room (201), then submit the owner form: instant, or with ``fields``."""
    own, _subject, _occupants, _history = await muc(c).join_muc_wait(room, nick, timeout=15)
    assert "201" in {str(s) for s in own["muc"]["status_codes"]}, own
    form = c.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    if fields:
        form.add_field(var="FORM_TYPE", value="http://jabber.org/protocol/muc#roomconfig")
        for var, value in fields.items():
            form.add_field(var=var, value=value)
    await muc(c).set_room_config(room, form)


def is_pres(frm: str, type_: str = "available", code: int | None = None) -> Any:
    return lambda p: (str(p["from"]) == frm and p["type"] == type_
                      and (code is None or code in p["muc"]["status_codes"]))


def occupant_presences(c: MucSlix, frm: str, type_: str = "available") -> list[Any]:
    return [p for p in c.room_presences if str(p["from"]) == frm and p["type"] == type_]


def test_create_join_groupchat_pm_subject_conflict_leave(server: ThreadNode) -> None:
    async def scenario() -> None:
        alice, bob, carol = [await login(server, u) for u in USERS]
        await create(alice, "alice")
        await muc(bob).join_muc_wait(ROOM, "bob", timeout=15)
        await alice.wait_room_presence(is_pres(f"{ROOM}/bob"), "bob joined")

        alice.xmpp.send_message(mto=ROOM, mbody="hello room", mtype="groupchat")
        for c in (alice, bob):
            m = await c.next_message(lambda m: m["body"] == "hello room")
            assert (str(m["from"]), m["type"]) == (f"{ROOM}/alice", "groupchat")

        bob.xmpp.send_message(mto=f"{ROOM}/alice", mbody="just you", mtype="chat")
        m = await alice.next_message(lambda m: m["body"] == "just you")
        assert str(m["from"]) == f"{ROOM}/bob"

        muc(alice).set_subject(ROOM, "Topic of the day")
        m = await bob.next_message(lambda m: m["subject"] == "Topic of the day")
        assert str(m["from"]) == f"{ROOM}/alice"

        with pytest.raises(PresenceError) as info:
            await muc(carol).join_muc_wait(ROOM, "bob", timeout=15)
        assert info.value.condition == "conflict"

        muc(bob).leave_muc(ROOM, "bob")
        await alice.wait_room_presence(is_pres(f"{ROOM}/bob", "unavailable"), "bob left")
        for c in (alice, bob, carol):
            await c.disconnect()

    run(scenario())


def test_semi_anonymous_and_non_anonymous(server: ThreadNode) -> None:
    async def scenario() -> None:
        alice, bob, _carol = [await login(server, u) for u in USERS]
        # semi-anonymous (the default): only moderators (alice, the owner) see real JIDs
        await create(alice, "alice")
        _own, _s, occupants, _h = await muc(bob).join_muc_wait(ROOM, "bob", timeout=15)
        seen_by_bob = {str(p["from"]): str(p["muc"]["jid"]) for p in occupants if str(p["from"]) != f"{ROOM}/bob"}
        assert seen_by_bob == {f"{ROOM}/alice": ""}, "bob sees no real JID"
        bob_as_alice_sees = await alice.wait_room_presence(is_pres(f"{ROOM}/bob"), "bob joined")
        assert str(bob_as_alice_sees["muc"]["jid"]) == f"bob@{D}/desk"

        # non-anonymous: everyone sees them, and the room says so (status 100)
        room2 = f"open@{MUC}"
        await create(alice, "alice", room2, **{"muc#roomconfig_whois": "anyone"})
        own, _s, occupants, _h = await muc(bob).join_muc_wait(room2, "bob", timeout=15)
        assert 100 in own["muc"]["status_codes"]
        others = {str(p["from"]): str(p["muc"]["jid"]) for p in occupants if str(p["from"]) != f"{room2}/bob"}
        assert others == {f"{room2}/alice": f"alice@{D}/desk"}
        for c in (alice, bob):
            await c.disconnect()

    run(scenario())


def test_members_only_refusal_and_kick(server: ThreadNode) -> None:
    async def scenario() -> None:
        alice, bob, carol = [await login(server, u) for u in USERS]
        await create(alice, "alice", **{"muc#roomconfig_membersonly": True})
        with pytest.raises(PresenceError) as info:
            await muc(carol).join_muc_wait(ROOM, "carol", timeout=15)
        assert info.value.condition == "registration-required"

        await muc(alice).set_affiliation(ROOM, "member", jid=f"bob@{D}")
        await muc(bob).join_muc_wait(ROOM, "bob", timeout=15)
        await alice.wait_room_presence(is_pres(f"{ROOM}/bob"), "bob joined")

        await muc(alice).set_role(ROOM, "bob", "none", reason="out")
        kicked = await bob.wait_room_presence(is_pres(f"{ROOM}/bob", "unavailable", 307), "kicked")
        assert 110 in kicked["muc"]["status_codes"]
        await alice.wait_room_presence(is_pres(f"{ROOM}/bob", "unavailable", 307), "bob kicked, as alice sees it")
        for c in (alice, bob, carol):
            await c.disconnect()

    run(scenario())


def test_history_on_join(server: ThreadNode) -> None:
    async def scenario() -> None:
        alice, bob, _carol = [await login(server, u) for u in USERS]
        await create(alice, "alice")
        for i in range(3):
            alice.xmpp.send_message(mto=ROOM, mbody=f"old {i}", mtype="groupchat")
            await alice.next_message(lambda m, i=i: m["body"] == f"old {i}")
        _own, _s, _occ, history = await muc(bob).join_muc_wait(ROOM, "bob", maxstanzas=2, timeout=15)
        assert [m["body"] for m in history] == ["old 1", "old 2"]
        assert all(m["delay"]["stamp"] is not None for m in history)
        for c in (alice, bob):
            await c.disconnect()

    run(scenario())


def test_multi_session_nick(server: ThreadNode) -> None:
    async def scenario() -> None:
        one = await login(server, "alice", "one")
        two = await login(server, "alice", "two")
        bob = await login(server, "bob")
        await create(one, "alice")
        await muc(bob).join_muc_wait(ROOM, "bob", timeout=15)
        await muc(two).join_muc_wait(ROOM, "alice", timeout=15)
        bob.xmpp.send_message(mto=ROOM, mbody="to both", mtype="groupchat")
        for c in (one, two):
            await c.next_message(lambda m: m["body"] == "to both")
        # both resources see bob once he joined; bob saw one occupant 'alice'
        await two.wait_room_presence(is_pres(f"{ROOM}/bob"), "bob, as the second resource sees him")
        await bob.ping_server()
        assert len(occupant_presences(bob, f"{ROOM}/alice")) == 1

        muc(two).leave_muc(ROOM, "alice")
        await two.wait_room_presence(is_pres(f"{ROOM}/alice", "unavailable", 110), "two's own leave")
        bob.xmpp.send_message(mto=ROOM, mbody="still one", mtype="groupchat")
        await one.next_message(lambda m: m["body"] == "still one")
        await bob.next_message(lambda m: m["body"] == "still one")
        assert occupant_presences(bob, f"{ROOM}/alice", "unavailable") == [], "the occupant stays"

        muc(one).leave_muc(ROOM, "alice")
        await bob.wait_room_presence(is_pres(f"{ROOM}/alice", "unavailable"), "the last resource left")
        for c in (one, two, bob):
            await c.disconnect()

    run(scenario())


def test_persistent_room_survives_a_restart() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        with run_in_thread(CONF, domain=D, data_dir=data_dir) as server:
            for u in USERS:
                server.add_user(u, f"{u}-pw")

            async def before() -> None:
                alice = await login(server, "alice")
                await create(alice, "alice", **{"muc#roomconfig_persistentroom": True,
                                                "muc#roomconfig_roomname": "Kept"})
                muc(alice).set_subject(ROOM, "Kept subject")
                await alice.next_message(lambda m: m["subject"] == "Kept subject")
                muc(alice).leave_muc(ROOM, "alice")
                await alice.wait_room_presence(is_pres(f"{ROOM}/alice", "unavailable"), "left")
                await alice.disconnect()

            run(before())

        with run_in_thread(CONF, domain=D, data_dir=data_dir) as server:
            async def after() -> None:
                bob = await login(server, "bob")
                own, subject, _occ, _h = await muc(bob).join_muc_wait(ROOM, "bob", timeout=15)
                assert 201 not in own["muc"]["status_codes"], "the room was not created again"
                assert subject["subject"] == "Kept subject"
                info = await bob.xmpp.plugin["xep_0030"].get_info(jid=ROOM, timeout=15)
                names = [i[3] for i in info["disco_info"]["identities"]]
                assert names == ["Kept"]
                await bob.disconnect()

            run(after())
