"""MeshCore (membership + directory + forwarding composed) on a simulated network."""

from __future__ import annotations

import pytest

from meshxmpp.jid import JID
from meshxmpp.mesh.core import ConflictLost, Inbound, Joined, Reroute, SessionsLost
from meshxmpp.mesh.directory import SessionRecord
from meshxmpp.testing._simmesh import sim_mesh


def rec(node: str, jid: str, bound_at: float = 1.0, **kw: object) -> SessionRecord:
    return SessionRecord(jid=JID.parse(jid), node=node, bound_at=bound_at, **kw)  # type: ignore[arg-type]


def tables(nodes):
    return [sorted((str(r.jid), r.node) for node in (n.core.directory,) for o in node.nodes()
                   for r in node.records_of(o)) for n in nodes]


def all_alive(nodes) -> bool:
    return all(len([m for m in n.core.membership.alive()]) == len(nodes) for n in nodes)


@pytest.mark.parametrize("seed", range(4))
def test_join_replicate_and_forward(seed: int) -> None:
    net, nodes = sim_mesh(3, seed=seed, notify_send_failed=True)
    assert net.run_for(10.0, until=lambda: all_alive(nodes)), "members never all alive"
    assert any(isinstance(e, Joined) for _, e in nodes[1].events)
    nodes[1].core.put_session(rec("n1", "bob@x/phone", priority=5))
    nodes[2].core.put_session(rec("n2", "bob@x/desk"))
    net.run_for(0.2)
    for n in nodes:
        assert {str(r.jid) for r in n.core.directory.of(JID.parse("bob@x"))} == {"bob@x/phone", "bob@x/desk"}
    assert [str(r.jid) for r in nodes[0].core.remote_of(JID.parse("bob@x"))] != []
    assert nodes[0].core.forward(net.now, "n1", "bob@x/phone", b"<message/>")
    net.run_for(0.2)
    got = [e for _, e in nodes[1].events if isinstance(e, Inbound)]
    assert [(e.peer, e.target, e.stanza) for e in got] == [("n0", "bob@x/phone", b"<message/>")]
    assert nodes[0].core.forwarder.in_flight("n1") == 0, "ack never came back"


@pytest.mark.parametrize("seed", range(4))
def test_death_purges_reroutes_and_one_survivor_announces(seed: int) -> None:
    net, nodes = sim_mesh(3, seed=seed, notify_send_failed=True)
    assert net.run_for(10.0, until=lambda: all_alive(nodes))
    nodes[2].core.put_session(rec("n2", "carol@x/a", available=True))
    net.run_for(0.5)
    nodes[1].auto_ack = False
    # n0 forwards to n2 which is killed before it can ack.
    net.kill(("n2", 5701))
    assert nodes[0].core.forward(net.now, "n2", "carol@x/a", b"<message id='1'/>")
    assert net.run_for(10.0, until=lambda: all(
        any(isinstance(e, SessionsLost) for _, e in n.events) for n in nodes[:2])), "death not detected"
    lost = [e for n in nodes[:2] for _, e in n.events if isinstance(e, SessionsLost)]
    assert [str(r.jid) for e in lost for r in e.records] == ["carol@x/a", "carol@x/a"]
    assert sum(e.announce for e in lost) == 1
    assert [e for _, e in nodes[0].events if isinstance(e, Reroute)][0].stanza == b"<message id='1'/>"
    assert all(not n.core.directory.of(JID.parse("carol@x")) for n in nodes[:2])


def test_partition_heal_conflict_newest_bind_wins() -> None:
    net, nodes = sim_mesh(3, seed=5, notify_send_failed=True)
    assert net.run_for(10.0, until=lambda: all_alive(nodes))
    net.partition([("n0", 5701), ("n1", 5701)], [("n2", 5701)])
    nodes[0].core.put_session(rec("n0", "dave@x/r", bound_at=10.0))
    nodes[2].core.put_session(rec("n2", "dave@x/r", bound_at=20.0))
    net.run_for(15.0)
    net.heal()
    assert net.run_for(30.0, until=lambda: all_alive(nodes) and len(set(map(str, tables(nodes)))) == 1 and any(
        isinstance(e, ConflictLost) for _, e in nodes[0].events)), "no merge after heal"
    conflicts = [e for n in nodes for _, e in n.events if isinstance(e, ConflictLost)]
    assert {str(c.jid) for c in conflicts} == {"dave@x/r"}
    assert all(c.winner.node == "n2" for c in conflicts)
    assert not any(isinstance(e, ConflictLost) for _, e in nodes[2].events)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ops = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", "c"]), st.sampled_from(["r1", "r2"]),
                         st.booleans(), st.floats(0.0, 0.5)), max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), loss=st.sampled_from([0.0, 0.1, 0.3]), dup=st.sampled_from([0.0, 0.2]),
       steps=ops)
def test_tables_converge_after_any_loss_and_duplication_plus_repair(seed, loss, dup, steps) -> None:
    """Binds and unbinds on random nodes while the network loses, duplicates and reorders frames
    (random latency): once loss stops, every node's table equals the owners' own records within two
    repair intervals of the last write."""
    net, nodes = sim_mesh(4, seed=seed, notify_send_failed=True)
    assert net.run_for(15.0, until=lambda: all_alive(nodes))
    net.loss, net.duplicate, net.latency = loss, dup, (0.0005, 0.2)
    for i, user, resource, bind, wait in steps:
        jid = JID.parse(f"{user}@x/{resource}")
        core = nodes[i].core
        if bind:
            core.put_session(SessionRecord(jid=jid, node=core.name, bound_at=net.now))
        else:
            core.remove_session(jid)
        net.run_for(wait)
    net.loss, net.duplicate = 0.0, 0.0
    truth = sorted((str(r.jid), r.node) for n in nodes for r in n.core.directory.records_of(n.name))
    # Loss may have made members suspect each other for a while; once they are all alive again, two
    # repair rounds (1 s each) bring every replica to the truth.
    assert net.run_for(30.0, until=lambda: all_alive(nodes)), "members did not recover after the loss"
    net.run_for(2.5)
    for n in nodes:
        assert sorted((str(r.jid), r.node) for o in n.core.directory.nodes()
                      for r in n.core.directory.records_of(o)) == truth, n.name
