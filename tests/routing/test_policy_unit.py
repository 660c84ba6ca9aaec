"""policy.py beyond the decision table: configuration, sender overrides, ordering, options, purity."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshxmpp.jid import JID
from meshxmpp.routing import facts as facts_module
from meshxmpp.routing import policy as p
from meshxmpp.routing.facts import StanzaFacts, message_facts

BOB = JID("bob", "example.org")
ALICE = JID("alice", "example.net", "home")


def s(resource: str, **kw: object) -> p.SessionView:
    return p.SessionView(JID("bob", "example.org", resource), **kw)  # type: ignore[arg-type]


def full(resource: str) -> JID:
    return JID("bob", "example.org", resource)


def delivered(d: p.Decision) -> list[str | None]:
    return [a.jid.resource for a in d.actions if isinstance(a, p.Deliver)]


def carbons(d: p.Decision) -> list[str | None]:
    return [a.jid.resource for a in d.actions if isinstance(a, p.DeliverCarbon)]


# -- configuration ---------------------------------------------------------------------------------

def test_defaults() -> None:
    cfg = p.PolicyConfig()
    assert cfg.policy == p.DEFAULT_POLICY == "top-priority-all"
    assert p.PolicyConfig.from_routing_config(None) == cfg
    assert p.PolicyConfig.from_routing_config({}) == cfg
    assert p.PolicyConfig.from_routing_config({"policy": "top-priority-all", "sender": []}) == cfg


def test_what_the_config_module_passes() -> None:
    """meshxmpp.config's RoutingConfig.routing_dict(): policy resolved, both aliases, sender list."""
    routing = {"policy": "all-non-negative", "sender": [{"match": "*@bots.example.org", "policy": "all-connected"}],
               "route.all-resources": False, "route.really-all-resources": True}
    cfg = p.PolicyConfig.from_routing_config(routing)
    assert cfg.policy == "all-non-negative"
    assert cfg.policy_for(JID("b1", "bots.example.org", "r")) == "all-connected"


@pytest.mark.parametrize(("routing", "expected"), [
    ({"route.all-resources": True}, "top-priority-all"),
    ({"route.really-all-resources": True}, "all-non-negative"),
    ({"route.all-resources": True, "route.really-all-resources": True}, "all-non-negative"),
    ({"route.all-resources": False, "route.really-all-resources": True}, "all-non-negative"),
    ({"route": {"all-resources": True}}, "top-priority-all"),  # unquoted TOML dotted key
    ({"route": {"really-all-resources": True}}, "all-non-negative"),
    # false changes nothing: the config module always passes both keys.
    ({"route.all-resources": False}, "top-priority-all"),
    ({"route.really-all-resources": False}, "top-priority-all"),
    ({"policy": "most-available", "route.all-resources": False, "route.really-all-resources": False},
     "most-available"),
    # An alias decides over the default policy, and agrees with an explicit one.
    ({"policy": "top-priority-all", "route.really-all-resources": True}, "all-non-negative"),
    ({"policy": "all-non-negative", "route.really-all-resources": True}, "all-non-negative"),
    ({"policy": "all-connected"}, "all-connected"),
])
def test_openfire_aliases(routing: dict[str, object], expected: str) -> None:
    assert p.PolicyConfig.from_routing_config(routing).policy == expected


