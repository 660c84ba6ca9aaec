"""Dict-backed storage: the reference implementation and the verified fake for tests.

It passes the same conformance suite as SQLite (``meshxmpp.testing._conformance``). Every
method checkpoints once before touching state, like a real backend would yield to the loop,
so tests that depend on storage calls not yielding fail here too; the mutation after the
checkpoint is synchronous and therefore atomic.

Unlike SQLite it may be used without ``open()``: tests build it and go.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.storage.base import KnownResource, OfflineMessage, RoomRecord, RosterItem, Storage

if TYPE_CHECKING:
    from meshxmpp.c2s.sasl import ScramCredentials

__all__ = ["MemoryStorage"]


def _copy_room(record: RoomRecord) -> RoomRecord:
    # Deep: config and occupants are nested JSON-like values the caller may mutate.
    return copy.deepcopy(record)


def _copy_item(item: RosterItem) -> RosterItem:
    # Stored items must not alias the caller's: RosterItem is mutable.
    return dataclasses.replace(item, groups=tuple(item.groups))


class _State:
    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, ScramCredentials]] = {}
        self.rosters: dict[str, dict[str, RosterItem]] = {}
        self.offline: dict[str, list[OfflineMessage]] = {}
        # all-resources delivery: user -> resource -> last seen; message id -> resources that had it
        self.resources: dict[str, dict[str, float]] = {}
        self.delivered: dict[int, set[str]] = {}
        # first-resource delivery: message id -> (holder, lease_until) while it is leased
        self.leases: dict[int, tuple[str, float]] = {}
        self.rooms: dict[str, RoomRecord] = {}
        # Like SQLite AUTOINCREMENT: ids grow across users and are never reused.
        self.ids = itertools.count(1)


class MemoryAccounts:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def create(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        await trio.lowlevel.checkpoint()
        if user in self._s.accounts:
            return False
        self._s.accounts[user] = dict(creds)
        return True

    async def get_credentials(self, user: str) -> dict[str, ScramCredentials] | None:
        await trio.lowlevel.checkpoint()
        creds = self._s.accounts.get(user)
        return None if creds is None else dict(creds)

    async def set_credentials(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        await trio.lowlevel.checkpoint()
        if user not in self._s.accounts:
            return False
        self._s.accounts[user] = dict(creds)
        return True

    async def delete(self, user: str) -> bool:
        await trio.lowlevel.checkpoint()
        if self._s.accounts.pop(user, None) is None:
            return False
        self._s.rosters.pop(user, None)
        for message in self._s.offline.pop(user, ()):
            self._s.delivered.pop(message.id, None)
            self._s.leases.pop(message.id, None)
        self._s.resources.pop(user, None)
        return True

    async def exists(self, user: str) -> bool:
        await trio.lowlevel.checkpoint()
        return user in self._s.accounts

    async def list(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._s.accounts)


class MemoryRosters:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def items(self, user: str) -> list[RosterItem]:
        await trio.lowlevel.checkpoint()
        roster = self._s.rosters.get(user, {})
        return [_copy_item(roster[jid]) for jid in sorted(roster)]

    async def get(self, user: str, jid: str) -> RosterItem | None:
        await trio.lowlevel.checkpoint()
        item = self._s.rosters.get(user, {}).get(jid)
        return None if item is None else _copy_item(item)

    async def put(self, user: str, item: RosterItem) -> None:
        await trio.lowlevel.checkpoint()
        self._s.rosters.setdefault(user, {})[item.jid] = _copy_item(item)

    async def remove(self, user: str, jid: str) -> bool:
        await trio.lowlevel.checkpoint()
        roster = self._s.rosters.get(user)
        if roster is None or jid not in roster:
            return False
        del roster[jid]
        if not roster:
            del self._s.rosters[user]
        return True


class MemoryOffline:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def store(self, user: str, stanza: str, *, stamp: float, limit: int) -> bool:
        await trio.lowlevel.checkpoint()
        queue = self._s.offline.setdefault(user, [])
        if len(queue) >= limit:
            if not queue:
                del self._s.offline[user]
            return False
        queue.append(OfflineMessage(id=next(self._s.ids), stanza=stanza, stamp=float(stamp)))
        return True

    async def count(self, user: str) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._s.offline.get(user, ()))

    async def fetch(self, user: str) -> list[OfflineMessage]:
        await trio.lowlevel.checkpoint()
        return list(self._s.offline.get(user, ()))

    async def delete(self, user: str, ids: list[int]) -> None:
        await trio.lowlevel.checkpoint()
        self._drop(user, set(ids))

    async def take(self, user: str) -> list[OfflineMessage]:
        await trio.lowlevel.checkpoint()
        queue = self._s.offline.pop(user, [])
        for m in queue:
            self._s.delivered.pop(m.id, None)
            self._s.leases.pop(m.id, None)
        return queue

    async def restore(self, user: str, messages: list[OfflineMessage]) -> None:
        await trio.lowlevel.checkpoint()
        if not messages:
            return
        queue = self._s.offline.get(user, [])
        present = {m.id for m in queue}
        back = {m.id: OfflineMessage(id=m.id, stanza=m.stanza, stamp=float(m.stamp)) for m in messages}
        merged = queue + [m for i, m in back.items() if i not in present]
        self._s.offline[user] = sorted(merged, key=lambda m: m.id)

    async def lease(self, user: str, *, holder: str, until: float, now: float) -> list[OfflineMessage]:
        await trio.lowlevel.checkpoint()
        leases = self._s.leases
        mine = [m for m in self._s.offline.get(user, ()) if m.id not in leases or leases[m.id][1] < now]
        for m in mine:
            leases[m.id] = (holder, float(until))
        return mine

    async def unlease(self, user: str, ids: list[int], holder: str) -> None:
        await trio.lowlevel.checkpoint()
        wanted = set(ids)
        for m in self._s.offline.get(user, ()):
            held = self._s.leases.get(m.id)
            if m.id in wanted and held is not None and held[0] == holder:
                del self._s.leases[m.id]

    def _drop(self, user: str, drop: set[int]) -> list[int]:
        """Delete ``user``'s messages whose id is in ``drop``; returns the ids deleted, ascending."""
        queue = self._s.offline.get(user)
        if not queue:
            return []
        kept = [m for m in queue if m.id not in drop]
        gone = [m.id for m in queue if m.id in drop]
        for i in gone:
            self._s.delivered.pop(i, None)
            self._s.leases.pop(i, None)
        if kept:
            self._s.offline[user] = kept
        else:
            del self._s.offline[user]
        return gone

    async def remember_resource(self, user: str, resource: str, *, seen: float, forget_before: float) -> None:
        await trio.lowlevel.checkpoint()
        known = self._s.resources.setdefault(user, {})
        known[resource] = max(float(seen), known.get(resource, float(seen)))
        for name in [r for r, last in known.items() if last < forget_before]:
            del known[name]
        if not known:
            del self._s.resources[user]

    async def known_resources(self, user: str) -> list[KnownResource]:
        await trio.lowlevel.checkpoint()
        known = self._s.resources.get(user, {})
        return [KnownResource(resource=r, last_seen=known[r]) for r in sorted(known)]

    async def pending(self, user: str, resource: str) -> list[OfflineMessage]:
        await trio.lowlevel.checkpoint()
        return [m for m in self._s.offline.get(user, ()) if resource not in self._s.delivered.get(m.id, ())]

    async def claim(self, user: str, resource: str, *, expire_before: float) -> list[OfflineMessage]:
        await trio.lowlevel.checkpoint()
        mine = [
            m
            for m in self._s.offline.get(user, ())
            if m.stamp >= expire_before and resource not in self._s.delivered.get(m.id, ())
        ]
        for m in mine:
            self._s.delivered.setdefault(m.id, set()).add(resource)
        return mine

    async def release(self, user: str, resource: str, ids: list[int]) -> None:
        await trio.lowlevel.checkpoint()
        wanted = set(ids)
        for m in self._s.offline.get(user, ()):
            had = self._s.delivered.get(m.id)
            if m.id in wanted and had is not None:
                had.discard(resource)
                if not had:
                    del self._s.delivered[m.id]

    async def mark_delivered(
        self, user: str, resource: str, ids: list[int], *, known_since: float, expire_before: float
    ) -> list[int]:
        await trio.lowlevel.checkpoint()
        queue = self._s.offline.get(user, [])
        wanted = set(ids)
        for m in queue:
            if m.id in wanted:
                self._s.delivered.setdefault(m.id, set()).add(resource)
        known = {r for r, last in self._s.resources.get(user, {}).items() if last >= known_since}
        done = set()
        for m in queue:
            had = self._s.delivered.get(m.id, set())
            if m.stamp < expire_before or (had and known <= had):
                done.add(m.id)
        return self._drop(user, done)

    async def expire(self, user: str, *, before: float) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._drop(user, {m.id for m in self._s.offline.get(user, ()) if m.stamp < before}))


class MemoryRooms:
    def __init__(self, state: _State) -> None:
        self._s = state

    async def get(self, room: str) -> RoomRecord | None:
        await trio.lowlevel.checkpoint()
        record = self._s.rooms.get(room)
        return None if record is None else _copy_room(record)

    async def put(self, record: RoomRecord) -> None:
        await trio.lowlevel.checkpoint()
        self._s.rooms[record.jid] = _copy_room(record)

    async def delete(self, room: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._s.rooms.pop(room, None) is not None

    async def set_occupants(self, room: str, occupants: list[dict[str, Any]], node: str | None) -> bool:
        await trio.lowlevel.checkpoint()
        record = self._s.rooms.get(room)
        if record is None:
            return False
        record.occupants = copy.deepcopy(occupants)
        record.node = node
        return True

    async def list(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._s.rooms)


class MemoryStorage(Storage):
    def __init__(self) -> None:
        state = _State()
        self.accounts = MemoryAccounts(state)
        self.rosters = MemoryRosters(state)
        self.offline = MemoryOffline(state)
        self.rooms = MemoryRooms(state)

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
