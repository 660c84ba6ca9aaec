"""Every row of docs/routing.md under every policy, against values written by hand from RFC 6121
section 8.5, XEP-0280, XEP-0334 and XEP-0160 (not copied from the generated table).

A value is one cell for all four policies, or a tuple in the order of `policy.POLICIES`:
(most-available, top-priority-all, all-non-negative, all-connected). Sessions: see the legend in
docs/routing.md (phone 5, tablet 5 away, laptop 1, bot -1, desk bound without presence).
"""

from __future__ import annotations

import pytest
from routing_renderer import load

from meshxmpp.routing import policy

R = load()

SU = "error service-unavailable"
BAD = "error bad-request"
AVAILABLE = "phone, tablet, laptop, bot"  # every available session, any priority
INTERESTED = "phone, laptop, desk"
BARE_ALL = ("phone", "phone, tablet", "phone, tablet, laptop", "phone, tablet, laptop, bot, desk")
BARE_ALL_CARBONS = ("phone; carbons: laptop, bot", "phone, tablet; carbons: laptop, bot",
                    "phone, tablet, laptop; carbons: bot", "phone, tablet, laptop, bot, desk")
HEADLINE_ALL = ("phone, tablet, laptop",) * 3 + ("phone, tablet, laptop, bot, desk",)


def _chat_like(t: str) -> dict[str, object]:
    # RFC 6121 8.5.2.1.1 / 8.5.2.2.1 for chat and normal; the policy decides the fan-out.
    return {
        f"m-bare-{t}-no-account": SU,  # 8.5.1, unknown_user = bounce
        f"m-bare-{t}-none": "store",  # 8.5.2.2.1, XEP-0160
        f"m-bare-{t}-desk": ("store", "store", "store", "desk"),  # no presence: offline, but all-connected
        f"m-bare-{t}-bot": ("store", "store", "store", "bot"),  # negative only: store by default
        f"m-bare-{t}-laptop": "laptop",
        f"m-bare-{t}-tied": ("phone", "phone, tablet", "phone, tablet", "phone, tablet"),  # show breaks the tie
        f"m-bare-{t}-all": BARE_ALL,
        f"m-bare-{t}-all+c": BARE_ALL_CARBONS,
    }


EXPECTED: dict[str, str | tuple[str, str, str, str]] = {
    **_chat_like("chat"),
    **_chat_like("normal"),
    # headline: all non-negative (8.5.2.1.1), else silently ignored; all-connected widens it.
    "m-bare-headline-no-account": SU,
    "m-bare-headline-none": "drop",
    "m-bare-headline-desk": ("drop", "drop", "drop", "desk"),
    "m-bare-headline-bot": ("drop", "drop", "drop", "bot"),
    "m-bare-headline-laptop": "laptop",
    "m-bare-headline-tied": "phone, tablet",
    "m-bare-headline-all": HEADLINE_ALL,
    "m-bare-headline-all+c": HEADLINE_ALL,  # headlines are never carbon-copied
    # groupchat to a bare JID is an error; error messages are never bounced.
    **{f"m-bare-groupchat-{s}": SU for s in R.STATES},
    **{f"m-bare-error-{s}": "drop" for s in R.STATES},
    # hints
    "m-bare-private-all+c": BARE_ALL,
    "m-bare-nobody-all+c": BARE_ALL,  # a normal message without body is not carbon-eligible
    "m-bare-no-store-none": "drop",
    "m-bare-states-none": "drop",
    "m-bare-states-store-none": "store",
    # full JID, resource bound: delivered whatever the type; carbons for eligible ones.
    **{f"m-phone-{t}-all": "phone" for t in ("chat", "normal", "headline", "groupchat", "error")},
    "m-phone-chat-all+c": "phone; carbons: laptop, bot",
    "m-phone-normal-all+c": "phone; carbons: laptop, bot",
    "m-phone-headline-all+c": "phone",
    "m-phone-groupchat-all+c": "phone",
    "m-phone-error-all+c": "phone",
    "m-phone-private-all+c": "phone",
    "m-phone-no-copy-all+c": "phone",
    "m-desk-chat-all+c": "desk; carbons: laptop, bot",  # bound without presence still matches
    "m-bot-chat-all": "bot",  # a full JID reaches a negative-priority session
    # full JID, resource not bound (8.5.3.2.1)
    "m-gone-chat-no-account": SU,
    "m-gone-chat-none": "store",
    "m-gone-chat-all": BARE_ALL,
    "m-gone-chat-all+c": BARE_ALL_CARBONS,
    **{f"m-gone-normal-{s}": SU for s in ("no-account", "none", "all", "all+c")},
    "m-gone-headline-no-account": SU,
    **{f"m-gone-headline-{s}": "drop" for s in ("none", "all", "all+c")},
    **{f"m-gone-groupchat-{s}": SU for s in ("no-account", "none", "all", "all+c")},
    **{f"m-gone-error-{s}": "drop" for s in ("no-account", "none", "all", "all+c")},
    # presence to the bare JID (8.5.2.1.2, 8.5.2.2.2, section 3, 4.3)
    **{f"p-bare-{t}-no-account": "drop" for t in R._PRESENCE if t != "bogus"},
    "p-bare-bogus-no-account": BAD,
    **{f"p-bare-{t}-none": "drop" for t in ("available", "unavailable", "subscribed", "unsubscribe",
                                             "unsubscribed", "probe", "error")},
    "p-bare-subscribe-none": "store",
    "p-bare-bogus-none": BAD,
    "p-bare-available-all": AVAILABLE,
    "p-bare-unavailable-all": AVAILABLE,
    "p-bare-error-all": AVAILABLE,
    "p-bare-subscribe-all": AVAILABLE,
    "p-bare-subscribed-all": INTERESTED,
    "p-bare-unsubscribe-all": INTERESTED,
    "p-bare-unsubscribed-all": INTERESTED,
    "p-bare-probe-all": "drop",
    "p-bare-bogus-all": BAD,
    "p-bare-available-desk": "drop",
    "p-bare-subscribe-desk": "store",
    # presence to a full JID (8.5.3)
    "p-phone-available-all": "phone",
    "p-phone-unavailable-all": "phone",
    "p-phone-error-all": "phone",
    "p-phone-subscribe-all": AVAILABLE,
    "p-phone-subscribed-all": INTERESTED,
    "p-phone-probe-all": "drop",
    "p-desk-available-all": "desk",
    "p-gone-available-all": "drop",
    "p-gone-unavailable-all": "drop",
    "p-gone-error-all": "drop",
    "p-gone-subscribe-all": AVAILABLE,
    "p-gone-subscribed-all": INTERESTED,
    "p-gone-probe-all": "drop",
    # iq (8.5.1, 8.5.2.1.3, 8.5.3; RFC 6120 8.2.3)
    **{f"i-{a}-{t}-{s}": SU for a in ("bare", "gone") for t in ("get", "set") for s in ("no-account", "all")},
    **{f"i-{a}-{t}-{s}": "drop" for a in ("bare", "gone") for t in ("result", "error")
       for s in ("no-account", "all")},
    **{f"i-phone-{t}-all": "phone" for t in ("get", "set", "result", "error")},
}

