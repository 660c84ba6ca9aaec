"""``[offline] delivery = "all-resources"`` (docs/offline.md) through the router over MemoryStorage,
with the clock in the test's hands (``h.clock`` is ``ctx.now``)."""

from __future__ import annotations

from typing import Any

import trio

from meshxmpp.im import offline
from meshxmpp.jid import JID
from meshxmpp.storage.base import KnownResource
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.im._harness import FakeSession, Harness, chat, error_condition

ALICE = "alice@example.org"
BOB = "bob@example.org"
DAY = 86_400.0


def bodies(session: FakeSession) -> list[str]:
    """Bodies of the messages ``session`` got since the last call (taken out of ``got``)."""
    out = []
    for el in session.take(lambda el: el.name == "message"):
        body = el.find("body", ns.CLIENT)
        assert body is not None
        out.append(body.text)
    return out


async def harness(**offline_config: object) -> Harness:
    h = Harness(offline={"delivery": "all-resources", **offline_config})
    await h.add_user("alice")
    await h.add_user("bob")
    await h.add_user("carol")
    return h


async def login_logout(h: Harness, full: str, priority: int | None = None) -> None:
    """A device that was online once (so the server knows it) and went away."""
    await h.end(await h.online(full, priority=priority))


async def sender(h: Harness) -> FakeSession:
    """bob's session (online, so his messages are routed), made on first use."""
    existing = h.sessions.of(JID.parse(BOB))
    return existing[0] if existing else await h.online("bob@example.org/b")  # type: ignore[return-value]


async def send(h: Harness, text: str) -> None:
    await h.send(await sender(h), chat(ALICE, text))


async def test_every_known_device_gets_it_once_then_it_is_deleted() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    h.clock += 60
    await send(h, "m1")
    await send(h, "m2")
    assert await h.storage.offline.count(ALICE) == 2

    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m1", "m2"]
    assert await h.storage.offline.count(ALICE) == 2, "kept: laptop has not had them"
    await h.end(phone)

    h.clock += 3600
    laptop = await h.online("alice@example.org/laptop")
    assert bodies(laptop) == ["m1", "m2"]
    assert await h.storage.offline.count(ALICE) == 0, "deleted once both had them"

    await h.end(laptop)
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == [], "a relogin does not get them again"


async def test_relogin_before_the_other_device_does_not_redeliver() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await send(h, "once")
    for _ in range(3):
        phone = await h.online("alice@example.org/phone")
        assert bodies(phone) == (["once"] if _ == 0 else [])
        await h.end(phone)
    assert await h.storage.offline.count(ALICE) == 1
    laptop = await h.online("alice@example.org/laptop")
    assert bodies(laptop) == ["once"]
    assert await h.storage.offline.count(ALICE) == 0


async def test_delay_stamp_and_sender_are_kept_for_each_device() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    stored_at = h.clock
    await send(h, "hi")
    h.clock += 100
    for resource in ("phone", "laptop"):
        s = await h.online(f"alice@example.org/{resource}")
        (m,) = s.take(lambda el: el.name == "message")
        assert m.get("from") == "bob@example.org/b"
        delay = m.find("delay", ns.DELAY)
        assert delay is not None and delay.get("stamp") == offline.stamp_text(stored_at)


async def test_a_device_first_seen_after_storage_gets_it_too() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await send(h, "hello")
    tablet = await h.online("alice@example.org/tablet")  # never seen before: a device that was offline
    assert bodies(tablet) == ["hello"]
    assert await h.storage.offline.count(ALICE) == 1, "phone, known before, has not had it"
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["hello"]
    assert await h.storage.offline.count(ALICE) == 0


async def test_with_no_known_resource_it_is_xep0160() -> None:
    """A user's first device (nothing known) takes it and it is gone, as with first-resource."""
    h = await harness()
    await send(h, "first")
    a = await h.online("alice@example.org/a")
    assert bodies(a) == ["first"]
    assert await h.storage.offline.count(ALICE) == 0
    assert [k.resource for k in await h.storage.offline.known_resources(ALICE)] == ["a"]


