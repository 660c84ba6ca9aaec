"""meshxmpp: an XMPP server on Trio whose nodes form a peer-to-peer mesh.

Public names only; everything else lives in its module (see docs/internals.md).
Heavy imports are lazy so that ``meshxmpp --version`` and config errors answer quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["JID", "Config", "Node", "__version__"]

if TYPE_CHECKING:
    from meshxmpp.config import Config
    from meshxmpp.jid import JID
    from meshxmpp.node import Node


def __getattr__(name: str) -> Any:
    if name == "Node":
        from meshxmpp.node import Node

        return Node
    if name == "Config":
        from meshxmpp.config import Config

        return Config
    if name == "JID":
        from meshxmpp.jid import JID

        return JID
    raise AttributeError(f"module 'meshxmpp' has no attribute {name!r}")
