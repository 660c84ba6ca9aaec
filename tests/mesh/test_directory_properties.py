"""Hypothesis: directory replicas converge after any interleaving, duplication and loss of updates,
false and real deaths, plus one repair round (issue 5, acceptance).

A tiny simulated network lives here: a list of messages in flight (src, dst, bytes). Rules write,
deliver (once or keeping a duplicate, in any order), drop, run a lossy partial repair, declare a
node dead on one observer (which closes that link: what it had in flight to the observer is lost,
as the transport does), crash a node, and let a wrongly purged node bump its epoch. `converge`
then does what membership guarantees eventually (wrongly purged nodes bump, crashed nodes are
purged everywhere), runs ONE repair round between every pair of live nodes, checks that all
replicas equal the owners' own views, then delivers every stale message still in flight and
checks again. Last, the owner of every session that lost the conflict rule (it was told so by a
`Conflict` change, or saw it right after its own put) removes it; after one more round every full
JID is bound exactly once, to the winner every node had picked. Every run ends with this
`converge` (teardown). Every message goes through the codec.
"""

from __future__ import annotations

import random
from itertools import permutations

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshxmpp.jid import JID
from meshxmpp.mesh.directory import (
    Conflict,
    Delta,
    Directory,
    SessionRecord,
    Update,
    decode_delta,
    decode_digest,
    encode_delta,
    encode_digest,
)

NAMES = ["n1", "n2", "n3", "n4", "n5"]
USERS = [JID("alice", "example.org"), JID("bob", "example.org")]
FULL = [u.with_resource(r) for u in USERS for r in ("a", "b", "c")]
SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None, print_blob=True)


def check_consistent(d: Directory) -> None:
    """The query indexes agree with the per-owner records (one replica on its own)."""
    holders: dict[JID, list[SessionRecord]] = {}
    for owner in d.nodes():
        for r in d.records_of(owner):
            assert r.node == owner
            holders.setdefault(r.jid, []).append(r)
    assert len(d) == sum(map(len, holders.values()))
    conflicted = {w.jid for w, _ in d.conflicts()}
    for jid in FULL:
        copies = holders.get(jid, [])
        winner = d.get(jid)
        assert winner is (max(copies, key=lambda r: (r.bound_at, r.node)) if copies else None)
        assert (jid in conflicted) == (len(copies) > 1)
    for user in USERS:
        sessions = d.of(user)
        assert sorted(str(s.jid) for s in sessions) == sorted(str(j) for j in holders if j.bare == user)
        for s in sessions:
            assert d.get(s.jid) is s


def view(d: Directory) -> tuple[object, ...]:
    return (
        {jid: d.get(jid) for jid in FULL},
        {u: sorted(d.of(u), key=lambda r: str(r.jid)) for u in USERS},
        d.conflicts(),
        len(d),
    )