ROWS = [row for rows in R.SECTIONS.values() for row in rows]


def test_every_row_has_an_expectation() -> None:
    assert sorted(r.id for r in ROWS) == sorted(EXPECTED)
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("policy_name", policy.POLICIES)
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row: object, policy_name: str) -> None:
    expected = EXPECTED[row.id]  # type: ignore[attr-defined]
    if isinstance(expected, tuple):
        expected = expected[policy.POLICIES.index(policy_name)]
    decision = R.decide_row(row, policy.PolicyConfig(policy=policy_name))
    assert R.cell(decision) == expected
    assert decision.rule in policy.RULES_BY_NAME


SENT_EXPECTED = {
    "s-chat": "laptop, bot",
    "s-chat-from-laptop": "bot",  # never a copy to the sender itself
    "s-private": "none",
    "s-nobody": "none",
    "s-groupchat": "none",
    "s-self": "none",  # the inbound decision makes the copies
}


@pytest.mark.parametrize("row", R.SENT_ROWS, ids=[r[0] for r in R.SENT_ROWS])
def test_sent_carbons_row(row: tuple[str, str, object, object]) -> None:
    row_id, _, sender, facts = row
    d = policy.decide_sent_carbons(facts, R.STATES["all+c"].sessions, sender)  # type: ignore[arg-type]
    assert (", ".join(str(a.jid.resource) for a in d.actions) or "none") == SENT_EXPECTED[row_id]
    assert all(isinstance(a, policy.DeliverCarbon) and a.direction == "sent" for a in d.actions)


OVERRIDE_EXPECTED = {
    "o-person": "phone, tablet",
    "o-service": "phone, tablet, laptop, bot, desk",
    "o-service-headline": "phone, tablet, laptop, bot, desk",
    "o-service-full": "phone, tablet, laptop, bot, desk",
}


@pytest.mark.parametrize("row", R.OVERRIDE_ROWS, ids=[r[0] for r in R.OVERRIDE_ROWS])
def test_override_row(row: tuple[str, str, object]) -> None:
    row_id, _, facts = row
    d = policy.decide(facts, R.STATES["all"].sessions, R.OVERRIDE_CONFIG, account_exists=True)  # type: ignore[arg-type]
    assert R.cell(d) == OVERRIDE_EXPECTED[row_id]