@pytest.mark.parametrize(("routing", "key"), [
    ({"policy": "all-connected", "route.all-resources": True}, "routing.policy"),
    ({"policy": "most-available", "route.really-all-resources": True}, "routing.policy"),
    ({"policy": "everyone"}, "routing.policy"),
    ({"policy": 3}, "routing.policy"),
    ({"route.all-resources": "yes"}, "routing.route.all-resources"),
    ({"route": "all"}, "routing.route"),
    ({"polcy": "most-available"}, "routing.polcy"),
    ({"sender": [{"match": "x.example.org"}]}, "routing.sender[0].policy"),
    ({"sender": [{"policy": "all-connected"}]}, "routing.sender[0].match"),
    ({"sender": [{"match": "x.example.org", "policy": "all-connected", "prio": 1}]}, "routing.sender[0].prio"),
    ({"sender": ["x.example.org"]}, "routing.sender[0]"),
    ({"sender": [{"match": "a.example.org", "policy": "most-available"},
                 {"match": "b.example.org", "policy": "nobody"}]}, "routing.sender[1].policy"),
    ({"sender": [{"match": "bob@example.org/phone", "policy": "all-connected"}]}, "routing.sender[0].match"),
    ({"sender": [{"match": "*.bot@example.org", "policy": "all-connected"}]}, "routing.sender[0].match"),
    ({"sender": [{"match": "", "policy": "all-connected"}]}, "routing.sender[0].match"),
    ({"all_negative": "drop"}, "routing.all_negative"),
    ({"no_available": "discard"}, "routing.no_available"),
    ({"absent_groupchat": "bare"}, "routing.absent_groupchat"),
    ({"store_chat_states": 1}, "routing.store_chat_states"),
    ({"unknown_user": "ignore"}, "routing.unknown_user"),
])
def test_config_errors_name_the_key(routing: dict[str, object], key: str) -> None:
    with pytest.raises(p.RoutingConfigError) as info:
        p.PolicyConfig.from_routing_config(routing)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_every_option_is_accepted_with_every_value() -> None:
    for opt in p.OPTIONS:
        for value in opt.choices:
            cfg = p.PolicyConfig.from_routing_config({opt.key: value})
            assert getattr(cfg, opt.key) == value


def test_sender_overrides() -> None:
    cfg = p.PolicyConfig.from_routing_config({"policy": "most-available", "sender": [
        {"match": "servicex.example.org", "policy": "all-connected"},
        {"match": "*.example.org", "policy": "all-non-negative"},
        {"match": "*.deep.example.org", "policy": "top-priority-all"},
        {"match": "ops@example.org", "policy": "top-priority-all"},
        {"match": "*@people.example.net", "policy": "top-priority-all"},  # same as the bare domain
        {"match": "ServiceX.Example.org", "policy": "most-available"},  # same domain again: first wins
        {"match": "*.example.org", "policy": "most-available"},  # same suffix again: first wins
    ]})
    assert cfg.policy_for(None) == "most-available"
    assert cfg.policy_for(JID(None, "servicex.example.org")) == "all-connected"
    assert cfg.policy_for(JID("u", "servicex.example.org", "r")) == "all-connected"
    assert cfg.policy_for(JID(None, "other.example.org")) == "all-non-negative"
    assert cfg.policy_for(JID(None, "a.deep.example.org")) == "top-priority-all"  # longest suffix
    assert cfg.policy_for(JID(None, "example.org")) == "most-available"  # *. is for subdomains only
    assert cfg.policy_for(JID("ops", "example.org", "laptop")) == "top-priority-all"  # bare JID first
    assert cfg.policy_for(JID("dev", "example.org")) == "most-available"
    assert cfg.policy_for(JID("x", "elsewhere.net")) == "most-available"
    assert cfg.policy_for(JID("x", "people.example.net")) == "top-priority-all"


def test_config_is_a_frozen_value() -> None:
    a = p.PolicyConfig.from_routing_config({"sender": [{"match": "a.org", "policy": "all-connected"}]})
    b = p.PolicyConfig(sender=(p.SenderPolicy("a.org", "all-connected"),))
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.policy = "most-available"  # type: ignore[misc]


# -- most-available ordering ---------------------------------------------------------------------------

@pytest.mark.parametrize(("sessions", "winner"), [
    ([s("a", priority=1), s("b", priority=2)], "b"),
    ([s("a", priority=2, show="dnd"), s("b", priority=1, show="chat")], "a"),  # priority first
    ([s("a", show="away"), s("b", show=None)], "b"),
    ([s("a", show=None), s("b", show="chat")], "b"),
    ([s("a", show="xa"), s("b", show="away")], "b"),
    ([s("a", show="dnd"), s("b", show="xa")], "b"),
    ([s("a", show="bogus"), s("b", show="away")], "a"),  # an unknown show counts as available
    ([s("a", last_activity=5.0), s("b", last_activity=9.0)], "b"),
    ([s("b", last_activity=5.0), s("a", last_activity=5.0)], "a"),  # then the smallest JID
    ([s("a", last_activity=math.nan), s("b", last_activity=1.0)], "b"),
    ([s("a", priority=-1), s("b", available=False, priority=9), s("c", priority=0)], "c"),
])
def test_most_available(sessions: list[p.SessionView], winner: str) -> None:
    assert p.most_available(sessions).jid.resource == winner  # type: ignore[union-attr]
    assert p.most_available(sessions[::-1]).jid.resource == winner  # type: ignore[union-attr]


