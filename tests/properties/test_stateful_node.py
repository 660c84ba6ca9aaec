"""A real node against the pure routing policy: a hypothesis state machine (issue 4, acceptance).

The machine logs "bob" in and out from several resources (with or without initial presence),
changes his presence, priority (negative too) and show, makes resources unavailable again, toggles
Message Carbons when ``meshxmpp/im/carbons.py`` exists, and has "alice" send every message type
(chat, normal, headline, groupchat) to bob's bare JID, to bound full JIDs and to absent ones. Each
delivery is checked against ``policy.decide`` computed from the model's own view of bob's sessions:
exactly the resources the decision names get the original, exactly those it names get a
``<received/>`` carbon, alice gets exactly the bounces, and the offline store holds exactly the
messages the decisions stored (and the first resource that comes online with a non-negative
priority gets them, XEP-0160, as ``[offline] delivery = "first-resource"``).

How it drives a real node, and why this way. ARCHITECTURE.md keeps stateful tests synchronous by
stepping sans-IO cores directly; this one must go through the listener, the router, the im
features and SQLite, so the node runs in a background thread (``meshxmpp.testing.run_in_thread``,
one node per policy, shared by all examples of that policy) and the machine drives it with a small
*blocking* raw-socket client (plain TCP with ``require_encryption = false``, SASL PLAIN from
``meshxmpp.c2s.sasl``, parsed with ``meshxmpp.xml.stream.XmlStream``). Hypothesis rules are plain
synchronous methods, so each step is simply "send, then round-trip": no event loop is started per
step (``trio.run`` per step could not keep Trio socket streams alive between runs), and nothing
sleeps. A ping round trip on a connection proves that everything the server queued for it earlier
has arrived, and since the server handles one connection's stanzas in order (awaiting storage
before reading the next), alice's pong proves her message was fully routed.

``last_activity`` (most-available's tie-break after priority and show) is wall-clock time of the
last read from the connection; the model keeps a logical clock instead: every step that makes a
connection send something stamps it, and because each such send completes a round trip before the
next one starts, the server's wall-clock order equals the model's order.

Teardown closes every connection, waits until the node has unbound them and clears bob's offline
store, so the next example starts from an empty node.
"""

from __future__ import annotations

import base64
import importlib.util
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from meshxmpp.c2s import sasl
from meshxmpp.jid import JID
from meshxmpp.routing import policy as p
from meshxmpp.routing.facts import facts_from_element
from meshxmpp.testing import ThreadNode, run_in_thread
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed
from meshxmpp.xml.serialize import STREAM_FOOTER, stream_header, to_bytes
from meshxmpp.xml.stream import XmlStream, parse_element

# Passing takes ~40 s; a failure then shrinks for up to 300 s (hypothesis's cap), which the
# timeout must leave room for, or the report with the failing steps is lost.
pytestmark = pytest.mark.timeout(480)

DOMAIN = "example.org"
BOB = JID("bob", DOMAIN)
ALICE = JID("alice", DOMAIN, "a")
PASSWORD = "secret"
RESOURCES = ("phone", "tablet", "laptop", "desk")
#: Where alice sends: the bare JID three times as often as any one resource ("gone" is never bound).
TARGETS = ("bare", "bare", "bare", *RESOURCES, "gone")
#: Ordered so that hypothesis's favourite (the first) is an ordinary priority, not a negative one.
PRIORITIES = st.sampled_from([0, 5, -1, 1, -5])
SHOWS = st.sampled_from([None, "away", "chat", "dnd", "xa"])
#: Initial presence at login, or (one time in four) None: bound without presence.
LOGIN_PRESENCE = st.tuples(st.integers(0, 3), PRIORITIES, SHOWS).map(lambda t: None if t[0] == 3 else t[1:])
#: A presence change, or (one time in five) None: unavailable (the session stays bound).
PRESENCE = st.tuples(st.integers(0, 4), PRIORITIES, SHOWS).map(lambda t: None if t[0] == 4 else t[1:])
MESSAGE_TYPES = ("chat", "normal", "headline", "groupchat")
#: Carbons are exercised only once the feature exists (someone is building it).
CARBONS = importlib.util.find_spec("meshxmpp.im.carbons") is not None
TIMEOUT = 10.0

SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None, print_blob=True)


