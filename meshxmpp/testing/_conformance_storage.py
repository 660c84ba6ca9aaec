"""The storage conformance suite: what every ``Storage`` backend must do.

``meshxmpp.testing._conformance`` re-exports everything here (import from there).
``check_storage(make_storage)`` runs every storage check; each ``check_*`` function can also
be run alone (``STORAGE_CHECKS`` lists them, for parametrised tests). ``make_storage`` is a
zero-argument callable returning a fresh, *unopened*, empty ``Storage``; every check makes
its own and opens and closes it. The checks use plain ``assert`` and need no pytest, so a
third-party backend can run them from its own test suite:

    async def test_my_backend(tmp_path):
        await check_storage(lambda: MyStorage(tmp_path / f"db-{uuid4()}"))

Behaviour pinned here beyond ``docs/internals.md``: ``Accounts.list()`` is sorted,
``Rosters.items()`` is sorted by jid, results are copies, offline ids increase and are never
reused, ``Offline.delete`` ignores other users' and unknown ids; for all-resources delivery
(``docs/offline.md``): ``known_resources()`` is sorted and ``last_seen`` never goes back,
``mark_delivered`` deletes a message only once some resource and every known one had it
(or it expired), and delivery records and known resources go with their message / account;
``take``, ``lease`` and ``claim`` are atomic claims (concurrent callers get disjoint sets whose
union is everything), ``restore`` / ``unlease`` / ``release`` undo them; an expired lease can be
leased again, and ``unlease`` only gives back the holder's own leases. Rooms (``docs/muc.md``): records round-trip
whole (nested JSON values, None and non-ASCII included), ``list()`` is sorted, results are
copies, ``set_occupants`` changes only the mirror and holder and ignores rooms not stored, and
rooms are independent of accounts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from meshxmpp.c2s.sasl import ScramCredentials
from meshxmpp.storage.base import KnownResource, OfflineMessage, RoomRecord, RosterItem, Storage

__all__ = [
    "STORAGE_CHECKS",
    "MakeStorage",
    "check_account_delete_cascades",
    "check_accounts_crud",
    "check_concurrent_writes",
    "check_credentials_round_trip",
    "check_offline_concurrent_delivery",
    "check_offline_delete_by_ids",
    "check_offline_delivery_records_follow_messages",
    "check_offline_expire",
    "check_offline_known_resources",
    "check_offline_lease",
    "check_offline_lease_concurrent",
    "check_offline_lease_expiry",
    "check_offline_mark_delivered_rules",
    "check_offline_claim",
    "check_offline_claim_concurrent",
    "check_offline_order",
    "check_offline_pending_and_mark_delivered",
    "check_offline_quota",
    "check_offline_take",
    "check_offline_take_concurrent",
    "check_rooms_concurrent",
    "check_rooms_crud",
    "check_rooms_occupant_mirror",
    "check_rooms_round_trip",
    "check_roster_groups",
    "check_roster_hidden",
    "check_roster_items",
    "check_roster_upsert",
    "check_storage",
    "check_user_isolation",
]

MakeStorage = Callable[[], Storage]

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"


@asynccontextmanager
async def _opened(make_storage: MakeStorage) -> AsyncIterator[Storage]:
    storage = make_storage()
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


def _creds(seed: int) -> dict[str, ScramCredentials]:
    # Every byte value, including NUL and 0xff, and keys of the real lengths.
    def blob(n: int, k: int) -> bytes:
        return bytes((seed * 7 + k * 31 + i) % 256 for i in range(n))

    return {
        "SHA-1": ScramCredentials(
            hash_name="SHA-1",
            salt=blob(16, 1),
            iterations=4096 + seed,
            stored_key=blob(20, 2),
            server_key=blob(20, 3),
        ),
        "SHA-256": ScramCredentials(
            hash_name="SHA-256",
            salt=blob(256, 4),
            iterations=10000 + seed,
            stored_key=blob(32, 5),
            server_key=blob(32, 6),
        ),
    }


# --- accounts ---------------------------------------------------------------------------


async def check_accounts_crud(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        acc = s.accounts
        assert await acc.list() == []
        assert await acc.exists(ALICE) is False
        assert await acc.get_credentials(ALICE) is None

        assert await acc.create(ALICE, _creds(1)) is True
        assert await acc.exists(ALICE) is True
        assert await acc.get_credentials(ALICE) == _creds(1)

        # create never overwrites
        assert await acc.create(ALICE, _creds(2)) is False
        assert await acc.get_credentials(ALICE) == _creds(1)

        assert await acc.create(CAROL, _creds(3)) is True
        assert await acc.create(BOB, _creds(4)) is True
        assert await acc.list() == [ALICE, BOB, CAROL], "list() is sorted"

        assert await acc.set_credentials(ALICE, _creds(5)) is True
        assert await acc.get_credentials(ALICE) == _creds(5)
        assert await acc.get_credentials(BOB) == _creds(4)

        # set_credentials does not create
        assert await acc.set_credentials("nobody@example.org", _creds(6)) is False
        assert await acc.exists("nobody@example.org") is False

        assert await acc.delete(ALICE) is True
        assert await acc.delete(ALICE) is False
        assert await acc.exists(ALICE) is False
        assert await acc.get_credentials(ALICE) is None
        assert await acc.set_credentials(ALICE, _creds(7)) is False
        assert await acc.list() == [BOB, CAROL]

        # a deleted name can be registered again
        assert await acc.create(ALICE, _creds(8)) is True
        assert await acc.get_credentials(ALICE) == _creds(8)


async def check_credentials_round_trip(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        creds = _creds(9)
        await s.accounts.create(ALICE, creds)
        got = await s.accounts.get_credentials(ALICE)
        assert got is not None
        assert set(got) == {"SHA-1", "SHA-256"}
        for key, want in creds.items():
            have = got[key]
            assert type(have) is ScramCredentials
            for field in ("salt", "stored_key", "server_key"):
                value = getattr(have, field)
                assert type(value) is bytes, f"{key}.{field} is {type(value).__name__}, not bytes"
                assert value == getattr(want, field), f"{key}.{field} not bytes-exact"
            assert have.hash_name == want.hash_name
            assert type(have.iterations) is int and have.iterations == want.iterations

        # one variant only, and edge values, survive as given
        odd = {
            "SHA-256": ScramCredentials(
                hash_name="SHA-256",
                salt=b"\x00",
                iterations=1,
                stored_key=b"\xff" * 32,
                server_key=b"\x00" * 32,
            )
        }
        assert await s.accounts.set_credentials(ALICE, odd) is True
        assert await s.accounts.get_credentials(ALICE) == odd

        # the returned dict is the caller's
        got = await s.accounts.get_credentials(ALICE)
        assert got is not None
        got.clear()
        assert await s.accounts.get_credentials(ALICE) == odd


# --- rosters ----------------------------------------------------------------------------


async def check_roster_upsert(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        r = s.rosters
        assert await r.items(ALICE) == []
        assert await r.get(ALICE, BOB) is None
        assert await r.remove(ALICE, BOB) is False

        await r.put(ALICE, RosterItem(BOB))
        assert await r.get(ALICE, BOB) == RosterItem(BOB), "defaults round trip"

        full = RosterItem(
            jid=BOB,
            name="Bob 'the builder' <&>",
            subscription="both",
            ask=True,
            pending_in=True,
            pending_in_stanza="<presence from='bob@example.org' type='subscribe'><status>hi ✓</status></presence>",
            approved=True,
            groups=("Friends", "Work"),
            hidden=False,
        )
        await r.put(ALICE, full)
        assert await r.get(ALICE, BOB) == full, "every field is replaced on upsert"
        assert await r.items(ALICE) == [full], "upsert does not duplicate"

        for subscription in ("none", "to", "from", "both"):
            await r.put(ALICE, RosterItem(BOB, subscription=subscription))
            assert (await r.get(ALICE, BOB)) == RosterItem(BOB, subscription=subscription)

        assert await r.remove(ALICE, BOB) is True
        assert await r.remove(ALICE, BOB) is False
        assert await r.get(ALICE, BOB) is None
        assert await r.items(ALICE) == []


async def check_roster_hidden(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        r = s.rosters
        hidden = RosterItem(
            CAROL,
            pending_in=True,
            pending_in_stanza="<presence type='subscribe'/>",
            hidden=True,
        )
        approved = RosterItem("dave@example.org", approved=True, hidden=True)
        await r.put(ALICE, RosterItem(BOB, subscription="both"))
        await r.put(ALICE, hidden)
        await r.put(ALICE, approved)
        assert await r.get(ALICE, CAROL) == hidden
        assert await r.items(ALICE) == [RosterItem(BOB, subscription="both"), hidden, approved], (
            "items() includes hidden ones"
        )

        # becoming a real item clears the flag
        await r.put(ALICE, RosterItem(CAROL, name="Carol", subscription="from"))
        got = await r.get(ALICE, CAROL)
        assert got is not None and got.hidden is False and got.pending_in is False
        assert got.pending_in_stanza is None

        assert await r.remove(ALICE, "dave@example.org") is True
        assert [i.jid for i in await r.items(ALICE)] == [BOB, CAROL]


async def check_roster_groups(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        r = s.rosters
        groups = ("Zeta", "alpha", "Beta", "Ünïcødé ✓", "with,comma", 'with "quotes"', "")
        await r.put(ALICE, RosterItem(BOB, groups=groups))
        got = await r.get(ALICE, BOB)
        assert got is not None
        assert type(got.groups) is tuple
        assert got.groups == groups, "group order and spelling are kept"
        assert (await r.items(ALICE))[0].groups == groups

        await r.put(ALICE, RosterItem(BOB, groups=("Only",)))
        got = await r.get(ALICE, BOB)
        assert got is not None and got.groups == ("Only",), "groups are replaced, not merged"

        await r.put(ALICE, RosterItem(BOB))
        got = await r.get(ALICE, BOB)
        assert got is not None and got.groups == ()


async def check_roster_items(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        r = s.rosters
        jids = ["zed@example.org", BOB, "mallory@example.net", CAROL, "example.com"]
        for jid in jids:
            await r.put(ALICE, RosterItem(jid, name=jid.upper()))
        assert [i.jid for i in await r.items(ALICE)] == sorted(jids), "items() is sorted by jid"

        # results are copies: changing one changes nothing stored
        item = await r.get(ALICE, BOB)
        assert item is not None
        item.name = "changed"
        item.groups = ("x",)
        listed = await r.items(ALICE)
        listed[0].subscription = "both"
        assert await r.get(ALICE, BOB) == RosterItem(BOB, name=BOB.upper())
        assert (await r.items(ALICE))[0].subscription == "none"

        # and so is what put() took
        mine = RosterItem("new@example.org", name="before")
        await r.put(ALICE, mine)
        mine.name = "after"
        got = await r.get(ALICE, "new@example.org")
        assert got is not None and got.name == "before"


# --- offline ----------------------------------------------------------------------------


async def check_offline_order(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        assert await o.count(ALICE) == 0
        assert await o.fetch(ALICE) == []
        stanzas = [
            f"<message to='{ALICE}' id='m{i}'><body>#{i} ✓ &amp; {'x' * i * 100}</body></message>"
            for i in range(8)
        ]
        stamps = [1_700_000_000.123456 + i * 0.5 for i in range(8)]
        for stanza, stamp in zip(stanzas, stamps, strict=True):
            assert await o.store(ALICE, stanza, stamp=stamp, limit=100) is True
        assert await o.count(ALICE) == 8
        got = await o.fetch(ALICE)
        assert all(type(m) is OfflineMessage for m in got)
        assert [m.stanza for m in got] == stanzas, "oldest first, stanzas exact"
        assert [m.stamp for m in got] == stamps, "stamps exact"
        ids = [m.id for m in got]
        assert all(type(i) is int for i in ids)
        assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids increase"
        assert await o.fetch(ALICE) == got, "fetch does not consume"


async def check_offline_quota(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(3):
            assert await o.store(ALICE, f"<m{i}/>", stamp=float(i), limit=3) is True
        assert await o.store(ALICE, "<over/>", stamp=9.0, limit=3) is False
        assert await o.count(ALICE) == 3
        assert [m.stanza for m in await o.fetch(ALICE)] == ["<m0/>", "<m1/>", "<m2/>"]

        # the limit is per user, and per call
        assert await o.store(BOB, "<b/>", stamp=1.0, limit=3) is True
        assert await o.store(ALICE, "<m3/>", stamp=3.0, limit=4) is True
        assert await o.store(ALICE, "<over/>", stamp=9.0, limit=2) is False
        assert await o.count(ALICE) == 4

        first = (await o.fetch(ALICE))[0]
        await o.delete(ALICE, [first.id])
        assert await o.store(ALICE, "<m4/>", stamp=4.0, limit=4) is True
        assert await o.store(ALICE, "<over/>", stamp=9.0, limit=4) is False

        assert await o.store(CAROL, "<c/>", stamp=1.0, limit=0) is False
        assert await o.count(CAROL) == 0
        assert await o.fetch(CAROL) == []


async def check_offline_delete_by_ids(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(5):
            await o.store(ALICE, f"<a{i}/>", stamp=float(i), limit=100)
            await o.store(BOB, f"<b{i}/>", stamp=float(i), limit=100)
        a = await o.fetch(ALICE)
        b = await o.fetch(BOB)

        await o.delete(ALICE, [])
        assert await o.count(ALICE) == 5

        # bob's ids and unknown ids are ignored
        await o.delete(ALICE, [a[1].id, a[3].id, b[0].id, max(m.id for m in a + b) + 1000])
        assert await o.fetch(ALICE) == [a[0], a[2], a[4]]
        assert await o.fetch(BOB) == b

        await o.delete(ALICE, [a[1].id])  # already gone
        assert await o.count(ALICE) == 3

        # deleting the newest does not free its id for reuse
        newest = max(m.id for m in a + b)
        await o.delete(BOB, [m.id for m in b])
        assert await o.fetch(BOB) == []
        await o.store(BOB, "<again/>", stamp=9.0, limit=100)
        (again,) = await o.fetch(BOB)
        assert again.id > newest, "ids are never reused"

        await o.delete(ALICE, [m.id for m in await o.fetch(ALICE)])
        assert await o.count(ALICE) == 0


async def check_offline_take(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        assert await o.take(ALICE) == []
        for i in range(4):
            await o.store(ALICE, f"<a{i}/>", stamp=10.0 + i, limit=100)
        await o.store(BOB, "<b/>", stamp=1.0, limit=100)
        stored = await o.fetch(ALICE)
        bob = await o.fetch(BOB)

        taken = await o.take(ALICE)
        assert taken == stored, "take returns every message, oldest first, exact"
        assert await o.count(ALICE) == 0 and await o.fetch(ALICE) == [], "and deletes them"
        assert await o.take(ALICE) == [], "a second take gets nothing"
        assert await o.fetch(BOB) == bob, "other users untouched"

        # restore puts them back as they were: same ids, order, stamps; twice is harmless
        await o.store(ALICE, "<later/>", stamp=20.0, limit=100)
        await o.restore(ALICE, taken)
        await o.restore(ALICE, taken[:2])
        await o.restore(ALICE, [])
        got = await o.fetch(ALICE)
        assert got[:4] == taken and [m.stanza for m in got[4:]] == ["<later/>"], "ids order them"
        assert await o.count(ALICE) == 5
        assert await o.take(ALICE) == got

        # ids are still never reused after take
        newest = max(m.id for m in got)
        await o.store(ALICE, "<new/>", stamp=30.0, limit=100)
        (new,) = await o.fetch(ALICE)
        assert new.id > newest

        # take removes delivery records with the messages
        await o.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
        await o.mark_delivered(ALICE, "laptop", [new.id], known_since=0.0, expire_before=0.0)
        assert await o.take(ALICE) == [new]
        await o.restore(ALICE, [new])
        assert await o.pending(ALICE, "laptop") == [new], "restored without its old records"


async def check_offline_take_concurrent(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(60):
            await o.store(ALICE, f"<m{i}/>", stamp=float(i), limit=1000)
        ids = [m.id for m in await o.fetch(ALICE)]
        takes: list[list[int]] = []

        async def take() -> None:
            takes.append([m.id for m in await o.take(ALICE)])

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(take)
        every = [i for t in takes for i in t]
        assert sorted(every) == ids, "each message taken exactly once"
        assert all(t == sorted(t) for t in takes)
        assert await o.count(ALICE) == 0


async def check_offline_lease(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        assert await o.lease(ALICE, holder="n1/a", until=160.0, now=100.0) == []
        for i in range(4):
            await o.store(ALICE, f"<a{i}/>", stamp=10.0 + i, limit=100)
        await o.store(BOB, "<b/>", stamp=1.0, limit=100)
        stored = await o.fetch(ALICE)
        bob = await o.fetch(BOB)
        ids = [m.id for m in stored]

        leased = await o.lease(ALICE, holder="n1/a", until=160.0, now=100.0)
        assert leased == stored, "lease returns every unleased message, oldest first, exact"
        assert await o.fetch(ALICE) == stored and await o.count(ALICE) == 4, "and deletes nothing"
        assert await o.lease(ALICE, holder="n2/b", until=170.0, now=110.0) == [], "leased: not again"
        assert await o.fetch(BOB) == bob, "other users untouched"
        assert await o.lease(BOB, holder="n2/b", until=170.0, now=110.0) == bob

        # a message stored after the lease is leasable on its own
        await o.store(ALICE, "<late/>", stamp=20.0, limit=100)
        (late,) = [m for m in await o.fetch(ALICE) if m.id not in ids]
        assert await o.lease(ALICE, holder="n2/b", until=170.0, now=110.0) == [late]

        # unlease gives back only the holder's own leases, of this user, for the ids given
        await o.unlease(ALICE, [ids[0], ids[1], late.id, bob[0].id, max(ids) + 1000], "n1/a")
        await o.unlease(ALICE, [], "n1/a")
        await o.unlease(BOB, [bob[0].id], "n1/a")  # leased by n2/b: untouched
        assert await o.lease(ALICE, holder="n3/c", until=200.0, now=120.0) == stored[:2], (
            "unleased ones are leasable at once; late is still n2/b's"
        )
        assert await o.lease(BOB, holder="n3/c", until=200.0, now=120.0) == []

        # delete after delivery; ids stay unique after leases
        await o.delete(ALICE, ids)
        assert await o.fetch(ALICE) == [late]
        await o.unlease(ALICE, [late.id], "n2/b")
        assert await o.lease(ALICE, holder="n4/d", until=300.0, now=130.0) == [late]
        await o.delete(ALICE, [late.id])
        assert await o.count(ALICE) == 0

        # take still takes leased messages; restore puts them back unleased
        await o.store(ALICE, "<t/>", stamp=30.0, limit=100)
        (t,) = await o.lease(ALICE, holder="n5/e", until=400.0, now=140.0)
        assert await o.take(ALICE) == [t]
        await o.restore(ALICE, [t])
        assert await o.lease(ALICE, holder="n6/f", until=400.0, now=140.0) == [t], "restored unleased"


async def check_offline_lease_expiry(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(3):
            await o.store(ALICE, f"<m{i}/>", stamp=float(i), limit=100)
        stored = await o.fetch(ALICE)
        # the holder "dies": it never deletes nor unleases
        assert await o.lease(ALICE, holder="dead/a", until=160.0, now=100.0) == stored
        assert await o.lease(ALICE, holder="n2/b", until=220.0, now=159.0) == []
        assert await o.lease(ALICE, holder="n2/b", until=220.0, now=160.0) == [], "expires after until"
        assert await o.lease(ALICE, holder="n2/b", until=221.0, now=160.5) == stored, "expired: offered again"
        await o.unlease(ALICE, [m.id for m in stored], "dead/a")  # too late: n2/b's now
        assert await o.lease(ALICE, holder="n3/c", until=230.0, now=200.0) == []
        assert await o.fetch(ALICE) == stored


async def check_offline_lease_concurrent(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(60):
            await o.store(ALICE, f"<m{i}/>", stamp=float(i), limit=1000)
        ids = [m.id for m in await o.fetch(ALICE)]
        leases: dict[str, list[int]] = {}

        async def lease(holder: str) -> None:
            leases[holder] = [m.id for m in await o.lease(ALICE, holder=holder, until=1060.0, now=1000.0)]

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(lease, f"node{n}/s")
        every = [i for got in leases.values() for i in got]
        assert sorted(every) == ids, "each message leased exactly once: disjoint, and together all"
        assert all(got == sorted(got) for got in leases.values())
        assert await o.count(ALICE) == 60, "leasing deletes nothing"


async def check_offline_claim(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for r in ("phone", "laptop"):
            await o.remember_resource(ALICE, r, seen=1.0, forget_before=0.0)
        assert await o.claim(ALICE, "phone", expire_before=0.0) == []
        await o.store(ALICE, "<old/>", stamp=5.0, limit=10)
        for i in range(3):
            await o.store(ALICE, f"<m{i}/>", stamp=100.0 + i, limit=10)
        await o.store(BOB, "<b/>", stamp=100.0, limit=10)
        old, *msgs = await o.fetch(ALICE)
        ids = [m.id for m in msgs]

        claimed = await o.claim(ALICE, "phone", expire_before=100.0)
        assert claimed == msgs, "oldest first, only those at or after expire_before"
        assert await o.claim(ALICE, "phone", expire_before=100.0) == [], "claimed once"
        assert await o.pending(ALICE, "phone") == [old], "claimed = delivered to phone"
        assert await o.pending(ALICE, "laptop") == [old, *msgs]
        assert await o.fetch(ALICE) == [old, *msgs], "claim deletes nothing"
        assert await o.pending(BOB, "phone") == await o.fetch(BOB)

        # release undoes it for the ids given (others' and unknown ids ignored)
        (bob_msg,) = await o.fetch(BOB)
        await o.release(ALICE, "phone", [ids[0], bob_msg.id, max(ids) + 1000])
        await o.release(ALICE, "phone", [])
        await o.release(ALICE, "tablet", ids)  # never had them: nothing to undo
        assert await o.pending(ALICE, "phone") == [old, msgs[0]]
        assert await o.claim(ALICE, "phone", expire_before=100.0) == [msgs[0]]

        # mark_delivered finishes what claims recorded: laptop's claim completes all three
        assert await o.claim(ALICE, "laptop", expire_before=100.0) == msgs
        gone = await o.mark_delivered(ALICE, "laptop", ids, known_since=0.0, expire_before=100.0)
        assert gone == [old.id, *ids], "expired and had-by-all, ascending"
        assert await o.count(ALICE) == 0
        assert await o.count(BOB) == 1


async def check_offline_claim_concurrent(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        await o.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
        await o.remember_resource(ALICE, "laptop", seen=1.0, forget_before=0.0)
        for i in range(60):
            await o.store(ALICE, f"<m{i}/>", stamp=10.0, limit=1000)
        ids = [m.id for m in await o.fetch(ALICE)]
        got: dict[str, list[int]] = {"phone": [], "laptop": []}

        async def claim(resource: str) -> None:
            got[resource].extend(m.id for m in await o.claim(ALICE, resource, expire_before=0.0))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(claim, "phone")
                nursery.start_soon(claim, "laptop")
        assert sorted(got["phone"]) == ids, "each message claimed once for phone"
        assert sorted(got["laptop"]) == ids, "and once for laptop"
        gone = await o.mark_delivered(ALICE, "phone", [], known_since=0.0, expire_before=0.0)
        assert gone == ids


# --- offline: all-resources delivery (docs/offline.md) -------------------------------------

DAY = 86_400.0


async def check_offline_known_resources(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        assert await o.known_resources(ALICE) == []
        await o.remember_resource(ALICE, "phone", seen=100.0, forget_before=0.0)
        await o.remember_resource(ALICE, "laptop", seen=50.25, forget_before=0.0)
        await o.remember_resource(ALICE, "Zed ✓", seen=60.0, forget_before=0.0)
        got = await o.known_resources(ALICE)
        assert all(type(k) is KnownResource for k in got)
        assert got == [
            KnownResource("Zed ✓", 60.0),
            KnownResource("laptop", 50.25),
            KnownResource("phone", 100.0),
        ], "sorted by resource, last_seen exact"

        await o.remember_resource(ALICE, "phone", seen=200.0, forget_before=0.0)
        await o.remember_resource(ALICE, "laptop", seen=10.0, forget_before=0.0)
        assert await o.known_resources(ALICE) == [
            KnownResource("Zed ✓", 60.0),
            KnownResource("laptop", 50.25),
            KnownResource("phone", 200.0),
        ], "last_seen moves forward only"

        # forgetting happens in the same call, for that user only
        await o.remember_resource(BOB, "desk", seen=1.0, forget_before=0.0)
        await o.remember_resource(ALICE, "tablet", seen=300.0, forget_before=60.0)
        assert [k.resource for k in await o.known_resources(ALICE)] == ["Zed ✓", "phone", "tablet"]
        assert await o.known_resources(BOB) == [KnownResource("desk", 1.0)]

        # a resource remembered as already too old is forgotten at once
        await o.remember_resource(CAROL, "old", seen=5.0, forget_before=6.0)
        assert await o.known_resources(CAROL) == []

        # known resources do not count as messages
        assert await o.count(ALICE) == 0
        assert await o.fetch(ALICE) == []


async def check_offline_pending_and_mark_delivered(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for r in ("phone", "laptop"):
            await o.remember_resource(ALICE, r, seen=1000.0, forget_before=0.0)
        for i in range(3):
            assert await o.store(ALICE, f"<m{i}/>", stamp=2000.0 + i, limit=10)
        await o.store(BOB, "<b/>", stamp=2000.0, limit=10)
        msgs = await o.fetch(ALICE)
        (bob_msg,) = await o.fetch(BOB)
        ids = [m.id for m in msgs]
        assert await o.pending(ALICE, "phone") == msgs, "pending is oldest first, nothing had yet"
        assert await o.pending(ALICE, "never-seen") == msgs

        # phone had the first two: nothing is deleted while laptop has not
        gone = await o.mark_delivered(ALICE, "phone", ids[:2], known_since=0.0, expire_before=0.0)
        assert gone == []
        assert await o.pending(ALICE, "phone") == msgs[2:]
        assert await o.pending(ALICE, "laptop") == msgs
        assert await o.fetch(ALICE) == msgs, "fetch still returns every stored message"
        assert await o.count(ALICE) == 3

        # marking again, and marking another user's or unknown ids, changes nothing
        gone = await o.mark_delivered(
            ALICE, "phone", [ids[0], bob_msg.id, max(ids) + 1000], known_since=0.0, expire_before=0.0
        )
        assert gone == []
        assert await o.pending(BOB, "phone") == [bob_msg], "bob's message was not marked"

        # laptop had all three: m0 and m1 have been everywhere, m2 waits for phone
        gone = await o.mark_delivered(ALICE, "laptop", ids, known_since=0.0, expire_before=0.0)
        assert gone == ids[:2], "returns the deleted ids, ascending"
        assert await o.fetch(ALICE) == msgs[2:]
        assert await o.pending(ALICE, "laptop") == []
        assert await o.pending(ALICE, "phone") == msgs[2:]

        # a resource that appears after the message was stored is waited for as well
        await o.remember_resource(ALICE, "tablet", seen=3000.0, forget_before=0.0)
        assert await o.mark_delivered(ALICE, "phone", [ids[2]], known_since=0.0, expire_before=0.0) == []
        assert await o.pending(ALICE, "tablet") == msgs[2:]
        assert await o.mark_delivered(ALICE, "tablet", [ids[2]], known_since=0.0, expire_before=0.0) == [
            ids[2]
        ]
        assert await o.count(ALICE) == 0
        assert await o.fetch(BOB) == [bob_msg]

        # ids of deleted messages stay ignored; nothing comes back
        assert await o.mark_delivered(ALICE, "phone", ids, known_since=0.0, expire_before=0.0) == []
        assert await o.pending(ALICE, "phone") == []


async def check_offline_mark_delivered_rules(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        await o.remember_resource(ALICE, "phone", seen=10 * DAY, forget_before=0.0)
        await o.remember_resource(ALICE, "laptop", seen=1 * DAY, forget_before=0.0)
        assert await o.store(ALICE, "<had-by-phone/>", stamp=20 * DAY, limit=10)
        assert await o.store(ALICE, "<had-by-nobody/>", stamp=20 * DAY, limit=10)
        first, second = await o.fetch(ALICE)

        # a message nobody had is never "had by every known resource", even with none known
        assert await o.mark_delivered(CAROL, "x", [], known_since=0.0, expire_before=0.0) == []
        gone = await o.mark_delivered(ALICE, "phone", [first.id], known_since=0.0, expire_before=0.0)
        assert gone == [] and await o.count(ALICE) == 2

        # laptop, last seen on day 1, no longer counts when known_since is day 5: with nothing
        # newly delivered the call still deletes what every remaining known resource had
        gone = await o.mark_delivered(ALICE, "phone", [], known_since=5 * DAY, expire_before=0.0)
        assert gone == [first.id], "only resources seen at or after known_since are waited for"
        assert await o.fetch(ALICE) == [second]

        # known_since is inclusive
        assert await o.store(ALICE, "<third/>", stamp=21 * DAY, limit=10)
        third = (await o.fetch(ALICE))[-1]
        assert await o.mark_delivered(ALICE, "phone", [third.id], known_since=1 * DAY, expire_before=0.0) == []
        assert await o.fetch(ALICE) == [second, third]

        # expiry: strictly before expire_before, delivered or not
        gone = await o.mark_delivered(ALICE, "phone", [], known_since=1 * DAY, expire_before=20 * DAY)
        assert gone == []
        gone = await o.mark_delivered(ALICE, "phone", [], known_since=1 * DAY, expire_before=21 * DAY)
        assert gone == [second.id]
        assert await o.fetch(ALICE) == [third]


async def check_offline_expire(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        for i in range(5):
            assert await o.store(ALICE, f"<a{i}/>", stamp=float(i), limit=10)
            assert await o.store(BOB, f"<b{i}/>", stamp=float(i), limit=10)
        assert await o.expire(ALICE, before=0.0) == 0
        assert await o.expire(ALICE, before=3.0) == 3, "strictly older than 'before'"
        assert [m.stanza for m in await o.fetch(ALICE)] == ["<a3/>", "<a4/>"]
        assert await o.count(BOB) == 5, "other users untouched"
        assert await o.expire(ALICE, before=3.0) == 0
        assert await o.expire(CAROL, before=100.0) == 0
        # expiry frees quota
        assert await o.store(ALICE, "<new/>", stamp=10.0, limit=3) is True
        assert await o.store(ALICE, "<over/>", stamp=10.0, limit=3) is False


async def check_offline_delivery_records_follow_messages(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        await s.accounts.create(ALICE, _creds(1))
        o = s.offline
        await o.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
        await o.remember_resource(ALICE, "laptop", seen=1.0, forget_before=0.0)
        for i in range(3):
            await o.store(ALICE, f"<m{i}/>", stamp=5.0, limit=10)
        ids = [m.id for m in await o.fetch(ALICE)]
        await o.mark_delivered(ALICE, "phone", ids, known_since=0.0, expire_before=0.0)
        assert await o.pending(ALICE, "phone") == []

        # Offline.delete takes the delivery records with it
        await o.delete(ALICE, ids[:1])
        assert [m.id for m in await o.pending(ALICE, "laptop")] == ids[1:]
        assert await o.mark_delivered(ALICE, "laptop", ids[:1], known_since=0.0, expire_before=0.0) == []
        assert [m.id for m in await o.fetch(ALICE)] == ids[1:], "a deleted id cannot be marked back"

        # deleting the account forgets its known resources and delivery records; a new account
        # of the same name starts with none
        await o.remember_resource(BOB, "desk", seen=1.0, forget_before=0.0)
        assert await s.accounts.delete(ALICE) is True
        assert await o.known_resources(ALICE) == []
        assert await o.pending(ALICE, "laptop") == []
        assert await o.known_resources(BOB) == [KnownResource("desk", 1.0)]
        await s.accounts.create(ALICE, _creds(2))
        await o.store(ALICE, "<fresh/>", stamp=6.0, limit=10)
        (fresh,) = await o.pending(ALICE, "phone")
        assert fresh.stanza == "<fresh/>"
        # no resource is known any more: the first one to have it completes it
        assert await o.mark_delivered(ALICE, "phone", [fresh.id], known_since=0.0, expire_before=0.0) == [
            fresh.id
        ]


async def check_offline_concurrent_delivery(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        o = s.offline
        resources = [f"r{i}" for i in range(6)]
        for r in resources:
            await o.remember_resource(ALICE, r, seen=1.0, forget_before=0.0)
        for i in range(20):
            await o.store(ALICE, f"<m{i}/>", stamp=2.0, limit=100)
        ids = [m.id for m in await o.fetch(ALICE)]
        deleted: list[int] = []

        async def deliver(resource: str) -> None:
            mine = [m.id for m in await o.pending(ALICE, resource)]
            deleted.extend(await o.mark_delivered(ALICE, resource, mine, known_since=0.0, expire_before=0.0))

        async with trio.open_nursery() as nursery:
            for r in resources:
                nursery.start_soon(deliver, r)
        assert sorted(deleted) == ids, "each message deleted exactly once, by the last resource to have it"
        assert await o.count(ALICE) == 0


# --- across parts -----------------------------------------------------------------------


async def check_account_delete_cascades(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        for user in (ALICE, BOB):
            await s.accounts.create(user, _creds(1))
            await s.rosters.put(user, RosterItem(CAROL, subscription="both"))
            await s.rosters.put(user, RosterItem("dave@example.org", hidden=True, approved=True))
            await s.offline.store(user, f"<for {user}/>", stamp=1.0, limit=10)
        bob_roster = await s.rosters.items(BOB)
        bob_offline = await s.offline.fetch(BOB)

        assert await s.accounts.delete(ALICE) is True
        assert await s.rosters.items(ALICE) == []
        assert await s.rosters.get(ALICE, CAROL) is None
        assert await s.offline.count(ALICE) == 0
        assert await s.offline.fetch(ALICE) == []
        assert await s.rosters.items(BOB) == bob_roster
        assert await s.offline.fetch(BOB) == bob_offline

        # a new account under the same name starts empty
        assert await s.accounts.create(ALICE, _creds(2)) is True
        assert await s.rosters.items(ALICE) == []
        assert await s.offline.count(ALICE) == 0

        # deleting a missing account touches nothing
        await s.rosters.put(CAROL, RosterItem(BOB))
        await s.offline.store(CAROL, "<x/>", stamp=1.0, limit=10)
        assert await s.accounts.delete(CAROL) is False
        assert len(await s.rosters.items(CAROL)) == 1
        assert await s.offline.count(CAROL) == 1


async def check_user_isolation(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        await s.accounts.create(ALICE, _creds(1))
        await s.accounts.create(BOB, _creds(2))
        # the same contact in two rosters is two independent items
        await s.rosters.put(ALICE, RosterItem(CAROL, name="from alice", groups=("A",)))
        await s.rosters.put(BOB, RosterItem(CAROL, name="from bob", subscription="to"))
        await s.offline.store(ALICE, "<a/>", stamp=1.0, limit=10)
        await s.offline.store(ALICE, "<a2/>", stamp=2.0, limit=10)
        await s.offline.store(BOB, "<b/>", stamp=1.0, limit=10)

        assert await s.rosters.get(ALICE, CAROL) == RosterItem(CAROL, name="from alice", groups=("A",))
        assert await s.rosters.get(BOB, CAROL) == RosterItem(CAROL, name="from bob", subscription="to")
        assert await s.rosters.remove(ALICE, CAROL) is True
        assert await s.rosters.get(BOB, CAROL) is not None
        assert [m.stanza for m in await s.offline.fetch(ALICE)] == ["<a/>", "<a2/>"]
        assert [m.stanza for m in await s.offline.fetch(BOB)] == ["<b/>"]
        assert await s.accounts.get_credentials(ALICE) == _creds(1)
        assert await s.accounts.get_credentials(BOB) == _creds(2)

        # users are exact strings: no case folding or bare/full guessing happens here
        assert await s.accounts.exists("ALICE@example.org") is False
        assert await s.rosters.items("alice@example.org/laptop") == []


async def check_concurrent_writes(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        tasks, per_task = 10, 15

        async def store_many(n: int) -> None:
            for i in range(per_task):
                assert await s.offline.store(ALICE, f"<m t='{n}' i='{i}'/>", stamp=float(i), limit=10_000)

        async def put_many(n: int) -> None:
            for i in range(per_task):
                await s.rosters.put(ALICE, RosterItem(f"c{n}-{i}@example.org", groups=(str(n),)))

        async with trio.open_nursery() as nursery:
            for n in range(tasks):
                nursery.start_soon(store_many, n)
                nursery.start_soon(put_many, n)
        got = await s.offline.fetch(ALICE)
        assert len(got) == tasks * per_task, "no offline message lost"
        assert len({m.id for m in got}) == len(got)
        assert {m.stanza for m in got} == {
            f"<m t='{n}' i='{i}'/>" for n in range(tasks) for i in range(per_task)
        }
        for n in range(tasks):  # each task's own messages stay in its order
            mine = [m.stanza for m in got if f"t='{n}'" in m.stanza]
            assert mine == [f"<m t='{n}' i='{i}'/>" for i in range(per_task)]
        assert len(await s.rosters.items(ALICE)) == tasks * per_task, "no roster item lost"

        # the quota holds under concurrency
        results: list[bool] = []

        async def store_one(i: int) -> None:
            results.append(await s.offline.store(BOB, f"<q{i}/>", stamp=0.0, limit=7))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(store_one, i)
        assert results.count(True) == 7 and results.count(False) == 23
        assert await s.offline.count(BOB) == 7

        # exactly one concurrent create of the same account wins
        created: list[bool] = []

        async def create(i: int) -> None:
            created.append(await s.accounts.create(CAROL, _creds(i)))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(create, i)
        assert created.count(True) == 1
        assert await s.accounts.list() == [CAROL]


# --- rooms -------------------------------------------------------------------------------

ROOM = "lounge@conference.example.org"
ROOM2 = "attic@conference.example.org"


def _room(jid: str = ROOM, **kw: object) -> RoomRecord:
    record = RoomRecord(
        jid=jid,
        config={"name": "The Lounge", "description": "", "persistent": True, "public": True,
                "members_only": False, "password": None, "anonymity": "semi", "history_size": 20,
                "max_users": 0},
        affiliations={ALICE: "owner", BOB: "member", CAROL: "outcast"},
        subject="Welcome",
        subject_by="alice",
        persistent=True,
        occupants=[
            {"nick": "alice", "role": "moderator", "jids": [f"{ALICE}/laptop", f"{ALICE}/phone"],
             "presence": {"show": "away", "status": "busy"}},
            {"nick": "bob", "role": "participant", "jids": [f"{BOB}/desk"], "presence": None},
        ],
        node="node1",
    )
    for key, value in kw.items():
        setattr(record, key, value)
    return record


async def check_rooms_crud(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        rooms = s.rooms
        assert await rooms.list() == []
        assert await rooms.get(ROOM) is None
        assert await rooms.delete(ROOM) is False

        await rooms.put(_room())
        assert await rooms.get(ROOM) == _room()
        await rooms.put(_room(ROOM2, persistent=False, subject=None, subject_by=None, node=None))
        assert await rooms.list() == [ROOM2, ROOM], "sorted"

        # put replaces every field
        replaced = _room(config={"name": "Renamed"}, affiliations={BOB: "owner"}, subject=None,
                         subject_by=None, persistent=False, occupants=[], node=None)
        await rooms.put(replaced)
        assert await rooms.get(ROOM) == replaced

        assert await rooms.delete(ROOM) is True
        assert await rooms.get(ROOM) is None
        assert await rooms.delete(ROOM) is False
        assert await rooms.list() == [ROOM2]


async def check_rooms_round_trip(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        odd = _room(
            config={"name": "Ünïcödé 🙂 <&'\">", "nested": {"a": [1, 2.5, None, True, "x"]}, "empty": {}},
            affiliations={"δ@example.org": "admin"},
            subject="line one\nline two\x00?",
            subject_by="nick with spaces",
            occupants=[{"nick": "ø", "jids": ["ø@example.org/ü"], "n": 3, "f": 0.5, "none": None}],
        )
        await s.rooms.put(odd)
        got = await s.rooms.get(ROOM)
        assert got == odd
        assert got is not None and isinstance(got.persistent, bool)

        # results are copies: mutating one changes nothing stored
        got.config["name"] = "changed"
        got.affiliations.clear()
        got.occupants[0]["nick"] = "changed"
        got.occupants.append({"nick": "ghost"})
        got.subject = "changed"
        assert await s.rooms.get(ROOM) == odd
        # and what was put is not aliased either
        odd.occupants.clear()
        assert (await s.rooms.get(ROOM)) == _room(
            config={"name": "Ünïcödé 🙂 <&'\">", "nested": {"a": [1, 2.5, None, True, "x"]}, "empty": {}},
            affiliations={"δ@example.org": "admin"},
            subject="line one\nline two\x00?",
            subject_by="nick with spaces",
            occupants=[{"nick": "ø", "jids": ["ø@example.org/ü"], "n": 3, "f": 0.5, "none": None}],
        )


async def check_rooms_occupant_mirror(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        rooms = s.rooms
        # a room that is not stored: nothing happens
        assert await rooms.set_occupants(ROOM, [{"nick": "x"}], "node2") is False
        assert await rooms.get(ROOM) is None and await rooms.list() == []

        await rooms.put(_room())
        mirror = [{"nick": "carol", "role": "visitor", "jids": [f"{CAROL}/a"], "presence": None}]
        assert await rooms.set_occupants(ROOM, mirror, "node2") is True
        got = await rooms.get(ROOM)
        assert got == _room(occupants=mirror, node="node2"), "only the mirror and holder change"
        mirror.append({"nick": "late"})
        assert (await rooms.get(ROOM)) == _room(occupants=mirror[:1], node="node2"), "not aliased"

        assert await rooms.set_occupants(ROOM, [], None) is True
        assert await rooms.get(ROOM) == _room(occupants=[], node=None)

        # rooms are not tied to accounts: deleting the owner's account keeps them
        await s.accounts.create(ALICE, _creds(1))
        assert await s.accounts.delete(ALICE) is True
        assert await rooms.list() == [ROOM]


async def check_rooms_concurrent(make_storage: MakeStorage) -> None:
    async with _opened(make_storage) as s:
        rooms = [f"room{i:02}@conference.example.org" for i in range(20)]

        async def one(jid: str, i: int) -> None:
            await s.rooms.put(_room(jid, subject=f"s{i}"))
            for k in range(3):
                assert await s.rooms.set_occupants(jid, [{"nick": f"n{k}"}], f"node{k}")

        async with trio.open_nursery() as nursery:
            for i, jid in enumerate(rooms):
                nursery.start_soon(one, jid, i)
        assert await s.rooms.list() == rooms
        for i, jid in enumerate(rooms):
            assert await s.rooms.get(jid) == _room(jid, subject=f"s{i}", occupants=[{"nick": "n2"}], node="node2")


STORAGE_CHECKS: tuple[Callable[[MakeStorage], Awaitable[None]], ...] = (
    check_accounts_crud,
    check_credentials_round_trip,
    check_roster_upsert,
    check_roster_hidden,
    check_roster_groups,
    check_roster_items,
    check_offline_order,
    check_offline_quota,
    check_offline_delete_by_ids,
    check_offline_take,
    check_offline_take_concurrent,
    check_offline_lease,
    check_offline_lease_expiry,
    check_offline_lease_concurrent,
    check_offline_known_resources,
    check_offline_pending_and_mark_delivered,
    check_offline_mark_delivered_rules,
    check_offline_expire,
    check_offline_delivery_records_follow_messages,
    check_offline_concurrent_delivery,
    check_offline_claim,
    check_offline_claim_concurrent,
    check_account_delete_cascades,
    check_user_isolation,
    check_concurrent_writes,
    check_rooms_crud,
    check_rooms_round_trip,
    check_rooms_occupant_mirror,
    check_rooms_concurrent,
)


async def check_storage(make_storage: MakeStorage) -> None:
    """Run every storage check against ``make_storage``; raises AssertionError on the first failure."""
    for check in STORAGE_CHECKS:
        await check(make_storage)
