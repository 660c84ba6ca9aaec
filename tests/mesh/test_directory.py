"""Unit tests of the replicated directory (meshxmpp.mesh.directory): one behaviour each."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.jid import JID
from meshxmpp.mesh import directory as directory_module
from meshxmpp.mesh.directory import (
    Added,
    Conflict,
    Delta,
    Digest,
    Directory,
    Manifest,
    Removed,
    SessionRecord,
    Update,
    Updated,
    Version,
)
from meshxmpp.routing.facts import message_facts
from meshxmpp.routing.policy import Deliver, PolicyConfig, SessionLike, decide

ALICE = JID("alice", "example.org")
LAPTOP = ALICE.with_resource("laptop")
PHONE = ALICE.with_resource("phone")


def rec(node: str, jid: JID = LAPTOP, **kw: object) -> SessionRecord:
    return SessionRecord(jid, node, **kw)  # type: ignore[arg-type]


def sync(dst: Directory, src: Directory) -> list[Update]:
    """One direction of a repair: ``dst`` applies what ``src`` says it lacks."""
    updates = src.missing_for(dst.digest())
    for u in updates:
        dst.apply(u)
    return updates


# -- records ---------------------------------------------------------------------------------------

def test_record_is_a_session_like_for_the_policy_engine() -> None:
    sessions: list[SessionLike] = [rec("n1", priority=5), rec("n2", PHONE, priority=1)]
    decision = decide(message_facts(type="chat", to=ALICE, has_body=True), sessions, PolicyConfig(),
                      account_exists=True)
    assert decision.actions == (Deliver(LAPTOP),)


@pytest.mark.parametrize("kw", [
    {"priority": 128}, {"priority": -129}, {"show": "busy"}, {"bound_at": math.nan},
    {"last_activity": math.inf},
])
def test_record_rejects_bad_fields(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rec("n1", **kw)


def test_record_needs_a_full_jid() -> None:
    with pytest.raises(ValueError):
        SessionRecord(ALICE, "n1")


def test_delta_record_must_match_its_jid_and_node() -> None:
    with pytest.raises(ValueError):
        Delta("n2", Version(1, 1), LAPTOP, rec("n1"))
    with pytest.raises(ValueError):
        Delta("n1", Version(1, 1), PHONE, rec("n1"))


@pytest.mark.parametrize("args", [(3, 2, ()), (0, 3, (2, 2)), (0, 3, (4,)), (1, 3, (1,))])
def test_manifest_validates_its_range(args: tuple[int, int, tuple[int, ...]]) -> None:
    with pytest.raises(ValueError):
        Manifest("n1", 1, *args)


@pytest.mark.parametrize("name", ["", "x" * 65, "a\nb", 7])
def test_node_name_is_checked(name: object) -> None:
    with pytest.raises(ValueError):
        Directory(name, epoch=1)  # type: ignore[arg-type]


def test_versions_order_by_epoch_first() -> None:
    assert Version(1, 99) < Version(2, 1) < Version(2, 2)


# -- the owner's writes ----------------------------------------------------------------------------

def test_put_get_of_remove_locally() -> None:
    d = Directory("n1", epoch=7)
    d1 = d.put_local(rec("n1", priority=1))
    d2 = d.put_local(rec("n1", PHONE))
    assert (d1.node, d1.version, d1.jid, d1.record) == ("n1", Version(7, 1), LAPTOP, rec("n1", priority=1))
    assert d2.version == Version(7, 2) and not d2.relayed
    assert d.get(LAPTOP) == rec("n1", priority=1)
    assert [r.jid for r in d.of(ALICE)] == [LAPTOP, PHONE]
    assert d.of(JID("bob", "example.org")) == [] and d.get(ALICE) is None
    removal = d.remove_local(LAPTOP)
    assert removal == Delta("n1", Version(7, 3), LAPTOP, None)
    assert d.remove_local(LAPTOP) is None and d.remove_local(ALICE) is None
    assert [r.jid for r in d.of(ALICE)] == [PHONE] and len(d) == 1
    assert d.records_of("n1") == [rec("n1", PHONE)] and d.nodes() == {"n1"}
    assert d.node == "n1" and d.epoch == 7


def test_put_local_only_for_own_records() -> None:
    with pytest.raises(ValueError):
        Directory("n1", epoch=1).put_local(rec("n2"))


def test_put_local_refuses_an_oversized_presence() -> None:
    d = Directory("n1", epoch=1)
    with pytest.raises(ValueError):
        d.put_local(rec("n1", presence="é" * (directory_module.MAX_PRESENCE // 2 + 1)))
    d.put_local(rec("n1", presence="x" * directory_module.MAX_PRESENCE))


# -- apply: idempotent, order-insensitive ----------------------------------------------------------

def test_apply_returns_changes_and_ignores_duplicates() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    put1 = a.put_local(rec("a", priority=1))
    put2 = a.put_local(rec("a", priority=2))
    gone = a.remove_local(LAPTOP)
    assert gone is not None
    assert b.apply(put1) == [Added(rec("a", priority=1))]
    assert b.apply(put1) == []
    assert b.apply(put2) == [Updated(rec("a", priority=2), rec("a", priority=1))]
    assert b.apply(gone) == [Removed(rec("a", priority=2))]
    assert b.get(LAPTOP) is None
    stats = b.statistics()
    assert (stats.applied, stats.duplicates, stats.tombstones) == (3, 1, 1)


def test_a_late_put_does_not_resurrect_a_removed_session() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    put = a.put_local(rec("a"))
    gone = a.remove_local(LAPTOP)
    assert gone is not None
    assert b.apply(gone) == []
    assert b.apply(put) == []
    assert b.get(LAPTOP) is None and b.digest().versions["a"] == Version(1, 2)


def test_an_older_write_does_not_overwrite_a_newer_one() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    old = a.put_local(rec("a", priority=1))
    new = a.put_local(rec("a", priority=2))
    b.apply(new)
    assert b.apply(old) == []
    assert b.get(LAPTOP) == rec("a", priority=2)


def test_every_order_and_duplication_of_one_history_gives_the_owners_view() -> None:
    rng = random.Random(5)
    a = Directory("a", epoch=1)
    jids = [ALICE.with_resource(str(i)) for i in range(4)]
    history: list[Update] = []
    for step in range(60):
        jid = rng.choice(jids)
        if rng.random() < 0.3:
            gone = a.remove_local(jid)
            if gone is not None:
                history.append(gone)
        else:
            history.append(a.put_local(rec("a", jid, priority=step % 5)))
    for _ in range(50):
        b = Directory("b", epoch=1)
        msgs = history + rng.sample(history, 20)
        rng.shuffle(msgs)
        for m in msgs:
            b.apply(m)
        assert b.records_of("a") == a.records_of("a")
        assert b.digest().versions["a"] == a.digest().versions["a"]


def test_updates_about_this_node_are_refused() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    a.apply(b.put_local(rec("b")))
    echo = [u for u in a.missing_for(Digest({})) if u.node == "b"]
    assert echo
    for u in echo:
        assert b.apply(u) == []
    assert b.statistics().refused == len(echo)


def test_a_newer_epoch_replaces_the_owners_records_and_an_older_one_is_refused() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    b.apply(a.put_local(rec("a")))
    b.apply(a.put_local(rec("a", PHONE)))
    a2 = Directory("a", epoch=2)  # restarted
    first = a2.put_local(rec("a", PHONE, priority=9))
    changes = b.apply(first)
    assert Removed(rec("a")) in changes and Added(rec("a", PHONE, priority=9)) in changes
    assert b.records_of("a") == [rec("a", PHONE, priority=9)]
    assert b.apply(a.put_local(rec("a", JID("x", "example.org", "y")))) == []
    assert b.statistics().epoch_changes == 1 and b.statistics().refused == 1


def test_announce_wipes_what_a_previous_life_left_on_peers() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    b.apply(a.put_local(rec("a")))
    restarted = Directory("a", epoch=2)
    (announcement,) = restarted.announce()
    assert announcement == Manifest("a", 2, 0, 0, ())
    assert b.apply(announcement) == [Removed(rec("a"))]
    assert b.records_of("a") == [] and b.nodes() == {"a", "b"}


# -- repair ----------------------------------------------------------------------------------------

def test_repair_sends_nothing_when_in_sync_and_only_the_gap_otherwise() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    sync(b, a)
    sync(a, b)
    assert a.missing_for(b.digest()) == [] and b.missing_for(a.digest()) == []
    b.apply(a.put_local(rec("a")))
    a.put_local(rec("a", PHONE))  # lost
    missing = a.missing_for(b.digest())
    assert missing == [Delta("a", Version(1, 2), PHONE, rec("a", PHONE))]
    sync(b, a)
    assert b.of(ALICE) == a.of(ALICE) and a.missing_for(b.digest()) == []


def test_repair_accounts_for_overwritten_writes_with_a_manifest() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    for p in range(5):  # all lost; only the last one is still in effect
        a.put_local(rec("a", priority=p))
    missing = a.missing_for(b.digest())
    assert missing == [Manifest("a", 1, 0, 5, (5,)), Delta("a", Version(1, 5), LAPTOP, rec("a", priority=4))]
    for u in missing:
        b.apply(u)
    assert b.digest().versions["a"] == Version(1, 5)
    assert a.missing_for(b.digest()) == []


def test_repair_tells_a_lagging_peer_about_removals() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    b.apply(a.put_local(rec("a")))
    a.remove_local(LAPTOP)  # lost
    a.put_local(rec("a", PHONE))  # lost
    sync(b, a)
    assert b.records_of("a") == [rec("a", PHONE)]
    assert b.digest().versions["a"] == Version(1, 3)


def test_compacted_tombstones_make_the_repair_list_everything() -> None:
    a, b = Directory("a", epoch=1, tombstone_limit=2), Directory("b", epoch=1)
    for i in range(6):
        b.apply(a.put_local(rec("a", ALICE.with_resource(str(i)))))
    for i in range(6):
        a.remove_local(ALICE.with_resource(str(i)))  # all lost
    a.put_local(rec("a", PHONE))
    assert a.statistics().tombstones <= 2
    updates = sync(b, a)
    assert isinstance(updates[0], Manifest) and updates[0].low == 0
    assert a.statistics().full_repairs == 1
    assert b.records_of("a") == [rec("a", PHONE)]
    assert a.missing_for(b.digest()) == []


def test_a_manifest_turns_a_stale_record_into_a_removal() -> None:
    b = Directory("b", epoch=1)
    b.apply(Delta("a", Version(1, 1), LAPTOP, rec("a")))
    assert b.apply(Manifest("a", 1, 0, 3, (2,))) == [Removed(rec("a"))]
    assert b.apply(Delta("a", Version(1, 1), LAPTOP, rec("a"))) == []  # seen: stays removed
    assert b.digest().versions["a"] == Version(1, 1)  # 2 is listed and not yet here
    b.apply(Delta("a", Version(1, 2), PHONE, rec("a", PHONE)))
    assert b.digest().versions["a"] == Version(1, 3) and b.records_of("a") == [rec("a", PHONE)]


def test_snapshot_brings_a_joining_node_up_to_date() -> None:
    a, b, c = Directory("a", epoch=1), Directory("b", epoch=1), Directory("c", epoch=1)
    b.apply(a.put_local(rec("a")))
    a.put_local(rec("a", PHONE))
    for i in range(3):
        a.apply(b.put_local(rec("b", JID("bob", "example.org", str(i)))))
    b.remove_local(JID("bob", "example.org", "1"))
    for u in b.snapshot():
        c.apply(u)
    assert c.records_of("b") == b.records_of("b") and c.records_of("a") == [rec("a")]
    assert all(u.relayed == (u.node != "b") for u in b.snapshot())
    sync(c, a)
    assert c.records_of("a") == a.records_of("a")


# -- purge, false death, epoch bump ----------------------------------------------------------------

def test_purge_drops_the_owners_records_and_refuses_relays() -> None:
    a, b, c = Directory("a", epoch=1), Directory("b", epoch=1), Directory("c", epoch=1)
    for d in (a.put_local(rec("a")), a.put_local(rec("a", PHONE))):
        b.apply(d)
        c.apply(d)
    assert b.purge("a") == [rec("a"), rec("a", PHONE)]
    assert b.of(ALICE) == [] and b.nodes() == {"b"} and b.digest().dead == {"a": 1}
    assert b.purge("a") == []
    for u in c.missing_for(b.digest()):  # c has not purged yet, but skips what b refuses
        assert u.node != "a"
    for u in c.snapshot():
        b.apply(u)
    assert b.of(ALICE) == [] and b.statistics().refused > 0
    late = a.put_local(rec("a", JID("x", "example.org", "y")))
    assert b.apply(late) == []  # the dead epoch, even from the owner itself


def test_a_falsely_dead_node_comes_back_by_bumping_its_epoch() -> None:
    a, b = Directory("a", epoch=4), Directory("b", epoch=1)
    for d in (a.put_local(rec("a")), a.put_local(rec("a", PHONE))):
        b.apply(d)
    b.purge("a")
    deltas = a.bump_epoch()
    assert a.epoch == 5 and [d.version for d in deltas] == [Version(5, 1), Version(5, 2)]
    assert a.records_of("a") == [rec("a"), rec("a", PHONE)] and len(a) == 2
    b.apply(deltas[1])  # from the owner itself: taken back
    assert b.digest().dead == {} and b.records_of("a") == [rec("a", PHONE)]
    sync(b, a)
    assert b.records_of("a") == a.records_of("a")


def test_purge_of_an_unknown_node_still_refuses_relays_of_it() -> None:
    a, b, c = Directory("a", epoch=1), Directory("b", epoch=1), Directory("c", epoch=1)
    c.apply(a.put_local(rec("a")))
    assert b.purge("a") == [] and b.digest().dead == {"a": None}
    for u in c.missing_for(Digest({})):
        b.apply(u)
    assert b.of(ALICE) == []
    for u in a.missing_for(b.digest()):  # the owner itself is believed
        b.apply(u)
    assert b.of(ALICE) == [rec("a")]


def test_a_node_does_not_purge_itself() -> None:
    with pytest.raises(ValueError):
        Directory("a", epoch=1).purge("a")


def test_bump_epoch_with_no_records_is_announced_by_the_repair() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    b.apply(a.put_local(rec("a")))
    a.remove_local(LAPTOP)
    b.purge("a")
    assert a.bump_epoch() == []
    sync(b, a)
    assert b.digest().versions["a"] == Version(2, 0) and b.digest().dead == {}


# -- conflicts -------------------------------------------------------------------------------------

def test_newest_bind_wins_on_every_replica() -> None:
    a, b, c = Directory("a", epoch=1), Directory("b", epoch=1), Directory("c", epoch=1)
    old = a.put_local(rec("a", bound_at=100.0))
    new = b.put_local(rec("b", bound_at=200.0, priority=3))
    c.apply(new)
    assert c.apply(old) == [Added(rec("a", bound_at=100.0)),
                            Conflict(rec("b", bound_at=200.0, priority=3), rec("a", bound_at=100.0))]
    changes = a.apply(new)
    assert Conflict(rec("b", bound_at=200.0, priority=3), rec("a", bound_at=100.0)) in changes
    b.apply(old)
    for d in (a, b, c):
        assert d.get(LAPTOP) == rec("b", bound_at=200.0, priority=3)
        assert d.of(ALICE) == [rec("b", bound_at=200.0, priority=3)]
        assert d.conflicts() == [(rec("b", bound_at=200.0, priority=3), rec("a", bound_at=100.0))]
        assert d.statistics().conflicts == 1 and len(d) == 2
    # the loser's owner sends <conflict/> and removes its session
    gone = a.remove_local(LAPTOP)
    assert gone is not None
    for d in (b, c):
        d.apply(gone)
    for d in (a, b, c):
        assert d.conflicts() == [] and d.get(LAPTOP) == rec("b", bound_at=200.0, priority=3)


def test_equal_bind_times_are_broken_by_node_name() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    da, db = a.put_local(rec("a", bound_at=5.0)), b.put_local(rec("b", bound_at=5.0))
    a.apply(db)
    b.apply(da)
    assert a.get(LAPTOP) == b.get(LAPTOP) == rec("b", bound_at=5.0)


def test_updates_of_a_conflicted_session_do_not_repeat_the_conflict() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    a.put_local(rec("a", bound_at=1.0))
    assert any(isinstance(ch, Conflict) for ch in a.apply(b.put_local(rec("b", bound_at=2.0))))
    assert a.apply(b.put_local(rec("b", bound_at=2.0, priority=4))) == [
        Updated(rec("b", bound_at=2.0, priority=4), rec("b", bound_at=2.0))]


def test_bind_time_makes_a_new_login_win_despite_a_slow_clock() -> None:
    a, b = Directory("a", epoch=1), Directory("b", epoch=1)
    a.apply(b.put_local(rec("b", bound_at=1000.0)))
    assert a.bind_time(PHONE, 10.0) == 10.0
    t = a.bind_time(LAPTOP, 990.0)  # a's clock is behind b's
    assert t > 1000.0
    a.put_local(rec("a", bound_at=t))
    assert a.get(LAPTOP) == rec("a", bound_at=t)


def test_purge_resolves_a_conflict_for_the_survivor() -> None:
    a, b, c = Directory("a", epoch=1), Directory("b", epoch=1), Directory("c", epoch=1)
    c.apply(a.put_local(rec("a", bound_at=1.0)))
    c.apply(b.put_local(rec("b", bound_at=2.0)))
    c.purge("b")
    assert c.get(LAPTOP) == rec("a", bound_at=1.0) and c.conflicts() == []


# -- statistics ------------------------------------------------------------------------------------

def test_statistics_is_a_frozen_snapshot() -> None:
    d = Directory("a", epoch=1)
    s = d.statistics()
    d.put_local(rec("a"))
    assert s.records == 0 and d.statistics().records == 1 and d.statistics().local == 1
    with pytest.raises(AttributeError):
        s.records = 5  # type: ignore[misc]


# -- the seen-numbers set --------------------------------------------------------------------------

@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(0, 6)), max_size=30))
def test_seen_ranges_match_a_plain_set(adds: list[tuple[int, int]]) -> None:
    seen = directory_module._Seen()
    model: set[int] = set()
    for a, length in adds:
        seen.add(a, a + length)
        model.update(range(a, a + length + 1))
        low = 0
        while low + 1 in model:
            low += 1
        assert seen.low == low
        assert all((n in seen) == (n in model) for n in range(1, 50))
        assert seen.ahead == any(n > low for n in model)