def test_most_available_none() -> None:
    assert p.most_available([s("a", priority=-1), s("b", available=False)]) is None


# -- decide ---------------------------------------------------------------------------------------

def test_only_user_addresses() -> None:
    for to in (None, JID(None, "example.org"), JID(None, "example.org", "r")):
        with pytest.raises(ValueError, match="user"):
            p.decide(StanzaFacts("message", "chat", to), [], p.PolicyConfig(), account_exists=True)


def test_full_jid_fast_path() -> None:
    sessions = [s("phone"), s("laptop", carbons=True), s("idle", carbons=True, available=False)]
    d = p.decide(message_facts("chat", full("phone"), ALICE), sessions, p.PolicyConfig(), account_exists=True)
    assert d == p.Decision((p.Deliver(full("phone")), p.DeliverCarbon(full("laptop"), "received")),
                           "message/full/deliver")
    d = p.decide(message_facts("headline", full("phone"), ALICE), sessions, p.PolicyConfig(), account_exists=True)
    assert d == p.Decision((p.Deliver(full("phone")),), "message/full/deliver")
    assert d.actions[0].session_jid == full("phone")  # type: ignore[union-attr]


def test_live_sessions_are_read_by_attribute() -> None:
    @dataclass
    class LiveSession:  # what c2s.session.Session looks like to the policy: plain attributes
        jid: JID
        available: bool = True
        priority: int = 0
        show: str | None = None
        last_activity: float = 0.0
        carbons: bool = False
        interested: bool = False

    sessions = [LiveSession(full("a"), priority=3), LiveSession(full("b"), carbons=True)]
    d = p.decide(message_facts("chat", BOB, ALICE), sessions, p.PolicyConfig(), account_exists=True)
    assert delivered(d) == ["a"] and carbons(d) == ["b"]


def test_unknown_message_type_in_hand_built_facts_is_normal() -> None:
    sessions = [s("a")]
    for to in (BOB, full("gone")):
        d = p.decide(StanzaFacts("message", "weird", to), sessions, p.PolicyConfig(), account_exists=True)
        assert delivered(d) == ["a"]
    d = p.decide(StanzaFacts("message", "weird", full("a")), sessions, p.PolicyConfig(), account_exists=True)
    assert d.rule == "message/full/deliver"


@pytest.mark.parametrize("kind", ["presence", "iq"])
@pytest.mark.parametrize("to", [BOB, full("a"), full("gone")])
@pytest.mark.parametrize("exists", [True, False])
def test_invalid_types_are_bad_requests(kind: str, to: JID, exists: bool) -> None:
    d = p.decide(StanzaFacts(kind, "bogus", to), [s("a")] if exists else [], p.PolicyConfig(), account_exists=exists)
    assert d.actions == (p.Bounce("bad-request", "modify"),)


def test_all_negative_bounce() -> None:
    cfg = p.PolicyConfig(all_negative="bounce")
    d = p.decide(message_facts("chat", BOB, ALICE), [s("bot", priority=-1, carbons=True)], cfg, account_exists=True)
    assert d == p.Decision((p.Bounce(),), "message/negative-only/bounce")


def test_all_negative_store_copies_to_carbons_sessions() -> None:
    d = p.decide(message_facts("chat", BOB, ALICE), [s("bot", priority=-1, carbons=True)], p.PolicyConfig(),
                 account_exists=True)
    assert d.actions == (p.StoreOffline(), p.DeliverCarbon(full("bot"), "received"))
    assert d.rule == "message/negative-only/store"


