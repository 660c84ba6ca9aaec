"""Start a meshxmpp node inside this process, log two users in and let them chat.

Run: python examples/in_process_chat.py   (CI runs it through tests/test_examples.py)
"""

from __future__ import annotations

import trio

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element


async def main() -> None:
    async with testing.node(domain="example.org") as node:
        await node.add_user("alice", "alice-pw")
        await node.add_user("bob", "bob-pw")
        alice = await node.client("alice", "alice-pw", resource="laptop", presence=True)
        bob = await node.client("bob", "bob-pw", resource="phone", presence=True)

        message = Element("message", ns.CLIENT, {"to": "bob@example.org", "type": "chat"})
        message.add("body", ns.CLIENT, text="Hi Bob, this went through a real node.")
        await alice.send(message)

        received = await bob.wait_for(lambda el: el.name == "message", what="alice's message")
        body = received.find("body", ns.CLIENT)
        print(f"bob got from {received.get('from')}: {body.text if body is not None else ''}")
        await alice.aclose()
        await bob.aclose()


if __name__ == "__main__":
    trio.run(main)
