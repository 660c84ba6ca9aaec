"""Who gets a stanza: one pure function, `decide`, from facts + sessions + config to a `Decision`.

No I/O, no clock, no globals: the same input always gives the same decision, and the router only
executes it. The behaviour is RFC 6121 §8.5 where the RFC says MUST; every choice the RFC leaves
open is a `PolicyConfig` option (see `OPTIONS`), and the bare-JID chat/normal fan-out is one of four
named policies (`POLICIES`), selectable per sender. Message Carbons (XEP-0280) are part of the
decision, so one decision never gives a session two copies.

Layout: the rule catalogue (`RULES`, rendered into docs/routing.md), the config, then `decide` and
its handler tables keyed by (kind, type), one table per addressing (bare / full JID).

Precondition for `decide`: ``sessions`` are the bound sessions of ``facts.to``'s bare JID, with
distinct full JIDs (the session registry and the mesh directory key them that way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.routing.facts import StanzaFacts

__all__ = [
    "BARE", "DEFAULT_POLICY", "FULL", "OPTIONS", "POLICIES", "RULES", "RULES_BY_NAME", "SHOW_RANK", "Action",
    "Bounce", "Decision", "Deliver", "DeliverCarbon", "Drop", "Option", "PolicyConfig", "RoutingConfigError",
    "Rule", "SenderPolicy", "SessionLike", "SessionView", "StoreOffline", "decide", "decide_sent_carbons",
    "explain", "most_available", "select",
]

POLICIES = ("most-available", "top-priority-all", "all-non-negative", "all-connected")
DEFAULT_POLICY = "top-priority-all"


# -- sessions as the routing table sees them -------------------------------------------------------

class SessionLike(Protocol):
    """What `decide` reads from a session: `SessionView`, or a live `c2s.session.Session`."""

    @property
    def jid(self) -> JID: ...
    @property
    def available(self) -> bool: ...
    @property
    def priority(self) -> int: ...
    @property
    def show(self) -> str | None: ...
    @property
    def last_activity(self) -> float: ...
    @property
    def carbons(self) -> bool: ...
    @property
    def interested(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SessionView:
    """A bound session of the recipient, local or on another node (from the mesh directory)."""

    jid: JID  #: full JID
    node: str = "local"
    available: bool = True  #: sent initial presence and not unavailable since
    priority: int = 0
    show: str | None = None  #: None (available) | chat | away | xa | dnd
    last_activity: float = 0.0
    carbons: bool = False  #: XEP-0280 enabled
    interested: bool = False  #: requested the roster (RFC 6121 2.1.6)


# -- decisions -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Deliver:
    """Send the stanza unchanged to this session."""

    jid: JID

    @property
    def session_jid(self) -> JID:
        return self.jid


@dataclass(frozen=True, slots=True)
class DeliverCarbon:
    """Send this session a XEP-0280 copy: direction "received" (inbound) or "sent" (a sibling's)."""

    jid: JID
    direction: str

    @property
    def session_jid(self) -> JID:
        return self.jid


@dataclass(frozen=True, slots=True)
class StoreOffline:
    """Keep it for later delivery (offline storage; for presence subscribe, the pending request)."""


@dataclass(frozen=True, slots=True)
class Bounce:
    """Return a stanza error to the sender (the router never bounces an error)."""

    condition: str = "service-unavailable"
    error_type: str = "cancel"


@dataclass(frozen=True, slots=True)
class Drop:
    """Silently ignore it."""


Action = Deliver | DeliverCarbon | StoreOffline | Bounce | Drop


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    rule: str  #: the name of the rule that fired, one of `RULES`
    via: str | None = None  #: a rule that re-routed the stanza first (absent full JID -> bare)


# -- the rule catalogue (rendered into docs/routing.md) -------------------------------------------

@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    ref: str
    summary: str


RULES: tuple[Rule, ...] = (
    Rule("message/full/deliver", "RFC 6121 8.5.3.1", "a bound resource matches the full JID: deliver to it"),
    Rule("message/full-absent/as-bare", "RFC 6121 8.5.3.2.1", "no resource matches: chat (and types "
         "configured `bare`) is handled as if sent to the bare JID"),
    Rule("message/full-absent/bounce", "RFC 6121 8.5.3.2.1 (b)", "no resource matches: service-unavailable"),
    Rule("message/full-absent/drop", "RFC 6121 8.5.3.2.1 (a)", "no resource matches: silently ignore"),
    Rule("message/error-ignored", "RFC 6121 8.5.2.1.1, 8.5.2.2.1, 8.5.3.2.1",
         "a message of type error is never bounced: silently ignored"),
    Rule("message/bare/groupchat-rejected", "RFC 6121 8.5.2.1.1, 8.5.2.2.1",
         "groupchat to a bare JID: service-unavailable"),
    Rule("message/bare/headline", "RFC 6121 8.5.2.1.1", "headline: every available non-negative resource"),
    Rule("message/bare/headline-all-connected", "policy all-connected",
         "headline: every bound session (a superset of what the RFC requires)"),
    Rule("message/bare/headline-ignored", "RFC 6121 8.5.2.1.1, 8.5.2.2.1",
         "headline with no available non-negative resource: silently ignore"),
    Rule("message/bare/most-available", "RFC 6121 8.5.2.1.1 (a); Openfire default",
         "one session: highest priority, then show, then most recent activity, then JID"),
    Rule("message/bare/top-priority-all", "RFC 6121 8.5.2.1.1 (a); Openfire route.all-resources",
         "every available session tied at the highest non-negative priority"),
    Rule("message/bare/all-non-negative", "RFC 6121 8.5.2.1.1 (b); Openfire route.really-all-resources",
         "every available session with priority >= 0"),
    Rule("message/bare/all-connected", "policy all-connected (beyond RFC 6121)",
         "every bound session, with or without presence, any priority"),
    Rule("message/negative-only/store", "RFC 6121 8.5.2.1.1 (a); XEP-0160",
         "every available resource has a negative priority: store offline"),
    Rule("message/negative-only/bounce", "RFC 6121 8.5.2.1.1 (b)",
         "every available resource has a negative priority: service-unavailable"),
    Rule("message/offline/store", "RFC 6121 8.5.2.2.1; XEP-0160", "no available resource: store offline"),
    Rule("message/offline/bounce", "RFC 6121 8.5.2.2.1", "no available resource: service-unavailable"),
    Rule("message/offline/no-store-hint", "XEP-0334 <no-store/>", "would be stored, but the sender asked "
         "not to: silently ignore"),
    Rule("message/offline/chat-state-only", "XEP-0160 4", "would be stored, but carries only chat states: "
         "silently ignore"),
    Rule("no-such-user/message-bounce", "RFC 6121 8.5.1 (b)", "no such account: service-unavailable"),
    Rule("no-such-user/message-drop", "RFC 6121 8.5.1 (a)", "no such account: silently ignore"),
    Rule("no-such-user/presence-ignored", "RFC 6121 8.5.1", "no such account: presence is silently ignored "
         "(a probe may be answered 'unsubscribed' by the presence module, as for any non-contact)"),
    Rule("no-such-user/iq-service-unavailable", "RFC 6121 8.5.1", "no such account: service-unavailable, "
         "the same answer as for an absent resource"),
    Rule("presence/bare/broadcast", "RFC 6121 8.5.2.1.2", "every available resource, any priority"),
    Rule("presence/bare/none-available", "RFC 6121 8.5.2.2.2", "no available resource: silently ignore"),
    Rule("presence/full/deliver", "RFC 6121 8.5.3.1", "a bound resource matches: deliver to it"),
    Rule("presence/full-absent/ignored", "RFC 6121 8.5.3.2.2", "no resource matches: silently ignore"),
    Rule("presence/subscribe/deliver", "RFC 6121 3.1.3", "subscription request: every available resource"),
    Rule("presence/subscribe/hold", "RFC 6121 3.1.3", "no available resource: keep the request and "
         "deliver it when one becomes available"),
    Rule("presence/subscription/interested", "RFC 6121 3.1.6, 3.2.3, 3.3.3",
         "subscribed / unsubscribe / unsubscribed: every interested resource"),
    Rule("presence/subscription/none-interested", "RFC 6121 3.1.6, 3.2.3, 3.3.3",
         "no interested resource: nothing to deliver (the roster is updated by the subscription module)"),
    Rule("presence/probe/server-answers", "RFC 6121 4.3.2", "a probe is answered by the server on behalf "
         "of the account, never delivered to a resource"),
    Rule("presence/invalid-type", "RFC 6120 8.3.3.1", "unknown presence type: bad-request"),
    Rule("iq/full/deliver", "RFC 6121 8.5.3.1", "a bound resource matches: deliver to it"),
    Rule("iq/full-absent/service-unavailable", "RFC 6121 8.5.3.2.3", "no resource matches: service-unavailable"),
    Rule("iq/bare/service-unavailable", "RFC 6121 8.5.2.1.3, 8.5.2.2.3", "the server answers for the "
         "account; a request no feature answered gets service-unavailable"),
    Rule("iq/response-ignored", "RFC 6120 8.2.3", "a result or error with nowhere to go: silently ignore"),
    Rule("iq/invalid-type", "RFC 6120 8.2.3", "unknown iq type: bad-request"),
    Rule("carbons/sent", "XEP-0280 7", "copies of what a session sends, to its carbons-enabled siblings"),
    Rule("carbons/sent-none", "XEP-0280 6, 7", "not eligible, <private/> or <no-copy/>, or no "
         "carbons-enabled sibling: no copy"),
    Rule("carbons/sent-self", "XEP-0280 7", "sent to the user's own account: the inbound decision makes the "
         "copies, so none here (never two copies)"),
)
RULES_BY_NAME: Mapping[str, Rule] = {r.name: r for r in RULES}

# -- configuration ---------------------------------------------------------------------------------


class RoutingConfigError(ValueError):
    """A `[routing]` setting is invalid; ``key`` is its path, e.g. ``routing.sender[0].policy``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    choices: tuple[Any, ...]
    ref: str
    summary: str


#: Every open choice, as data: validation, `from_routing_config` and the docs all read this.
OPTIONS: tuple[Option, ...] = (
    Option("policy", POLICIES, "RFC 6121 8.5.2.1.1", "who gets a chat/normal message sent to the bare JID"),
    Option("all_negative", ("store", "bounce"), "RFC 6121 8.5.2.1.1",
           "chat/normal to the bare JID when every available resource has a negative priority"),
    Option("no_available", ("store", "bounce"), "RFC 6121 8.5.2.2.1",
           "chat/normal to the bare JID when no resource is available"),
    Option("absent_normal", ("bounce", "drop", "bare"), "RFC 6121 8.5.3.2.1",
           "normal message to a full JID that is not bound (`bare`: as ejabberd/Prosody, beyond the RFC)"),
    Option("absent_headline", ("drop", "bounce", "bare"), "RFC 6121 8.5.3.2.1",
           "headline to a full JID that is not bound"),
    Option("absent_groupchat", ("bounce", "drop"), "RFC 6121 8.5.3.2.1; XEP-0045",
           "groupchat to a full JID that is not bound (the error lets a room drop a ghost occupant)"),
    Option("unknown_user", ("bounce", "drop"), "RFC 6121 8.5.1",
           "message to an account that does not exist (`drop` hides which accounts exist)"),
    Option("store_chat_states", (False, True), "XEP-0160 4", "store chat-state-only messages offline"),
)
_OPTION_KEYS = frozenset(o.key for o in OPTIONS)


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """`[[routing.sender]]`: ``match`` is a domain (``servicex.example.org``: the domain itself and
    every account on it; ``*@servicex.example.org`` means the same), a wildcard (``*.example.org``:
    subdomains only) or a bare JID (``bot@example.org``)."""

    match: str
    policy: str


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    policy: str = DEFAULT_POLICY
    sender: tuple[SenderPolicy, ...] = ()
    all_negative: str = "store"
    no_available: str = "store"
    absent_normal: str = "bounce"
    absent_headline: str = "drop"
    absent_groupchat: str = "bounce"
    unknown_user: str = "bounce"
    store_chat_states: bool = False
    # Lookup tables for `policy_for`, built once from ``sender``.
    _by_jid: dict[tuple[str | None, str], str] = field(init=False, repr=False, compare=False)
    _by_domain: dict[str, str] = field(init=False, repr=False, compare=False)
    _by_suffix: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for opt in OPTIONS:
            value = getattr(self, opt.key)
            if value not in opt.choices or type(value) is not type(opt.choices[0]):
                raise RoutingConfigError(f"routing.{opt.key}", f"{value!r} is not one of {list(opt.choices)}")
        by_jid: dict[tuple[str | None, str], str] = {}
        by_domain: dict[str, str] = {}
        suffixes: list[tuple[str, str]] = []
        for i, rule in enumerate(self.sender):
            key = f"routing.sender[{i}]"
            if rule.policy not in POLICIES:
                raise RoutingConfigError(f"{key}.policy", f"{rule.policy!r} is not one of {list(POLICIES)}")
            match = rule.match
            if isinstance(match, str) and match.startswith("*@"):
                match = match[2:]
            wildcard = isinstance(match, str) and match.startswith("*.")
            try:
                jid = JID.parse(match[2:] if wildcard else match)
            except (InvalidJID, TypeError, AttributeError):
                jid = None
            if jid is None or jid.resource is not None or (wildcard and jid.local is not None):
                raise RoutingConfigError(f"{key}.match", f"{rule.match!r} is not a domain, *.domain or bare JID")
            if wildcard:
                suffixes.append(("." + jid.domain, rule.policy))
            elif jid.local is None:
                by_domain.setdefault(jid.domain, rule.policy)
            else:
                by_jid.setdefault((jid.local, jid.domain), rule.policy)
        suffixes.sort(key=lambda s: -len(s[0]))  # stable: the longest suffix wins, then the first listed
        object.__setattr__(self, "_by_jid", by_jid)
        object.__setattr__(self, "_by_domain", by_domain)
        object.__setattr__(self, "_by_suffix", tuple(suffixes))

    def policy_for(self, sender: JID | None) -> str:
        """The bare-JID policy for messages from ``sender``: bare JID match, then exact domain, then
        the longest ``*.`` suffix, then ``policy``."""
        if sender is None or not self.sender:
            return self.policy
        if self._by_jid:
            found = self._by_jid.get((sender.local, sender.domain))
            if found is not None:
                return found
        found = self._by_domain.get(sender.domain)
        if found is not None:
            return found
        for suffix, policy in self._by_suffix:
            if sender.domain.endswith(suffix):
                return policy
        return self.policy

    @classmethod
    def from_routing_config(cls, routing: Mapping[str, Any] | None) -> PolicyConfig:
        """Build from the ``[routing]`` table: ``policy``, ``sender`` (list of {match, policy}), the
        `OPTIONS` keys, and the Openfire aliases ``route.all-resources`` / ``route.really-all-resources``
        (also accepted as an unquoted TOML dotted key, i.e. a nested ``route`` table). An alias set to
        true decides the policy (false changes nothing); an explicit non-default ``policy`` that
        contradicts it is an error."""
        d = dict(routing or {})
        route = d.pop("route", None)
        if route is not None:
            if not isinstance(route, Mapping):
                raise RoutingConfigError("routing.route", "expected route.all-resources / route.really-all-resources")
            for k, v in route.items():
                d.setdefault(f"route.{k}", v)
        aliases: dict[str, bool | None] = {}
        for key in ("route.all-resources", "route.really-all-resources"):
            value = d.pop(key, None)
            if value is not None and not isinstance(value, bool):
                raise RoutingConfigError(f"routing.{key}", f"expected true or false, not {value!r}")
            aliases[key] = value
        policy = d.pop("policy", None)
        if policy is not None and not isinstance(policy, str):
            raise RoutingConfigError("routing.policy", f"expected one of {list(POLICIES)}")
        # Only `true` means something: the config module passes both keys, false when unset.
        implied, alias = None, ""
        if aliases["route.really-all-resources"]:  # Openfire checks this one first
            implied, alias = "all-non-negative", "route.really-all-resources"
        elif aliases["route.all-resources"]:
            implied, alias = "top-priority-all", "route.all-resources"
        if implied is not None:
            if policy not in (None, DEFAULT_POLICY, implied):
                raise RoutingConfigError("routing.policy", f"{policy!r} contradicts {alias} = true, "
                                         f"which means {implied!r}")
            policy = implied
        senders = []
        entries = d.pop("sender", None)
        if entries is None:
            entries = ()
        elif isinstance(entries, str | bytes | Mapping) or not isinstance(entries, Sequence):
            raise RoutingConfigError("routing.sender", "expected a list of [[routing.sender]] tables")
        for i, entry in enumerate(entries):
            key = f"routing.sender[{i}]"
            if not isinstance(entry, Mapping):
                raise RoutingConfigError(key, "expected a table with match and policy")
            extra = set(entry) - {"match", "policy"}
            if extra:
                raise RoutingConfigError(f"{key}.{sorted(extra)[0]}", "unknown key (expected match, policy)")
            for part in ("match", "policy"):
                if not isinstance(entry.get(part), str):
                    raise RoutingConfigError(f"{key}.{part}", "required, a string")
            senders.append(SenderPolicy(entry["match"], entry["policy"]))
        for key in d:
            if key not in _OPTION_KEYS:
                raise RoutingConfigError(f"routing.{key}", "unknown key")
        return cls(policy=DEFAULT_POLICY if policy is None else policy, sender=tuple(senders), **d)


# -- deciding -------------------------------------------------------------------------------------

_DROP = Drop()
_STORE = StoreOffline()
_UNAVAILABLE = Bounce("service-unavailable", "cancel")
_BAD_REQUEST = Bounce("bad-request", "modify")


def _fixed(action: Action, rule: str) -> Decision:
    assert rule in RULES_BY_NAME, rule
    return Decision((action,), rule)


_ERROR_IGNORED = _fixed(_DROP, "message/error-ignored")
_GROUPCHAT_REJECTED = _fixed(_UNAVAILABLE, "message/bare/groupchat-rejected")
_HEADLINE_IGNORED = _fixed(_DROP, "message/bare/headline-ignored")
_ABSENT = {"bounce": _fixed(_UNAVAILABLE, "message/full-absent/bounce"),
           "drop": _fixed(_DROP, "message/full-absent/drop")}
_UNKNOWN_USER = {"bounce": _fixed(_UNAVAILABLE, "no-such-user/message-bounce"),
                 "drop": _fixed(_DROP, "no-such-user/message-drop")}
_UNKNOWN_USER_PRESENCE = _fixed(_DROP, "no-such-user/presence-ignored")
_UNKNOWN_USER_IQ = _fixed(_UNAVAILABLE, "no-such-user/iq-service-unavailable")
_NO_STORE = _fixed(_DROP, "message/offline/no-store-hint")
_CHAT_STATE_ONLY = _fixed(_DROP, "message/offline/chat-state-only")
_PRESENCE_NONE = _fixed(_DROP, "presence/bare/none-available")
_PRESENCE_ABSENT = _fixed(_DROP, "presence/full-absent/ignored")
_SUBSCRIBE_HOLD = _fixed(_STORE, "presence/subscribe/hold")
_SUBSCRIPTION_NONE = _fixed(_DROP, "presence/subscription/none-interested")
_PROBE = _fixed(_DROP, "presence/probe/server-answers")
_PRESENCE_INVALID = _fixed(_BAD_REQUEST, "presence/invalid-type")
_IQ_ABSENT = _fixed(_UNAVAILABLE, "iq/full-absent/service-unavailable")
_IQ_BARE = _fixed(_UNAVAILABLE, "iq/bare/service-unavailable")
_IQ_RESPONSE = _fixed(_DROP, "iq/response-ignored")
_IQ_INVALID = _fixed(_BAD_REQUEST, "iq/invalid-type")
_SENT_NONE = Decision((), "carbons/sent-none")
_SENT_SELF = Decision((), "carbons/sent-self")
_POLICY_RULE = {p: f"message/bare/{p}" for p in POLICIES}
_NEGATIVE = {"store": "message/negative-only/store", "bounce": "message/negative-only/bounce"}
_OFFLINE = {"store": "message/offline/store", "bounce": "message/offline/bounce"}

#: Openfire's order: chat > available (no show) > away > xa > dnd; unknown values rank as available.
SHOW_RANK: Mapping[str | None, int] = {"chat": 4, None: 3, "away": 2, "xa": 1, "dnd": 0}


def most_available(sessions: Sequence[SessionLike]) -> SessionLike | None:
    """The available non-negative session with the highest (priority, show, last activity); ties
    go to the smallest full JID string, so the pick never depends on the order of ``sessions``."""
    best: SessionLike | None = None
    best_key: tuple[int, int, float] = (0, 0, 0.0)
    for s in sessions:
        if not s.available or s.priority < 0:
            continue
        activity = s.last_activity
        if activity != activity:  # NaN would make the order depend on the list order
            activity = float("-inf")
        key = (s.priority, SHOW_RANK.get(s.show, 3), activity)
        if best is None or key > best_key or (key == best_key and str(s.jid) < str(best.jid)):
            best, best_key = s, key
    return best


def select(policy: str, sessions: Sequence[SessionLike]) -> list[SessionLike]:
    """The sessions that get a chat/normal message sent to the bare JID under ``policy``."""
    if policy == "top-priority-all":
        top = -1
        for s in sessions:
            if s.available and s.priority > top:
                top = s.priority
        return [s for s in sessions if s.available and s.priority == top] if top >= 0 else []
    if policy == "all-non-negative":
        return [s for s in sessions if s.available and s.priority >= 0]
    if policy == "all-connected":
        return list(sessions)
    best = most_available(sessions)
    return [] if best is None else [best]


def _received_carbons(actions: list[Action], sessions: Sequence[SessionLike],
                      originals: Sequence[SessionLike], sender: JID | None) -> None:
    # XEP-0280 6: a copy to each carbons-enabled (available) resource that did not get the original,
    # except the sender itself (a message between two resources of one account).
    for s in sessions:
        if s.carbons and s.available and s.jid != sender:
            for t in originals:
                if t is s:
                    break
            else:
                actions.append(DeliverCarbon(s.jid, "received"))


def _bare_chat(facts: StanzaFacts, sessions: Sequence[SessionLike], cfg: PolicyConfig,
               via: str | None = None) -> Decision:
    policy = cfg.policy_for(facts.sender)
    targets = select(policy, sessions)
    actions: list[Action]
    if targets:
        actions = [Deliver(s.jid) for s in targets]
        rule = _POLICY_RULE[policy]
    else:
        # all-connected found no session at all, so "negative only" never applies to it.
        if any(s.available for s in sessions):
            mode, rules = cfg.all_negative, _NEGATIVE
        else:
            mode, rules = cfg.no_available, _OFFLINE
        if mode == "bounce":
            return Decision((_UNAVAILABLE,), rules["bounce"], via)
        if facts.no_store:
            return Decision(_NO_STORE.actions, _NO_STORE.rule, via)
        if facts.chat_state_only and not facts.store_hint and not cfg.store_chat_states:
            return Decision(_CHAT_STATE_ONLY.actions, _CHAT_STATE_ONLY.rule, via)
        actions = [_STORE]
        rule = rules["store"]
    if facts.carbon_eligible and not facts.private and not facts.no_copy:
        _received_carbons(actions, sessions, targets, facts.sender)
    return Decision(tuple(actions), rule, via)


def _bare_headline(facts: StanzaFacts, sessions: Sequence[SessionLike], cfg: PolicyConfig,
                   via: str | None = None) -> Decision:
    if cfg.policy_for(facts.sender) == "all-connected":
        targets = list(sessions)
        rule = "message/bare/headline-all-connected"
    else:
        targets = [s for s in sessions if s.available and s.priority >= 0]
        rule = "message/bare/headline"
    if not targets:
        return _HEADLINE_IGNORED if via is None else Decision(_HEADLINE_IGNORED.actions, _HEADLINE_IGNORED.rule, via)
    return Decision(tuple(Deliver(s.jid) for s in targets), rule, via)


# Handlers: (facts, sessions, matching session or None, cfg) -> Decision
Handler = Callable[[StanzaFacts, Sequence[SessionLike], "SessionLike | None", PolicyConfig], Decision]
_AS_BARE = "message/full-absent/as-bare"


def _const(decision: Decision) -> Handler:
    return lambda facts, sessions, target, cfg: decision


def _absent_message(option: str, as_bare: Callable[..., Decision]) -> Handler:
    def handler(facts: StanzaFacts, sessions: Sequence[SessionLike], target: SessionLike | None,
                cfg: PolicyConfig) -> Decision:
        mode = getattr(cfg, option) if option else "bare"
        if mode == "bare":
            return as_bare(facts, sessions, cfg, _AS_BARE)
        return _ABSENT[mode]
    return handler


def _to_target(rule: str, absent: Decision) -> Handler:
    def handler(facts: StanzaFacts, sessions: Sequence[SessionLike], target: SessionLike | None,
                cfg: PolicyConfig) -> Decision:
        return absent if target is None else Decision((Deliver(target.jid),), rule)
    return handler


def _to_all(rule: str, none: Decision, pick: Callable[[SessionLike], bool]) -> Handler:
    def handler(facts: StanzaFacts, sessions: Sequence[SessionLike], target: SessionLike | None,
                cfg: PolicyConfig) -> Decision:
        actions = tuple(Deliver(s.jid) for s in sessions if pick(s))
        return Decision(actions, rule) if actions else none
    return handler


def _is_available(s: SessionLike) -> bool:
    return s.available


def _is_interested(s: SessionLike) -> bool:
    return s.interested


_SUBSCRIBE = _to_all("presence/subscribe/deliver", _SUBSCRIBE_HOLD, _is_available)
_SUBSCRIPTION = _to_all("presence/subscription/interested", _SUBSCRIPTION_NONE, _is_interested)
_BROADCAST = _to_all("presence/bare/broadcast", _PRESENCE_NONE, _is_available)
_PRESENCE_SUBSCRIPTIONS: dict[str, Handler] = {
    "subscribe": _SUBSCRIBE, "subscribed": _SUBSCRIPTION, "unsubscribe": _SUBSCRIPTION,
    "unsubscribed": _SUBSCRIPTION, "probe": _const(_PROBE),
}

#: Bare JID: (kind, type) -> handler. Subscription presence and probes are about the account, so
#: they are handled the same for a bare and a full JID (RFC 6121 3, 4.3).
BARE: Mapping[tuple[str, str], Handler] = {
    ("message", "chat"): lambda f, ss, t, c: _bare_chat(f, ss, c),
    ("message", "normal"): lambda f, ss, t, c: _bare_chat(f, ss, c),
    ("message", "headline"): lambda f, ss, t, c: _bare_headline(f, ss, c),
    ("message", "groupchat"): _const(_GROUPCHAT_REJECTED),
    ("message", "error"): _const(_ERROR_IGNORED),
    ("presence", "available"): _BROADCAST,
    ("presence", "unavailable"): _BROADCAST,
    ("presence", "error"): _BROADCAST,
    **{("presence", t): h for t, h in _PRESENCE_SUBSCRIPTIONS.items()},
    ("iq", "get"): _const(_IQ_BARE),
    ("iq", "set"): _const(_IQ_BARE),
    ("iq", "result"): _const(_IQ_RESPONSE),
    ("iq", "error"): _const(_IQ_RESPONSE),
}

#: Full JID, called with the matching session (or None when that resource is not bound).
FULL: Mapping[tuple[str, str], Handler] = {
    ("message", "chat"): _absent_message("", _bare_chat),
    ("message", "normal"): _absent_message("absent_normal", _bare_chat),
    ("message", "headline"): _absent_message("absent_headline", _bare_headline),
    ("message", "groupchat"): _absent_message("absent_groupchat", _bare_chat),
    ("message", "error"): _const(_ERROR_IGNORED),
    ("presence", "available"): _to_target("presence/full/deliver", _PRESENCE_ABSENT),
    ("presence", "unavailable"): _to_target("presence/full/deliver", _PRESENCE_ABSENT),
    ("presence", "error"): _to_target("presence/full/deliver", _PRESENCE_ABSENT),
    **{("presence", t): h for t, h in _PRESENCE_SUBSCRIPTIONS.items()},
    ("iq", "get"): _to_target("iq/full/deliver", _IQ_ABSENT),
    ("iq", "set"): _to_target("iq/full/deliver", _IQ_ABSENT),
    ("iq", "result"): _to_target("iq/full/deliver", _IQ_RESPONSE),
    ("iq", "error"): _to_target("iq/full/deliver", _IQ_RESPONSE),
}

_INVALID = {"presence": _PRESENCE_INVALID, "iq": _IQ_INVALID}


def _invalid(facts: StanzaFacts) -> Decision:
    try:
        return _INVALID[facts.kind]
    except KeyError:
        raise ValueError(f"not a stanza kind: {facts.kind!r}") from None


def _no_such_user(facts: StanzaFacts, cfg: PolicyConfig) -> Decision:
    # RFC 6121 8.5.1. The answers match those for an existing account with no resource, so they
    # leak neither presence nor (for iq) existence.
    kind = facts.kind
    if kind == "message":
        return _ERROR_IGNORED if facts.type == "error" else _UNKNOWN_USER[cfg.unknown_user]
    if kind == "presence":
        return _UNKNOWN_USER_PRESENCE if ("presence", facts.type) in BARE else _PRESENCE_INVALID
    if kind != "iq":
        return _invalid(facts)
    if facts.type in ("get", "set"):
        return _UNKNOWN_USER_IQ
    return _IQ_RESPONSE if facts.type in ("result", "error") else _IQ_INVALID


def decide(facts: StanzaFacts, sessions: Sequence[SessionLike], cfg: PolicyConfig, *,
           account_exists: bool) -> Decision:
    """Decide what happens to a stanza addressed to a user's bare or full JID on this domain.

    ``sessions`` are all bound sessions of that user (any node); ``account_exists`` tells whether
    the account exists (only asked of storage when ``sessions`` is empty). An iq to a bare JID is
    the server's to answer on the account's behalf: the router asks only when no feature did.
    """
    to = facts.to
    if to is None or to.local is None:
        raise ValueError("decide() routes stanzas addressed to a user's JID")
    if not account_exists:
        return _no_such_user(facts, cfg)
    resource = to.resource
    if resource is None:
        handler = BARE.get((facts.kind, facts.type))
        if handler is None:
            if facts.kind == "message":  # StanzaFacts from elsewhere may carry any type
                return _bare_chat(facts, sessions, cfg)
            return _invalid(facts)
        return handler(facts, sessions, None, cfg)
    target = None
    for s in sessions:
        if s.jid.resource == resource:
            target = s
            break
    if target is not None and facts.kind == "message":
        # The hot path: one delivery, plus carbons when the message is eligible (XEP-0280 6).
        deliver = Deliver(target.jid)
        if facts.carbon_eligible and not facts.private and not facts.no_copy:
            actions: list[Action] = [deliver]
            _received_carbons(actions, sessions, (target,), facts.sender)
            return Decision(tuple(actions), "message/full/deliver")
        return Decision((deliver,), "message/full/deliver")
    handler = FULL.get((facts.kind, facts.type))
    if handler is None:
        if facts.kind == "message":
            return _bare_chat(facts, sessions, cfg, _AS_BARE) if target is None else \
                Decision((Deliver(target.jid),), "message/full/deliver")
        return _invalid(facts)
    return handler(facts, sessions, target, cfg)


def decide_sent_carbons(facts: StanzaFacts, sender_sessions: Sequence[SessionLike],
                        sender_full_jid: JID) -> Decision:
    """XEP-0280 7: the <sent/> copies for a message one of the user's sessions sent. The actions
    are only `DeliverCarbon` (possibly none); the message itself is routed by `decide`."""
    if not (facts.carbon_eligible and not facts.private and not facts.no_copy):
        return _SENT_NONE
    to = facts.to
    if to is not None and to.local == sender_full_jid.local and to.domain == sender_full_jid.domain:
        return _SENT_SELF
    copies = tuple(DeliverCarbon(s.jid, "sent") for s in sender_sessions
                   if s.carbons and s.available and s.jid != sender_full_jid)
    return Decision(copies, "carbons/sent") if copies else _SENT_NONE


def explain(decision: Decision) -> str:
    """One line for logs and ``meshxmpp explain``: the rule, then what happens."""
    delivered = [str(a.jid) for a in decision.actions if isinstance(a, Deliver)]
    parts = []
    if delivered:
        parts.append("deliver to " + ", ".join(delivered))
    for direction in ("received", "sent"):
        copies = [str(a.jid) for a in decision.actions if isinstance(a, DeliverCarbon) and a.direction == direction]
        if copies:
            parts.append(f"carbon ({direction}) to " + ", ".join(copies))
    for a in decision.actions:
        if isinstance(a, StoreOffline):
            parts.append("store offline")
        elif isinstance(a, Bounce):
            parts.append(f"bounce {a.condition} ({a.error_type})")
        elif isinstance(a, Drop):
            parts.append("drop silently")
    rule = decision.rule if decision.via is None else f"{decision.via} -> {decision.rule}"
    return f"{rule}: {'; '.join(parts) or 'nothing'}"