def test_no_available_bounce() -> None:
    cfg = p.PolicyConfig(no_available="bounce")
    d = p.decide(message_facts("normal", BOB, ALICE), [s("desk", available=False)], cfg, account_exists=True)
    assert d == p.Decision((p.Bounce(),), "message/offline/bounce")
    d = p.decide(message_facts("chat", full("gone"), ALICE), [], cfg, account_exists=True)
    assert d == p.Decision((p.Bounce(),), "message/offline/bounce", via="message/full-absent/as-bare")


def test_store_chat_states() -> None:
    f = message_facts("chat", BOB, ALICE, has_body=False, chat_state_only=True)
    assert p.decide(f, [], p.PolicyConfig(), account_exists=True).rule == "message/offline/chat-state-only"
    d = p.decide(f, [], p.PolicyConfig(store_chat_states=True), account_exists=True)
    assert d.actions == (p.StoreOffline(),)


def test_no_store_hint_with_a_full_jid() -> None:
    f = message_facts("chat", full("gone"), ALICE, no_store=True)
    d = p.decide(f, [], p.PolicyConfig(), account_exists=True)
    assert d == p.Decision((p.Drop(),), "message/offline/no-store-hint", via="message/full-absent/as-bare")


@pytest.mark.parametrize(("option", "type_", "value", "rule", "result"), [
    ("absent_normal", "normal", "drop", "message/full-absent/drop", "drop"),
    ("absent_normal", "normal", "bare", "message/bare/top-priority-all", "phone"),
    ("absent_headline", "headline", "bounce", "message/full-absent/bounce", "bounce"),
    ("absent_headline", "headline", "bare", "message/bare/headline", "phone"),
    ("absent_groupchat", "groupchat", "drop", "message/full-absent/drop", "drop"),
])
def test_absent_full_jid_options(option: str, type_: str, value: str, rule: str, result: str) -> None:
    cfg = p.PolicyConfig(**{option: value})  # type: ignore[arg-type]
    d = p.decide(message_facts(type_, full("gone"), ALICE), [s("phone")], cfg, account_exists=True)
    assert d.rule == rule
    if result == "phone":
        assert delivered(d) == ["phone"] and d.via == "message/full-absent/as-bare"
    else:
        assert d.actions == ((p.Drop(),) if result == "drop" else (p.Bounce(),))


def test_absent_headline_as_bare_with_nobody() -> None:
    cfg = p.PolicyConfig(absent_headline="bare")
    d = p.decide(message_facts("headline", full("gone"), ALICE), [], cfg, account_exists=True)
    assert d == p.Decision((p.Drop(),), "message/bare/headline-ignored", via="message/full-absent/as-bare")


def test_unknown_user_drop() -> None:
    cfg = p.PolicyConfig(unknown_user="drop")
    d = p.decide(message_facts("chat", BOB, ALICE), [], cfg, account_exists=False)
    assert d == p.Decision((p.Drop(),), "no-such-user/message-drop")


def test_no_such_user_answers_like_an_absent_resource() -> None:
    # An iq reveals neither whether the account exists nor whether the resource is bound.
    for t in ("get", "set"):
        missing = p.decide(StanzaFacts("iq", t, full("r")), [], p.PolicyConfig(), account_exists=False)
        absent = p.decide(StanzaFacts("iq", t, full("r")), [s("other")], p.PolicyConfig(), account_exists=True)
        assert missing.actions == absent.actions == (p.Bounce("service-unavailable", "cancel"),)
    # Presence to a missing account looks like presence to an offline one: nothing comes back.
    for t in ("available", "unavailable", "probe", "subscribed", "error"):
        missing = p.decide(StanzaFacts("presence", t, BOB), [], p.PolicyConfig(), account_exists=False)
        offline = p.decide(StanzaFacts("presence", t, BOB), [], p.PolicyConfig(), account_exists=True)
        assert missing.actions == offline.actions == (p.Drop(),)


def test_sender_override_applies_to_absent_full_jid_chat() -> None:
    cfg = p.PolicyConfig(policy="most-available", sender=(p.SenderPolicy("svc.example.org", "all-connected"),))
    sessions = [s("a", priority=5), s("b", available=False)]
    d = p.decide(message_facts("chat", full("gone"), JID(None, "svc.example.org")), sessions, cfg,
                 account_exists=True)
    assert delivered(d) == ["a", "b"]
    d = p.decide(message_facts("chat", full("gone"), ALICE), sessions, cfg, account_exists=True)
    assert delivered(d) == ["a"]