class SyncClient:
    """A blocking XMPP client over a plain TCP socket: just enough to log in, send and round-trip."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        # Without it Nagle and delayed ACKs stall every write-write-read exchange by ~40 ms.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = XmlStream(max_stanza_size=1 << 20, max_depth=1000)
        self.inbox: list[Element] = []
        self.eof = False
        self.ids = 0

    @classmethod
    def login(cls, address: tuple[str, int], user: str, resource: str) -> SyncClient:
        c = cls(address)
        try:
            features = c.open_stream()
            assert features.find("mechanisms", ns.SASL) is not None, features
            auth = Element("auth", ns.SASL, {"mechanism": "PLAIN"})
            auth.append(base64.b64encode(sasl.plain_client(user, PASSWORD)).decode())
            c.send(auth)
            answer = c.next()
            assert answer.name == "success", answer
            c.open_stream()
            iq = Element("iq", ns.CLIENT, {"type": "set", "id": "bind"})
            iq.add("bind", ns.BIND).add("resource", ns.BIND, text=resource)
            c.send(iq)
            result = c.next(lambda el: el.name == "iq" and el.get("id") == "bind")
            assert result.get("type") == "result", result
        except BaseException:
            c.sock.close()
            raise
        return c

    def open_stream(self) -> Element:
        self.parser = XmlStream(max_stanza_size=1 << 20, max_depth=1000)
        self.send_raw(stream_header(from_=None, to=DOMAIN, id=None))
        features = self.next()
        assert features.name == "features" and features.ns == ns.STREAMS, features
        return features

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, el: Element) -> None:
        self.send_raw(to_bytes(el))

    def _read(self) -> None:
        data = self.sock.recv(65536)  # socket timeout: TimeoutError instead of a hang
        if not data:
            self.eof = True
            return
        for ev in self.parser.feed(data):
            if isinstance(ev, StanzaReceived):
                self.inbox.append(ev.element)
            elif isinstance(ev, StreamClosed):
                self.eof = True

    def next(self, pred: Any = lambda el: True) -> Element:
        while True:
            for i, el in enumerate(self.inbox):
                if pred(el):
                    return self.inbox.pop(i)
            if self.eof:
                raise AssertionError(f"stream closed; inbox {self.inbox!r}")
            self._read()

    def iq(self, el: Element) -> Element:
        self.ids += 1
        iq_id = f"q{self.ids}"
        el.set("id", iq_id)
        self.send(el)
        return self.next(lambda r: r.name == "iq" and r.get("id") == iq_id and r.get("type") in ("result", "error"))

    def ping(self) -> None:
        reply = self.iq(Element("iq", ns.CLIENT, {"type": "get", "to": DOMAIN}, [Element("ping", ns.PING)]))
        assert reply.get("type") == "result", reply

    def messages(self) -> list[Element]:
        """Take the messages received so far (presence and the rest are dropped)."""
        out = [el for el in self.inbox if el.name == "message"]
        self.inbox = []
        return out

    def close(self, *, clean: bool = True) -> None:
        """Log out and return once the server has unbound the session: it sends its EOF only after
        ``router.session_ended`` (clean: after our footer; otherwise after our half-close)."""
        try:
            if clean:
                self.send_raw(STREAM_FOOTER)
            else:
                self.sock.shutdown(socket.SHUT_WR)  # a dropped connection, as the server sees it
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
        finally:
            self.sock.close()


def received(el: Element) -> tuple[str, str]:
    """(what, message id) of a message: what is "msg", "offline" (has a delay stamp), "received" /
    "sent" (a XEP-0280 carbon of it), "error:<condition>", or "other"."""
    for direction in ("received", "sent"):
        carbon = el.find(direction, ns.CARBONS)
        if carbon is not None:
            fwd = carbon.find("forwarded", ns.FORWARD)
            inner = fwd.find("message", ns.CLIENT) if fwd is not None else None
            if inner is None or el.get("from") != str(BOB):
                return ("other", repr(el))
            return (direction, inner.get("id") or "?")
    if el.get("type") == "error":
        error = el.find("error", ns.CLIENT)
        cond = next((c.name for c in error.children if isinstance(c, Element) and c.ns == ns.STANZA_ERRORS),
                    "?") if error is not None else "?"
        return (f"error:{cond}", el.get("id") or "?")
    if el.find("body", ns.CLIENT) is None:
        return ("other", repr(el))
    return ("offline" if el.find("delay", ns.DELAY) is not None else "msg", el.get("id") or "?")


@dataclass
class Bob:
    """The model's view of one of bob's sessions (what ``decide`` reads)."""

    client: SyncClient
    jid: JID
    available: bool = False
    priority: int = 0
    show: str | None = None
    last_activity: int = 0
    carbons: bool = False

    def view(self) -> p.SessionView:
        return p.SessionView(jid=self.jid, available=self.available, priority=self.priority, show=self.show,
                             last_activity=float(self.last_activity), carbons=self.carbons)


class RoutingMachine(RuleBasedStateMachine):
    node: ThreadNode  # set per policy by the test below
    policy: str

    def __init__(self) -> None:
        super().__init__()
        self.cfg = p.PolicyConfig.from_routing_config({"policy": self.policy})
        self.address = self.node.c2s_address
        self.clock = 0
        self.count = 0
        self.bob: dict[str, Bob] = {}
        self.stored: list[str] = []  # ids of bob's offline messages, oldest first
        self.alice: SyncClient | None = None
        self.expected: dict[JID, list[tuple[str, str]]] = {}

    # -- helpers -------------------------------------------------------------------------------

    def tick(self, s: Bob) -> None:
        self.clock += 1
        s.last_activity = self.clock

    def check_inbox(self, s: Bob, expected: list[tuple[str, str]]) -> None:
        got = sorted(received(el) for el in s.client.messages())
        assert got == sorted(expected), f"{s.jid}: got {got}, expected {sorted(expected)}"

    def stored_ids(self) -> list[str]:
        async def fetch() -> list[str]:
            rows = await self.node.running.ctx.storage.offline.fetch(str(BOB))
            return [parse_element(r.stanza, max_size=1 << 20, max_depth=1000).get("id") or "?" for r in rows]
        return self.node.call(fetch)

    # -- rules ---------------------------------------------------------------------------------

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Alice, and usually a few of bob's sessions already (so bare-JID fan-out is common)."""
        self.alice = SyncClient.login(self.address, "alice", ALICE.resource or "")
        for resource in data.draw(st.lists(st.sampled_from(RESOURCES), min_size=1, unique=True),
                                  label="logged in"):
            self._login(resource, data.draw(LOGIN_PRESENCE, label="presence"), data.draw(st.booleans(), label="carbons"))

    @precondition(lambda self: len(self.bob) < len(RESOURCES))
    @rule(data=st.data(), presence=LOGIN_PRESENCE, carbons=st.booleans())
    def login(self, data: st.DataObject, presence: tuple[int, str | None] | None, carbons: bool) -> None:
        resource = data.draw(st.sampled_from([r for r in RESOURCES if r not in self.bob]), label="resource")
        self._login(resource, presence, carbons)

    def _login(self, resource: str, presence: tuple[int, str | None] | None, carbons: bool) -> None:
        client = SyncClient.login(self.address, "bob", resource)
        s = self.bob[resource] = Bob(client, BOB.with_resource(resource))
        self.tick(s)
        if carbons and CARBONS:
            self._carbons(s, True)
        if presence is not None:  # otherwise bound without initial presence
            self._presence(s, *presence)

    @precondition(lambda self: self.bob)
    @rule(data=st.data(), clean=st.booleans())
    def logout(self, data: st.DataObject, clean: bool) -> None:
        resource = data.draw(st.sampled_from(sorted(self.bob)), label="resource")
        s = self.bob.pop(resource)
        self.check_inbox(s, [])
        s.client.close(clean=clean)

    @precondition(lambda self: self.bob)
    @rule(data=st.data(), presence=PRESENCE)
    def presence(self, data: st.DataObject, presence: tuple[int, str | None] | None) -> None:
        """A resource changes priority and show, sends initial presence, or (None) goes unavailable."""
        resource = data.draw(st.sampled_from(sorted(self.bob)), label="resource")
        s = self.bob[resource]
        if presence is not None:
            self._presence(s, *presence)
        elif s.available:
            self._unavailable(s)

    def _presence(self, s: Bob, priority: int, show: str | None) -> None:
        el = Element("presence", ns.CLIENT)
        if show is not None:
            el.add("show", ns.CLIENT, text=show)
        el.add("priority", ns.CLIENT, text=str(priority))
        s.client.send(el)
        s.client.ping()
        self.tick(s)
        initial = not s.available
        s.available, s.priority, s.show = True, priority, show
        expected = []
        if initial and priority >= 0:  # XEP-0160, first-resource: it takes everything stored
            expected = [("offline", i) for i in self.stored]
            self.stored = []
        self.check_inbox(s, expected)

    def _unavailable(self, s: Bob) -> None:
        s.client.send(Element("presence", ns.CLIENT, {"type": "unavailable"}))
        s.client.ping()
        self.tick(s)
        s.available = False  # still bound: all-connected still reaches it
        self.check_inbox(s, [])

    if CARBONS:
        @precondition(lambda self: self.bob)
        @rule(data=st.data(), enable=st.booleans())
        def carbons(self, data: st.DataObject, enable: bool) -> None:
            resource = data.draw(st.sampled_from(sorted(self.bob)), label="resource")
            self._carbons(self.bob[resource], enable)

    def _carbons(self, s: Bob, enable: bool) -> None:
        iq = Element("iq", ns.CLIENT, {"type": "set"})
        iq.add("enable" if enable else "disable", ns.CARBONS)
        reply = s.client.iq(iq)
        assert reply.get("type") == "result", reply
        self.tick(s)
        s.carbons = enable
        self.check_inbox(s, [])

    @rule(type_=st.sampled_from(MESSAGE_TYPES), to_=st.sampled_from(TARGETS))
    def alice_sends(self, type_: str, to_: str) -> None:
        assert self.alice is not None
        to = BOB if to_ == "bare" else BOB.with_resource(to_)
        el, mid = self.message(type_, to)
        decision = p.decide(facts_from_element(el, to, ALICE), [s.view() for s in self.bob.values()],
                            self.cfg, account_exists=True)
        event(decision.rule if decision.via is None else f"{decision.via} -> {decision.rule}")
        self.alice.send(el)
        self.alice.ping()  # alice's stanzas are handled in order: the message is fully routed
        alice_expected = self.expect(decision, mid)
        self.check_everyone(alice_expected, decision)

    @precondition(lambda self: self.bob)
    @rule(data=st.data(), type_=st.sampled_from(MESSAGE_TYPES))
    def bob_sends(self, data: st.DataObject, type_: str) -> None:
        """One of bob's sessions writes to alice's full JID: she gets it, and his carbons-enabled
        siblings get the <sent/> copies ``decide_sent_carbons`` names."""
        assert self.alice is not None
        resource = data.draw(st.sampled_from(sorted(self.bob)), label="resource")
        s = self.bob[resource]
        el, mid = self.message(type_, ALICE)
        alice_view = p.SessionView(jid=ALICE, available=False)  # bound, never sent presence
        inbound = p.decide(facts_from_element(el, ALICE, s.jid), [alice_view], self.cfg, account_exists=True)
        sent = p.decide_sent_carbons(facts_from_element(el, ALICE, s.jid), [b.view() for b in self.bob.values()],
                                     s.jid)
        event(f"{inbound.rule} + {sent.rule}")
        assert [type(a) for a in inbound.actions] == [p.Deliver], inbound
        s.client.send(el)
        s.client.ping()
        self.tick(s)
        self.expect(sent, mid)
        self.check_everyone([("msg", mid)], sent)

    def message(self, type_: str, to: JID) -> tuple[Element, str]:
        self.count += 1
        mid = f"m{self.count}"
        el = Element("message", ns.CLIENT, {"to": str(to), "type": type_, "id": mid})
        el.add("body", ns.CLIENT, text=mid)
        return el, mid

    def expect(self, decision: p.Decision, mid: str) -> list[tuple[str, str]]:
        """Record what ``decision`` promises bob's sessions (in ``self.expected``) and the offline
        store; return what the sender gets back (bounces)."""
        self.expected = {s.jid: [] for s in self.bob.values()}
        back: list[tuple[str, str]] = []
        for action in decision.actions:
            match action:
                case p.Deliver(jid=jid):
                    self.expected[jid].append(("msg", mid))
                case p.DeliverCarbon(jid=jid, direction=direction):
                    self.expected[jid].append((direction, mid))
                case p.StoreOffline():
                    self.stored.append(mid)
                case p.Bounce(condition=condition):
                    back.append((f"error:{condition}", mid))
                case p.Drop():
                    pass
                case _:
                    raise AssertionError(f"unexpected action {action!r}")
        return back

    def check_everyone(self, alice_expected: list[tuple[str, str]], decision: p.Decision) -> None:
        """Round-trip every connection, then compare what each got with ``self.expected``."""
        assert self.alice is not None
        for resource in sorted(self.bob):
            s = self.bob[resource]
            s.client.ping()
            self.tick(s)
            self.check_inbox(s, self.expected[s.jid])
        self.alice.ping()
        got = sorted(received(m) for m in self.alice.messages())
        assert got == sorted(alice_expected), f"alice: got {got}, expected {alice_expected}; {p.explain(decision)}"

    @invariant()
    def offline_store_matches(self) -> None:
        assert self.stored_ids() == self.stored

    def teardown(self) -> None:
        clients = [s.client for s in self.bob.values()]
        if self.alice is not None:
            clients.append(self.alice)
        for c in clients:
            try:
                c.close()
            except OSError:
                c.sock.close()

        async def reset() -> None:
            running = self.node.running
            await running.session_count(str(BOB), 0)
            await running.session_count(str(ALICE.bare), 0)
            offline = running.ctx.storage.offline
            await offline.delete(str(BOB), [m.id for m in await offline.fetch(str(BOB))])
        self.node.call(reset)


@pytest.mark.parametrize("policy", p.POLICIES)
def test_real_node_routes_as_decide_says(policy: str) -> None:
    overrides = {"routing": {"policy": policy}, "offline": {"delivery": "first-resource"},
                 "c2s": {"require_encryption": False}}
    with run_in_thread(overrides, domain=DOMAIN) as node:
        node.add_user("alice", PASSWORD)
        node.add_user("bob", PASSWORD)
        machine = type(f"Routing_{policy.replace('-', '_')}", (RoutingMachine,), {"node": node, "policy": policy})
        run_state_machine_as_test(machine, settings=SETTINGS)
