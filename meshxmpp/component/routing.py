"""Stanzas to external components: the live connections of this node and the router's hooks.

The router fires ``{kind}/remote`` for a stanza to a domain that is not ours; a component's domain is
one. ``ComponentRouter`` answers those events for the domains in ``[[components.service]]`` and for
any domain the mesh says a component is connected to (another node may allow components this one
does not):

1. a connection of that domain on this node: the newest one gets the stanza (a component that
   reconnects before its old TCP connection is noticed dead is reached on the new one);
2. else a node that has one (``MeshService.component_nodes``, first that takes it), with
   ``forward_to_node``: that node's router routes the stanza again and reaches its connection;
3. else ``service-unavailable`` for iq get/set and messages (errors and results are never bounced);
   presence is dropped.

Other domains get None, so the router answers ``remote-server-not-found`` as before.

The first connection of a domain on this node records it in the mesh's replicated table
(``set_component(domain, True)``), the last one to go removes it. The server's ``disco#items`` lists
every component domain connected anywhere in the mesh.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent
    from meshxmpp.xml.element import Element

__all__ = ["ComponentRouter"]

log = logging.getLogger("meshxmpp.component")


class _Link(Protocol):
    """What a connection offers the router (a ``c2s.session.Session`` used as the component's outbox)."""

    closed: bool

    def send(self, el: Element) -> None: ...


class ComponentRouter:
    """This node's component connections by domain, and the hub handlers that reach them."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.configured = frozenset(s.domain for s in ctx.config.components.service)
        self._links: dict[str, list[_Link]] = {}
        self.forwarded = 0  # stanzas handed to another node's component connection
        self.bounced = 0

    def register(self, hub: Hub) -> None:
        for kind in ("message", "presence", "iq"):
            hub.hook(f"{kind}/remote", self.to_component)
        hub.hook("disco-items/host", self._disco_items)

    # ------------------------------------------------------------------ connections

    def attach(self, domain: str, link: _Link) -> None:
        """A connection authenticated for ``domain`` (it becomes the one that gets new stanzas)."""
        links = self._links.setdefault(domain, [])
        links.append(link)
        if len(links) == 1 and self.ctx.mesh is not None:
            self.ctx.mesh.set_component(domain, True)

    def detach(self, domain: str, link: _Link) -> None:
        links = self._links.get(domain)
        if not links or link not in links:
            return
        links.remove(link)
        if not links:
            del self._links[domain]
            if self.ctx.mesh is not None:
                self.ctx.mesh.set_component(domain, False)

    def connected(self, domain: str) -> bool:
        """Whether ``domain`` has a connection on this node."""
        return domain in self._links

    def local_domains(self) -> list[str]:
        return sorted(self._links)

    def link(self, domain: str) -> _Link | None:
        """The connection that gets stanzas for ``domain`` here: the newest open one."""
        for link in reversed(self._links.get(domain, ())):
            if not link.closed:
                return link
        return None

    # ------------------------------------------------------------------ hub handlers

    def to_component(self, event: StanzaEvent) -> Any:
        to = event.to
        assert to is not None
        domain = to.domain
        el = event.stanza
        link = self.link(domain)
        if link is not None:
            link.send(el)
            return True
        mesh = self.ctx.mesh
        nodes = mesh.component_nodes(domain) if mesh is not None else []
        if mesh is not None:
            for node in nodes:
                if mesh.forward_to_node(node, str(to), el):
                    self.forwarded += 1
                    return True
        if not nodes and domain not in self.configured:
            return None  # not a component: the router's remote-server-not-found
        type_ = el.attrs.get("type")
        if (el.name == "iq" and type_ in ("get", "set")) or (el.name == "message" and type_ != "error"):
            self.bounced += 1
            self.ctx.router.bounce(el, "cancel", "service-unavailable")
        return True

    def _disco_items(self, items: list[tuple[str, str | None]]) -> None:
        mesh = self.ctx.mesh
        domains = set(self._links)
        candidates = self.configured | domains
        if mesh is not None:
            domains |= {d for d in candidates - domains if mesh.component_nodes(d)}
        listed = {jid for jid, _ in items}
        items.extend((d, None) for d in sorted(domains) if d not in listed)
