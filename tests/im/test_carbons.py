"""Message Carbons (XEP-0280) end to end: enable/disable, <received/> and <sent/> copies, the
<private/> and XEP-0334 <no-copy/> opt-outs, and never two copies for one session.

Most cases run over a real node (``meshxmpp.testing``, loopback sockets); a few that look inside the
router (the per-user gate, the bytes of the wrapper) use the socket-free harness. Waiting is by
round trips: the sender pings (the server has routed what it sent), then each observer pings (what
was queued for it before has arrived), so "nothing arrived" is checked without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import trio

from meshxmpp import testing
from meshxmpp.jid import JID
from meshxmpp.routing import policy
from meshxmpp.routing.router import StanzaEvent, carbon_copy
from meshxmpp.testing import TestClient
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.serialize import to_bytes
from meshxmpp.xml.stream import parse_element
from tests.im._harness import Harness, chat, error_condition

DOMAIN = "example.org"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


# -- helpers ------------------------------------------------------------------------------------------

def message(to: str, body: str | None, type_: str = "chat", *extra: tuple[str, str]) -> Element:
    el = Element("message", ns.CLIENT, {"to": to, "type": type_})
    if body is not None:
        el.add("body", ns.CLIENT, text=body)
    for name, child_ns in extra:
        el.add(name, child_ns)
    return el


PRIVATE = ("private", ns.CARBONS)
NO_COPY = ("no-copy", ns.HINTS)


def carbon_iq(action: str) -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": f"carbons-{action}"})
    iq.add(action, ns.CARBONS)
    return iq


async def enable(client: TestClient) -> None:
    reply = await client.iq(carbon_iq("enable"))
    assert reply.get("type") == "result", reply


async def presence(client: TestClient, priority: int = 0) -> None:
    el = Element("presence", ns.CLIENT)
    el.add("priority", ns.CLIENT, text=str(priority))
    await client.send(el)
    await client.ping()


async def online(n: testing.RunningNode, local: str, resource: str, *, priority: int = 0,
                 carbons: bool = False) -> TestClient:
    client = await n.client(local, resource=resource)
    if carbons:
        await enable(client)
    await presence(client, priority)
    return client


def carbon(el: Element) -> tuple[str, Element] | None:
    """(direction, forwarded message) when ``el`` is a carbon wrapper, else None."""
    if el.name != "message":
        return None
    for direction in ("received", "sent"):
        wrapped = el.find(direction, ns.CARBONS)
        if wrapped is not None:
            forwarded = wrapped.find("forwarded", ns.FORWARD)
            assert forwarded is not None, el
            inner = forwarded.find("message")
            assert inner is not None, el
            return direction, inner
    return None


def is_original(el: Element) -> bool:
    return el.name == "message" and carbon(el) is None


def body(el: Element) -> str | None:
    return el.findtext("body", ns.CLIENT)


def received(client: TestClient) -> list[tuple[str, str | None]]:
    """What ``client`` holds now, as (kind, body): kind is "original", "received" or "sent"."""
    out: list[tuple[str, str | None]] = []
    for el in client.pending():
        if el.name != "message":
            continue
        c = carbon(el)
        out.append(("original", body(el)) if c is None else (c[0], body(c[1])))
    return out


async def settle(sender: TestClient, *observers: TestClient) -> None:
    """The server has routed everything ``sender`` sent, and each observer holds what it was sent."""
    await sender.ping()
    for o in observers:
        await o.ping()


@pytest.fixture
async def n() -> AsyncIterator[testing.RunningNode]:
    async with testing.node(domain=DOMAIN) as node:
        await node.add_user("alice")
        await node.add_user("bob")
        yield node


# -- enable / disable ---------------------------------------------------------------------------------

async def test_enable_disable_are_idempotent_and_set_the_session_flag(n: testing.RunningNode) -> None:
    a = await n.client("alice", resource="a")
    session = n.ctx.sessions.get(JID.parse(f"{ALICE}/a"))
    assert session is not None and session.carbons is False
    for action, state in (("enable", True), ("enable", True), ("disable", False), ("disable", False),
                          ("enable", True)):
        reply = await a.iq(carbon_iq(action))
        assert reply.get("type") == "result" and reply.get("to") == f"{ALICE}/a", reply
        assert session.carbons is state
    # Addressed to the user's own bare JID is the same request (RFC 6120 10.3.3).
    iq = carbon_iq("disable")
    iq.set("to", ALICE)
    assert (await a.iq(iq)).get("type") == "result"
    assert session.carbons is False


async def test_unknown_carbons_request_is_bad_request(n: testing.RunningNode) -> None:
    a = await n.client("alice", resource="a")
    reply = await a.iq(carbon_iq("toggle"))
    assert reply.get("type") == "error"
    err = reply.find("error", ns.CLIENT)
    assert err is not None and err.find("bad-request", ns.STANZA_ERRORS) is not None, reply


async def test_server_advertises_carbons(n: testing.RunningNode) -> None:
    a = await n.client("alice")
    iq = Element("iq", ns.CLIENT, {"type": "get", "to": DOMAIN})
    iq.add("query", ns.DISCO_INFO)
    reply = await a.iq(iq)
    query = reply.find("query", ns.DISCO_INFO)
    assert query is not None, reply
    assert ns.CARBONS in {f.get("var") for f in query.findall("feature", ns.DISCO_INFO)}


# -- received carbons ---------------------------------------------------------------------------------

async def test_full_jid_message_is_copied_to_other_carbons_sessions(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a", carbons=True)
    b = await online(n, "alice", "b", carbons=True)
    plain = await online(n, "alice", "plain")
    await bob.send(message(f"{ALICE}/a", "to a"))
    await settle(bob, a, b, plain)
    assert received(a) == [("original", "to a")]
    assert received(b) == [("received", "to a")]
    assert received(plain) == []
    wrapper = next(el for el in b.pending() if carbon(el))
    assert (wrapper.get("from"), wrapper.get("to"), wrapper.get("type")) == (ALICE, f"{ALICE}/b", "chat")
    _, inner = carbon(wrapper)  # type: ignore[misc]
    # The forwarded message is the original, in jabber:client, addressed as it was.
    assert inner.ns == ns.CLIENT
    assert (inner.get("from"), inner.get("to"), inner.get("type")) == (f"{BOB}/desk", f"{ALICE}/a", "chat")


async def test_bare_jid_message_copies_to_carbons_sessions_below_the_top(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    top = await online(n, "alice", "top", priority=5)
    low = await online(n, "alice", "low", priority=1, carbons=True)
    await bob.send(message(ALICE, "hello"))
    await settle(bob, top, low)
    assert received(top) == [("original", "hello")]
    assert received(low) == [("received", "hello")]
    _, inner = carbon(low.pending()[-1])  # type: ignore[misc]
    assert inner.get("to") == ALICE


async def test_no_duplicate_when_two_top_resources_get_the_original(n: testing.RunningNode) -> None:
    # top-priority-all (the default): both priority-5 sessions get the original, so neither gets a
    # carbon as well; only the carbons-enabled session below them gets a copy.
    bob = await online(n, "bob", "desk")
    one = await online(n, "alice", "one", priority=5, carbons=True)
    two = await online(n, "alice", "two", priority=5, carbons=True)
    low = await online(n, "alice", "low", priority=0, carbons=True)
    await bob.send(message(ALICE, "both"))
    await settle(bob, one, two, low)
    assert received(one) == [("original", "both")]
    assert received(two) == [("original", "both")]
    assert received(low) == [("received", "both")]
    assert n.ctx.router.stats.get("message/bare/top-priority-all") == 1


async def test_most_available_policy_copies_to_the_other_top_resource(n: testing.RunningNode) -> None:
    async with testing.node({"routing": {"policy": "most-available"}}, domain=DOMAIN) as m:
        await m.add_user("alice")
        await m.add_user("bob")
        bob = await online(m, "bob", "desk")
        one = await online(m, "alice", "one", priority=5, carbons=True)
        two = await online(m, "alice", "two", priority=5, carbons=True)
        await bob.send(message(ALICE, "one of you"))
        await settle(bob, one, two)
        got = sorted(received(one) + received(two))
        assert got == [("original", "one of you"), ("received", "one of you")]


async def test_carbons_enabled_session_without_presence_gets_no_copy(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a")
    silent = await n.client("alice", resource="silent")
    await enable(silent)
    await bob.send(message(f"{ALICE}/a", "x"))
    await settle(bob, a, silent)
    assert received(a) == [("original", "x")]
    assert received(silent) == []


async def test_only_negative_sessions_store_offline_and_copy(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    bot = await online(n, "alice", "bot", priority=-1, carbons=True)
    await bob.send(message(ALICE, "for later"))
    await settle(bob, bot)
    assert received(bot) == [("received", "for later")]
    assert await n.ctx.storage.offline.count(ALICE) == 1


async def test_bound_sessions_without_presence_still_get_it_stored(n: testing.RunningNode) -> None:
    # The router must hand the offline store's awaitable back even when the user has sessions.
    bob = await online(n, "bob", "desk")
    await n.client("alice", resource="bound-only")
    await bob.send(message(ALICE, "stored"))
    await bob.ping()
    assert await n.ctx.storage.offline.count(ALICE) == 1
    assert [el for el in bob.pending() if el.get("type") == "error"] == []


# -- sent carbons --------------------------------------------------------------------------------------

async def test_sent_message_is_copied_to_the_senders_other_carbons_sessions(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a", carbons=True)
    b = await online(n, "alice", "b", carbons=True)
    plain = await online(n, "alice", "plain")
    await a.send(message(f"{BOB}/desk", "hi bob"))
    await settle(a, bob, b, plain)
    assert received(bob) == [("original", "hi bob")]
    assert received(b) == [("sent", "hi bob")]
    assert received(a) == []  # never to the sending session (XEP-0280 7)
    assert received(plain) == []
    wrapper = next(el for el in b.pending() if carbon(el))
    assert (wrapper.get("from"), wrapper.get("to"), wrapper.get("type")) == (ALICE, f"{ALICE}/b", "chat")
    _, inner = carbon(wrapper)  # type: ignore[misc]
    assert inner.ns == ns.CLIENT
    assert (inner.get("from"), inner.get("to")) == (f"{ALICE}/a", f"{BOB}/desk")


async def test_sent_carbons_do_not_need_the_sender_to_enable_them(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    await a.send(message(BOB, "from a"))
    await settle(a, bob, b)
    assert received(b) == [("sent", "from a")]
    assert received(bob) == [("original", "from a")]


async def test_message_to_own_sibling_is_one_copy_each(n: testing.RunningNode) -> None:
    # a -> b: b gets the original and no <sent/> copy on top; c gets exactly one copy.
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    c = await online(n, "alice", "c", carbons=True)
    await a.send(message(f"{ALICE}/b", "note"))
    await settle(a, b, c)
    assert received(b) == [("original", "note")]
    assert received(c) == [("received", "note")]
    assert received(a) == []


async def test_message_to_a_remote_domain_is_still_copied(n: testing.RunningNode) -> None:
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    await a.send(message("someone@elsewhere.example", "away"))
    await settle(a, b)
    assert received(b) == [("sent", "away")]


# -- opting out -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hint", [PRIVATE, NO_COPY], ids=["private", "no-copy"])
async def test_private_and_no_copy_messages_are_never_copied(n: testing.RunningNode,
                                                             hint: tuple[str, str]) -> None:
    bob = await online(n, "bob", "desk")
    bob2 = await online(n, "bob", "phone", carbons=True)
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    await a.send(message(f"{BOB}/desk", "secret", "chat", hint))
    await settle(a, bob, bob2, b)
    assert received(bob) == [("original", "secret")]
    assert received(bob2) == []  # no <received/> copy
    assert received(b) == []  # no <sent/> copy


@pytest.mark.parametrize(("type_", "text"), [("headline", "news"), ("normal", None), ("groupchat", "room")])
async def test_ineligible_messages_are_not_copied(n: testing.RunningNode, type_: str, text: str | None) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    el = message(f"{ALICE}/a", text, type_)
    if text is None:
        el.add("active", ns.CHATSTATES)
    await bob.send(el)
    await a.send(message(f"{BOB}/desk", text, type_))
    await settle(bob, a)
    await settle(a, b)
    assert received(b) == []
    assert [k for k, _ in received(a)] == ["original"]


async def test_disabled_carbons_stop_the_copies(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    reply = await b.iq(carbon_iq("disable"))
    assert reply.get("type") == "result"
    await bob.send(message(f"{ALICE}/a", "in"))
    await a.send(message(BOB, "out"))
    await settle(bob, a)
    await settle(a, b)
    assert received(b) == []
    assert n.ctx.router._carbons == {}


# -- the bytes on the wire -------------------------------------------------------------------------

class Recording(trio.abc.Stream):
    """Wraps a client's stream and keeps every byte it receives."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.data = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.data += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_forwarded_message_keeps_jabber_client_on_the_wire(n: testing.RunningNode) -> None:
    bob = await online(n, "bob", "desk")
    a = await online(n, "alice", "a")
    b = await online(n, "alice", "b", carbons=True)
    recording = Recording(b.stream)
    b.stream = recording
    await bob.send(message(f"{ALICE}/a", "wire"))  # received copy, after a was sent the original
    await a.send(message(f"{BOB}/desk", "wire"))  # sent copy
    await settle(bob, a)
    await settle(a, b)
    data = bytes(recording.data)
    for direction in (b"received", b"sent"):
        assert (b"<" + direction + b" xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
                b"<message xmlns='jabber:client'") in data, data
    assert data.count(b"<body>wire</body>") == 2, data


