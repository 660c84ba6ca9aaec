"""Hypothesis properties of the pure routing policy (issue 4, acceptance list)."""

from __future__ import annotations

from collections import Counter

from hypothesis import assume, given
from hypothesis import strategies as st

from meshxmpp.jid import JID
from meshxmpp.routing import policy as p
from meshxmpp.routing.facts import MESSAGE_TYPES, StanzaFacts, message_facts

BOB = JID("bob", "example.org")
RESOURCES = [f"r{i}" for i in range(7)]
SENDERS = [JID("alice", "example.net", "home"), JID(None, "svc.example.org"), JID("ops", "example.net"), None]
PRESENCE_TYPES = ["available", "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe",
                  "error", "bogus"]
IQ_TYPES = ["get", "set", "result", "error", "bogus"]


def full(resource: str) -> JID:
    return JID(BOB.local, BOB.domain, resource)


sessions_st = st.lists(
    st.builds(
        p.SessionView,
        jid=st.sampled_from(RESOURCES).map(full),
        node=st.sampled_from(["n1", "n2"]),
        available=st.booleans(),
        priority=st.integers(-2, 3) | st.integers(-128, 127),
        show=st.sampled_from([None, "chat", "away", "xa", "dnd"]),
        last_activity=st.sampled_from([0.0, 1.0, 2.0]) | st.floats(0, 1e9),
        carbons=st.booleans(),
        interested=st.booleans(),
    ),
    max_size=6,
    unique_by=lambda s: s.jid,
)
to_st = st.just(BOB) | st.sampled_from([*RESOURCES, "gone"]).map(full)
message_st = st.builds(
    message_facts,
    type=st.sampled_from(sorted(MESSAGE_TYPES)),
    to=to_st,
    sender=st.sampled_from(SENDERS),
    has_body=st.booleans(),
    private=st.booleans(),
    no_copy=st.booleans(),
    no_store=st.booleans(),
    store_hint=st.booleans(),
    chat_state_only=st.booleans(),
    muc=st.booleans(),
)
chat_to_bare_st = st.builds(message_facts, type=st.sampled_from(["chat", "normal"]), to=st.just(BOB),
                            sender=st.sampled_from(SENDERS), has_body=st.booleans(), private=st.booleans())
other_st = st.one_of(
    st.builds(StanzaFacts, kind=st.just("presence"), type=st.sampled_from(PRESENCE_TYPES), to=to_st,
              sender=st.sampled_from(SENDERS)),
    st.builds(StanzaFacts, kind=st.just("iq"), type=st.sampled_from(IQ_TYPES), to=to_st,
              sender=st.sampled_from(SENDERS)),
)
facts_st = message_st | other_st
config_st = st.builds(
    p.PolicyConfig,
    policy=st.sampled_from(p.POLICIES),
    sender=st.lists(st.builds(p.SenderPolicy, match=st.sampled_from(["svc.example.org", "*.example.net",
                                                                      "ops@example.net"]),
                              policy=st.sampled_from(p.POLICIES)), max_size=2).map(tuple),
    **{o.key: st.sampled_from(o.choices) for o in p.OPTIONS if o.key != "policy"},
)


def deliveries(d: p.Decision) -> list[JID]:
    return [a.jid for a in d.actions if isinstance(a, p.Deliver)]


def copies(d: p.Decision) -> list[JID]:
    return [a.jid for a in d.actions if isinstance(a, p.DeliverCarbon)]


def bound(facts: StanzaFacts, sessions: list[p.SessionView]) -> p.SessionView | None:
    assert facts.to is not None
    return next((s for s in sessions if s.jid == facts.to), None)


# -- the acceptance properties ------------------------------------------------------------------------

@given(sessions=sessions_st.filter(bool), data=st.data(), cfg=config_st)
def test_full_jid_of_a_bound_session_reaches_exactly_it(sessions: list[p.SessionView], data: st.DataObject,
                                                        cfg: p.PolicyConfig) -> None:
    target = data.draw(st.sampled_from(sessions))
    kind, type_ = data.draw(st.sampled_from(
        [("message", t) for t in sorted(MESSAGE_TYPES)] + [("iq", t) for t in ("get", "set", "result", "error")]
        + [("presence", t) for t in ("available", "unavailable", "error")]))
    facts = message_facts(type_, target.jid) if kind == "message" else StanzaFacts(kind, type_, target.jid)
    d = p.decide(facts, sessions, cfg, account_exists=True)
    assert deliveries(d) == [target.jid]
    assert target.jid not in copies(d)
    assert all(isinstance(a, p.Deliver | p.DeliverCarbon) for a in d.actions)


