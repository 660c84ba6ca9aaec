"""The RFC 6121 Appendix A subscription table, row by row, and as a protocol between two users."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.im import subscription as s
from meshxmpp.im.subscription import (
    BOTH,
    FROM,
    FROM_PENDING_OUT,
    NONE,
    NONE_PENDING_IN,
    NONE_PENDING_OUT,
    NONE_PENDING_OUT_IN,
    TO,
    TO_PENDING_IN,
)

# The RFC's tables, transcribed independently of the implementation:
# state -> (forward?, new state or None for "no state change").
RFC = {
    ("subscribe", "outbound"): {  # A.2.1
        NONE: (True, NONE_PENDING_OUT),
        NONE_PENDING_OUT: (True, None),
        NONE_PENDING_IN: (True, NONE_PENDING_OUT_IN),
        NONE_PENDING_OUT_IN: (True, None),
        TO: (True, None),
        TO_PENDING_IN: (True, None),
        FROM: (True, FROM_PENDING_OUT),
        FROM_PENDING_OUT: (True, None),
        BOTH: (True, None),
    },
    ("unsubscribe", "outbound"): {  # A.2.2
        NONE: (True, None),
        NONE_PENDING_OUT: (True, NONE),
        NONE_PENDING_IN: (True, None),
        NONE_PENDING_OUT_IN: (True, NONE_PENDING_IN),
        TO: (True, NONE),
        TO_PENDING_IN: (True, NONE_PENDING_IN),
        FROM: (True, None),
        FROM_PENDING_OUT: (True, FROM),
        BOTH: (True, FROM),
    },
    ("subscribed", "outbound"): {  # A.2.3
        NONE: (False, None),
        NONE_PENDING_OUT: (False, None),
        NONE_PENDING_IN: (True, FROM),
        NONE_PENDING_OUT_IN: (True, FROM_PENDING_OUT),
        TO: (False, None),
        TO_PENDING_IN: (True, BOTH),
        FROM: (False, None),
        FROM_PENDING_OUT: (False, None),
        BOTH: (False, None),
    },
    ("unsubscribed", "outbound"): {  # A.2.4
        NONE: (False, None),
        NONE_PENDING_OUT: (False, None),
        NONE_PENDING_IN: (True, NONE),
        NONE_PENDING_OUT_IN: (True, NONE_PENDING_OUT),
        TO: (False, None),
        TO_PENDING_IN: (True, TO),
        FROM: (True, NONE),
        FROM_PENDING_OUT: (True, NONE_PENDING_OUT),
        BOTH: (True, TO),
    },
    ("subscribe", "inbound"): {  # A.3.1
        NONE: (True, NONE_PENDING_IN),
        NONE_PENDING_OUT: (True, NONE_PENDING_OUT_IN),
        NONE_PENDING_IN: (False, None),
        NONE_PENDING_OUT_IN: (False, None),
        TO: (True, TO_PENDING_IN),
        TO_PENDING_IN: (False, None),
        FROM: (False, None),
        FROM_PENDING_OUT: (False, None),
        BOTH: (False, None),
    },
    ("unsubscribe", "inbound"): {  # A.3.2
        NONE: (False, None),
        NONE_PENDING_OUT: (False, None),
        NONE_PENDING_IN: (True, NONE),
        NONE_PENDING_OUT_IN: (True, NONE_PENDING_OUT),
        TO: (False, None),
        TO_PENDING_IN: (True, TO),
        FROM: (True, NONE),
        FROM_PENDING_OUT: (True, NONE_PENDING_OUT),
        BOTH: (True, TO),
    },
    ("subscribed", "inbound"): {  # A.3.3
        NONE: (False, None),
        NONE_PENDING_OUT: (True, TO),
        NONE_PENDING_IN: (False, None),
        NONE_PENDING_OUT_IN: (True, TO_PENDING_IN),
        TO: (False, None),
        TO_PENDING_IN: (False, None),
        FROM: (False, None),
        FROM_PENDING_OUT: (True, BOTH),
        BOTH: (False, None),
    },
    ("unsubscribed", "inbound"): {  # A.3.4
        NONE: (False, None),
        NONE_PENDING_OUT: (True, NONE),
        NONE_PENDING_IN: (False, None),
        NONE_PENDING_OUT_IN: (True, NONE_PENDING_IN),
        TO: (True, NONE),
        TO_PENDING_IN: (True, NONE_PENDING_IN),
        FROM: (False, None),
        FROM_PENDING_OUT: (True, FROM),
        BOTH: (True, FROM),
    },
}

ROWS = [
    (state, kind, direction, *row) for (kind, direction), table in RFC.items() for state, row in table.items()
]


def test_nine_states_eight_tables() -> None:
    assert len(s.STATES) == 9
    assert len(ROWS) == 72
    assert set(s.TRANSITIONS) == {(state, kind, direction) for state, kind, direction, *_ in ROWS}


@pytest.mark.parametrize(("state", "kind", "direction", "forward", "new"), ROWS)
def test_every_row_of_appendix_a(
    state: str, kind: str, direction: str, forward: bool, new: str | None
) -> None:
    out = s.transition(state, kind, direction)
    assert out.forward is forward
    assert out.state == (state if new is None else new)


@pytest.mark.parametrize(("state", "kind", "direction", "forward", "new"), ROWS)
def test_push_exactly_when_the_visible_item_changes(
    state: str, kind: str, direction: str, forward: bool, new: str | None
) -> None:
    out = s.transition(state, kind, direction)
    before, after = s.flags_of(state), s.flags_of(out.state)
    assert out.push == ((before.subscription, before.ask) != (after.subscription, after.ask))
    # A change the user can see is never made silently, and never without telling the contact.
    if out.push:
        assert forward


@pytest.mark.parametrize("state", s.STATES)
def test_auto_reply_only_to_a_subscribe_from_a_subscriber(state: str) -> None:
    for kind in s.KINDS:
        for direction in s.DIRECTIONS:
            out = s.transition(state, kind, direction)
            expected = (
                "subscribed"
                if (kind, direction) == ("subscribe", "inbound") and state in (FROM, FROM_PENDING_OUT, BOTH)
                else None
            )
            assert out.auto_reply == expected


def test_unknown_inputs_raise() -> None:
    with pytest.raises(KeyError):
        s.transition(NONE, "probe", "inbound")
    with pytest.raises(KeyError):
        s.transition("Sideways", "subscribe", "inbound")


@pytest.mark.parametrize("state", s.STATES)
def test_flags_round_trip(state: str) -> None:
    f = s.flags_of(state)
    assert s.state_of(f.subscription, f.ask, f.pending_in) == state


@pytest.mark.parametrize(
    ("subscription", "ask", "pending_in", "state"),
    [
        ("to", True, False, TO),
        ("both", True, True, BOTH),
        ("from", False, True, FROM),
        ("bogus", False, False, NONE),
    ],
)
def test_undefined_combinations_are_normalised(
    subscription: str, ask: bool, pending_in: bool, state: str
) -> None:
    assert s.state_of(subscription, ask, pending_in) == state


# -- two users exchanging subscription stanzas --------------------------------------------------

ACTIONS = st.lists(st.tuples(st.sampled_from("AB"), st.sampled_from((*s.KINDS, "remove"))), max_size=40)


def _other(who: str) -> str:
    return "B" if who == "A" else "A"


def _send(states: dict[str, str], who: str, kind: str) -> list[tuple[str, str]]:
    """``who`` sends ``kind``: their server applies the outbound row; return stanzas put on the wire
    as (recipient, kind). "remove" is a roster remove (RFC 6121 2.5.2)."""
    if kind == "remove":
        f = s.flags_of(states[who])
        wire = []
        if f.subscription in ("to", "both") or f.ask:
            wire.append((_other(who), "unsubscribe"))
        if f.subscription in ("from", "both") or f.pending_in:
            wire.append((_other(who), "unsubscribed"))
        states[who] = NONE
        return wire
    out = s.transition(states[who], kind, "outbound")
    states[who] = out.state
    return [(_other(who), kind)] if out.forward else []


def _receive(states: dict[str, str], who: str, kind: str) -> list[tuple[str, str]]:
    out = s.transition(states[who], kind, "inbound")
    states[who] = out.state
    return [(_other(who), out.auto_reply)] if out.auto_reply else []


def _consistent_subscriptions(states: dict[str, str]) -> None:
    a, b = s.flags_of(states["A"]), s.flags_of(states["B"])
    assert (a.subscription in ("to", "both")) == (b.subscription in ("from", "both")), states
    assert (a.subscription in ("from", "both")) == (b.subscription in ("to", "both")), states


@settings(max_examples=400)
@given(ACTIONS)
def test_instant_delivery_keeps_both_rosters_in_step(actions: list[tuple[str, str]]) -> None:
    """Each stanza arrives before the next is sent: the two rosters mirror each other exactly,
    pending flags included."""
    states = {"A": NONE, "B": NONE}
    for who, kind in actions:
        wire = deque(_send(states, who, kind))
        while wire:
            to, k = wire.popleft()
            wire.extend(_receive(states, to, k))
        _consistent_subscriptions(states)
        a, b = s.flags_of(states["A"]), s.flags_of(states["B"])
        assert a.ask == b.pending_in and a.pending_in == b.ask, states


@settings(max_examples=400)
@given(ACTIONS, st.lists(st.booleans(), max_size=80))
def test_in_flight_races_heal_at_the_next_probe(actions: list[tuple[str, str]], steps: list[bool]) -> None:
    """Stanzas cross on the wire (each direction in order, the two interleaved at random). The
    tables cannot keep both sides in step through every crossing (an approval crossing an
    unsubscribe + subscribe leaves one side "To" and the other "None + Pending In"), but the probe
    sent at the next initial presence repairs it: a contact without a "from" subscription answers
    "unsubscribed" (RFC 6121 4.3.2), so nobody keeps believing in a subscription the other side
    does not grant."""
    states = {"A": NONE, "B": NONE}
    wires: dict[str, deque[str]] = {"A": deque(), "B": deque()}  # recipient -> stanzas in flight
    todo = deque(actions)
    choices = deque(steps)

    def deliver_one() -> None:
        to = "A" if (choices.popleft() if choices else True) else "B"
        if not wires[to]:
            to = "B" if to == "A" else "A"
        kind = wires[to].popleft()
        for rcpt, k in _receive(states, to, kind):
            wires[rcpt].append(k)

    while todo or wires["A"] or wires["B"]:
        if todo and (not (wires["A"] or wires["B"]) or (choices.popleft() if choices else False)):
            who, kind = todo.popleft()
            for rcpt, k in _send(states, who, kind):
                wires[rcpt].append(k)
        else:
            deliver_one()
    for who in "AB":  # each side logs in again and probes what it believes it is subscribed to
        other = _other(who)
        if s.flags_of(states[who]).subscription in ("to", "both"):
            if s.flags_of(states[other]).subscription not in ("from", "both"):
                assert _receive(states, who, "unsubscribed") == []
    for who in "AB":
        if s.flags_of(states[who]).subscription in ("to", "both"):
            assert s.flags_of(states[_other(who)]).subscription in ("from", "both"), states
