"""External components (XEP-0114, jabber:component:accept): handshake, listener, routing.

``handshake`` is the sans-IO stream (bytes in, effects out), ``listener`` the Trio side, ``routing``
the hub handlers that take stanzas for a component's domain to its connection, here or on another
node of the mesh. docs/components.md describes how to connect one.
"""

from __future__ import annotations

from meshxmpp.component.handshake import ComponentStream, handshake_digest
from meshxmpp.component.listener import ComponentListener, ComponentListenerStatistics
from meshxmpp.component.routing import ComponentRouter

__all__ = [
    "ComponentListener",
    "ComponentListenerStatistics",
    "ComponentRouter",
    "ComponentStream",
    "handshake_digest",
]
