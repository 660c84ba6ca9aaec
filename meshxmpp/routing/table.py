"""The local session registry: which bound sessions this node holds, by bare and full JID.

This node's sessions are authoritative here (ARCHITECTURE convention 14); the mesh directory will
replicate them. Lookups are plain dict reads: they sit on the routing hot path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.jid import JID


class SessionRegistry:
    __slots__ = ("_by_bare", "_count")

    def __init__(self) -> None:
        # bare JID -> {resource: Session}; insertion order is bind order.
        self._by_bare: dict[JID, dict[str, Session]] = {}
        self._count = 0

    def bind(self, session: Session) -> Session | None:
        """Register ``session``; return the session it replaces (same full JID), if any."""
        resources = self._by_bare.setdefault(session.bare, {})
        resource = session.jid.resource
        assert resource is not None
        old = resources.pop(resource, None)
        resources[resource] = session
        if old is None:
            self._count += 1
        return old

    def unbind(self, session: Session) -> bool:
        """Remove ``session`` if it is the one registered under its full JID."""
        resources = self._by_bare.get(session.bare)
        if not resources:
            return False
        resource = session.jid.resource
        if resources.get(resource) is not session:  # type: ignore[arg-type]
            return False
        del resources[resource]  # type: ignore[arg-type]
        self._count -= 1
        if not resources:
            del self._by_bare[session.bare]
        return True

    def get(self, full: JID) -> Session | None:
        resources = self._by_bare.get(full.bare)
        if resources is None or full.resource is None:
            return None
        return resources.get(full.resource)

    def of(self, bare: JID) -> list[Session]:
        resources = self._by_bare.get(bare)
        return list(resources.values()) if resources else []

    def available_of(self, bare: JID) -> list[Session]:
        resources = self._by_bare.get(bare)
        return [s for s in resources.values() if s.available] if resources else []

    def all(self) -> Iterator[Session]:
        for resources in self._by_bare.values():
            yield from resources.values()

    def users(self) -> int:
        return len(self._by_bare)

    def __len__(self) -> int:
        return self._count
