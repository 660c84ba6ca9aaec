"""Offline messages (XEP-0160) with delay (XEP-0203), through the router over MemoryStorage."""

from __future__ import annotations

from typing import Any

import trio

from meshxmpp.im.offline import stamp_text
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.im._harness import Harness, available, chat, error_condition

ALICE = "alice@example.org"


def messages(got: list[Element]) -> list[Element]:
    return [el for el in got if el.name == "message"]


def body(el: Element) -> str:
    b = el.find("body", ns.CLIENT)
    assert b is not None
    return b.text


async def test_stored_with_delay_and_delivered_once_in_order(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(b, chat(ALICE, f"m{i}", type_="normal" if i == 1 else "chat"))
        h.clock += 1
    assert await h.storage.offline.count(ALICE) == 3
    assert messages(b.got) == []  # no error for the sender

    a = await h.online("alice@example.org/a")
    got = messages(a.got)
    assert [body(m) for m in got] == ["m0", "m1", "m2"]
    for i, m in enumerate(got):
        assert m.get("from") == "bob@example.org/b"
        delay = m.find("delay", ns.DELAY)
        assert delay is not None and delay.get("from") == "example.org"
        assert delay.get("stamp") == stamp_text(1_700_000_000.0 + i)
    assert await h.storage.offline.count(ALICE) == 0
    a2 = await h.online("alice@example.org/a2")
    assert messages(a2.got) == []


def test_stamp_format() -> None:
    assert stamp_text(0.25) == "1970-01-01T00:00:00.250Z"


async def test_quota_bounces_service_unavailable() -> None:
    h = Harness(offline={"max_per_user": 2})
    await h.add_user("alice")
    await h.add_user("bob")
    b = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(b, chat(ALICE, f"m{i}"))
    (err,) = messages(b.got)
    assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    assert err.get("from") == ALICE
    assert await h.storage.offline.count(ALICE) == 2


async def test_unknown_user_is_never_stored(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    await h.send(b, chat("nobody@example.org", "hello?"))
    (err,) = messages(b.got)
    assert error_condition(err) == "service-unavailable"
    assert await h.storage.offline.count("nobody@example.org") == 0


async def test_headline_and_groupchat_are_not_stored(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "news", type_="headline"))
    await h.send(b, chat(ALICE, "room", type_="groupchat"))
    assert await h.storage.offline.count(ALICE) == 0
    assert [error_condition(e) for e in messages(b.got)] == ["service-unavailable"]  # the groupchat


async def test_negative_priority_resource_does_not_take_them(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "later"))
    neg = await h.online("alice@example.org/neg", priority=-1)
    assert messages(neg.got) == []
    pos = await h.online("alice@example.org/pos", priority=0)
    assert [body(m) for m in messages(pos.got)] == ["later"]


async def test_two_resources_coming_online_together_get_each_message_once(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    for i in range(5):
        await h.send(b, chat(ALICE, f"m{i}"))
    sessions = []

    async def login(resource: str) -> None:
        sessions.append(await h.online(f"alice@example.org/{resource}"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(login, "one")
        nursery.start_soon(login, "two")
    got = [body(m) for s in sessions for m in messages(s.got)]
    assert sorted(got) == [f"m{i}" for i in range(5)]
    # All went to one resource, in order.
    assert [body(m) for m in messages(sessions[0].got) + messages(sessions[1].got)] == [
        f"m{i}" for i in range(5)
    ]


async def test_later_presence_updates_do_not_redeliver(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "once"))
    a = await h.online("alice@example.org/a")
    await h.send(b, chat(ALICE, "direct"))  # alice is online now: straight through
    await h.send(a, available(show="away"))
    assert [body(m) for m in messages(a.got)] == ["once", "direct"]


async def test_unreadable_stored_message_is_skipped(h: Harness) -> None:
    await h.storage.offline.store(ALICE, "<message><body>broken", stamp=1.0, limit=10)
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "fine"))
    a = await h.online("alice@example.org/a")
    assert [body(m) for m in messages(a.got)] == ["fine"]
    assert await h.storage.offline.count(ALICE) == 0


async def test_a_session_closed_while_taking_puts_them_back(h: Harness) -> None:
    """The take committed, but the session ended meanwhile: the messages are restored (same ids,
    same order) for the next resource to come online."""
    bob = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(bob, chat(ALICE, f"m{i}"))
    store = h.storage.offline
    before = await store.fetch(ALICE)
    real_take = store.take
    phone = h.bind("alice@example.org/phone")

    async def take_then_hang_up(user: str) -> Any:
        got = await real_take(user)
        phone.closed = True
        return got

    store.take = take_then_hang_up  # type: ignore[method-assign]
    await h.send(phone, available())
    store.take = real_take  # type: ignore[method-assign]
    assert messages(phone.got) == []
    assert await store.fetch(ALICE) == before, "restored as they were"
    await h.end(phone)
    laptop = await h.online("alice@example.org/laptop")
    assert [body(el) for el in messages(laptop.got)] == ["m0", "m1", "m2"]
    assert await store.count(ALICE) == 0
