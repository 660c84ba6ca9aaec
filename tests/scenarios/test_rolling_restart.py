"""Rolling restart under load (issue 8, acceptance): no message a sender got accepted is lost or doubled.

Three nodes with ``[shutdown] redirect = true``, 30 clients spread over them sending about 100 messages
a second in all to each other's bare JIDs, every message with a unique id and each followed by a ping:
a message counts as *accepted* once the ping written after it is answered (no XEP-0198 needed; the
server handles one connection's stanzas in order). Each node is restarted in turn (``c.restart(i)``:
graceful stop, start again on the same ports); its clients get ``<see-other-host/>`` naming a live node,
reconnect there and keep sending. At the end every accepted message has been received exactly once,
online or as an offline message at a final login, and no message at all twice.

Waits are bounded (stanzas with deadlines, `Cluster.wait`); ``trio.sleep`` only paces the senders.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from meshxmpp.testing import ClientError, TestClient, cluster
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

pytestmark = pytest.mark.timeout(120)

D = "localhost"
CLIENTS = 30
RATE = 100.0  # messages per second, all clients together
NETWORK_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ClientError, OSError)


class User:
    """One user's client across reconnections: what it sent, had accepted and received."""

    def __init__(self, name: str, address: str, peers: list[str], rng: random.Random) -> None:
        self.name = name
        self.address = address
        self.peers = peers
        self.rng = rng
        self.sent: set[str] = set()
        self.accepted: set[str] = set()
        self.received: Counter[str] = Counter()
        self.redirects: list[str] = []  # the addresses named by see-other-host, in order
        self.connections: list[str] = []  # the addresses it logged in at, in order
        self.errors: list[str] = []
        self.client: TestClient | None = None
        self.connected = trio.Event()
        self.sending = True
        self._pings: dict[str, str] = {}  # ping id -> the message written just before it
        self._answered: dict[str, trio.Event] = {}
        self._seq = 0

    async def run(self) -> None:
        """Connect, send and receive; follow redirects; until ``sending`` ends and ``client`` is closed."""
        while True:
            host, _, port = self.address.rpartition(":")
            client = await TestClient.connect(host, int(port), f"{self.name}@{D}", "secret", starttls=False,
                                              resource=f"r{len(self.connections)}", presence=True)
            self.connections.append(self.address)
            self.client = client
            self.connected.set()
            error = await self._session(client)
            self.connected = trio.Event()
            self.client = None
            await client.aclose()
            if error is None:
                return  # closed by us at the end
            condition, text = error
            if condition != "see-other-host":
                raise AssertionError(f"{self.name}: stream closed with {condition!r}, not see-other-host")
            self.redirects.append(text)
            self.address = text  # reconnect to the node named

    async def _session(self, client: TestClient) -> tuple[str, str] | None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send, client)
            error = await self._read(client)
            nursery.cancel_scope.cancel()
        return error

    async def _read(self, client: TestClient) -> tuple[str, str] | None:
        while True:
            try:
                el = await client.next_stanza(timeout=30)
            except ClientError:
                return None if not self.sending else ("closed", "")
            if el.name == "message" and el.get("id"):
                self.received[el.get("id") or ""] += 1
            elif el.name == "iq" and el.get("type") == "result" and el.get("id") in self._pings:
                ping_id = el.get("id") or ""
                self.accepted.add(self._pings.pop(ping_id))
                event = self._answered.pop(ping_id, None)
                if event is not None:
                    event.set()
            elif el.name == "error" and el.ns == ns.STREAMS:
                cond = next(c for c in el.children if isinstance(c, Element) and c.ns == ns.STREAM_ERRORS)
                return cond.name, cond.text

    async def _send(self, client: TestClient) -> None:
        interval = CLIENTS / RATE
        await trio.sleep(self.rng.uniform(0, interval))  # pacing: spread the clients over the interval
        try:
            while self.sending:
                self._seq += 1
                mid = f"{self.name}-{self._seq}"
                to = self.rng.choice(self.peers)
                msg = Element("message", ns.CLIENT, {"to": f"{to}@{D}", "type": "chat", "id": mid})
                msg.add("body", ns.CLIENT, text=mid)
                ping_id = f"p-{mid}"
                self._pings[ping_id] = mid
                self.sent.add(mid)
                await client.send(msg)
                await client.send(Element("iq", ns.CLIENT, {"type": "get", "id": ping_id, "to": D},
                                          children=[Element("ping", ns.PING)]))
                await trio.sleep(interval)  # pacing the send rate
        except NETWORK_ERRORS as exc:
            self.errors.append(repr(exc))  # the node went away: the reader sees why

    async def round_trip(self) -> None:
        """A ping answered: everything the server queued for this client before it has arrived."""
        client = self.client
        assert client is not None
        self._seq += 1
        ping_id = f"final-{self._seq}"
        event = self._answered[ping_id] = trio.Event()
        self._pings[ping_id] = ""
        await client.send(Element("iq", ns.CLIENT, {"type": "get", "id": ping_id, "to": D},
                                  children=[Element("ping", ns.PING)]))
        with trio.fail_after(10):
            await event.wait()

    async def close(self) -> None:
        self.sending = False
        if self.client is not None:
            await self.client.send_raw(b"</stream:stream>")