def test_carbon_of_a_serialised_or_hand_built_stanza_declares_jabber_client() -> None:
    parsed = parse_element("<message xmlns='jabber:client' from='bob@example.org/x' to='alice@example.org/a' "
                           "type='chat'><body>hi</body></message>")
    to_bytes(parsed)  # the stanza's own bytes (no xmlns at top level) are cached first
    hand_built = Element("message", None, {"to": "alice@example.org/a", "type": "chat"})
    hand_built.add("body", None, text="hi")
    component = Element("message", ns.COMPONENT, {"to": "alice@example.org/a", "type": "chat"})
    component.add("body", ns.COMPONENT, text="hi")
    component.add("x", "urn:example:x").add("item", None)
    for el in (parsed, hand_built, component):
        data = to_bytes(carbon_copy(el, JID.parse("alice@example.org/b"), "received"))
        assert data.startswith(b"<message from='alice@example.org' to='alice@example.org/b' type='chat'>"
                               b"<received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
                               b"<message xmlns='jabber:client'"), data
        assert b"<body>hi</body>" in data
        reparsed = parse_element(data)  # as a client's stream (default namespace jabber:client) reads it
        inner = reparsed.find("received", ns.CARBONS).find("forwarded", ns.FORWARD).find("message")  # type: ignore[union-attr]
        assert inner is not None and inner.ns == ns.CLIENT
        assert inner.find("body", ns.CLIENT) is not None
    assert b"<x xmlns='urn:example:x'><item/></x>" in to_bytes(
        carbon_copy(component, JID.parse("alice@example.org/b"), "received"))


