"""An asyncio suite (slixmpp) against nodes running in a background thread: `run_in_thread` and the
``meshxmpp_thread_*`` fixtures. pytest-asyncio is not needed: each test calls ``asyncio.run``."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

import pytest
import slixmpp

from meshxmpp.testing import ThreadCluster, ThreadNode, run_in_thread

pytestmark = pytest.mark.timeout(90)
logging.getLogger("slixmpp").setLevel(logging.CRITICAL)


class Bot(slixmpp.ClientXMPP):
    def __init__(self, jid: str, password: str) -> None:
        super().__init__(jid, password)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test node's certificate is self-signed
        self.ssl_context = ctx
        self.enable_direct_tls = False
        self.started = asyncio.Event()
        self.inbox: asyncio.Queue[slixmpp.Message] = asyncio.Queue()
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", self.inbox.put_nowait)

    def _start(self, _event: object) -> None:
        self.send_presence()
        self.started.set()

    async def online(self, address: tuple[str, int]) -> None:
        self.connect(*address)
        await asyncio.wait_for(self.started.wait(), 15)


async def chat(alice_at: tuple[str, int], bob_at: tuple[str, int], domain: str,
               ready: Callable[[str], None] | None = None) -> str:
    alice, bob = Bot(f"alice@{domain}/a", "pw"), Bot(f"bob@{domain}/b", "pw")
    await asyncio.gather(alice.online(alice_at), bob.online(bob_at))
    try:
        if ready is not None:  # a blocking wait of the harness: run it off the event loop
            await asyncio.to_thread(ready, f"bob@{domain}/b")
        alice.send_message(mto=f"bob@{domain}/b", mbody="hello from asyncio", mtype="chat")
        msg = await asyncio.wait_for(bob.inbox.get(), 15)
        return f"{msg['from']}: {msg['body']}"
    finally:
        for bot in (alice, bob):
            bot.disconnect()
        await asyncio.sleep(0.05)


def test_slixmpp_against_run_in_thread() -> None:
    with run_in_thread(domain="example.org") as n:
        n.add_user("alice", "pw")
        n.add_user("bob", "pw")
        got = asyncio.run(chat(n.c2s_address, n.c2s_address, n.domain))
    assert got == "alice@example.org/a: hello from asyncio"


@pytest.mark.meshxmpp(domain="example.net")
def test_thread_node_fixture(meshxmpp_thread_node: ThreadNode) -> None:
    n = meshxmpp_thread_node
    assert n.domain == "example.net"
    n.add_user("alice", "pw")
    n.add_user("bob", "pw")
    assert asyncio.run(chat(n.c2s_address, n.c2s_address, n.domain)) == "alice@example.net/a: hello from asyncio"


@pytest.mark.meshxmpp(nodes=2, seed=3)
def test_thread_cluster_fixture_across_nodes_and_faults(meshxmpp_thread_cluster: ThreadCluster) -> None:
    c = meshxmpp_thread_cluster
    assert c.seed == 3 and c.live() == [0, 1]
    c.add_user("alice", "pw")
    c.add_user("bob", "pw")
    c.delay(0.01)
    got = asyncio.run(chat(c.c2s_address(0), c.c2s_address(1), c.domain, ready=c.session_visible))
    assert got == "alice@localhost/a: hello from asyncio"
    c.clear_faults()
    c.kill(1)
    c.wait_dead(1)
    c.restart(1)
    c.converged(timeout=15)
