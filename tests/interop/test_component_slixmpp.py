"""slixmpp's ComponentXMPP (an independent XEP-0114 implementation) as Service X on a two-node cluster."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import slixmpp

from meshxmpp.testing import run_cluster_in_thread
from tests.interop.slix import TIMEOUT, Slix

pytestmark = pytest.mark.timeout(120)

logging.getLogger("slixmpp").setLevel(logging.CRITICAL)

DOMAIN = "example.org"
SX = "servicex.example.org"
SECRET = "servicex-secret"
CONFIG: dict[str, Any] = {
    "domain": DOMAIN,
    "components": {"port": 0, "service": [{"domain": SX, "secret": SECRET}]},
    "routing": {"sender": [{"match": SX, "policy": "all-connected"}]},
}


class ServiceX:
    """A slixmpp component that echoes messages and answers disco#info."""

    def __init__(self, secret: str = SECRET) -> None:
        self.xmpp = slixmpp.ComponentXMPP(SX, secret)
        self.xmpp.register_plugin("xep_0030")
        self.xmpp.plugin["xep_0030"].add_identity(category="gateway", itype="x", name="Service X", jid=SX)
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.started = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.xmpp.add_event_handler("session_start", lambda _e: self.started.set())
        self.xmpp.add_event_handler("disconnected", lambda _e: self.disconnected.set())
        self.xmpp.add_event_handler("message", self._on_message)

    def _on_message(self, msg: Any) -> None:
        self.messages.put_nowait(msg)
        if msg["type"] in ("chat", "normal"):
            self.xmpp.send_message(mto=msg["from"], mfrom=f"echo@{SX}/bot", mbody=f"echo: {msg['body']}",
                                   mtype="chat")

    async def connect(self, port: int) -> bool:
        self.xmpp.connect("127.0.0.1", port)
        async with asyncio.timeout(TIMEOUT):
            done, _ = await asyncio.wait([asyncio.create_task(self.started.wait()),
                                          asyncio.create_task(self.disconnected.wait())],
                                         return_when=asyncio.FIRST_COMPLETED)
        return self.started.is_set()


def test_slixmpp_component_across_two_nodes() -> None:
    with run_cluster_in_thread(2, CONFIG) as c:
        c.add_user("alice", "pw")
        c.add_user("bob", "pw")
        comp_port = c.running[1].node.component_port
        assert comp_port is not None

        async def scenario() -> None:
            # a wrong secret: slixmpp is disconnected without a session
            bad = ServiceX("wrong")
            assert not await bad.connect(comp_port)

            sx = ServiceX()
            assert await sx.connect(comp_port)
            await asyncio.to_thread(c.call, c.running.wait,
                                    lambda: c.running.mesh(0).component_nodes(SX) == ["node1"], "record on node0")
            alice = Slix("alice@example.org/laptop", "pw")
            await alice.connect(c.c2s_address(0))  # node 0: the component is on node 1
            alice.xmpp.send_presence()
            await alice.ping_server()

            # disco#info of the component, answered by slixmpp through the mesh
            info = await alice.xmpp.plugin["xep_0030"].get_info(jid=SX, timeout=TIMEOUT)
            assert ("gateway", "x", None, "Service X") in info["disco_info"]["identities"]

            # message to the component and its echo back
            alice.xmpp.send_message(mto=f"room@{SX}", mbody="hello X", mtype="chat")
            got = await asyncio.wait_for(sx.messages.get(), TIMEOUT)
            assert got["from"] == "alice@example.org/laptop" and got["body"] == "hello X"
            echo = await alice.next_message(lambda m: m["body"].startswith("echo:"))
            assert echo["from"] == f"echo@{SX}/bot" and echo["body"] == "echo: hello X"

            # a message from the component to bob's bare JID, bob bound without presence on node 1:
            # all-connected (the sender rule for Service X) delivers it anyway
            bob = Slix("bob@example.org/desk", "pw")
            await bob.connect(c.c2s_address(1))
            await bob.ping_server()
            sx.xmpp.send_message(mto="bob@example.org", mfrom=SX, mbody="for every device", mtype="chat")
            got = await bob.next_message(lambda m: m["body"] == "for every device")
            assert got["from"] == SX

            for client in (alice, bob):
                await client.disconnect()
            sx.xmpp.disconnect()
            async with asyncio.timeout(TIMEOUT):
                await sx.disconnected.wait()

        asyncio.run(scenario())
