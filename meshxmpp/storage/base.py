"""The storage contract: plain dataclasses and the Protocols every backend implements.

Callers (``ctx.storage``) see only these names; see ``docs/internals.md``. Behaviour the
contract leaves open is pinned by ``meshxmpp.testing._conformance`` so that the memory fake
and the real backends agree:

* ``Accounts.list()`` returns users sorted; ``Rosters.items()`` returns items sorted by jid.
* ``Rosters.items()``/``get()`` return copies: mutating a returned item changes nothing stored.
* ``Offline.fetch()`` is oldest first (ascending id); ids are never reused for a store.
* ``Offline.store()`` refuses (``False``) when the user already holds ``limit`` messages.
* ``Offline.delete()`` ignores ids that are unknown or belong to another user.
* ``Offline.take()``, ``Offline.lease()`` and ``Offline.claim()`` are atomic claims: of several
  callers racing on one user (one resource, for ``claim``), even through different ``Storage``
  objects on one SQLite file, each message goes to exactly one (``docs/storage.md``); a lease
  lasts until its ``until`` (then the message can be leased again), ``unlease``, or ``delete``.
* Known resources and delivery records (``[offline] delivery = "all-resources"``, see
  ``docs/offline.md``): ``known_resources()`` is sorted by resource; ``pending()`` is oldest
  first; ``mark_delivered()`` records and deletes in one transaction and returns the deleted
  ids ascending; deleting a message (any way) deletes its delivery records, and deleting an
  account deletes its known resources.
* Rooms (``docs/muc.md``): ``Rooms.list()`` is sorted; ``get()`` returns a copy (mutating it, its
  config, affiliations or occupants changes nothing stored); ``set_occupants()`` on a room that
  is not stored does nothing and returns ``False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from meshxmpp.c2s.sasl import ScramCredentials

__all__ = [
    "Accounts",
    "KnownResource",
    "Offline",
    "OfflineMessage",
    "RoomRecord",
    "Rooms",
    "RosterItem",
    "Rosters",
    "Storage",
    "StorageClosedError",
]


@dataclass(slots=True)
class RosterItem:
    jid: str
    name: str | None = None
    subscription: str = "none"  # none|to|from|both
    ask: bool = False  # pending out (we asked them)
    pending_in: bool = False  # they asked us, not yet answered; stanza kept below
    pending_in_stanza: str | None = None
    approved: bool = False  # pre-approval (RFC 6121 3.4)
    groups: tuple[str, ...] = ()
    hidden: bool = False  # exists only to hold pending_in/approved; not in roster results


@dataclass(frozen=True, slots=True)
class OfflineMessage:
    id: int
    stanza: str
    stamp: float


@dataclass(frozen=True, slots=True)
class KnownResource:
    """A resource of a user that bound and sent initial presence (non-negative priority) recently."""

    resource: str
    last_seen: float


@dataclass(slots=True)
class RoomRecord:
    """A multi-user chat room as stored (``muc.service``): what a restart or another node needs.

    ``config`` is ``RoomConfig.to_dict()``, ``affiliations`` maps bare JIDs to owner|admin|member|
    outcast, ``occupants`` is ``Room.occupants_snapshot()`` (a mirror of who is in the room now, so
    another node can take the room over when the one holding it dies), ``node`` the mesh member that
    holds the room in memory now (None: nobody; it is loaded again on the next stanza). Every value
    in ``config`` and ``occupants`` must survive a JSON round trip.
    """

    jid: str  # bare room JID
    config: dict[str, Any] = field(default_factory=dict)
    affiliations: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    subject_by: str | None = None
    persistent: bool = False
    occupants: list[dict[str, Any]] = field(default_factory=list)
    node: str | None = None


@runtime_checkable
class Accounts(Protocol):
    async def create(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        """Create ``user``; ``False`` (and nothing changed) if it exists."""
        ...

    async def get_credentials(self, user: str) -> dict[str, ScramCredentials] | None: ...

    async def set_credentials(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        """Replace all credentials of ``user``; ``False`` if there is no such account."""
        ...

    async def delete(self, user: str) -> bool:
        """Remove the account with its roster, offline messages (with their delivery records) and
        known resources, atomically."""
        ...

    async def exists(self, user: str) -> bool: ...

    async def list(self) -> list[str]: ...


@runtime_checkable
class Rosters(Protocol):
    async def items(self, user: str) -> list[RosterItem]:
        """All items of ``user``'s roster, hidden ones included, sorted by jid."""
        ...

    async def get(self, user: str, jid: str) -> RosterItem | None: ...

    async def put(self, user: str, item: RosterItem) -> None:
        """Upsert by ``(user, item.jid)``; every field is replaced."""
        ...

    async def remove(self, user: str, jid: str) -> bool: ...


