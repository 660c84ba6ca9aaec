"""Embed a meshxmpp node in your own Trio program, then log a client in and send a message.

The node is the real server (`meshxmpp.Node`, as `meshxmpp serve` runs it) started in this process with
a temporary directory for its SQLite database; `meshxmpp.testing.RunningNode` adds the conveniences a
script or a test wants (create users, connect a `TestClient`).

Run: python examples/embed_node.py   (CI runs it through tests/test_examples.py)
"""

from __future__ import annotations

import tempfile

import trio

from meshxmpp import Node
from meshxmpp.config import load_config
from meshxmpp.testing import RunningNode


async def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        config = load_config(None, {
            "domain": "example.org",
            "data_dir": data_dir,
            # Port 0: free ports picked by the system; STARTTLS stays available but is not required.
            "c2s": {"bind": "127.0.0.1", "port": 0, "require_encryption": False},
            "http": {"bind": "127.0.0.1", "port": 0},
        })
        node = Node(config, handle_signals=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)  # returns once the node accepts clients
            print(f"node serving example.org on 127.0.0.1:{node.c2s_port}")

            running = RunningNode(node)
            await running.add_user("alice", "alice-pw")
            await running.add_user("bob", "bob-pw")
            alice = await running.client("alice", "alice-pw", resource="laptop", presence=True)
            bob = await running.client("bob", "bob-pw", resource="phone", presence=True, starttls=True)

            await alice.send_message("bob@example.org", "Hello from an embedded node")
            got = await bob.wait_message("Hello from an embedded node", timeout=5)
            print(f"bob ({bob.jid}, over STARTTLS) got from {got.get('from')}: "
                  f"{got.findtext('body', 'jabber:client')}")

            await alice.aclose()
            await bob.aclose()
            node.stop()  # a clean shutdown; `run` returns when it is done
        print("node stopped")


if __name__ == "__main__":
    trio.run(main)
