"""Random subscription traffic between two users through the real handlers (router, roster,
MemoryStorage): the stored rosters mirror each other as RFC 6121 Appendix A says, and what each
client learnt from roster pushes equals what is stored."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.im.roster import item_state
from meshxmpp.im.subscription import flags_of
from meshxmpp.xml import ns
from tests.im._harness import FakeSession, Harness, pres, roster_get, roster_set

USERS = {"A": "alice@example.org", "B": "bob@example.org"}
STEPS = st.lists(
    st.tuples(
        st.sampled_from("AB"),
        st.sampled_from(
            ("subscribe", "subscribed", "unsubscribe", "unsubscribed", "remove", "add", "logout", "login")
        ),
    ),
    max_size=25,
)


def client_view(session: FakeSession, view: dict[str, tuple[str, bool]]) -> None:
    """Apply the roster result and pushes ``session`` received, in order, to ``view``."""
    for el in session.take(lambda e: e.name == "iq" and e.find("query", ns.ROSTER) is not None):
        query = el.find("query", ns.ROSTER)
        assert query is not None
        if el.get("type") == "result":
            view.clear()
        for item in query.findall("item", ns.ROSTER):
            jid = item.get("jid") or ""
            if item.get("subscription") == "remove":
                view.pop(jid, None)
            else:
                view[jid] = (item.get("subscription") or "none", item.get("ask") == "subscribe")


async def run(steps: list[tuple[str, str]]) -> None:
    h = Harness()
    for who in ("alice", "bob"):
        await h.add_user(who)
    sessions: dict[str, FakeSession | None] = {w: await h.online(f"{USERS[w]}/r") for w in "AB"}
    views: dict[str, dict[str, tuple[str, bool]]] = {"A": {}, "B": {}}
    requests = {"A": 0, "B": 0}  # subscription requests each client was shown

    def observe() -> None:
        for w in "AB":
            session = sessions[w]
            if session is not None:
                requests[w] += len(
                    session.take(lambda e: e.name == "presence" and e.get("type") == "subscribe")
                )
                client_view(session, views[w])

    observe()
    for who, action in steps:
        other = USERS["B" if who == "A" else "A"]
        s = sessions[who]
        if action == "login":
            if s is None:
                s = sessions[who] = h.bind(f"{USERS[who]}/r")
                await h.send(s, roster_get())
                await h.send(s, pres(None))
        elif s is None:
            pass  # offline users do nothing
        elif action == "logout":
            await h.end(s)
            sessions[who] = None
        elif action == "remove":
            await h.send(s, roster_set(other, remove=True))
        elif action == "add":
            await h.send(s, roster_set(other, name="x"))
        else:
            await h.send(s, pres(action, other))
        observe()
    a = await h.storage.rosters.get(USERS["A"], USERS["B"])
    b = await h.storage.rosters.get(USERS["B"], USERS["A"])
    fa, fb = flags_of(item_state(a)), flags_of(item_state(b))
    state = (fa, fb)
    assert (fa.subscription in ("to", "both")) == (fb.subscription in ("from", "both")), state
    assert (fa.subscription in ("from", "both")) == (fb.subscription in ("to", "both")), state
    assert fa.ask == fb.pending_in and fa.pending_in == fb.ask, state
    for w in "AB":
        if sessions[w] is None:
            continue
        stored = {
            i.jid: (i.subscription, i.ask and i.subscription in ("none", "from"))
            for i in await h.storage.rosters.items(USERS[w])
            if not i.hidden
        }
        assert views[w] == stored, (w, views[w], stored)
    for w in "AB":
        # Nothing is left over for a roster that holds nothing.
        for i in await h.storage.rosters.items(USERS[w]):
            assert not (i.hidden and item_state(i) == "None"), i
    # A request still waiting for an answer has been shown to the user if they are online.
    for w in "AB":
        if sessions[w] is not None and flags_of(item_state(a if w == "A" else b)).pending_in:
            assert requests[w] > 0


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_random_subscription_traffic_keeps_rosters_consistent(steps: list[tuple[str, str]]) -> None:
    trio.run(run, steps)
