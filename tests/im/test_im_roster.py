"""Roster get/set/remove (RFC 6121 section 2) through the router, over MemoryStorage."""

from __future__ import annotations

import pytest

from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.im._harness import (
    Harness,
    error_condition,
    is_presence,
    is_push,
    pres,
    push_item,
    roster_get,
    roster_set,
)

BOB = "bob@example.org"
ALICE = "alice@example.org"


def result_items(h_session_got: list[Element]) -> list[Element]:
    (reply,) = [el for el in h_session_got if el.name == "iq" and el.get("type") == "result"]
    query = reply.find("query", ns.ROSTER)
    assert query is not None
    return query.findall("item", ns.ROSTER)


async def test_roster_get_empty_marks_the_session_interested(h: Harness) -> None:
    a = h.bind("alice@example.org/a")
    assert not a.interested
    await h.send(a, roster_get())
    assert result_items(a.got) == []
    assert a.interested


async def test_roster_set_adds_and_pushes_to_every_interested_resource(h: Harness) -> None:
    a1, a2, a3 = (h.bind(f"alice@example.org/{r}") for r in ("one", "two", "quiet"))
    await h.send(a1, roster_get())
    await h.send(a2, roster_get())
    a1.take()
    a2.take()
    await h.send(a1, roster_set(BOB, name="Bob", groups=("Friends", "Work")))
    assert [el.get("type") for el in a1.got if el.name == "iq" and el.get("id") == "s1"] == ["result"]
    for s in (a1, a2):
        (push,) = s.take(is_push)
        assert push.get("to") == str(s.jid)
        item = push_item(push)
        assert item.get("jid") == BOB and item.get("name") == "Bob" and item.get("subscription") == "none"
        assert [g.text for g in item.findall("group", ns.ROSTER)] == ["Friends", "Work"]
        assert item.get("ask") is None
    assert a3.got == []  # never asked for the roster: no pushes
    stored = await h.storage.rosters.get(ALICE, BOB)
    assert stored is not None and stored.name == "Bob" and stored.groups == ("Friends", "Work")


async def test_roster_set_ignores_subscription_and_ask(h: Harness) -> None:
    a = h.bind("alice@example.org/a")
    await h.send(a, roster_set(BOB, subscription="both", ask="subscribe"))
    stored = await h.storage.rosters.get(ALICE, BOB)
    assert stored is not None and stored.subscription == "none" and not stored.ask


async def test_roster_update_keeps_the_subscription(h: Harness) -> None:
    from meshxmpp.storage.base import RosterItem

    await h.storage.rosters.put(ALICE, RosterItem(jid=BOB, subscription="both", name="old"))
    a = h.bind("alice@example.org/a")
    await h.send(a, roster_set(BOB, name="new", groups=("G",)))
    stored = await h.storage.rosters.get(ALICE, BOB)
    assert stored is not None and stored.subscription == "both" and stored.name == "new"
    assert stored.groups == ("G",)


@pytest.mark.parametrize(
    ("build", "condition"),
    [
        (lambda: roster_set("bob@example.org/res"), "bad-request"),
        (lambda: roster_set("bad@@example.org"), "jid-malformed"),
        (lambda: roster_set(ALICE), "not-allowed"),
        (lambda: roster_set(BOB, groups=("G", "G")), "bad-request"),
        (lambda: roster_set(BOB, groups=("",)), "not-acceptable"),
        (lambda: roster_set(BOB, name="x" * 2000), "not-acceptable"),
    ],
)
async def test_roster_set_errors(h: Harness, build, condition: str) -> None:  # type: ignore[no-untyped-def]
    a = h.bind("alice@example.org/a")
    await h.send(a, roster_get())
    a.take()
    await h.send(a, build())
    (reply,) = a.got
    assert reply.get("type") == "error" and error_condition(reply) == condition
    assert await h.storage.rosters.items(ALICE) == []


async def test_roster_set_with_two_items_is_bad_request(h: Harness) -> None:
    a = h.bind("alice@example.org/a")
    iq = roster_set(BOB)
    query = iq.find("query", ns.ROSTER)
    assert query is not None
    query.add("item", ns.ROSTER, {"jid": "carol@example.org"})
    await h.send(a, iq)
    (reply,) = a.got
    assert error_condition(reply) == "bad-request"


async def test_roster_remove_pushes_remove(h: Harness) -> None:
    a1, a2 = h.bind("alice@example.org/one"), h.bind("alice@example.org/two")
    for s in (a1, a2):
        await h.send(s, roster_get())
    await h.send(a1, roster_set(BOB))
    a1.take()
    a2.take()
    await h.send(a1, roster_set(BOB, remove=True, id_="rm"))
    assert [el.get("type") for el in a1.got if el.get("id") == "rm"] == ["result"]
    for s in (a1, a2):
        (push,) = s.take(is_push)
        assert push_item(push).get("subscription") == "remove"
    assert await h.storage.rosters.get(ALICE, BOB) is None


async def test_roster_remove_of_unknown_item_is_item_not_found(h: Harness) -> None:
    a = h.bind("alice@example.org/a")
    await h.send(a, roster_set(BOB, remove=True))
    (reply,) = a.got
    assert error_condition(reply) == "item-not-found"


async def test_roster_remove_cancels_both_subscriptions(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    await h.send(a, pres("subscribe", BOB))
    await h.send(b, pres("subscribed", ALICE))
    await h.send(b, pres("subscribe", ALICE))
    await h.send(a, pres("subscribed", BOB))
    assert (await h.storage.rosters.get(ALICE, BOB)).subscription == "both"  # type: ignore[union-attr]
    assert (await h.storage.rosters.get(BOB, ALICE)).subscription == "both"  # type: ignore[union-attr]
    a.take()
    b.take()
    await h.send(a, roster_set(BOB, remove=True, id_="rm"))
    # RFC 6121 2.5.2: the contact is told both ways, and sees alice go offline.
    assert [el.get("type") for el in b.take(lambda el: el.name == "presence")] == [
        "unsubscribe",
        "unsubscribed",
        "unavailable",
    ]
    assert await h.storage.rosters.get(ALICE, BOB) is None
    bob_item = await h.storage.rosters.get(BOB, ALICE)
    assert bob_item is not None and bob_item.subscription == "none" and not bob_item.ask
    pushes = b.take(is_push)
    assert [push_item(p).get("subscription") for p in pushes] == ["to", "none"]
    # Bob stops sharing his presence with alice, so she sees him go offline (RFC 6121 3.3.3).
    assert a.take(is_presence("unavailable", "bob@example.org/b"))


async def test_roster_remove_denies_a_pending_request(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    await h.send(b, pres("subscribe", ALICE))
    await h.send(a, roster_set(BOB))  # alice adds bob without answering
    await h.send(a, roster_set(BOB, remove=True))
    assert b.take(is_presence("unsubscribed", ALICE))
    bob_item = await h.storage.rosters.get(BOB, ALICE)
    assert bob_item is not None and not bob_item.ask
    assert await h.storage.rosters.get(ALICE, BOB) is None


async def test_hidden_pending_items_are_not_in_the_roster(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = h.bind("bob@example.org/b")
    await h.send(b, roster_get())
    b.take()
    await h.send(a, pres("subscribe", BOB))
    stored = await h.storage.rosters.get(BOB, ALICE)
    assert stored is not None and stored.hidden and stored.pending_in
    assert b.take(is_push) == []  # RFC 6121 3.1.3: no push before bob approves
    await h.send(b, roster_get())
    assert result_items(b.got) == []