# -- sent carbons ---------------------------------------------------------------------------------

def test_sent_carbons() -> None:
    me = full("phone")
    sessions = [s("phone", carbons=True), s("laptop", carbons=True), s("tv"), s("idle", carbons=True, available=False)]
    d = p.decide_sent_carbons(message_facts("chat", ALICE, me), sessions, me)
    assert d == p.Decision((p.DeliverCarbon(full("laptop"), "sent"),), "carbons/sent")
    assert p.decide_sent_carbons(message_facts("chat", ALICE, me, no_copy=True), sessions, me).actions == ()
    assert p.decide_sent_carbons(message_facts("chat", full("laptop"), me), sessions, me).rule == "carbons/sent-self"
    assert p.decide_sent_carbons(message_facts("chat", ALICE, me), [s("phone")], me).rule == "carbons/sent-none"
    assert p.decide_sent_carbons(message_facts("chat", None, me), sessions, me).rule == "carbons/sent"


# -- explain --------------------------------------------------------------------------------------

def test_explain() -> None:
    d = p.decide(message_facts("chat", BOB, ALICE), [s("a", priority=1), s("b", carbons=True)], p.PolicyConfig(),
                 account_exists=True)
    assert p.explain(d) == ("message/bare/top-priority-all: deliver to bob@example.org/a; "
                            "carbon (received) to bob@example.org/b")
    d = p.decide(message_facts("chat", full("gone"), ALICE), [], p.PolicyConfig(), account_exists=True)
    assert p.explain(d) == "message/full-absent/as-bare -> message/offline/store: store offline"
    d = p.decide(StanzaFacts("iq", "get", full("gone")), [], p.PolicyConfig(), account_exists=True)
    assert p.explain(d) == "iq/full-absent/service-unavailable: bounce service-unavailable (cancel)"
    assert p.explain(p.decide(StanzaFacts("presence", "probe", BOB), [], p.PolicyConfig(),
                              account_exists=True)) == "presence/probe/server-answers: drop silently"
    d = p.decide_sent_carbons(message_facts("chat", ALICE, full("a")), [s("b", carbons=True)], full("a"))
    assert p.explain(d) == "carbons/sent: carbon (sent) to bob@example.org/b"
    assert p.explain(p.Decision((), "carbons/sent-none")) == "carbons/sent-none: nothing"


# -- the catalogue and purity ------------------------------------------------------------------------

def test_rule_names_are_unique_and_referenced() -> None:
    names = [r.name for r in p.RULES]
    assert len(names) == len(set(names))
    assert all(r.ref and r.summary for r in p.RULES)
    assert {f"message/bare/{pol}" for pol in p.POLICIES} <= set(names)


@pytest.mark.parametrize("module", [facts_module, p])
def test_sans_io(module: object) -> None:
    """ARCHITECTURE convention 1: no trio, socket, clock or storage; no await."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))  # type: ignore[attr-defined]
    allowed = {"__future__", "dataclasses", "typing", "collections.abc", "meshxmpp.jid", "meshxmpp.routing.facts",
               "meshxmpp.xml", "meshxmpp.xml.element"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= allowed, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            assert node.module in allowed, node.module
        assert not isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncWith | ast.AsyncFor | ast.Global)


@pytest.mark.parametrize("routing", [{"sender": True}, {"sender": "svc.example.org"}, {"sender": {"match": "a"}},
                                     {"policy": ""}])
def test_config_shape_errors(routing: dict[str, object]) -> None:
    with pytest.raises(p.RoutingConfigError):
        p.PolicyConfig.from_routing_config(routing)


@pytest.mark.parametrize("exists", [True, False])
@pytest.mark.parametrize("to", [BOB, full("a")])
def test_not_a_stanza_kind(exists: bool, to: JID) -> None:
    with pytest.raises(ValueError, match="stanza kind"):
        p.decide(StanzaFacts("nonza", "x", to), [s("a")], p.PolicyConfig(), account_exists=exists)
