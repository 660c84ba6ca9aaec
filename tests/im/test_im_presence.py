"""Subscriptions (RFC 6121 section 3) and presence (section 4) through the router."""

from __future__ import annotations

import pytest

from meshxmpp.storage.base import RosterItem
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.im._harness import (
    Harness,
    available,
    error_condition,
    is_presence,
    is_push,
    pres,
    push_item,
)

ALICE = "alice@example.org"
BOB = "bob@example.org"
CAROL = "carol@example.org"


async def subscribe_both(h: Harness, a_full: str = "alice@example.org/a", b_full: str = "bob@example.org/b"):  # type: ignore[no-untyped-def]
    """Two online users with a mutual subscription; their queues emptied."""
    a = await h.online(a_full)
    b = await h.online(b_full)
    await h.send(a, pres("subscribe", BOB))
    await h.send(b, pres("subscribed", ALICE))
    await h.send(b, pres("subscribe", ALICE))
    await h.send(a, pres("subscribed", BOB))
    a.take()
    b.take()
    return a, b


# -- the subscription handshake ---------------------------------------------------------------


async def test_subscription_handshake(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    a.take()
    b.take()
    sub = pres("subscribe", BOB)
    sub.add("status", ns.CLIENT, text="It's Alice")
    await h.send(a, sub)
    # Alice's roster: none + ask (RFC 6121 3.1.2).
    (push,) = a.take(is_push)
    item = push_item(push)
    assert (item.get("jid"), item.get("subscription"), item.get("ask")) == (BOB, "none", "subscribe")
    # Bob gets the request from alice's bare JID, with its status; no push yet.
    (req,) = b.take(is_presence("subscribe"))
    assert req.get("from") == ALICE and req.get("to") == BOB
    assert req.find("status", ns.CLIENT).text == "It's Alice"  # type: ignore[union-attr]
    assert b.take(is_push) == []

    await h.send(b, pres("subscribed", ALICE))
    (push,) = b.take(is_push)
    assert (push_item(push).get("subscription"), push_item(push).get("ask")) == ("from", None)
    (ok,) = a.take(is_presence("subscribed"))
    assert ok.get("from") == BOB
    (push,) = a.take(is_push)
    assert (push_item(push).get("subscription"), push_item(push).get("ask")) == ("to", None)
    # And alice sees bob right away (RFC 6121 3.1.5).
    assert a.take(is_presence(None, "bob@example.org/b"))
    assert (await h.storage.rosters.get(ALICE, BOB)).subscription == "to"  # type: ignore[union-attr]
    assert (await h.storage.rosters.get(BOB, ALICE)).subscription == "from"  # type: ignore[union-attr]


async def test_request_to_an_offline_user_waits_for_the_next_initial_presence(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    sub = pres("subscribe", BOB)
    sub.add("status", ns.CLIENT, text="please")
    await h.send(a, sub)
    b = await h.online("bob@example.org/b")
    (req,) = b.take(is_presence("subscribe"))
    assert req.get("from") == ALICE and req.find("status", ns.CLIENT).text == "please"  # type: ignore[union-attr]
    # Until answered, every initial presence shows it again; once answered, never.
    b2 = await h.online("bob@example.org/b2")
    assert b2.take(is_presence("subscribe"))
    await h.send(b, pres("subscribed", ALICE))
    b3 = await h.online("bob@example.org/b3")
    assert b3.take(is_presence("subscribe")) == []


async def test_duplicate_request_is_not_delivered_twice(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    await h.send(a, pres("subscribe", BOB))
    await h.send(a, pres("subscribe", BOB))
    assert len(b.take(is_presence("subscribe"))) == 1


async def test_subscribe_when_already_subscribed_is_answered_by_the_server(h: Harness) -> None:
    a, b = await subscribe_both(h)
    await h.send(a, pres("subscribe", BOB))
    assert b.take(is_presence("subscribe")) == []
    # Bob's server answers "subscribed" for him (RFC 6121 3.1.3); alice's server, already
    # subscribed, swallows it (A.3.3), but bob's current presence is sent again.
    assert a.take(is_presence("subscribed", BOB)) == []
    assert a.take(is_presence(None, "bob@example.org/b"))
    assert a.take(is_push) == [] and b.take(is_push) == []


async def test_denied_request(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    await h.send(a, pres("subscribe", BOB))
    a.take()
    await h.send(b, pres("unsubscribed", ALICE))
    assert a.take(is_presence("unsubscribed", BOB))
    (push,) = a.take(is_push)
    assert (push_item(push).get("subscription"), push_item(push).get("ask")) == ("none", None)
    assert await h.storage.rosters.get(BOB, ALICE) is None  # the hidden pending item is gone


async def test_unsubscribe(h: Harness) -> None:
    a, b = await subscribe_both(h)
    await h.send(a, pres("unsubscribe", BOB))
    assert [push_item(p).get("subscription") for p in a.take(is_push)] == ["from"]
    assert b.take(is_presence("unsubscribe", ALICE))
    assert [push_item(p).get("subscription") for p in b.take(is_push)] == ["to"]
    # Bob's server stops showing bob to alice (RFC 6121 3.3.3).
    assert a.take(is_presence("unavailable", "bob@example.org/b"))


async def test_cancel_a_subscription(h: Harness) -> None:
    a, b = await subscribe_both(h)
    await h.send(b, pres("unsubscribed", ALICE))
    assert [push_item(p).get("subscription") for p in b.take(is_push)] == ["to"]
    assert a.take(is_presence("unsubscribed", BOB))
    assert [push_item(p).get("subscription") for p in a.take(is_push)] == ["from"]
    assert a.take(is_presence("unavailable", "bob@example.org/b"))  # RFC 6121 3.2.2
    # From now on bob's presence does not reach alice.
    await h.send(b, available(show="away"))
    assert a.take(lambda el: el.name == "presence") == []


async def test_subscription_stanzas_to_a_full_jid_are_handled_as_bare(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    b = await h.online("bob@example.org/b")
    await h.send(a, pres("subscribe", "bob@example.org/b"))
    (req,) = b.take(is_presence("subscribe"))
    assert req.get("from") == ALICE and req.get("to") == BOB
    assert (await h.storage.rosters.get(ALICE, BOB)).ask  # type: ignore[union-attr]


async def test_subscribe_to_unknown_user_is_answered_unsubscribed(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    await h.send(a, pres("subscribe", "nobody@example.org"))
    (no,) = a.take(is_presence("unsubscribed"))
    assert no.get("from") == "nobody@example.org"
    (push,) = [p for p in a.take(is_push) if push_item(p).get("ask") is None]
    assert push_item(push).get("subscription") == "none"


async def test_probe_to_unknown_user_is_answered_unsubscribed(h: Harness) -> None:
    a = await h.online("alice@example.org/a")
    await h.send(a, pres("probe", "nobody@example.org"))
    # The answer is "unsubscribed"; alice's server has nothing pending with nobody, so it stops
    # there (A.3.4) and the client sees nothing at all.
    assert a.take(lambda el: el.name == "presence") == []


async def test_probe_from_a_stranger_reveals_nothing(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    c = await h.online("carol@example.org/c")
    b.take()
    c.take()
    await h.send(c, pres("probe", BOB))
    assert c.take(lambda el: el.name == "presence") == []
    assert b.take(lambda el: el.name == "presence") == []


async def test_probe_answer_unsubscribed_reaches_the_roster_of_the_prober(h: Harness) -> None:
    """The "unsubscribed" a probe gets from a non-subscriber is processed as RFC 6121 A.3.4."""
    await h.storage.rosters.put(CAROL, RosterItem(jid=BOB, subscription="to"))
    c = h.bind("carol@example.org/c")
    await h.send(c, pres("probe", BOB))
    assert (await h.storage.rosters.get(CAROL, BOB)).subscription == "none"  # type: ignore[union-attr]


# -- availability --------------------------------------------------------------------------------


async def test_initial_presence_broadcasts_and_probes(h: Harness) -> None:
    a, b = await subscribe_both(h)
    c = await h.online("carol@example.org/c")  # a stranger
    a2 = await h.online("alice@example.org/a2", priority=3)
    # Bob (a subscriber) and alice's other resource see a2 arrive; carol does not.
    (seen,) = b.take(is_presence(None, "alice@example.org/a2"))
    assert seen.find("priority", ns.CLIENT).text == "3"
    assert a.take(is_presence(None, "alice@example.org/a2"))
    assert c.take(lambda el: el.name == "presence") == []
    # The probe answer and alice's other resource reach a2.
    assert a2.take(is_presence(None, "bob@example.org/b"))
    assert a2.take(is_presence(None, "alice@example.org/a"))
    assert h.sessions.get(a2.jid).priority == 3  # type: ignore[union-attr]


async def test_presence_update_is_broadcast_without_new_probes(h: Harness) -> None:
    a, b = await subscribe_both(h)
    await h.send(a, available(show="dnd", priority=-5))
    (seen,) = b.take(is_presence(None, "alice@example.org/a"))
    assert seen.find("show", ns.CLIENT).text == "dnd"
    assert a.take(lambda el: el.name == "presence") == []
    assert (a.available, a.priority, a.show) == (True, -5, "dnd")


@pytest.mark.parametrize("priority", ["200", "-129", "high", ""])
async def test_invalid_priority_is_bad_request(h: Harness, priority: str) -> None:
    a = h.bind("alice@example.org/a")
    el = Element("presence", ns.CLIENT)
    el.add("priority", ns.CLIENT, text=priority)
    await h.send(a, el)
    (err,) = a.got
    assert err.get("type") == "error" and error_condition(err) == "bad-request"
    assert not a.available


@pytest.mark.parametrize("priority", [-128, 127, 0])
async def test_priority_range_edges(h: Harness, priority: int) -> None:
    a = h.bind("alice@example.org/a")
    await h.send(a, available(priority))
    assert a.available and a.priority == priority


async def test_unavailable_is_broadcast_and_ends_availability(h: Harness) -> None:
    a, b = await subscribe_both(h)
    a2 = await h.online("alice@example.org/a2")
    a.take()
    b.take()
    await h.send(a2, pres("unavailable"))
    assert b.take(is_presence("unavailable", "alice@example.org/a2"))
    assert a.take(is_presence("unavailable", "alice@example.org/a2"))
    assert not a2.available and a2.presence is None


async def test_disconnect_sends_unavailable_to_subscribers_resources_and_directed(h: Harness) -> None:
    a, b = await subscribe_both(h)
    a2 = await h.online("alice@example.org/a2")
    c = await h.online("carol@example.org/c")
    for s in (a, a2, b, c):
        s.take()
    await h.send(b, available(to="carol@example.org/c"))  # directed presence to a stranger
    assert c.take(is_presence(None, "bob@example.org/b"))
    assert b.directed == {c.jid}
    await h.end(b)
    for s in (a, a2):
        assert s.take(is_presence("unavailable", "bob@example.org/b"))
    assert c.take(is_presence("unavailable", "bob@example.org/b"))


async def test_disconnect_before_initial_presence_broadcasts_nothing(h: Harness) -> None:
    a, b = await subscribe_both(h)
    b2 = h.bind("bob@example.org/quiet")
    await h.end(b2)
    assert a.take(lambda el: el.name == "presence") == []


async def test_directed_unavailable_forgets_the_target(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    c = await h.online("carol@example.org/c")
    await h.send(b, available(to="carol@example.org/c"))
    await h.send(b, pres("unavailable", "carol@example.org/c"))
    assert b.directed == set()
    c.take()
    await h.end(b)
    assert c.take(lambda el: el.name == "presence") == []


async def test_presence_from_non_contact_to_bare_jid_is_not_delivered(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    c = await h.online("carol@example.org/c")
    b.take()
    await h.send(c, available(to=BOB))
    assert b.take(lambda el: el.name == "presence") == []


async def test_presence_reply_to_our_directed_presence_is_delivered(h: Harness) -> None:
    b = await h.online("bob@example.org/b")
    c = await h.online("carol@example.org/c")
    await h.send(b, available(to=CAROL))
    b.take()
    await h.send(c, available(to=BOB))
    assert b.take(is_presence(None, "carol@example.org/c"))


async def test_probe_answers_from_the_registry_only_available_resources(h: Harness) -> None:
    await h.storage.rosters.put(ALICE, RosterItem(jid=BOB, subscription="to"))
    await h.storage.rosters.put(BOB, RosterItem(jid=ALICE, subscription="from"))
    b1 = await h.online("bob@example.org/on", priority=1)
    h.bind("bob@example.org/bound-only")
    b1.take()
    a = await h.online("alice@example.org/a")
    got = a.take(lambda el: el.name == "presence")
    assert [(el.get("from"), el.get("to")) for el in got] == [("bob@example.org/on", "alice@example.org/a")]
    # Alice (only "to") does not broadcast to bob.
    assert b1.take(lambda el: el.name == "presence") == []


async def test_inconsistent_roster_heals_through_the_probe(h: Harness) -> None:
    # Alice thinks she is subscribed to bob; bob's roster says otherwise.
    await h.storage.rosters.put(ALICE, RosterItem(jid=BOB, subscription="to"))
    b = await h.online("bob@example.org/b")
    a = await h.online("alice@example.org/a")
    assert a.take(is_presence(None, "bob@example.org/b")) == []
    assert a.take(is_presence("unsubscribed", BOB))
    assert (await h.storage.rosters.get(ALICE, BOB)).subscription == "none"  # type: ignore[union-attr]
    assert b.take(lambda el: el.name == "presence") == []
