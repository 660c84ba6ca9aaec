"""The facts of a stanza that routing depends on, read once from the element (pure, hot path).

`routing.policy.decide` never looks at XML: it sees a `StanzaFacts`, built here with one pass over
the stanza's direct children. Everything the RFC 6121 §8.5 rules, XEP-0280 (carbons), XEP-0334
(hints) and XEP-0160 (offline storage) need is a field; nothing else is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from meshxmpp.jid import JID
from meshxmpp.xml import ns

if TYPE_CHECKING:
    from meshxmpp.xml.element import Element

__all__ = [
    "IQ_TYPES",
    "MESSAGE_TYPES",
    "PRESENCE_TYPES",
    "StanzaFacts",
    "facts_from_element",
    "message_facts",
]

MESSAGE_TYPES = frozenset({"chat", "normal", "headline", "groupchat", "error"})
#: A presence without 'type' is "available" here, so every presence has a type.
PRESENCE_TYPES = frozenset(
    {"available", "unavailable", "subscribe", "subscribed", "unsubscribe", "unsubscribed", "probe", "error"}
)
IQ_TYPES = frozenset({"get", "set", "result", "error"})

# Children that say something about the message rather than being its content (XEP-0160 asks
# whether a message carries "only chat state content").
_METADATA_NS = frozenset({ns.HINTS, ns.STANZA_ID, ns.DELAY})
_STANZA_NS = frozenset({None, ns.CLIENT, ns.SERVER, ns.COMPONENT})


@dataclass(frozen=True, slots=True)
class StanzaFacts:
    """What routing may know about a stanza. Built by `facts_from_element` or `message_facts`."""

    kind: str  #: "message" | "presence" | "iq"
    #: message: chat|normal|headline|groupchat|error (absent or unknown -> "normal", RFC 6121 5.2.2);
    #: presence: "available" when absent; iq: as sent ("" when absent).
    type: str
    to: JID | None
    sender: JID | None = None
    has_body: bool = False
    #: XEP-0280 §6 rules: chat, or normal with a body; never groupchat, MUC private messages
    #: (muc#user <x/>) or a message that already wraps a carbon. Hints are separate fields.
    carbon_eligible: bool = False
    private: bool = False  #: XEP-0280 <private/>
    no_copy: bool = False  #: XEP-0334 <no-copy/>
    no_store: bool = False  #: XEP-0334 <no-store/>
    store_hint: bool = False  #: XEP-0334 <store/>
    #: No body and only XEP-0085 chat states as content (XEP-0160 §4: not stored offline).
    chat_state_only: bool = False

    @property
    def copies_allowed(self) -> bool:
        """May this message be carbon-copied (eligible and neither <private/> nor <no-copy/>)?"""
        return self.carbon_eligible and not self.private and not self.no_copy


def message_facts(
    type: str,
    to: JID | None,
    sender: JID | None = None,
    *,
    has_body: bool = True,
    private: bool = False,
    no_copy: bool = False,
    no_store: bool = False,
    store_hint: bool = False,
    chat_state_only: bool = False,
    muc: bool = False,
) -> StanzaFacts:
    """Facts of a message built from parts, with carbon eligibility computed as from XML."""
    if type not in MESSAGE_TYPES:
        type = "normal"
    eligible = not muc and (type == "chat" or (type == "normal" and has_body))
    return StanzaFacts(
        "message", type, to, sender, has_body, eligible, private, no_copy, no_store, store_hint,
        chat_state_only and not has_body,
    )


def facts_from_element(el: Element, to: JID | None = None, sender: JID | None = None) -> StanzaFacts:
    """Read the routing facts of ``el``. ``to``/``sender`` are taken from the attributes (parsed
    with `JID.parse`, which may raise `InvalidJID`) unless the caller already has them."""
    attrs = el.attrs
    if to is None:
        s = attrs.get("to")
        if s:
            to = JID.parse(s)
    if sender is None:
        s = attrs.get("from")
        if s:
            sender = JID.parse(s)
    kind = el.name
    type_ = attrs.get("type")
    if kind == "presence":
        return StanzaFacts(kind, type_ or "available", to, sender)
    if kind != "message":
        return StanzaFacts(kind, type_ or "", to, sender)
    if type_ not in MESSAGE_TYPES:
        type_ = "normal"
    body = private = no_copy = no_store = store = chat_state = content = wrapped = False
    for child in el.children:
        if isinstance(child, str):
            continue
        name = child.name
        cns = child.ns
        if cns in _STANZA_NS:
            if name == "body":
                body = True
            elif name != "thread":
                content = True
        elif cns == ns.HINTS:
            if name == "no-copy":
                no_copy = True
            elif name == "no-store":
                no_store = True
            elif name == "store":
                store = True
        elif cns == ns.CARBONS:
            if name == "private":
                private = True
            else:  # <received/> or <sent/>: already a carbon, never copied again
                wrapped = True
        elif cns == ns.CHATSTATES:
            chat_state = True
        elif cns == ns.MUC_USER:
            wrapped = content = True
        elif cns not in _METADATA_NS:
            content = True
    eligible = not wrapped and (type_ == "chat" or (type_ == "normal" and body))
    return StanzaFacts(
        "message", type_, to, sender, body, eligible, private, no_copy, no_store, store,
        chat_state and not body and not content,
    )
