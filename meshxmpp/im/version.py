"""Software Version (XEP-0092) of the server: name and version, no operating system (it helps
attackers more than operators).

Hooks (priority 0): ``iq-get/host/jabber:iq:version``, ``disco-features/host``.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

import meshxmpp
from meshxmpp.im._stanzas import answer
from meshxmpp.xml import ns

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

NAME = "meshxmpp"


def server_version() -> str:
    version = getattr(meshxmpp, "__version__", None)
    if isinstance(version, str) and version:
        return version
    try:
        return importlib.metadata.version("meshxmpp")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def register(hub: Hub, ctx: NodeContext) -> None:
    version = server_version()

    def handle(event: StanzaEvent) -> Any:
        reply = event.stanza.reply()
        query = reply.add("query", ns.VERSION)
        query.add("name", ns.VERSION, text=NAME)
        query.add("version", ns.VERSION, text=version)
        return answer(ctx, event, reply)

    def features(found: set[str]) -> None:
        found.add(ns.VERSION)

    hub.hook(f"iq-get/host/{ns.VERSION}", handle)
    hub.hook("disco-features/host", features)