async def test_rolling_restart_under_load_loses_no_accepted_message() -> None:
    rng = random.Random(8)
    async with cluster(3, {"shutdown": {"redirect": True, "timeout": 5.0}}) as c:
        names = [f"u{k:02d}" for k in range(CLIENTS)]
        for name in names:
            await c.add_user(name)
        addresses = [f"127.0.0.1:{c[i].node.c2s_port}" for i in range(3)]
        await c.wait(lambda: all(len(c.mesh(i).c2s_addresses()) == 2 for i in range(3)),
                     "the nodes' client addresses not replicated")
        users = [User(name, addresses[k % 3], [n for n in names if n != name], random.Random(rng.random()))
                 for k, name in enumerate(names)]

        def accepted() -> int:
            return sum(len(u.accepted) for u in users)

        def all_connected() -> bool:
            return all(u.connected.is_set() for u in users)

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(user.run)
            await c.wait(all_connected, lambda: "not every client connected",
                         timeout=20)
            for i in range(3):
                # Load before each restart, then restart node i while the clients keep sending.
                target = accepted() + 150
                await c.wait(lambda t=target: accepted() >= t, lambda: f"only {accepted()} accepted", timeout=20)
                on_node = [u for u in users if u.address == addresses[i]]
                assert on_node, f"no client on node {i}"
                await c.restart(i)
                await c.converged(timeout=20)
                await c.wait(all_connected, lambda: "clients did not reconnect", timeout=20)
                # Every client of node i was told to go elsewhere, went to the node named, and carries on.
                for u in on_node:
                    assert u.redirects and u.redirects[-1] != addresses[i], (u.name, u.redirects)
                    assert u.connections[-1] == u.redirects[-1]
                    assert u.redirects[-1] in addresses
                await c.wait(lambda: all(len(c.mesh(j).c2s_addresses()) == 2 for j in range(3)),
                             "node's client address not published again after the restart")
            target = accepted() + 150
            await c.wait(lambda: accepted() >= target, lambda: f"only {accepted()} accepted", timeout=20)
            # Stop sending; let everything routed arrive; then everyone leaves.
            for user in users:
                user.sending = False
            await c.settled()
            for user in users:
                await user.round_trip()
            for user in users:
                await user.close()
        # A final login each: what was stored offline comes with the initial presence, before the pong.
        for k, user in enumerate(users):
            client = await c.client(k % 3, user.name, presence=True, resource="final")
            await client.ping()
            for el in client.pending():
                if el.name == "message" and el.get("id"):
                    user.received[el.get("id") or ""] += 1
            await client.aclose()

        sent = set().union(*(u.sent for u in users))
        accepted_ids = set().union(*(u.accepted for u in users)) - {""}
        received: Counter[str] = Counter()
        for user in users:
            received.update(user.received)
        twice = {m: n for m, n in received.items() if n > 1}
        lost = sorted(m for m in accepted_ids if received[m] == 0)
        redirected = sum(len(u.redirects) for u in users)
        print(f"sent {len(sent)}, accepted {len(accepted_ids)}, received {len(received)}, "
              f"redirects {redirected}, seed {c.seed}")
        assert not twice, f"received more than once: {twice}"
        assert not lost, f"{len(lost)} accepted messages lost: {lost[:20]}"
        assert set(received) <= sent
        assert len(accepted_ids) >= 600
        assert redirected >= CLIENTS  # each node's clients moved at least once
