"""facts_from_element: one pass over the children, everything routing needs and nothing else."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshxmpp.jid import JID
from meshxmpp.routing.facts import StanzaFacts, facts_from_element, message_facts
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

CHATSTATES = "http://jabber.org/protocol/chatstates"
MUC_USER = "http://jabber.org/protocol/muc#user"
BOB = "bob@example.org"
ALICE = "alice@example.net/home"


def message(type_: str | None = "chat", *, body: str | None = "hi", to: str = BOB, ns_: str | None = ns.CLIENT,
            extra: tuple[tuple[str, str | None], ...] = ()) -> Element:
    attrs = {"to": to, "from": ALICE}
    if type_ is not None:
        attrs["type"] = type_
    el = Element("message", ns.CLIENT, attrs)
    if body is not None:
        el.add("body", ns_, None, body)
    for name, child_ns in extra:
        el.add(name, child_ns)
    return el


def test_addresses_are_parsed_unless_given() -> None:
    f = facts_from_element(message())
    assert f.to == JID("bob", "example.org") and f.sender == JID("alice", "example.net", "home")
    to, sender = JID("x", "y"), JID("z", "y", "r")
    f = facts_from_element(message(), to, sender)
    assert f.to is to and f.sender is sender
    f = facts_from_element(Element("message", ns.CLIENT, {}))
    assert f.to is None and f.sender is None


@pytest.mark.parametrize(("given_type", "expected"), [
    ("chat", "chat"), ("normal", "normal"), ("headline", "headline"), ("groupchat", "groupchat"),
    ("error", "error"), (None, "normal"), ("bogus", "normal"),  # RFC 6121 5.2.2
])
def test_message_type_is_normalised(given_type: str | None, expected: str) -> None:
    assert facts_from_element(message(given_type)).type == expected


def test_presence_and_iq_types() -> None:
    assert facts_from_element(Element("presence", ns.CLIENT, {"to": BOB})).type == "available"
    assert facts_from_element(Element("presence", ns.CLIENT, {"to": BOB, "type": "probe"})).type == "probe"
    f = facts_from_element(Element("iq", ns.CLIENT, {"to": BOB, "type": "get", "id": "1"}))
    assert (f.kind, f.type, f.carbon_eligible) == ("iq", "get", False)
    assert facts_from_element(Element("iq", ns.CLIENT, {"to": BOB})).type == ""


@pytest.mark.parametrize("body_ns", [None, ns.CLIENT, "jabber:server"])
def test_body_in_the_stanza_namespace(body_ns: str | None) -> None:
    f = facts_from_element(message("normal", ns_=body_ns))
    assert f.has_body and f.carbon_eligible


def test_body_in_another_namespace_is_not_a_body() -> None:
    f = facts_from_element(message("normal", ns_="urn:example:other"))
    assert not f.has_body and not f.carbon_eligible


@pytest.mark.parametrize(("type_", "body", "eligible"), [
    ("chat", "hi", True), ("chat", None, True), ("normal", "hi", True), ("normal", None, False),
    ("headline", "hi", False), ("groupchat", "hi", False), ("error", "hi", False),
])
def test_carbon_eligibility(type_: str, body: str | None, eligible: bool) -> None:
    assert facts_from_element(message(type_, body=body)).carbon_eligible is eligible


@pytest.mark.parametrize(("child", "child_ns"), [("x", MUC_USER), ("received", ns.CARBONS), ("sent", ns.CARBONS)])
def test_muc_private_messages_and_carbons_are_not_eligible(child: str, child_ns: str) -> None:
    assert not facts_from_element(message(extra=((child, child_ns),))).carbon_eligible


def test_hints() -> None:
    f = facts_from_element(message(extra=(("private", ns.CARBONS), ("no-copy", ns.HINTS), ("no-store", ns.HINTS),
                                          ("store", ns.HINTS))))
    assert f.private and f.no_copy and f.no_store and f.store_hint
    assert f.carbon_eligible and not f.copies_allowed
    plain = facts_from_element(message())
    assert not (plain.private or plain.no_copy or plain.no_store or plain.store_hint)
    assert plain.copies_allowed


def test_chat_state_only() -> None:
    only = message(body=None, extra=(("composing", CHATSTATES), ("thread", ns.CLIENT), ("origin-id", ns.STANZA_ID),
                                     ("no-copy", ns.HINTS)))
    assert facts_from_element(only).chat_state_only
    assert not facts_from_element(message(extra=(("active", CHATSTATES),))).chat_state_only  # has a body
    receipt = message(body=None, extra=(("active", CHATSTATES), ("received", "urn:xmpp:receipts")))
    assert not facts_from_element(receipt).chat_state_only
    assert not facts_from_element(message(body=None)).chat_state_only


def test_text_children_are_skipped() -> None:
    el = message()
    el.append("  ")
    assert facts_from_element(el).has_body


def test_facts_are_frozen() -> None:
    f = facts_from_element(message())
    with pytest.raises(AttributeError):
        f.type = "normal"  # type: ignore[misc]


@given(
    type_=st.sampled_from(["chat", "normal", "headline", "groupchat", "error"]),
    body=st.booleans(), private=st.booleans(), no_copy=st.booleans(), no_store=st.booleans(),
    store=st.booleans(), states=st.booleans(), muc=st.booleans(),
)
def test_message_facts_agrees_with_the_element_path(type_: str, body: bool, private: bool, no_copy: bool,
                                                    no_store: bool, store: bool, states: bool, muc: bool) -> None:
    extra: list[tuple[str, str | None]] = []
    for flag, child in ((private, ("private", ns.CARBONS)), (no_copy, ("no-copy", ns.HINTS)),
                        (no_store, ("no-store", ns.HINTS)), (store, ("store", ns.HINTS)),
                        (states, ("paused", CHATSTATES)), (muc, ("x", MUC_USER))):
        if flag:
            extra.append(child)
    from_xml = facts_from_element(message(type_, body="b" if body else None, extra=tuple(extra)))
    built = message_facts(type_, from_xml.to, from_xml.sender, has_body=body, private=private, no_copy=no_copy,
                          no_store=no_store, store_hint=store, chat_state_only=states and not muc, muc=muc)
    assert isinstance(built, StanzaFacts)
    assert built == from_xml
