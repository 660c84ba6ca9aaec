"""Differential property test: random operation sequences give the same results on the
memory fake and on SQLite (ids included), so the fake can stand in for the real thing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshxmpp.c2s.sasl import ScramCredentials
from meshxmpp.storage import MemoryStorage, RosterItem, SqliteStorage, Storage

USERS = ["alice@example.org", "bob@example.org"]
JIDS = ["carol@example.org", "dave@example.org", "example.net"]

users = st.sampled_from(USERS)
jids = st.sampled_from(JIDS)
resources = st.sampled_from(["phone", "laptop", "tablet"])


def _creds(seed: int) -> dict[str, ScramCredentials]:
    b = bytes([seed % 256])
    return {
        "SHA-1": ScramCredentials(
            hash_name="SHA-1", salt=b * 4, iterations=seed, stored_key=b * 20, server_key=b"\x00" + b * 19
        ),
        "SHA-256": ScramCredentials(
            hash_name="SHA-256", salt=b * 8, iterations=seed, stored_key=b * 32, server_key=b"\xff" + b * 31
        ),
    }


items = st.builds(
    RosterItem,
    jid=jids,
    name=st.none() | st.text(max_size=5),
    subscription=st.sampled_from(["none", "to", "from", "both"]),
    ask=st.booleans(),
    pending_in=st.booleans(),
    pending_in_stanza=st.none() | st.just("<presence type='subscribe'/>"),
    approved=st.booleans(),
    groups=st.lists(st.text(max_size=4), max_size=3, unique=True).map(tuple),
    hidden=st.booleans(),
)

ops = st.one_of(
    st.tuples(st.just("create"), users, st.integers(1, 5)),
    st.tuples(st.just("set_credentials"), users, st.integers(1, 5)),
    st.tuples(st.just("get_credentials"), users),
    st.tuples(st.just("delete_account"), users),
    st.tuples(st.just("exists"), users),
    st.just(("list",)),
    st.tuples(st.just("put"), users, items),
    st.tuples(st.just("get"), users, jids),
    st.tuples(st.just("remove"), users, jids),
    st.tuples(st.just("items"), users),
    st.tuples(st.just("store"), users, st.text(min_size=1, max_size=8), st.integers(0, 4)),
    st.tuples(st.just("count"), users),
    st.tuples(st.just("fetch"), users),
    st.tuples(st.just("delete_offline"), users, st.lists(st.integers(1, 25), max_size=4)),
    # all-resources delivery (docs/offline.md); stamps and times are small integers so that the
    # boundaries (inclusive known_since, strict expire_before) are hit often
    st.tuples(st.just("store_at"), users, st.integers(0, 6)),
    st.tuples(st.just("remember"), users, resources, st.integers(0, 6), st.integers(0, 6)),
    st.tuples(st.just("known"), users),
    st.tuples(st.just("pending"), users, resources),
    st.tuples(
        st.just("mark"), users, resources, st.lists(st.integers(1, 25), max_size=4),
        st.integers(0, 6), st.integers(0, 6),
    ),
    st.tuples(st.just("expire"), users, st.integers(0, 6)),
)


async def _apply(s: Storage, op: tuple[Any, ...]) -> object:
    match op:
        case ("create", user, seed):
            return await s.accounts.create(user, _creds(seed))
        case ("set_credentials", user, seed):
            return await s.accounts.set_credentials(user, _creds(seed))
        case ("get_credentials", user):
            return await s.accounts.get_credentials(user)
        case ("delete_account", user):
            return await s.accounts.delete(user)
        case ("exists", user):
            return await s.accounts.exists(user)
        case ("list",):
            return await s.accounts.list()
        case ("put", user, item):
            await s.rosters.put(user, item)
            return None
        case ("get", user, jid):
            return await s.rosters.get(user, jid)
        case ("remove", user, jid):
            return await s.rosters.remove(user, jid)
        case ("items", user):
            return await s.rosters.items(user)
        case ("store", user, stanza, limit):
            return await s.offline.store(user, stanza, stamp=1.5, limit=limit)
        case ("count", user):
            return await s.offline.count(user)
        case ("fetch", user):
            return await s.offline.fetch(user)
        case ("delete_offline", user, ids):
            await s.offline.delete(user, ids)
            return None
        case ("store_at", user, stamp):
            return await s.offline.store(user, f"<at t='{stamp}'/>", stamp=float(stamp), limit=6)
        case ("remember", user, resource, seen, forget_before):
            await s.offline.remember_resource(user, resource, seen=float(seen), forget_before=float(forget_before))
            return None
        case ("known", user):
            return await s.offline.known_resources(user)
        case ("pending", user, resource):
            return await s.offline.pending(user, resource)
        case ("mark", user, resource, ids, since, expire):
            return await s.offline.mark_delivered(
                user, resource, ids, known_since=float(since), expire_before=float(expire)
            )
        case ("expire", user, before):
            return await s.offline.expire(user, before=float(before))
    raise AssertionError(op)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=40))
def test_memory_and_sqlite_agree(sequence: list[tuple[Any, ...]]) -> None:
    async def main(path: Path) -> None:
        memory = MemoryStorage()
        async with memory, SqliteStorage(path) as sqlite:
            for step, op in enumerate(sequence):
                want = await _apply(memory, op)
                have = await _apply(sqlite, op)
                assert have == want, f"step {step} {op!r}: sqlite {have!r} != memory {want!r}"
            for user in USERS:
                assert await sqlite.rosters.items(user) == await memory.rosters.items(user)
                assert await sqlite.offline.fetch(user) == await memory.offline.fetch(user)
                assert await sqlite.offline.known_resources(user) == await memory.offline.known_resources(user)
                for resource in ("phone", "laptop", "tablet"):
                    assert await sqlite.offline.pending(user, resource) == await memory.offline.pending(
                        user, resource
                    )

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "model.sqlite3")
