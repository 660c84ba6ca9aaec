"""Offline delivery policies on a real node (SQLite storage, TestClient over loopback).

``[offline] delivery = "all-resources"`` against ``"first-resource"`` (XEP-0160), as in
docs/offline.md. The clock of the stored stamps is injected through ``ctx.now``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from meshxmpp import testing
from meshxmpp.c2s.session import Session
from meshxmpp.im import offline
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

ALICE = "alice@example.org"


def chat(to: str, body: str) -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": "chat"})
    el.add("body", ns.CLIENT, text=body)
    return el


def is_chat(el: Element) -> bool:
    return el.name == "message" and el.get("type") == "chat"


def is_error(el: Element) -> bool:
    return el.name == "message" and el.get("type") == "error"


def bodies(client: TestClient, pred: Callable[[Element], bool] = is_chat) -> list[str]:
    out = []
    for el in client.pending():
        if pred(el):
            body = el.find("body", ns.CLIENT)
            out.append(body.text if body is not None else "")
    return out


@asynccontextmanager
async def running(**offline_config: Any) -> AsyncIterator[testing.RunningNode]:
    async with testing.node({"offline": offline_config}, domain="example.org") as n:
        await n.add_user("alice")
        await n.add_user("bob")
        yield n


async def online(n: testing.RunningNode, resource: str) -> TestClient:
    """alice's ``resource`` logs in and sends initial presence; after the ping, every offline
    message the server had for it has arrived (it delivers them before reading on)."""
    client = await n.client("alice", resource=resource, presence=True)
    await client.ping()
    return client


async def offline_now(n: testing.RunningNode, client: TestClient) -> None:
    await client.aclose()
    await n.session_count(ALICE, 0)


async def was_known(n: testing.RunningNode, *resources: str) -> None:
    """Each device was online once, so the server knows it."""
    for resource in resources:
        await offline_now(n, await online(n, resource))


async def send_from_bob(n: testing.RunningNode, *texts: str) -> TestClient:
    bob = await n.client("bob", resource="b")
    for text in texts:
        await bob.send(chat(ALICE, text))
    await bob.ping()  # the node handled (stored) them before answering
    return bob


async def test_all_resources_phone_then_laptop_then_deleted() -> None:
    async with running(delivery="all-resources") as n:
        store = n.ctx.storage.offline
        await was_known(n, "phone", "laptop")
        await send_from_bob(n, "while you were out", "and this")
        assert await store.count(ALICE) == 2

        phone = await online(n, "phone")
        assert bodies(phone) == ["while you were out", "and this"]
        delay = phone.pending()[-1].find("delay", ns.DELAY)
        assert delay is not None and delay.get("from") == "example.org"
        assert await store.count(ALICE) == 2, "kept for the laptop"
        await offline_now(n, phone)

        laptop = await online(n, "laptop")
        assert bodies(laptop) == ["while you were out", "and this"]
        assert await store.count(ALICE) == 0, "deleted once both devices had them"
        await offline_now(n, laptop)

        phone = await online(n, "phone")
        assert bodies(phone) == [], "a relogin does not get them again"
        await phone.aclose()


async def test_all_resources_phone_relogin_before_laptop() -> None:
    async with running(delivery="all-resources") as n:
        await was_known(n, "phone", "laptop")
        await send_from_bob(n, "hello")
        phone = await online(n, "phone")
        assert bodies(phone) == ["hello"]
        await offline_now(n, phone)
        phone = await online(n, "phone")
        assert bodies(phone) == []
        laptop = await online(n, "laptop")  # both online now
        assert bodies(laptop) == ["hello"]
        assert bodies(phone) == []
        assert await n.ctx.storage.offline.count(ALICE) == 0
        await phone.aclose()
        await laptop.aclose()


async def test_first_resource_is_unchanged() -> None:
    async with running() as n:  # the default
        assert n.config.offline.delivery == "first-resource"
        await was_known(n, "phone", "laptop")
        await send_from_bob(n, "only once")
        phone = await online(n, "phone")
        assert bodies(phone) == ["only once"]
        assert await n.ctx.storage.offline.count(ALICE) == 0
        await offline_now(n, phone)
        laptop = await online(n, "laptop")
        assert bodies(laptop) == [], "XEP-0160: the first resource took them"
        assert await n.ctx.storage.offline.known_resources(ALICE) == []
        await laptop.aclose()


async def test_all_resources_quota_still_enforced() -> None:
    async with running(delivery="all-resources", max_per_user=2) as n:
        await was_known(n, "phone", "laptop")
        bob = await send_from_bob(n, "m0", "m1", "m2")
        (err,) = [el for el in bob.pending() if is_error(el)]
        assert err.find("error", ns.CLIENT).find("service-unavailable", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
        assert await n.ctx.storage.offline.count(ALICE) == 2
        phone = await online(n, "phone")
        assert bodies(phone) == ["m0", "m1"]
        await phone.aclose()
        await bob.aclose()


async def test_all_resources_max_age_expiry() -> None:
    async with running(delivery="all-resources") as n:
        clock = [1_700_000_000.0]
        n.ctx.now = lambda: clock[0]
        store = n.ctx.storage.offline
        await was_known(n, "phone", "laptop")
        await send_from_bob(n, "old news")
        clock[0] += offline.MAX_AGE - 60
        await send_from_bob(n, "fresh")

        phone = await online(n, "phone")
        assert bodies(phone) == ["old news", "fresh"]
        await offline_now(n, phone)

        clock[0] += 120  # "old news" is now older than MAX_AGE
        laptop = await online(n, "laptop")
        assert bodies(laptop) == ["fresh"], "an expired message is not delivered"
        assert await store.count(ALICE) == 0, "and it is deleted"
        await laptop.aclose()


# --- two nodes sharing one SQLite file (issue #5) -------------------------------------------


@asynccontextmanager
async def two_nodes(
    db: str, **offline_config: Any
) -> AsyncIterator[tuple[testing.RunningNode, testing.RunningNode]]:
    """Two in-process nodes, each with its own SqliteStorage on the same file ``db``."""
    overrides = {"offline": offline_config, "storage": {"backend": "sqlite", "path": db}}
    async with (
        testing.node(overrides, domain="example.org") as a,
        testing.node(overrides, domain="example.org") as b,
    ):
        await a.add_user("alice")
        await a.add_user("bob")
        yield a, b


async def race_online(a: testing.RunningNode, b: testing.RunningNode) -> tuple[TestClient, TestClient]:
    """alice binds one resource on each node, then both send initial presence at the same moment;
    returns once both have answered a ping (every offline message for them has arrived)."""
    one = await a.client("alice", resource="one")
    two = await b.client("alice", resource="two")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one.send, Element("presence", ns.CLIENT))
        nursery.start_soon(two.send, Element("presence", ns.CLIENT))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one.ping)
        nursery.start_soon(two.ping)
    return one, two


ROUNDS = 5
QUEUED = 40


async def test_shared_sqlite_first_resource_exactly_once(tmp_path: Path) -> None:
    async with two_nodes(str(tmp_path / "shared.sqlite3")) as (a, b):
        for r in range(ROUNDS):
            texts = [f"r{r}-m{i}" for i in range(QUEUED)]
            bob = await send_from_bob(a if r % 2 else b, *texts)
            assert await a.ctx.storage.offline.count(ALICE) == QUEUED
            one, two = await race_online(a, b)
            got_one, got_two = bodies(one), bodies(two)
            assert sorted(got_one + got_two) == sorted(texts), f"round {r}: each message exactly once"
            assert got_one == [] or got_two == [], "first-resource: one resource takes them all"
            assert (got_one or got_two) == texts, "oldest first"
            assert await b.ctx.storage.offline.count(ALICE) == 0
            for client in (one, two, bob):
                await client.aclose()
            await a.session_count(ALICE, 0)
            await b.session_count(ALICE, 0)


async def test_shared_sqlite_all_resources_once_per_resource(tmp_path: Path) -> None:
    async with two_nodes(str(tmp_path / "shared.sqlite3"), delivery="all-resources") as (a, b):
        # both devices are known resources (each was online once, on either node)
        for n, resource in ((a, "one"), (b, "two")):
            await offline_now(n, await online(n, resource))
        for r in range(ROUNDS):
            texts = [f"r{r}-m{i}" for i in range(QUEUED)]
            bob = await send_from_bob(a if r % 2 else b, *texts)
            one, two = await race_online(a, b)
            assert bodies(one) == texts, f"round {r}: 'one' gets each message once"
            assert bodies(two) == texts, f"round {r}: 'two' gets each message once"
            assert await a.ctx.storage.offline.count(ALICE) == 0, "both had them: deleted"
            for client in (one, two, bob):
                await client.aclose()
            await a.session_count(ALICE, 0)
            await b.session_count(ALICE, 0)


async def test_shared_sqlite_same_resource_on_two_nodes(tmp_path: Path) -> None:
    """all-resources: the *same* resource logging in on both nodes at once (a reconnect that lands
    on another node while the old session is still there) still gets each message once in total."""
    async with two_nodes(str(tmp_path / "shared.sqlite3"), delivery="all-resources") as (a, b):
        for n, resource in ((a, "phone"), (a, "laptop")):
            await offline_now(n, await online(n, resource))
        for r in range(ROUNDS):
            texts = [f"r{r}-m{i}" for i in range(QUEUED)]
            bob = await send_from_bob(a, *texts)
            x = await a.client("alice", resource="phone")
            y = await b.client("alice", resource="phone")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(x.send, Element("presence", ns.CLIENT))
                nursery.start_soon(y.send, Element("presence", ns.CLIENT))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(x.ping)
                nursery.start_soon(y.ping)
            got_x, got_y = bodies(x), bodies(y)
            assert sorted(got_x + got_y) == sorted(texts), f"round {r}: phone gets each message once"
            assert await a.ctx.storage.offline.count(ALICE) == QUEUED, "laptop has not had them"
            for client in (x, y, bob):
                await client.aclose()
            await a.session_count(ALICE, 0)
            await b.session_count(ALICE, 0)
            laptop = await online(b, "laptop")
            assert bodies(laptop) == texts
            await offline_now(b, laptop)
            assert await a.ctx.storage.offline.count(ALICE) == 0


# --- lease-then-delete across a crash (first-resource; docs/operations.md, "Crash safety") --------


def ids_of(client: TestClient) -> list[str]:
    return [el.get("id") or "" for el in client.pending() if is_chat(el)]


async def test_first_resource_crash_window_redelivers_with_ids(tmp_path: Path) -> None:
    """A node leased alice's messages and died before deleting them: another node on the same
    database gives them to her next login once the lease expired, each with the stanza id it had
    (the sender's, or the ``offline-…`` one added at store time); then they are gone."""
    async with two_nodes(str(tmp_path / "shared.sqlite3")) as (a, b):
        clock = [1_700_000_000.0]
        a.ctx.now = b.ctx.now = lambda: clock[0]
        bob = await b.client("bob", resource="b")
        given = chat(ALICE, "m0")
        given.set("id", "bob-0")
        await bob.send(given)
        await bob.send(chat(ALICE, "m1"))
        await bob.ping()
        # node "a" leases them (as its delivery would) and crashes: no delete, no unlease.
        dead = await a.ctx.storage.offline.lease(
            ALICE, holder="a/alice@example.org/phone/dead", until=clock[0] + offline.LEASE, now=clock[0]
        )
        assert len(dead) == 2

        phone = await online(b, "phone")
        assert bodies(phone) == [], "the lease still runs: nobody else gets them"
        await offline_now(b, phone)

        clock[0] += offline.LEASE + 1
        phone = await online(b, "phone")
        assert bodies(phone) == ["m0", "m1"], "redelivered after the lease expired"
        first, second = ids_of(phone)
        assert first == "bob-0" and second.startswith("offline-")
        assert await b.ctx.storage.offline.count(ALICE) == 0, "deleted once written to the socket"
        await offline_now(b, phone)
        laptop = await online(a, "laptop")
        assert bodies(laptop) == []
        for client in (laptop, bob):
            await client.aclose()


async def test_first_resource_deletes_only_after_the_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a real socket: the delete waits for the session's outbox to be written."""
    async with running() as n:
        store = n.ctx.storage.offline
        bob = await send_from_bob(n, "x", "y")
        seen: list[int] = []
        real_wait = Session.wait_flushed

        async def wait_and_count(self: Session) -> None:
            await real_wait(self)
            seen.append(await store.count(ALICE))

        monkeypatch.setattr(Session, "wait_flushed", wait_and_count)
        phone = await online(n, "phone")
        assert bodies(phone) == ["x", "y"]
        assert seen == [2], "still stored when the outbox was flushed"
        assert await store.count(ALICE) == 0
        for client in (phone, bob):
            await client.aclose()