@given(sessions=sessions_st, facts=message_st, cfg=config_st)
def test_no_chat_to_a_negative_session_via_the_bare_jid(sessions: list[p.SessionView], facts: StanzaFacts,
                                                        cfg: p.PolicyConfig) -> None:
    assume(facts.type in ("chat", "normal", "headline") and bound(facts, sessions) is None)
    d = p.decide(facts, sessions, cfg, account_exists=True)
    if cfg.policy_for(facts.sender) == "all-connected":
        return
    by_jid = {s.jid: s for s in sessions}
    for jid in deliveries(d):
        assert by_jid[jid].available and by_jid[jid].priority >= 0


@given(sessions=sessions_st, facts=chat_to_bare_st)
def test_policies_nest(sessions: list[p.SessionView], facts: StanzaFacts) -> None:
    got = {pol: set(deliveries(p.decide(facts, sessions, p.PolicyConfig(policy=pol), account_exists=True)))
           for pol in p.POLICIES}
    assert got["most-available"] <= got["top-priority-all"] <= got["all-non-negative"] <= got["all-connected"]
    assert got["all-connected"] == {s.jid for s in sessions}


@given(sessions=sessions_st, facts=chat_to_bare_st, data=st.data())
def test_most_available_picks_exactly_one_whatever_the_order(sessions: list[p.SessionView], facts: StanzaFacts,
                                                             data: st.DataObject) -> None:
    cfg = p.PolicyConfig(policy="most-available")
    d = p.decide(facts, sessions, cfg, account_exists=True)
    eligible = [s for s in sessions if s.available and s.priority >= 0]
    assert len(deliveries(d)) == (1 if eligible else 0)
    shuffled = p.decide(facts, data.draw(st.permutations(sessions)), cfg, account_exists=True)
    assert deliveries(shuffled) == deliveries(d)
    assert Counter(shuffled.actions) == Counter(d.actions) and shuffled.rule == d.rule


@given(sessions=sessions_st, facts=facts_st, cfg=config_st, data=st.data())
def test_no_decision_depends_on_session_order(sessions: list[p.SessionView], facts: StanzaFacts,
                                              cfg: p.PolicyConfig, data: st.DataObject) -> None:
    d = p.decide(facts, sessions, cfg, account_exists=True)
    e = p.decide(facts, data.draw(st.permutations(sessions)), cfg, account_exists=True)
    assert (Counter(d.actions), d.rule, d.via) == (Counter(e.actions), e.rule, e.via)
    assert p.decide(facts, sessions, cfg, account_exists=True) == d  # and it is deterministic


@given(sessions=sessions_st, facts=facts_st, cfg=config_st, exists=st.booleans())
def test_each_session_gets_at_most_one_copy(sessions: list[p.SessionView], facts: StanzaFacts, cfg: p.PolicyConfig,
                                            exists: bool) -> None:
    d = p.decide(facts, sessions if exists else [], cfg, account_exists=exists)
    targets = deliveries(d) + copies(d)
    assert len(targets) == len(set(targets))
    by_jid = {s.jid: s for s in sessions}
    for jid in copies(d):  # carbons: only eligible messages, only to carbons-enabled available sessions
        assert facts.copies_allowed and by_jid[jid].carbons and by_jid[jid].available


@given(sessions=sessions_st.filter(bool), facts=message_st, data=st.data(), cfg=config_st)
def test_no_duplicate_when_a_user_writes_to_themself(sessions: list[p.SessionView], facts: StanzaFacts,
                                                    data: st.DataObject, cfg: p.PolicyConfig) -> None:
    sender = data.draw(st.sampled_from(sessions)).jid
    inbound = p.decide(facts, sessions, cfg, account_exists=True)  # facts.to is always bob's
    sent = p.decide_sent_carbons(facts, sessions, sender)
    targets = deliveries(inbound) + copies(inbound) + copies(sent)
    assert len(targets) == len(set(targets))


@given(sessions=sessions_st.filter(bool), facts=message_st, data=st.data())
def test_sent_carbons(sessions: list[p.SessionView], facts: StanzaFacts, data: st.DataObject) -> None:
    sender = data.draw(st.sampled_from(sessions)).jid
    out = StanzaFacts(facts.kind, facts.type, JID("alice", "example.net"), sender, facts.has_body,
                      facts.carbon_eligible, facts.private, facts.no_copy)
    d = p.decide_sent_carbons(out, sessions, sender)
    assert d.rule in p.RULES_BY_NAME
    expected = {s.jid for s in sessions if s.carbons and s.available and s.jid != sender} if out.copies_allowed \
        else set()
    assert set(copies(d)) == expected and len(d.actions) == len(expected)
    assert all(a.direction == "sent" for a in d.actions if isinstance(a, p.DeliverCarbon))


# -- nothing accepted disappears: every outcome is one the RFC allows, under a named rule ----------------

POLICY_RULES = {f"message/bare/{pol}" for pol in p.POLICIES}
NO_RECIPIENT = {"message/negative-only/store", "message/negative-only/bounce", "message/offline/store",
                "message/offline/bounce", "message/offline/no-store-hint", "message/offline/chat-state-only"}
