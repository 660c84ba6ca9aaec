"""Message Carbons (XEP-0280) with slixmpp's own xep_0280 plugin, over loopback sockets.

slixmpp enables carbons with its plugin, checks that a copy comes from its own bare JID before it
raises ``carbon_received`` / ``carbon_sent``, and parses the forwarded message (so a forwarded
message in the wrong namespace would lose its body here). "Nothing else arrived" is checked after
ping round trips, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from meshxmpp.testing import ThreadNode, run_in_thread
from tests.interop.slix import TIMEOUT, Slix

pytestmark = pytest.mark.timeout(90)

CARBONS = "urn:xmpp:carbons:2"


@pytest.fixture
def server() -> Iterator[ThreadNode]:
    with run_in_thread({"c2s": {"require_encryption": True}}, domain="example.org") as n:
        n.add_user("alice", "alice-pw")
        n.add_user("bob", "bob-pw")
        yield n


class CarbonsClient(Slix):
    """A Slix connection with slixmpp's carbons and hints plugins and queues of the copies."""

    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        self.xmpp.register_plugin("xep_0280")
        self.xmpp.register_plugin("xep_0334")
        self.copies: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.xmpp.add_event_handler("carbon_received", lambda m: self.copies.put_nowait(("received", m)))
        self.xmpp.add_event_handler("carbon_sent", lambda m: self.copies.put_nowait(("sent", m)))

    async def online(self, address: tuple[str, int], *, priority: int = 0, carbons: bool = False) -> None:
        await self.connect(address)
        if carbons:
            result = await self.xmpp.plugin["xep_0280"].enable(timeout=TIMEOUT)
            assert result["type"] == "result", result
        self.xmpp.send_presence(ppriority=priority)
        await self.ping_server()  # the presence (with its priority) has been processed

    async def next_copy(self) -> tuple[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            return await self.copies.get()

    def drain_copies(self) -> list[tuple[str, str]]:
        out = []
        while not self.copies.empty():
            direction, msg = self.copies.get_nowait()
            out.append((direction, str(msg[f"carbon_{direction}"]["body"])))
        return out

    def bodies(self) -> list[str]:
        """Bodies of the plain messages received (carbon wrappers have none)."""
        return [m["body"] for m in self.drain_messages() if m["body"]]


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


async def settle(sender: Slix, *observers: Slix) -> None:
    await sender.ping_server()
    for o in observers:
        await o.ping_server()


def test_received_and_sent_copies(server: ThreadNode) -> None:
    async def scenario() -> None:
        a1 = CarbonsClient("alice@example.org/one", "alice-pw")
        a2 = CarbonsClient("alice@example.org/two", "alice-pw")
        bob = CarbonsClient("bob@example.org/desk", "bob-pw")
        for c, carbons in ((a1, True), (a2, True), (bob, False)):
            await c.online(server.c2s_address, carbons=carbons)

        # Inbound to a full JID: one gets the original, two a <received/> copy of it.
        bob.xmpp.send_message(mto="alice@example.org/one", mbody="hello one", mtype="chat")
        assert (await a1.next_message(lambda m: bool(m["body"])))["body"] == "hello one"
        direction, wrapper = await a2.next_copy()
        assert direction == "received"
        assert wrapper["from"] == "alice@example.org" and wrapper["to"] == "alice@example.org/two"
        inner = wrapper["carbon_received"]
        assert (inner["body"], str(inner["from"]), str(inner["to"])) == (
            "hello one", "bob@example.org/desk", "alice@example.org/one")

        # Outbound: two gets a <sent/> copy of what one sent; one gets nothing back.
        a1.xmpp.send_message(mto="bob@example.org/desk", mbody="hi bob", mtype="chat")
        assert (await bob.next_message(lambda m: bool(m["body"])))["body"] == "hi bob"
        direction, wrapper = await a2.next_copy()
        assert direction == "sent"
        inner = wrapper["carbon_sent"]
        assert (inner["body"], str(inner["from"]), str(inner["to"])) == (
            "hi bob", "alice@example.org/one", "bob@example.org/desk")

        await settle(a1, bob, a2)
        assert a1.drain_copies() == [] and a1.bodies() == []
        assert a2.drain_copies() == [] and a2.bodies() == []
        assert bob.drain_copies() == []
        for c in (a1, a2, bob):
            await c.disconnect()

    run(scenario())


def test_private_no_copy_and_disabled(server: ThreadNode) -> None:
    async def scenario() -> None:
        a1 = CarbonsClient("alice@example.org/one", "alice-pw")
        a2 = CarbonsClient("alice@example.org/two", "alice-pw")
        bob = CarbonsClient("bob@example.org/desk", "bob-pw")
        bob2 = CarbonsClient("bob@example.org/phone", "bob-pw")
        for c, carbons in ((a1, True), (a2, True), (bob, False), (bob2, True)):
            await c.online(server.c2s_address, carbons=carbons)

        private = a1.xmpp.make_message(mto="bob@example.org/desk", mbody="private", mtype="chat")
        private.enable("carbon_private")
        private.send()
        no_copy = a1.xmpp.make_message(mto="bob@example.org/desk", mbody="no-copy", mtype="chat")
        no_copy.enable("no-copy")
        no_copy.send()
        await settle(a1, bob, bob2, a2)
        assert bob.bodies() == ["private", "no-copy"]
        assert a2.drain_copies() == [] and bob2.drain_copies() == []

        # After <disable/>, two gets nothing either way; bob's phone still gets its copies.
        result = await a2.xmpp.plugin["xep_0280"].disable(timeout=TIMEOUT)
        assert result["type"] == "result"
        bob.xmpp.send_message(mto="alice@example.org/one", mbody="in", mtype="chat")
        a1.xmpp.send_message(mto="bob@example.org/desk", mbody="out", mtype="chat")
        await settle(bob, a1)
        await settle(a1, a2, bob2, bob)
        assert a2.drain_copies() == [] and a2.bodies() == []
        # (two connections: the server may take "out" before "in")
        assert sorted(bob2.drain_copies()) == [("received", "out"), ("sent", "in")]
        for c in (a1, a2, bob, bob2):
            await c.disconnect()

    run(scenario())


def test_bare_jid_top_priority_all_no_duplicates(server: ThreadNode) -> None:
    async def scenario() -> None:
        hi1 = CarbonsClient("alice@example.org/hi1", "alice-pw")
        hi2 = CarbonsClient("alice@example.org/hi2", "alice-pw")
        low = CarbonsClient("alice@example.org/low", "alice-pw")
        bob = CarbonsClient("bob@example.org/desk", "bob-pw")
        for c, prio, carbons in ((hi1, 5, True), (hi2, 5, True), (low, 1, True), (bob, 0, False)):
            await c.online(server.c2s_address, priority=prio, carbons=carbons)
        bob.xmpp.send_message(mto="alice@example.org", mbody="to the bare jid", mtype="chat")
        await settle(bob, hi1, hi2, low)
        # Both top resources get the original once and no copy; the lower one gets one copy.
        assert hi1.bodies() == ["to the bare jid"] and hi1.drain_copies() == []
        assert hi2.bodies() == ["to the bare jid"] and hi2.drain_copies() == []
        assert low.bodies() == [] and low.drain_copies() == [("received", "to the bare jid")]
        for c in (hi1, hi2, low, bob):
            await c.disconnect()

    run(scenario())


def test_server_advertises_carbons(server: ThreadNode) -> None:
    async def scenario() -> None:
        a = CarbonsClient("alice@example.org/one", "alice-pw")
        await a.connect(server.c2s_address)
        info = await a.xmpp.plugin["xep_0030"].get_info(jid="example.org", timeout=TIMEOUT)
        assert CARBONS in info["disco_info"]["features"]
        await a.disconnect()

    run(scenario())
