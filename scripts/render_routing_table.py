"""Render the generated parts of docs/routing.md from meshxmpp.routing.policy.

    python scripts/render_routing_table.py           # rewrite the generated blocks in place
    python scripts/render_routing_table.py --check   # exit 1 if the committed docs are stale

Every cell of the decision tables is the output of `policy.decide` on the scenario of its row, so
the docs cannot drift from the code; tests/routing/test_routing_doc.py runs the check, and
tests/routing/test_policy_table.py holds the expected value of every cell, written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from meshxmpp.jid import JID
from meshxmpp.routing import policy as p
from meshxmpp.routing.facts import StanzaFacts, message_facts

DOC = Path(__file__).resolve().parent.parent / "docs" / "routing.md"
USER = JID("bob", "example.org")
SENDER = JID("alice", "example.net", "home")
SERVICE_X = JID(None, "servicex.example.org")


def _session(resource: str, **kw: object) -> p.SessionView:
    return p.SessionView(JID(USER.local, USER.domain, resource), **kw)  # type: ignore[arg-type]


PHONE = _session("phone", priority=5, last_activity=300.0, interested=True)
TABLET = _session("tablet", priority=5, show="away", last_activity=400.0)
LAPTOP = _session("laptop", priority=1, last_activity=500.0, interested=True)
BOT = _session("bot", priority=-1, last_activity=100.0)
DESK = _session("desk", available=False, interested=True)


def _carbons(s: p.SessionView) -> p.SessionView:
    return p.SessionView(s.jid, s.node, s.available, s.priority, s.show, s.last_activity, True, s.interested)


@dataclass(frozen=True)
class State:
    key: str
    label: str
    sessions: tuple[p.SessionView, ...]
    account_exists: bool = True


STATES = {s.key: s for s in (
    State("no-account", "no such account", (), account_exists=False),
    State("none", "no session", ()),
    State("desk", "desk (bound, no presence)", (DESK,)),
    State("bot", "bot (-1)", (BOT,)),
    State("laptop", "laptop (1)", (LAPTOP,)),
    State("tied", "phone (5), tablet (5, away)", (PHONE, TABLET)),
    State("all", "all five", (PHONE, TABLET, LAPTOP, BOT, DESK)),
    State("all+c", "all five; laptop, bot, desk have carbons", (PHONE, TABLET, _carbons(LAPTOP), _carbons(BOT),
                                                                  _carbons(DESK))),
)}

STATE_LEGEND = (
    "Sessions of `bob@example.org` in the rows below: **phone** (available, priority 5, no show, active at "
    "300, interested in roster), **tablet** (available, 5, away, active at 400), **laptop** (available, 1, "
    "active at 500, interested), **bot** (available, -1), **desk** (bound, no initial presence, interested). "
    "\"all five\" is all of them; cells name the sessions that get the stanza; `carbons:` lists XEP-0280 "
    "`<received/>` copies; `store` is offline storage (for a subscription request: kept until a resource "
    "is available); `error X` bounces with that condition; `drop` ignores silently."
)


@dataclass(frozen=True)
class Row:
    id: str
    to: str
    type: str
    state: str
    facts: StanzaFacts


def _to(addr: str) -> JID:
    return USER if addr == "bare" else JID(USER.local, USER.domain, addr)


def _label(addr: str) -> str:
    return "bare" if addr == "bare" else f"full ({addr})"


_MESSAGE_VARIANTS: dict[str, tuple[str, Callable[[JID], StanzaFacts]]] = {
    "private": ("chat + `<private/>`", lambda to: message_facts("chat", to, SENDER, private=True)),
    "no-copy": ("chat + `<no-copy/>`", lambda to: message_facts("chat", to, SENDER, no_copy=True)),
    "no-store": ("chat + `<no-store/>`", lambda to: message_facts("chat", to, SENDER, no_store=True)),
    "states": ("chat, chat states only", lambda to: message_facts(
        "chat", to, SENDER, has_body=False, chat_state_only=True)),
    "states-store": ("chat, chat states only + `<store/>`", lambda to: message_facts(
        "chat", to, SENDER, has_body=False, chat_state_only=True, store_hint=True)),
    "nobody": ("normal, no body", lambda to: message_facts("normal", to, SENDER, has_body=False)),
}


def _message_rows(addr: str, types: Sequence[str], states: Sequence[str]) -> Iterator[Row]:
    for t in types:
        for st in states:
            if t in _MESSAGE_VARIANTS:
                label, build = _MESSAGE_VARIANTS[t]
                facts = build(_to(addr))
            else:
                label, facts = t, message_facts(t, _to(addr), SENDER)
            yield Row(f"m-{addr}-{t}-{st}", _label(addr), label, st, facts)


def _rows(kind: str, addr: str, types: Sequence[str], states: Sequence[str]) -> Iterator[Row]:
    for t in types:
        for st in states:
            yield Row(f"{kind[0]}-{addr}-{t}-{st}", _label(addr), t, st, StanzaFacts(kind, t, _to(addr), SENDER))


_MSG = ("chat", "normal", "headline", "groupchat", "error")
_ALL_STATES = tuple(STATES)
_PRESENCE = ("available", "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe",
             "error", "bogus")
_IQ = ("get", "set", "result", "error")

SECTIONS: dict[str, tuple[Row, ...]] = {
    "messages-bare": (
        *_message_rows("bare", _MSG, _ALL_STATES),
        *_message_rows("bare", ("private", "nobody"), ("all+c",)),
        *_message_rows("bare", ("no-store", "states", "states-store"), ("none",)),
    ),
    "messages-full": (
        *_message_rows("phone", _MSG, ("all", "all+c")),
        *_message_rows("phone", ("private", "no-copy"), ("all+c",)),
        *_message_rows("desk", ("chat",), ("all+c",)),
        *_message_rows("bot", ("chat",), ("all",)),
        *_message_rows("gone", _MSG, ("no-account", "none", "all", "all+c")),
    ),
    "presence": (
        *_rows("presence", "bare", _PRESENCE, ("no-account", "none", "all")),
        *_rows("presence", "bare", ("available", "subscribe"), ("desk",)),
        *_rows("presence", "phone", ("available", "unavailable", "subscribe", "subscribed", "probe", "error"),
               ("all",)),
        *_rows("presence", "desk", ("available",), ("all",)),
        *_rows("presence", "gone", ("available", "unavailable", "subscribe", "subscribed", "probe", "error"),
               ("all",)),
    ),
    "iq": (
        *_rows("iq", "bare", _IQ, ("no-account", "all")),
        *_rows("iq", "phone", _IQ, ("all",)),
        *_rows("iq", "gone", _IQ, ("no-account", "all")),
    ),
}


def config_for(policy: str) -> p.PolicyConfig:
    return p.PolicyConfig(policy=policy)


def decide_row(row: Row, cfg: p.PolicyConfig) -> p.Decision:
    state = STATES[row.state]
    return p.decide(row.facts, state.sessions, cfg, account_exists=state.account_exists)


def cell(decision: p.Decision) -> str:
    """A decision in a table cell: who gets it, then carbons, then store / error / drop."""
    delivered = [str(a.jid.resource) for a in decision.actions if isinstance(a, p.Deliver)]
    copies = [f"{a.jid.resource}" + ("" if a.direction == "received" else " (sent)")
              for a in decision.actions if isinstance(a, p.DeliverCarbon)]
    parts = [", ".join(delivered)] if delivered else []
    if copies:
        parts.append("carbons: " + ", ".join(copies))
    for a in decision.actions:
        if isinstance(a, p.StoreOffline):
            parts.append("store")
        elif isinstance(a, p.Bounce):
            parts.append(f"error {a.condition}")
        elif isinstance(a, p.Drop):
            parts.append("drop")
    return "; ".join(parts) or "nothing"


def rule_cell(decisions: Sequence[p.Decision], policies: Sequence[str] = p.POLICIES) -> str:
    """The rule(s) behind a row: one name, ``message/bare/{policy}`` when the rule is the policy's
    own, or each distinct name; a re-routing rule comes first (``via``, then ``rule``)."""
    names = [d.rule for d in decisions]
    if len(set(names)) == 1:
        rules = names[:1]
    elif len(names) == len(policies) and all(n.endswith(pol) for n, pol in zip(names, policies, strict=True)) and \
            len(stems := {n[: -len(pol)] for n, pol in zip(names, policies, strict=True)}) == 1:
        rules = [stems.pop() + "{policy}"]
    else:
        rules = list(dict.fromkeys(names))
    text = " / ".join(f"`{r}`" for r in rules)
    vias = sorted({d.via for d in decisions if d.via is not None})
    return ", then ".join([*(f"`{v}`" for v in vias), text])


def _md(text: str) -> str:
    """XML in prose as code, so markdown shows it instead of swallowing it as HTML."""
    return re.sub(r"(?<!`)(<[a-z][^>]*>)(?!`)", r"`\1`", text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_section(name: str) -> str:
    configs = [config_for(pol) for pol in p.POLICIES]
    out = []
    for row in SECTIONS[name]:
        decisions = [decide_row(row, cfg) for cfg in configs]
        out.append([row.id, row.to, row.type, STATES[row.state].label, *(cell(d) for d in decisions),
                    rule_cell(decisions)])
    return _table(["row", "to", "type", "recipient", *p.POLICIES, "rule"], out)


SENT_ROWS: tuple[tuple[str, str, JID, StanzaFacts], ...] = (
    ("s-chat", "chat from phone to alice", PHONE.jid, message_facts("chat", SENDER.bare, PHONE.jid)),
    ("s-chat-from-laptop", "chat from laptop to alice", LAPTOP.jid, message_facts("chat", SENDER.bare, LAPTOP.jid)),
    ("s-private", "chat + `<private/>` from phone", PHONE.jid,
     message_facts("chat", SENDER.bare, PHONE.jid, private=True)),
    ("s-nobody", "normal without body from phone", PHONE.jid,
     message_facts("normal", SENDER.bare, PHONE.jid, has_body=False)),
    ("s-groupchat", "groupchat from phone", PHONE.jid,
     message_facts("groupchat", JID("room", "conference.example.org"), PHONE.jid)),
    ("s-self", "chat from phone to bob@example.org", PHONE.jid, message_facts("chat", USER, PHONE.jid)),
)


def render_sent() -> str:
    sessions = STATES["all+c"].sessions
    rows = []
    for row_id, label, sender, facts in SENT_ROWS:
        d = p.decide_sent_carbons(facts, sessions, sender)
        copies = ", ".join(str(a.jid.resource) for a in d.actions if isinstance(a, p.DeliverCarbon)) or "none"
        rows.append([row_id, label, copies, f"`{d.rule}`"])
    return _table(["row", "bob sends", "`<sent/>` copies (all five; laptop, bot, desk have carbons)", "rule"],
                  rows)


OVERRIDE_CONFIG = p.PolicyConfig(policy="top-priority-all",
                                 sender=(p.SenderPolicy("servicex.example.org", "all-connected"),))
OVERRIDE_ROWS: tuple[tuple[str, str, StanzaFacts], ...] = (
    ("o-person", "chat from alice@example.net", message_facts("chat", USER, SENDER)),
    ("o-service", "chat from servicex.example.org", message_facts("chat", USER, SERVICE_X)),
    ("o-service-headline", "headline from servicex.example.org", message_facts("headline", USER, SERVICE_X)),
    ("o-service-full", "chat from servicex.example.org to bob/gone",
     message_facts("chat", JID(USER.local, USER.domain, "gone"), SERVICE_X)),
)


def render_override() -> str:
    sessions = STATES["all"].sessions
    rows = []
    for row_id, label, facts in OVERRIDE_ROWS:
        d = p.decide(facts, sessions, OVERRIDE_CONFIG, account_exists=True)
        rows.append([row_id, label, cell(d), rule_cell([d])])
    return _table(["row", "message to bob (all five sessions)", "who gets it", "rule"], rows)


def render_options() -> str:
    defaults = p.PolicyConfig()
    rows = []
    for opt in p.OPTIONS:
        values = " \\| ".join(f"`{_toml(v)}`" for v in opt.choices)
        rows.append([f"`{opt.key}`", values, f"`{_toml(getattr(defaults, opt.key))}`", _md(opt.ref), _md(opt.summary)])
    assert {f.name for f in fields(p.PolicyConfig) if not f.name.startswith("_")} == \
        {o.key for o in p.OPTIONS} | {"sender"}, "every PolicyConfig field must be an OPTION"
    return _table(["key", "values", "default", "from", "decides"], rows)


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def render_rules() -> str:
    return _table(["rule", "from", "what happens"], [[f"`{r.name}`", _md(r.ref), _md(r.summary)] for r in p.RULES])


BLOCKS: dict[str, Callable[[], str]] = {
    "legend": lambda: STATE_LEGEND,
    **{name: (lambda name=name: render_section(name)) for name in SECTIONS},  # type: ignore[misc]
    "sender-override": render_override,
    "sent-carbons": render_sent,
    "options": render_options,
    "rules": render_rules,
}
_BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w+-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                    re.S)


def update(text: str) -> str:
    """``text`` with every generated block re-rendered; raises KeyError on an unknown block."""
    seen = set()

    def repl(m: re.Match[str]) -> str:
        seen.add(m["name"])
        return f"{m[1]}{BLOCKS[m['name']]()}\n{m[4]}"

    out = _BLOCK.sub(repl, text)
    missing = set(BLOCKS) - seen
    if missing:
        raise KeyError(f"docs/routing.md lacks generated blocks: {sorted(missing)}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/routing.md is stale")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    text = args.doc.read_text(encoding="utf-8")
    new = update(text)
    if args.check:
        if new != text:
            print(f"{args.doc} is stale: run python scripts/render_routing_table.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.doc.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