HEADLINE = {"message/bare/headline", "message/bare/headline-all-connected", "message/bare/headline-ignored"}
ABSENT = {"message/full-absent/bounce", "message/full-absent/drop"}
SUBSCRIPTION = {"subscribed": {"presence/subscription/interested", "presence/subscription/none-interested"},
                "subscribe": {"presence/subscribe/deliver", "presence/subscribe/hold"},
                "probe": {"presence/probe/server-answers"}}
SUBSCRIPTION["unsubscribe"] = SUBSCRIPTION["unsubscribed"] = SUBSCRIPTION["subscribed"]


def allowed_rules(facts: StanzaFacts, exists: bool, is_bound: bool) -> set[str]:
    """An oracle written from RFC 6121 8.5 independently of the code's tables."""
    assert facts.to is not None
    kind, t, bare = facts.kind, facts.type, facts.to.resource is None
    if kind == "presence" and t not in ("available", "unavailable", "error", *SUBSCRIPTION):
        return {"presence/invalid-type"}
    if kind == "iq" and t not in ("get", "set", "result", "error"):
        return {"iq/invalid-type"}
    if not exists:
        if kind == "message":
            return {"message/error-ignored"} if t == "error" else {"no-such-user/message-bounce",
                                                                   "no-such-user/message-drop"}
        if kind == "presence":
            return {"no-such-user/presence-ignored"}
        return {"no-such-user/iq-service-unavailable"} if t in ("get", "set") else {"iq/response-ignored"}
    if kind == "message":
        if is_bound:
            return {"message/full/deliver"}
        if t == "error":
            return {"message/error-ignored"}
        if t == "groupchat":
            return {"message/bare/groupchat-rejected"} if bare else ABSENT
        if t == "headline":
            return HEADLINE if bare else HEADLINE | ABSENT
        return POLICY_RULES | NO_RECIPIENT | (set() if bare or t == "chat" else ABSENT)
    if kind == "presence":
        if t in SUBSCRIPTION:
            return SUBSCRIPTION[t]
        if bare:
            return {"presence/bare/broadcast", "presence/bare/none-available"}
        return {"presence/full/deliver"} if is_bound else {"presence/full-absent/ignored"}
    if bare:
        return {"iq/bare/service-unavailable"} if t in ("get", "set") else {"iq/response-ignored"}
    if is_bound:
        return {"iq/full/deliver"}
    return {"iq/full-absent/service-unavailable"} if t in ("get", "set") else {"iq/response-ignored"}


@given(sessions=sessions_st, facts=facts_st, cfg=config_st, exists=st.booleans())
def test_every_decision_is_a_named_allowed_outcome(sessions: list[p.SessionView], facts: StanzaFacts,
                                                   cfg: p.PolicyConfig, exists: bool) -> None:
    sessions = sessions if exists else []
    d = p.decide(facts, sessions, cfg, account_exists=exists)
    assert d.rule in p.RULES_BY_NAME
    is_bound = bound(facts, sessions) is not None
    assert d.rule in allowed_rules(facts, exists, is_bound), (d, facts)
    rerouted = exists and facts.kind == "message" and facts.to is not None and facts.to.resource is not None \
        and not is_bound and d.rule not in ABSENT | {"message/error-ignored"}
    assert d.via == ("message/full-absent/as-bare" if rerouted else None)
    # Exactly one outcome: deliveries (with carbons), a store (with carbons), a bounce, or a drop.
    assert d.actions
    kinds = {type(a) for a in d.actions}
    if p.Bounce in kinds or p.Drop in kinds:
        assert len(d.actions) == 1
    if p.StoreOffline in kinds:
        assert d.actions[0] == p.StoreOffline() and kinds <= {p.StoreOffline, p.DeliverCarbon}
    if p.DeliverCarbon in kinds:
        assert kinds & {p.Deliver, p.StoreOffline}
    if facts.type == "error":
        assert p.Bounce not in kinds  # errors are never bounced
    assert set(deliveries(d)) <= {s.jid for s in sessions}


@given(routing=st.dictionaries(
    st.sampled_from(["policy", "sender", "route.all-resources", "route.really-all-resources", "route", "bogus",
                     *(o.key for o in p.OPTIONS)]),
    st.none() | st.booleans() | st.integers() | st.sampled_from([*p.POLICIES, "store", "bounce", "drop", "bare", ""])
    | st.lists(st.dictionaries(st.sampled_from(["match", "policy", "x"]),
                               st.sampled_from(["svc.example.org", "*.a.org", "a@b.org", "x/y", "most-available",
                                                "?", ""]) | st.integers()), max_size=2)
    | st.dictionaries(st.sampled_from(["all-resources", "really-all-resources"]), st.booleans() | st.integers()),
))
def test_config_is_valid_or_an_error_that_names_its_key(routing: dict[str, object]) -> None:
    try:
        cfg = p.PolicyConfig.from_routing_config(routing)
    except p.RoutingConfigError as e:
        assert e.key.startswith("routing.")
    else:
        assert cfg.policy in p.POLICIES
