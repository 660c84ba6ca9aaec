"""Service X over HTTP: push a message to a user with the admin API, no XMPP library needed.

Run without arguments for a self-contained demo: it starts a node in this process with an admin token
and ``[[components.service]] domain = "servicex.example.org"`` (so the service may send as that
domain), logs bob in on two devices, and POSTs one message to ``/api/send``; the per-sender routing
rule for Service X delivers it to every device (CI runs it through tests/component/test_example.py)::

    python examples/servicex_http.py

Or point it at a running node (docs/operations.md, "Admin API")::

    python examples/servicex_http.py --url http://127.0.0.1:5280 --token TOKEN --to bob@example.org

The whole client is ``push``: one JSON POST with a bearer token.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

import trio

from meshxmpp import testing
from meshxmpp.xml import ns

DOMAIN = "servicex.example.org"
TOKEN = "demo-admin-token-0123456789"


def push(url: str, token: str, to: str, text: str, sender: str = DOMAIN) -> dict[str, str]:
    """POST /api/send; returns the node's JSON answer (raises urllib.error.HTTPError on an error)."""
    body = json.dumps({"from": sender, "to": to, "type": "chat", "body": text}).encode()
    request = urllib.request.Request(f"{url}/api/send", data=body, method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def demo() -> None:
    config = {"http": {"admin_token": TOKEN},
              "components": {"port": 0, "service": [{"domain": DOMAIN, "secret": "unused-here"}]},
              "routing": {"sender": [{"match": DOMAIN, "policy": "all-connected"}]}}
    async with testing.node(config, domain="example.org") as node:
        await node.add_user("bob", "bob-pw")
        phone = await node.client("bob", "bob-pw", resource="phone", presence=True)
        laptop = await node.client("bob", "bob-pw", resource="laptop")  # no presence: all-connected still
        host, port = node.http_address
        answer = await trio.to_thread.run_sync(push, f"http://{host}:{port}", TOKEN, "bob@example.org",
                                               "Your parcel is on its way.")
        print(f"node answered: {answer}")
        for device in (phone, laptop):
            got = await device.wait_for(lambda el: el.name == "message", what="Service X's message")
            print(f"bob/{device.jid.resource if device.jid else '?'} got from {got.get('from')}: "
                  f"{got.findtext('body', ns.CLIENT)}")
            await device.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="the node's HTTP base URL; none: run the demo")
    ap.add_argument("--token", default=TOKEN)
    ap.add_argument("--from", dest="sender", default=DOMAIN)
    ap.add_argument("--to", default="bob@example.org")
    ap.add_argument("--text", default="Hello from Service X")
    args = ap.parse_args()
    if args.url is None:
        trio.run(demo)
    else:
        print(push(args.url.rstrip("/"), args.token, args.to, args.text, args.sender))


if __name__ == "__main__":
    main()
