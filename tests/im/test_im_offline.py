"""Offline messages (XEP-0160) with delay (XEP-0203), through the router over MemoryStorage."""

from __future__ import annotations

from typing import Any

import trio

from meshxmpp.im import offline
from meshxmpp.im._stanzas import loads
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


async def test_a_session_closed_while_leasing_gives_them_back(h: Harness) -> None:
    """The lease committed, but the session ended meanwhile: the messages are given back at once
    (same ids, same order) for the next resource to come online."""
    bob = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(bob, chat(ALICE, f"m{i}"))
    store = h.storage.offline
    before = await store.fetch(ALICE)
    real_lease = store.lease
    phone = h.bind("alice@example.org/phone")

    async def lease_then_hang_up(user: str, **kw: Any) -> Any:
        got = await real_lease(user, **kw)
        phone.closed = True
        return got

    store.lease = lease_then_hang_up  # type: ignore[method-assign]
    await h.send(phone, available())
    store.lease = real_lease  # type: ignore[method-assign]
    assert messages(phone.got) == []
    assert await store.fetch(ALICE) == before, "still stored as they were"
    await h.end(phone)
    laptop = await h.online("alice@example.org/laptop")
    assert [body(el) for el in messages(laptop.got)] == ["m0", "m1", "m2"], "unleased: at once"
    assert await store.count(ALICE) == 0

# --- lease-then-delete (first-resource; docs/offline.md, "Crash safety" in docs/operations.md) ---


def ids_of(got: list[Element]) -> list[str]:
    return [m.get("id") or "" for m in messages(got)]


async def test_every_stored_message_has_an_id(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    given = chat(ALICE, "with id")
    given.set("id", "bob-1")
    await h.send(b, given)
    await h.send(b, chat(ALICE, "without"))
    a = await h.online("alice@example.org/a")
    first, second = ids_of(a.got)
    assert first == "bob-1", "the sender's id is kept"
    assert second.startswith("offline-") and len(second) > len("offline-"), "one added at store time"


async def test_a_session_closing_between_lease_and_flush_gives_them_back(h: Harness) -> None:
    """Queued, but the connection dropped before its outbox reached the socket (aborted, the
    outbox discarded): not deleted, given back at once; the next login gets them, same ids."""
    b = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(b, chat(ALICE, f"m{i}"))
    store = h.storage.offline
    before = await store.fetch(ALICE)
    phone = h.bind("alice@example.org/phone")

    async def drop_before_flush() -> None:
        await trio.lowlevel.checkpoint()
        phone.closed = phone.aborted = True

    phone.wait_flushed = drop_before_flush  # type: ignore[method-assign]
    await h.send(phone, available())
    queued = ids_of(phone.got)
    assert len(queued) == 3, "they were queued"
    assert await store.fetch(ALICE) == before, "but not deleted"
    await h.end(phone)
    laptop = await h.online("alice@example.org/laptop")
    assert [body(el) for el in messages(laptop.got)] == ["m0", "m1", "m2"]
    assert ids_of(laptop.got) == queued, "a redelivery, recognisable by stanza id"
    assert await store.count(ALICE) == 0


async def test_a_cancelled_flush_wait_gives_them_back(h: Harness) -> None:
    """The client hangs up while the delivery waits for the flush (its task is cancelled): the
    shielded cleanup still gives the messages back."""
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "m0"))
    store = h.storage.offline
    phone = h.bind("alice@example.org/phone")

    async def never_flushes() -> None:
        await trio.sleep_forever()

    phone.wait_flushed = never_flushes  # type: ignore[method-assign]
    with trio.move_on_after(1.0) as scope:
        await h.send(phone, available())
    assert scope.cancelled_caught
    assert await store.count(ALICE) == 1
    await h.end(phone)
    laptop = await h.online("alice@example.org/laptop")
    assert [body(el) for el in messages(laptop.got)] == ["m0"]
    assert await store.count(ALICE) == 0


async def test_a_flush_that_takes_too_long_leaves_them_leased(h: Harness, monkeypatch: Any) -> None:
    """The outbox did not reach the socket within FLUSH_TIMEOUT: they may still be written, so
    they are neither deleted nor given back; another login gets them only after LEASE."""
    monkeypatch.setattr(offline, "FLUSH_TIMEOUT", 0.05)
    b = await h.online("bob@example.org/b")
    await h.send(b, chat(ALICE, "m0"))
    phone = h.bind("alice@example.org/phone")

    async def never_flushes() -> None:
        await trio.sleep_forever()

    phone.wait_flushed = never_flushes  # type: ignore[method-assign]
    await h.send(phone, available())
    assert [body(el) for el in messages(phone.got)] == ["m0"]
    assert await h.storage.offline.count(ALICE) == 1
    laptop = await h.online("alice@example.org/laptop")
    assert messages(laptop.got) == [], "leased by the phone's delivery"
    await h.end(laptop)
    h.clock += offline.LEASE + 1
    tablet = await h.online("alice@example.org/tablet")
    assert [body(el) for el in messages(tablet.got)] == ["m0"], "after the lease: again"
    assert await h.storage.offline.count(ALICE) == 0


async def test_crash_between_lease_and_delete_redelivers_after_the_lease(h: Harness) -> None:
    """The crash window: a node leased the messages and died before deleting them (it never
    deletes nor unleases). While its lease runs nobody gets them; after it, the next login gets
    every one, with its stanza id: at least once across a crash."""
    b = await h.online("bob@example.org/b")
    for i in range(3):
        await h.send(b, chat(ALICE, f"m{i}"))
    store = h.storage.offline
    dead = await store.lease(ALICE, holder="dead-node/alice@example.org/phone/x", until=h.clock + offline.LEASE,
                             now=h.clock)
    assert len(dead) == 3
    sent_ids = [loads(m.stanza).get("id") for m in dead]
    assert all(sent_ids)

    a = await h.online("alice@example.org/a")
    assert messages(a.got) == [], "the dead node's lease still runs"
    await h.end(a)
    h.clock += offline.LEASE + 1
    a = await h.online("alice@example.org/a")
    assert [body(el) for el in messages(a.got)] == ["m0", "m1", "m2"]
    assert ids_of(a.got) == sent_ids, "redelivered with the ids the dead node sent"
    assert await store.count(ALICE) == 0
    a2 = await h.online("alice@example.org/a2")
    assert messages(a2.got) == []
