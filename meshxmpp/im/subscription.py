"""The presence subscription state machine of RFC 6121 Appendix A, as one pure table.

A roster item's subscription state combines the ``subscription`` attribute (none/to/from/both)
with the two pending flags: "Pending Out" (we asked the contact: the roster's ``ask``) and
"Pending In" (the contact asked us and we have not answered). RFC 6121 A.1 names the nine legal
combinations; ``TRANSITIONS`` maps (state, stanza type, direction) to what the server does:

* ``outbound``: the user sent the stanza (RFC 6121 A.2, tables "route?").
* ``inbound``: the stanza arrived for the user (RFC 6121 A.3, tables "deliver?").

Everything that affects the machine lives in this file (h11's ``_state.py`` rule); the handlers in
``im.presence`` only load the item, look the row up and carry out the ``Outcome``. Pre-approval
(RFC 6121 3.4) is an optional feature we do not advertise, so an outbound "subscribed" in a state
without a pending inbound request is ignored, as the RFC tables say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOTH",
    "DIRECTIONS",
    "FROM",
    "FROM_PENDING_OUT",
    "KINDS",
    "NONE",
    "NONE_PENDING_IN",
    "NONE_PENDING_OUT",
    "NONE_PENDING_OUT_IN",
    "STATES",
    "TO",
    "TO_PENDING_IN",
    "TRANSITIONS",
    "Flags",
    "Outcome",
    "flags_of",
    "state_of",
    "transition",
]

# RFC 6121 A.1 "Defined States", spelled as the RFC spells them.
NONE: Final = "None"
NONE_PENDING_OUT: Final = "None + Pending Out"
NONE_PENDING_IN: Final = "None + Pending In"
NONE_PENDING_OUT_IN: Final = "None + Pending Out+In"
TO: Final = "To"
TO_PENDING_IN: Final = "To + Pending In"
FROM: Final = "From"
FROM_PENDING_OUT: Final = "From + Pending Out"
BOTH: Final = "Both"

STATES: Final = (
    NONE,
    NONE_PENDING_OUT,
    NONE_PENDING_IN,
    NONE_PENDING_OUT_IN,
    TO,
    TO_PENDING_IN,
    FROM,
    FROM_PENDING_OUT,
    BOTH,
)
KINDS: Final = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
DIRECTIONS: Final = ("outbound", "inbound")


@dataclass(frozen=True, slots=True)
class Flags:
    """A state as stored on a roster item."""

    subscription: str  # none | to | from | both
    ask: bool  # Pending Out
    pending_in: bool  # Pending In


_FLAGS: Final[dict[str, Flags]] = {
    NONE: Flags("none", False, False),
    NONE_PENDING_OUT: Flags("none", True, False),
    NONE_PENDING_IN: Flags("none", False, True),
    NONE_PENDING_OUT_IN: Flags("none", True, True),
    TO: Flags("to", False, False),
    TO_PENDING_IN: Flags("to", False, True),
    FROM: Flags("from", False, False),
    FROM_PENDING_OUT: Flags("from", True, False),
    BOTH: Flags("both", False, False),
}


def flags_of(state: str) -> Flags:
    return _FLAGS[state]


def state_of(subscription: str, ask: bool, pending_in: bool) -> str:
    """The A.1 state of stored flags. Combinations A.1 does not define are normalised:
    a pending request in a direction that is already subscribed is moot, so it is dropped."""
    to = subscription in ("to", "both")
    from_ = subscription in ("from", "both")
    ask = ask and not to
    pending_in = pending_in and not from_
    if to and from_:
        return BOTH
    if to:
        return TO_PENDING_IN if pending_in else TO
    if from_:
        return FROM_PENDING_OUT if ask else FROM
    if ask and pending_in:
        return NONE_PENDING_OUT_IN
    if ask:
        return NONE_PENDING_OUT
    return NONE_PENDING_IN if pending_in else NONE


@dataclass(frozen=True, slots=True)
class Outcome:
    state: str  # the new state (the old one when the row says "no state change")
    forward: bool  # outbound: route to the contact; inbound: deliver to the user's available resources
    push: bool  # the user's visible roster item (subscription, ask) changed: roster push
    auto_reply: str | None  # presence type the server sends back on the user's behalf, if any


# (state, kind) -> (new state, forward?) per table; None as new state means "no state change".
_Row = tuple[str | None, bool]

# RFC 6121 A.2.1: outbound "subscribe" is always routed (the contact's server may have lost state).
_OUT_SUBSCRIBE: Final[dict[str, _Row]] = {
    NONE: (NONE_PENDING_OUT, True),
    NONE_PENDING_OUT: (None, True),
    NONE_PENDING_IN: (NONE_PENDING_OUT_IN, True),
    NONE_PENDING_OUT_IN: (None, True),
    TO: (None, True),
    TO_PENDING_IN: (None, True),
    FROM: (FROM_PENDING_OUT, True),
    FROM_PENDING_OUT: (None, True),
    BOTH: (None, True),
}
# RFC 6121 A.2.2: outbound "unsubscribe" is always routed.
_OUT_UNSUBSCRIBE: Final[dict[str, _Row]] = {
    NONE: (None, True),
    NONE_PENDING_OUT: (NONE, True),
    NONE_PENDING_IN: (None, True),
    NONE_PENDING_OUT_IN: (NONE_PENDING_IN, True),
    TO: (NONE, True),
    TO_PENDING_IN: (NONE_PENDING_IN, True),
    FROM: (None, True),
    FROM_PENDING_OUT: (FROM, True),
    BOTH: (FROM, True),
}
# RFC 6121 A.2.3: outbound "subscribed" approves a pending inbound request, and nothing else.
_OUT_SUBSCRIBED: Final[dict[str, _Row]] = {
    NONE: (None, False),
    NONE_PENDING_OUT: (None, False),
    NONE_PENDING_IN: (FROM, True),
    NONE_PENDING_OUT_IN: (FROM_PENDING_OUT, True),
    TO: (None, False),
    TO_PENDING_IN: (BOTH, True),
    FROM: (None, False),
    FROM_PENDING_OUT: (None, False),
    BOTH: (None, False),
}
# RFC 6121 A.2.4: outbound "unsubscribed" denies a pending request or cancels the contact's subscription.
_OUT_UNSUBSCRIBED: Final[dict[str, _Row]] = {
    NONE: (None, False),
    NONE_PENDING_OUT: (None, False),
    NONE_PENDING_IN: (NONE, True),
    NONE_PENDING_OUT_IN: (NONE_PENDING_OUT, True),
    TO: (None, False),
    TO_PENDING_IN: (TO, True),
    FROM: (NONE, True),
    FROM_PENDING_OUT: (NONE_PENDING_OUT, True),
    BOTH: (TO, True),
}
# RFC 6121 A.3.1: inbound "subscribe". From/From + Pending Out/Both: not delivered, the server
# answers "subscribed" on the user's behalf (RFC 6121 3.1.3).
_IN_SUBSCRIBE: Final[dict[str, _Row]] = {
    NONE: (NONE_PENDING_IN, True),
    NONE_PENDING_OUT: (NONE_PENDING_OUT_IN, True),
    NONE_PENDING_IN: (None, False),
    NONE_PENDING_OUT_IN: (None, False),
    TO: (TO_PENDING_IN, True),
    TO_PENDING_IN: (None, False),
    FROM: (None, False),
    FROM_PENDING_OUT: (None, False),
    BOTH: (None, False),
}
# RFC 6121 A.3.2: inbound "unsubscribe".
_IN_UNSUBSCRIBE: Final[dict[str, _Row]] = {
    NONE: (None, False),
    NONE_PENDING_OUT: (None, False),
    NONE_PENDING_IN: (NONE, True),
    NONE_PENDING_OUT_IN: (NONE_PENDING_OUT, True),
    TO: (None, False),
    TO_PENDING_IN: (TO, True),
    FROM: (NONE, True),
    FROM_PENDING_OUT: (NONE_PENDING_OUT, True),
    BOTH: (TO, True),
}
# RFC 6121 A.3.3: inbound "subscribed" counts only when we asked (Pending Out).
_IN_SUBSCRIBED: Final[dict[str, _Row]] = {
    NONE: (None, False),
    NONE_PENDING_OUT: (TO, True),
    NONE_PENDING_IN: (None, False),
    NONE_PENDING_OUT_IN: (TO_PENDING_IN, True),
    TO: (None, False),
    TO_PENDING_IN: (None, False),
    FROM: (None, False),
    FROM_PENDING_OUT: (BOTH, True),
    BOTH: (None, False),
}
# RFC 6121 A.3.4: inbound "unsubscribed".
_IN_UNSUBSCRIBED: Final[dict[str, _Row]] = {
    NONE: (None, False),
    NONE_PENDING_OUT: (NONE, True),
    NONE_PENDING_IN: (None, False),
    NONE_PENDING_OUT_IN: (NONE_PENDING_IN, True),
    TO: (NONE, True),
    TO_PENDING_IN: (NONE_PENDING_IN, True),
    FROM: (None, False),
    FROM_PENDING_OUT: (FROM, True),
    BOTH: (FROM, True),
}

_TABLES: Final[dict[tuple[str, str], dict[str, _Row]]] = {
    ("subscribe", "outbound"): _OUT_SUBSCRIBE,
    ("unsubscribe", "outbound"): _OUT_UNSUBSCRIBE,
    ("subscribed", "outbound"): _OUT_SUBSCRIBED,
    ("unsubscribed", "outbound"): _OUT_UNSUBSCRIBED,
    ("subscribe", "inbound"): _IN_SUBSCRIBE,
    ("unsubscribe", "inbound"): _IN_UNSUBSCRIBE,
    ("subscribed", "inbound"): _IN_SUBSCRIBED,
    ("unsubscribed", "inbound"): _IN_UNSUBSCRIBED,
}

_AUTO_SUBSCRIBED: Final = frozenset({FROM, FROM_PENDING_OUT, BOTH})


def _outcome(state: str, kind: str, direction: str, row: _Row) -> Outcome:
    new, forward = row
    new_state = state if new is None else new
    old_f, new_f = _FLAGS[state], _FLAGS[new_state]
    push = (old_f.subscription, old_f.ask) != (new_f.subscription, new_f.ask)
    auto = (
        "subscribed" if (kind, direction) == ("subscribe", "inbound") and state in _AUTO_SUBSCRIBED else None
    )
    return Outcome(new_state, forward, push, auto)


TRANSITIONS: Final[dict[tuple[str, str, str], Outcome]] = {
    (state, kind, direction): _outcome(state, kind, direction, table[state])
    for (kind, direction), table in _TABLES.items()
    for state in STATES
}


def transition(state: str, kind: str, direction: str) -> Outcome:
    """The RFC 6121 Appendix A row for ``state``; raises KeyError for an unknown input."""
    return TRANSITIONS[(state, kind, direction)]