class DirectoryMachine(RuleBasedStateMachine):
    @initialize(n=st.integers(2, 5), limit=st.sampled_from([0, 1, 3, 1024]))
    def setup(self, n: int, limit: int) -> None:
        self.names = NAMES[:n]
        self.limit = limit
        self.dirs = {name: Directory(name, epoch=1, tombstone_limit=limit) for name in self.names}
        self.flight: list[tuple[str, str, bytes]] = []
        self.crashed: set[str] = set()
        self.needs_bump: set[str] = set()  # purged by someone while alive: membership tells it
        self.told: dict[str, set[JID]] = {name: set() for name in self.names}  # own sessions that lost

    # -- helpers -----------------------------------------------------------------------------------

    def alive(self) -> list[str]:
        return [n for n in self.names if n not in self.crashed]

    def pick(self, i: int) -> str:
        alive = self.alive()
        return alive[i % len(alive)]

    def push(self, src: str, deltas: list[Delta]) -> None:
        for d in deltas:
            for dst in self.names:
                if dst != src:
                    self.flight.append((src, dst, encode_delta(d)))

    def close_link(self, src: str, dst: str) -> None:
        self.flight = [m for m in self.flight if not (m[0] == src and m[1] == dst)]

    def deliver(self, msg: tuple[str, str, bytes]) -> None:
        _, dst, data = msg
        if dst not in self.crashed:
            self.apply(dst, decode_delta(data))

    def apply(self, dst: str, update: Update) -> None:
        for change in self.dirs[dst].apply(update):
            if isinstance(change, Conflict) and change.loser.node == dst:
                self.told[dst].add(change.loser.jid)

    # -- rules -------------------------------------------------------------------------------------

    @rule(
        i=st.integers(0, 4),
        j=st.integers(0, len(FULL) - 1),
        priority=st.integers(-1, 2),
        available=st.booleans(),
        bound_at=st.sampled_from([0.0, 1.0, 2.0]),
        presence=st.sampled_from([None, "<presence/>", "<presence><show>away</show></presence>"]),
    )
    def put(
        self, i: int, j: int, priority: int, available: bool, bound_at: float, presence: str | None
    ) -> None:
        node = self.pick(i)
        record = SessionRecord(
            FULL[j], node, available=available, priority=priority, bound_at=bound_at, presence=presence
        )
        self.push(node, [self.dirs[node].put_local(record)])
        if self.dirs[node].get(FULL[j]).node != node:  # type: ignore[union-attr]
            self.told[node].add(FULL[j])  # our own new bind lost (only with a skewed bound_at)

    @rule(i=st.integers(0, 4), j=st.integers(0, len(FULL) - 1))
    def remove(self, i: int, j: int) -> None:
        node = self.pick(i)
        own = self.dirs[node].records_of(node)
        delta = self.dirs[node].remove_local(own[j % len(own)].jid if own else FULL[j])
        if delta is not None:
            self.push(node, [delta])

    @precondition(lambda self: self.flight)
    @rule(k=st.integers(0, 10_000), keep=st.booleans())
    def deliver_one(self, k: int, keep: bool) -> None:
        i = k % len(self.flight)
        msg = self.flight[i] if keep else self.flight.pop(i)
        self.deliver(msg)

    @precondition(lambda self: self.flight)
    @rule(k=st.integers(0, 10_000))
    def drop_one(self, k: int) -> None:
        self.flight.pop(k % len(self.flight))

    @rule(i=st.integers(0, 4), j=st.integers(0, 4))
    def partial_repair(self, i: int, j: int) -> None:
        """One direction of a repair whose answer is then at the mercy of the network."""
        src, dst = self.pick(i), self.pick(j)
        if src != dst:
            digest = decode_digest(encode_digest(self.dirs[dst].digest()))
            for update in self.dirs[src].missing_for(digest):
                self.flight.append((src, dst, encode_delta(update)))

    @rule(victim=st.integers(0, 4), observer=st.integers(0, 4))
    def declare_dead(self, victim: int, observer: int) -> None:
        v, o = self.names[victim % len(self.names)], self.pick(observer)
        if v == o:
            return
        self.dirs[o].purge(v)
        self.close_link(v, o)
        if v not in self.crashed:
            self.needs_bump.add(v)

    @precondition(lambda self: len(self.names) - len(self.crashed) > 2)
    @rule(i=st.integers(0, 4))
    def crash(self, i: int) -> None:
        node = self.pick(i)
        self.crashed.add(node)
        self.needs_bump.discard(node)

    @rule(i=st.integers(0, 4))
    def restart(self, i: int) -> None:
        """A process restart (or a crashed node coming back): a new epoch and an empty table. Its
        old links die with it; what the old process sent may still arrive (and is replaced by the new
        epoch at the latest in the repair round)."""
        node = self.names[i % len(self.names)]
        self.dirs[node] = Directory(node, epoch=self.dirs[node].epoch + 1,
                                    tombstone_limit=self.limit)
        self.flight = [m for m in self.flight if m[1] != node]
        self.told[node] = set()
        self.crashed.discard(node)
        self.needs_bump.discard(node)

    @precondition(lambda self: self.needs_bump)
    @rule(i=st.integers(0, 4))
    def refute(self, i: int) -> None:
        node = sorted(self.needs_bump)[i % len(self.needs_bump)]
        self.needs_bump.discard(node)
        self.push(node, self.dirs[node].bump_epoch())

    @rule(seed=st.integers(0, 2**32))
    def converge(self, seed: int) -> None:
        self._converge(random.Random(seed))

    def teardown(self) -> None:
        if hasattr(self, "dirs"):  # every run ends converged, whatever it did before
            self._converge(random.Random(len(self.flight)))

    def _converge(self, rng: random.Random) -> None:
        for node in sorted(self.needs_bump):
            self.push(node, self.dirs[node].bump_epoch())
        self.needs_bump.clear()
        alive = self.alive()
        for dead in self.crashed:
            for o in alive:
                self.dirs[o].purge(dead)
                self.close_link(dead, o)
        self.repair_round(rng)
        self.check_converged()
        stats = [self.dirs[n].statistics() for n in alive]
        event(f"converged with {len(self.crashed)} crashed")
        for what in ("full_repairs", "epoch_changes", "refused", "conflicts"):
            if any(getattr(s, what) for s in stats):
                event(f"some {what}")
        # Whatever was still in flight is stale now: delivering it (twice, any order) changes nothing.
        late = self.flight + self.flight
        rng.shuffle(late)
        self.flight = []
        for msg in late:
            self.deliver(msg)
        self.check_converged()
        # The owner of each losing session kicks it (<conflict/>) and removes it: after the next
        # round every full JID is bound exactly once, to the same winner everywhere.
        winners = {jid: self.dirs[alive[0]].get(jid) for jid in FULL}
        for node in alive:
            d = self.dirs[node]
            for jid in sorted(self.told[node], key=str):
                winner = d.get(jid)
                if winner is not None and winner.node != node and any(r.jid == jid for r in d.records_of(node)):
                    self.push(node, [d.remove_local(jid)])  # type: ignore[list-item]
            self.told[node].clear()
        self.repair_round(rng)
        self.flight = []
        self.check_converged()
        for node in alive:
            assert self.dirs[node].conflicts() == []
            assert {jid: self.dirs[node].get(jid) for jid in FULL} == winners

    def repair_round(self, rng: random.Random) -> None:
        """For every pair of live nodes, digests both ways; each side applies what it lacks."""
        pairs = list(permutations(self.alive(), 2))
        rng.shuffle(pairs)
        for a, b in pairs:
            digest = decode_digest(encode_digest(self.dirs[a].digest()))
            for update in self.dirs[b].missing_for(digest):
                self.apply(a, decode_delta(encode_delta(update)))

    def check_converged(self) -> None:
        alive = self.alive()
        first = self.dirs[alive[0]]
        for name in alive:
            d = self.dirs[name]
            check_consistent(d)
            assert d.nodes() == set(alive), (name, d.nodes())
            for owner in alive:
                assert d.records_of(owner) == self.dirs[owner].records_of(owner), (name, owner)
                assert d.digest().versions[owner] == self.dirs[owner].digest().versions[owner]
            assert set(d.digest().dead) == self.crashed
            assert view(d) == view(first), name
            for other in alive:
                if other != name:  # quiescent: a second round would send nothing
                    assert self.dirs[other].missing_for(d.digest()) == []

    @invariant()
    def replicas_consistent(self) -> None:
        for name in getattr(self, "names", ()):
            check_consistent(self.dirs[name])

    @invariant()
    def every_losing_owner_is_told(self) -> None:
        for name in getattr(self, "names", ()):
            for _, loser in self.dirs[name].conflicts():
                if loser.node == name:
                    assert loser.jid in self.told[name], (name, loser.jid)

    @invariant()
    def crashed_owner_never_comes_back_where_purged(self) -> None:
        for name in getattr(self, "names", ()):
            d = self.dirs[name]
            for dead, epoch in d.digest().dead.items():
                assert dead not in d.nodes()
                assert epoch is None or epoch >= 1


DirectoryMachine.TestCase.settings = SETTINGS
TestDirectoryConvergence = DirectoryMachine.TestCase