@runtime_checkable
class Offline(Protocol):
    async def store(self, user: str, stanza: str, *, stamp: float, limit: int) -> bool:
        """Append a message; ``False`` (nothing stored) if ``user`` already holds ``limit``."""
        ...

    async def count(self, user: str) -> int: ...

    async def fetch(self, user: str) -> list[OfflineMessage]:
        """All messages of ``user``, oldest first."""
        ...

    async def delete(self, user: str, ids: list[int]) -> None:
        """Delete these messages of ``user`` with their delivery records; other ids are ignored."""
        ...

    async def take(self, user: str) -> list[OfflineMessage]:
        """Atomically fetch and delete all messages of ``user`` (with their delivery records),
        oldest first: of concurrent takers each message is returned to exactly one
        (``[offline] delivery = "first-resource"``)."""
        ...

    async def restore(self, user: str, messages: list[OfflineMessage]) -> None:
        """Put messages returned by ``take`` back, with their ids, stanzas and stamps (the
        taker could not deliver them). Ids still stored are ignored; the quota is not checked."""
        ...

    async def lease(self, user: str, *, holder: str, until: float, now: float) -> list[OfflineMessage]:
        """In one transaction: ``user``'s messages that are not leased, or whose lease expired
        (``lease_until < now``), oldest first, marked as leased by ``holder`` until ``until``
        (``[offline] delivery = "first-resource"``). Of concurrent leases (also through other
        ``Storage`` objects on the same database) each message is returned to exactly one while
        its lease runs. The holder deletes them once delivered (``delete``), or gives them back
        (``unlease``); a holder that dies does neither, and they are offered again after ``until``."""
        ...

    async def unlease(self, user: str, ids: list[int], holder: str) -> None:
        """Give back the messages ``ids`` leased by ``holder`` (its session ended before they
        were delivered): they can be leased again at once. Ids that are unknown, another user's,
        not leased or leased by another holder are ignored."""
        ...

    # For ``[offline] delivery = "all-resources"`` (docs/offline.md). ------------------------

    async def remember_resource(self, user: str, resource: str, *, seen: float, forget_before: float) -> None:
        """Record that ``resource`` of ``user`` was seen at ``seen`` (a later ``last_seen`` is
        kept: it never goes back), and in the same transaction forget ``user``'s resources last
        seen before ``forget_before``."""
        ...

    async def known_resources(self, user: str) -> list[KnownResource]:
        """``user``'s remembered resources, sorted by resource (forgotten ones excluded)."""
        ...

    async def pending(self, user: str, resource: str) -> list[OfflineMessage]:
        """``user``'s messages not yet delivered to ``resource``, oldest first."""
        ...

    async def claim(self, user: str, resource: str, *, expire_before: float) -> list[OfflineMessage]:
        """In one transaction: ``user``'s messages not yet delivered to ``resource`` and stamped
        at or after ``expire_before``, oldest first, recorded as delivered to ``resource`` (as
        ``mark_delivered`` would, without deleting anything). Of concurrent claims for the same
        resource each message is returned to exactly one."""
        ...

    async def release(self, user: str, resource: str, ids: list[int]) -> None:
        """Undo ``claim`` for ``ids`` (the claimer could not deliver them): ``resource`` has not
        had them. Ids that are unknown, another user's, or not recorded are ignored."""
        ...

    async def mark_delivered(
        self, user: str, resource: str, ids: list[int], *, known_since: float, expire_before: float
    ) -> list[int]:
        """In one transaction: record that ``resource`` has had the messages ``ids`` (ids that are
        unknown or another user's are ignored), then delete every message of ``user`` that

        * is stamped before ``expire_before``, or
        * has been delivered to at least one resource and to every resource of ``user`` last
          seen at or after ``known_since``.

        Returns the deleted ids, ascending."""
        ...

    async def expire(self, user: str, *, before: float) -> int:
        """Delete ``user``'s messages stamped before ``before``; returns how many."""
        ...


@runtime_checkable
class Rooms(Protocol):
    async def get(self, room: str) -> RoomRecord | None:
        """The record of the bare room JID ``room`` (a copy), or None."""
        ...

    async def put(self, record: RoomRecord) -> None:
        """Upsert by ``record.jid``; every field is replaced."""
        ...

    async def delete(self, room: str) -> bool:
        """Forget ``room``; ``False`` if it was not stored."""
        ...

    async def set_occupants(self, room: str, occupants: list[dict[str, Any]], node: str | None) -> bool:
        """Replace only the occupant mirror and holder of a stored room (cheaper than ``put``);
        ``False`` (nothing stored) if the room is not stored."""
        ...

    async def list(self) -> list[str]:
        """Every stored room JID, sorted."""
        ...


class StorageClosedError(RuntimeError):
    """A backend that needs ``open()`` was used before it or after ``close()``."""


class Storage:
    """What callers hold (``ctx.storage``). Backends subclass this and set the four parts.

    ``open()`` must be awaited before use and ``close()`` after; ``async with storage:``
    does both.
    """

    accounts: Accounts
    rosters: Rosters
    offline: Offline
    rooms: Rooms

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
