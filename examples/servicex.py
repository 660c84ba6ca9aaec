"""Service X: a tiny external component (XEP-0114) that connects to meshxmpp and pushes a message.

Run without arguments for a self-contained demo: it starts a node in this process with
``[[components.service]] domain = "servicex.example.org"``, logs bob in, connects Service X and
pushes him a message (CI runs it through tests/component/test_example.py)::

    python examples/servicex.py

Or point it at a running server whose configuration lists the component (docs/components.md)::

    python examples/servicex.py --port 5347 --domain servicex.example.org --secret S --to bob@example.org

The component itself is ``push``: open a jabber:component:accept stream to the component's domain,
answer the stream id with hex(SHA-1(id + secret)), wait for the empty <handshake/>, then send stanzas
whose 'from' is in the component's domain.
"""

from __future__ import annotations

import argparse
import hashlib
from xml.sax.saxutils import escape, quoteattr

import trio

from meshxmpp import testing
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened
from meshxmpp.xml.stream import XmlStream

DOMAIN = "servicex.example.org"
SECRET = "change-me-servicex"


async def push(host: str, port: int, domain: str, secret: str, to: str, text: str) -> None:
    """Connect as ``domain``, send one chat message to ``to``, close the stream."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        # meshxmpp's parser, for brevity; any XML stream parser will do.
        parser = XmlStream(max_stanza_size=1 << 20, allowed_ns=frozenset({ns.COMPONENT}))

        async def next_event() -> object:
            while not pending:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("the server closed the connection")
                pending.extend(parser.feed(data))
            return pending.pop(0)

        pending: list[object] = []
        with trio.fail_after(10):
            await stream.send_all(
                f"<?xml version='1.0'?><stream:stream xmlns='{ns.COMPONENT}' "
                f"xmlns:stream='{ns.STREAMS}' to={quoteattr(domain)}>".encode())
            opened = await next_event()
            assert isinstance(opened, StreamOpened), opened
            digest = hashlib.sha1((opened.attrs["id"] + secret).encode()).hexdigest()
            await stream.send_all(f"<handshake>{digest}</handshake>".encode())
            answer = await next_event()
            if not (isinstance(answer, StanzaReceived) and answer.element.name == "handshake"):
                raise RuntimeError(f"refused: {answer}")  # <stream:error><not-authorized/>...
            message = (f"<message from={quoteattr(domain)} to={quoteattr(to)} type='chat'>"
                       f"<body>{escape(text)}</body></message>")
            await stream.send_all(message.encode())
            await stream.send_all(b"</stream:stream>")
            while not isinstance(await next_event(), StreamClosed):
                pass


async def demo() -> None:
    config = {"components": {"port": 0, "service": [{"domain": DOMAIN, "secret": SECRET}]},
              "routing": {"sender": [{"match": DOMAIN, "policy": "all-connected"}]}}
    async with testing.node(config, domain="example.org") as node:
        await node.add_user("bob", "bob-pw")
        bob = await node.client("bob", "bob-pw", resource="phone", presence=True)
        assert node.node.component_port is not None
        await push("127.0.0.1", node.node.component_port, DOMAIN, SECRET, "bob@example.org",
                   "Your parcel is on its way.")
        got = await bob.wait_for(lambda el: el.name == "message", what="Service X's message")
        body = got.find("body", ns.CLIENT)
        print(f"bob got from {got.get('from')}: {body.text if isinstance(body, Element) else ''}")
        await bob.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, help="the server's [components] port; none: run the demo")
    ap.add_argument("--domain", default=DOMAIN)
    ap.add_argument("--secret", default=SECRET)
    ap.add_argument("--to", default="bob@example.org")
    ap.add_argument("--text", default="Hello from Service X")
    args = ap.parse_args()
    if args.port is None:
        trio.run(demo)
    else:
        trio.run(push, args.host, args.port, args.domain, args.secret, args.to, args.text)
        print(f"sent to {args.to}")


if __name__ == "__main__":
    main()