async def test_two_devices_coming_online_together_each_get_each_message_once() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/one")
    await login_logout(h, "alice@example.org/two")
    for i in range(5):
        await send(h, f"m{i}")
    sessions: dict[str, FakeSession] = {}

    async def login(resource: str) -> None:
        sessions[resource] = await h.online(f"alice@example.org/{resource}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(login, "one")
        nursery.start_soon(login, "two")
    for s in sessions.values():
        assert bodies(s) == [f"m{i}" for i in range(5)], "each device: all of them, in order, once"
    assert await h.storage.offline.count(ALICE) == 0


async def test_last_seen_is_refreshed_when_the_session_ends() -> None:
    h = await harness()
    start = h.clock
    phone = await h.online("alice@example.org/phone")
    assert await h.storage.offline.known_resources(ALICE) == [KnownResource("phone", start)]
    h.clock += 5 * DAY  # online for five days
    await h.end(phone)
    assert await h.storage.offline.known_resources(ALICE) == [KnownResource("phone", start + 5 * DAY)]


async def test_a_device_not_seen_for_resource_memory_is_forgotten() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/old-laptop")
    h.clock += offline.RESOURCE_MEMORY + 1  # the laptop is gone for good
    await login_logout(h, "alice@example.org/phone")
    await send(h, "news")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["news"]
    assert await h.storage.offline.count(ALICE) == 0, "not kept for a forgotten device"
    assert [k.resource for k in await h.storage.offline.known_resources(ALICE)] == ["phone"]


async def test_a_device_forgotten_while_messages_wait_no_longer_holds_them() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/laptop")
    h.clock += offline.RESOURCE_MEMORY - 10
    await login_logout(h, "alice@example.org/phone")
    await send(h, "m")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m"]
    await h.end(phone)
    assert await h.storage.offline.count(ALICE) == 1, "laptop still known"
    h.clock += 20  # now the laptop has not been seen for RESOURCE_MEMORY
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == []
    assert await h.storage.offline.count(ALICE) == 0, "completed at the next login"


async def test_messages_older_than_max_age_are_not_delivered_and_deleted() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await send(h, "old")
    h.clock += offline.MAX_AGE - 1
    await send(h, "new")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["old", "new"]
    await h.end(phone)
    h.clock += 2  # "old" is now older than MAX_AGE, "new" is not
    laptop = await h.online("alice@example.org/laptop")
    assert bodies(laptop) == ["new"]
    assert await h.storage.offline.count(ALICE) == 0


async def test_max_age_boundary_is_inclusive() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await send(h, "edge")
    h.clock += offline.MAX_AGE  # exactly MAX_AGE old: still delivered
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["edge"]


async def test_quota_is_enforced_and_expired_messages_free_it() -> None:
    h = await harness(max_per_user=2)
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await send(h, "m0")
    await send(h, "m1")
    await send(h, "m2")
    b = await sender(h)
    (err,) = b.take(lambda el: el.name == "message")
    assert err.get("type") == "error" and error_condition(err) == "service-unavailable"
    assert await h.storage.offline.count(ALICE) == 2

    # phone had them; they wait for the laptop and still count against the quota
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m0", "m1"]
    await h.end(phone)
    await send(h, "m3")
    (err,) = b.take(lambda el: el.name == "message")
    assert error_condition(err) == "service-unavailable"

    # once they are past MAX_AGE they make room for a new one
    h.clock += offline.MAX_AGE + 1
    await send(h, "m4")
    assert b.take(lambda el: el.name == "message") == []
    assert [m.stanza.count("m4") for m in await h.storage.offline.fetch(ALICE)] == [1]


async def test_negative_priority_resource_neither_gets_them_nor_is_waited_for() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/bot", priority=-1)
    await login_logout(h, "alice@example.org/phone")
    await send(h, "m")
    assert [k.resource for k in await h.storage.offline.known_resources(ALICE)] == ["phone"]
    bot = await h.online("alice@example.org/bot", priority=-1)
    assert bodies(bot) == []
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m"]
    assert await h.storage.offline.count(ALICE) == 0


async def test_a_session_closed_before_delivery_leaves_them_for_its_next_login() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await send(h, "m")
    phone = h.bind("alice@example.org/phone")
    phone.closed = True  # the connection went away while its presence was being handled
    await h.send(phone, Element("presence", ns.CLIENT))
    assert await h.storage.offline.pending(ALICE, "phone") != []
    await h.end(phone)
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m"]


async def test_delivery_is_recorded_even_when_the_task_is_cancelled() -> None:
    """The client hangs up right after its presence (its task is cancelled while the delivery is
    being recorded): what was queued is recorded all the same, so it is not delivered again."""
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await send(h, "m")
    store = h.storage.offline
    real_mark = store.mark_delivered
    entered, release = trio.Event(), trio.Event()

    async def slow_mark(*args: Any, **kwargs: Any) -> list[int]:
        entered.set()
        await release.wait()  # a storage call waiting for its turn: cancellable unless shielded
        return await real_mark(*args, **kwargs)

    store.mark_delivered = slow_mark  # type: ignore[method-assign]
    phone = h.bind("alice@example.org/phone")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.send, phone, Element("presence", ns.CLIENT))
        await entered.wait()
        nursery.cancel_scope.cancel()
        release.set()
    store.mark_delivered = real_mark  # type: ignore[method-assign]
    assert bodies(phone) == ["m"]
    assert await store.pending(ALICE, "phone") == [], "recorded despite the cancellation"
    await h.end(phone)
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == []


async def test_unreadable_stored_message_is_dropped() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await h.storage.offline.store(ALICE, "<message><body>broken", stamp=h.clock, limit=10)
    await send(h, "fine")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["fine"]
    assert [m.stanza.count("fine") for m in await h.storage.offline.fetch(ALICE)] == [1]


async def test_presence_updates_do_not_redeliver() -> None:
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await send(h, "once")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["once"]
    show = Element("presence", ns.CLIENT)
    show.add("show", ns.CLIENT, text="away")
    await h.send(phone, show)
    assert bodies(phone) == []


async def test_first_resource_remembers_nothing_and_delivers_once() -> None:
    """The default mode is untouched XEP-0160: one resource takes them, no resource records."""
    h = Harness()
    await h.add_user("alice")
    await h.add_user("bob")
    await login_logout(h, "alice@example.org/phone")
    await login_logout(h, "alice@example.org/laptop")
    await send(h, "m")
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m"]
    assert await h.storage.offline.count(ALICE) == 0
    laptop = await h.online("alice@example.org/laptop")
    assert bodies(laptop) == []
    assert await h.storage.offline.known_resources(ALICE) == []


async def test_a_session_closed_while_claiming_releases_the_claim() -> None:
    """The claim committed, but the session ended meanwhile: the claim is undone, so the
    resource gets the messages at its next login (and they are not deleted for it)."""
    h = await harness()
    await login_logout(h, "alice@example.org/phone")
    await send(h, "m")
    store = h.storage.offline
    real_claim = store.claim
    phone = h.bind("alice@example.org/phone")

    async def claim_then_hang_up(*args: Any, **kwargs: Any) -> Any:
        got = await real_claim(*args, **kwargs)
        phone.closed = True
        return got

    store.claim = claim_then_hang_up  # type: ignore[method-assign]
    await h.send(phone, Element("presence", ns.CLIENT))
    store.claim = real_claim  # type: ignore[method-assign]
    assert bodies(phone) == []
    assert [m.stanza.count(">m<") for m in await store.pending(ALICE, "phone")] == [1], "released"
    await h.end(phone)
    phone = await h.online("alice@example.org/phone")
    assert bodies(phone) == ["m"]
    assert await store.count(ALICE) == 0