# -- inside the router (no sockets) ---------------------------------------------------------------

def enable_iq() -> Element:
    return carbon_iq("enable")


async def test_no_sent_carbon_work_when_nobody_enabled_carbons(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real: Callable[..., policy.Decision] = policy.decide_sent_carbons

    def spy(*args: object) -> policy.Decision:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(policy, "decide_sent_carbons", spy)
    a = await h.online(f"{ALICE}/a")
    b = await h.online(f"{ALICE}/b")
    bob = await h.online(f"{BOB}/desk")
    await h.send(a, chat(BOB, "no carbons anywhere"))
    assert calls == [] and h.router._carbons == {}
    # Another user's carbons do not make alice's messages pay for them either.
    await h.send(bob, enable_iq())
    await h.send(a, chat(BOB, "still none"))
    assert calls == []
    await h.send(b, enable_iq())
    await h.send(a, chat(BOB, "now b wants them"))
    assert len(calls) == 1
    assert [carbon(el)[0] for el in b.got if carbon(el)] == ["sent"]  # type: ignore[index]


async def test_carbons_count_follows_enable_disable_and_session_end(h: Harness) -> None:
    a = await h.online(f"{ALICE}/a")
    b = await h.online(f"{ALICE}/b")
    alice = JID.parse(ALICE)
    await h.send(a, enable_iq())
    await h.send(a, enable_iq())
    await h.send(b, enable_iq())
    assert h.router._carbons == {alice: 2}
    await h.send(b, carbon_iq("disable"))
    assert h.router._carbons == {alice: 1}
    await h.end(a)
    assert h.router._carbons == {}
    h.router.set_carbons(a, False)  # type: ignore[arg-type]  # after the end: the count stays
    await h.end(b)
    assert h.router._carbons == {}


async def test_carbons_request_from_elsewhere_is_not_allowed(h: Harness) -> None:
    # Only a session's own client can switch its carbons; an iq-set/self without a local origin
    # (as a mesh peer might hand over) is refused.
    a = await h.online(f"{ALICE}/a")
    iq = carbon_iq("enable")
    iq.set("from", f"{ALICE}/a")
    answered = h.hub.fire(f"iq-set/self/{ns.CARBONS}", StanzaEvent(iq, None, None, JID.parse(f"{ALICE}/a")))
    assert answered
    if not isinstance(answered, bool):
        await answered
    errors = a.take(lambda el: el.name == "iq" and el.get("type") == "error")
    assert [error_condition(el) for el in errors] == ["not-allowed"]
    assert a.carbons is False and h.router._carbons == {}


async def test_injected_message_from_another_server_is_copied(h: Harness) -> None:
    a = await h.online(f"{ALICE}/a")
    b = await h.online(f"{ALICE}/b")
    await h.send(b, enable_iq())
    el = Element("message", ns.CLIENT, {"from": "juliet@capulet.example/balcony", "to": f"{ALICE}/a",
                                        "type": "chat"})
    el.add("body", ns.CLIENT, text="from afar")
    await h.inject(el)
    assert [body(x) for x in a.got if is_original(x)] == ["from afar"]
    copies = [carbon(x) for x in b.got if carbon(x)]
    assert len(copies) == 1 and copies[0] is not None and copies[0][0] == "received"
    assert copies[0][1].get("from") == "juliet@capulet.example/balcony"
