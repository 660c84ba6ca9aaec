"""Offline messages (XEP-0160) with a delay stamp (XEP-0203); the policy is ``docs/offline.md``.

``message/offline`` (fired by the router when the routing policy says "store"): a chat or
normal message for an existing user is stored with ``<delay from=domain stamp=…/>`` added, up to
``offline.max_per_user`` per user; over the quota the sender gets ``service-unavailable``.
``presence/initial`` (fired by ``im.presence``) for a resource with a non-negative priority:

* ``[offline] delivery = "first-resource"`` (XEP-0160): it receives all stored messages,
  oldest first, and they are deleted once its outbox has been written to the socket.
* ``"all-resources"``: the resource is remembered as one of the user's *known resources*; it
  receives, oldest first, the stored messages it has not had yet (and that are younger than
  ``MAX_AGE``); then one storage transaction records that it had them and deletes every
  message that all known resources have had, or that is older than ``MAX_AGE``. ``session/end``
  refreshes the resource's last-seen time, so a device is forgotten ``RESOURCE_MEMORY``
  seconds after it was last online, not after it logged in.

Delivery claims its messages in storage before queueing them (``Offline.lease`` for
first-resource, ``Offline.claim`` for all-resources; one transaction each), so two resources
sending initial presence at the same moment, on this node or on another node sharing the
database, never both get (first-resource) or both get twice (all-resources) a message.

first-resource is lease-then-delete: the lease (holder = node name, session JID and a random
token; ``LEASE`` seconds) is the claim; the stanzas are queued, the session's outbox is waited
for until written to the socket (``Session.wait_flushed``, at most ``FLUSH_TIMEOUT``), and only
then are the messages deleted. A session that ends first gives them back (``Offline.unlease``)
for its next login. A crash between the lease and the delete leaves them leased: once the lease
has expired the next login gets them again, a redelivery the client recognises by stanza id
(every stored message has one: ``offline-<random>`` is added when the sender gave none). At least
once across a crash, exactly once while the nodes run. all-resources: a crash between the claim
and queueing the stanzas loses them for that resource (docs/offline.md).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.im._stanzas import KeyedLocks, bounce, dumps, loads
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.jid import JID
    from meshxmpp.routing.router import StanzaEvent
    from meshxmpp.storage.base import OfflineMessage

log = logging.getLogger("meshxmpp.im.offline")

FEATURE = "msgoffline"
STORED_TYPES = frozenset({"chat", "normal"})

FIRST_RESOURCE = "first-resource"
ALL_RESOURCES = "all-resources"
# The defaults of ``[offline] resource_memory`` and ``max_age`` (config.py; seconds, all-resources only).
RESOURCE_MEMORY = 30 * 24 * 3600.0  # a resource not seen for this long is forgotten
MAX_AGE = 7 * 24 * 3600.0  # a stored message older than this is never delivered, and deleted
RECORD_TIMEOUT = 30.0  # bound on the shielded write that records a delivery
# first-resource: how long a delivery holds its messages (Offline.lease) before another login may
# get them; after a crash, how long until they are offered again. FLUSH_TIMEOUT bounds the wait
# for the session's outbox to reach the socket: well under LEASE, so that a live delivery always
# deletes (or gives back) its messages before its lease could run out.
LEASE = 60.0
FLUSH_TIMEOUT = 30.0


def stamp_text(when: float) -> str:
    """XEP-0082 DateTime in UTC with milliseconds: ``2024-05-01T12:00:00.250Z``."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def with_delay(el: Element, domain: str, when: float) -> Element:
    out = el.copy()
    out.append(Element("delay", ns.DELAY, {"from": domain, "stamp": stamp_text(when)}))
    return out


@contextmanager
def _shielded() -> Iterator[None]:
    """For the write that follows queueing stanzas to a session: it must run even when the task is
    being cancelled (the client hung up right after its presence), else the next login gets the
    same messages again. Bounded, as every cleanup (ARCHITECTURE.md convention 7)."""
    with trio.move_on_after(RECORD_TIMEOUT) as scope:
        scope.shield = True
        yield
    if scope.cancelled_caught:
        log.warning("offline: recording a delivery took over %.0f s; it may be repeated", RECORD_TIMEOUT)


class Offline:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.locks = KeyedLocks()
        self.all_resources = ctx.config.offline.delivery == ALL_RESOURCES
        self.resource_memory = float(ctx.config.offline.resource_memory)
        self.max_age = float(ctx.config.offline.max_age)
        # all-resources: the sessions remembered as known resources, by full JID, so that their
        # end refreshes last_seen (a replaced session's end does not).
        self._remembered: dict[JID, Session] = {}

    def store(self, event: StanzaEvent) -> Any:
        type_ = event.stanza.get("type") or "normal"
        if type_ == "headline":
            return True  # RFC 6121 8.5.2.2.1: silently ignored
        if type_ not in STORED_TYPES or event.to is None:
            return None  # the router bounces it
        return self._store(event)

    async def _store(self, event: StanzaEvent) -> None:
        assert event.to is not None
        user = str(event.to.bare)
        if not await self.ctx.storage.accounts.exists(user):
            await bounce(self.ctx, event.stanza, "cancel", "service-unavailable")
            return
        when = self.ctx.now()
        el = with_delay(event.stanza, self.ctx.domain, when)
        if not el.get("id"):
            # A redelivery after a crash (docs/offline.md) is recognisable by stanza id only if
            # every stored message has one.
            el.set("id", f"offline-{secrets.token_hex(8)}")
        stanza = dumps(el)
        limit = self.ctx.config.offline.max_per_user
        offline = self.ctx.storage.offline
        stored = await offline.store(user, stanza, stamp=when, limit=limit)
        if not stored and self.all_resources and await offline.expire(user, before=when - self.max_age):
            # Messages past MAX_AGE are dropped lazily; here they were what held the quota.
            stored = await offline.store(user, stanza, stamp=when, limit=limit)
        if not stored:
            log.info("offline quota (%d) reached for %s", limit, user)
            await bounce(self.ctx, event.stanza, "cancel", "service-unavailable", "Offline storage is full")

    async def deliver(self, session: Session) -> None:
        if session.priority < 0:
            return  # as Prosody: a negative-priority resource is not where messages go
        user = str(session.bare)
        # The storage claims (take / claim) make each message go to one deliverer even across
        # nodes sharing the database; the lock keeps this node's deliveries for one user in
        # order and out of each other's write transactions.
        async with self.locks(user):
            if self.all_resources:
                await self._deliver_each(session, user)
            else:
                await self._deliver_first(session, user)

    async def _deliver_first(self, session: Session, user: str) -> None:
        if session.closed:
            return
        offline = self.ctx.storage.offline
        now = self.ctx.now()
        holder = f"{self.ctx.node_name}/{session.jid}/{secrets.token_hex(6)}"
        # Leased, atomically: a racing resource (on this node or another) gets none of them
        # while the lease runs. Nothing is deleted before the stanzas reached the socket.
        messages = await offline.lease(user, holder=holder, until=now + LEASE, now=now)
        if not messages:
            return
        ids = [m.id for m in messages]
        written = False
        try:
            if session.closed:
                return  # it ended while we waited for storage: given back below
            for message in messages:
                el = self._load(message, user)
                if el is not None:  # an unreadable one is deleted with the rest
                    self.ctx.router.deliver(session, el)
            with trio.move_on_after(FLUSH_TIMEOUT) as flush:
                await session.wait_flushed()
            if flush.cancelled_caught:
                # Still queued: they may yet be written. Neither deleted nor given back: the
                # lease runs out and a later login gets them again (at least once).
                log.warning("offline: %r did not flush within %.0f s; %d message(s) stay leased",
                            session, FLUSH_TIMEOUT, len(ids))
                ids = []
            else:
                written = not session.aborted
        finally:
            # Shielded: a cancellation (the client hung up) must not strand them leased.
            if ids:
                with _shielded():
                    if written:
                        await offline.delete(user, ids)
                    else:  # aborted (the outbox was dropped) or closed first: for the next login
                        await offline.unlease(user, ids, holder)

    async def _deliver_each(self, session: Session, user: str) -> None:
        offline = self.ctx.storage.offline
        resource = session.jid.resource or ""
        now = self.ctx.now()
        forget_before = now - self.resource_memory
        expire_before = now - self.max_age
        await offline.remember_resource(user, resource, seen=now, forget_before=forget_before)
        if not session.ended:  # else its session/end has already run and would never pop it
            self._remembered[session.jid] = session
        claimed: list[OfflineMessage] = []
        if not session.closed:
            # Recorded as had by this resource in the same transaction that selects them: a
            # second session of the same resource (e.g. on another node) gets each one once.
            claimed = await offline.claim(user, resource, expire_before=expire_before)
        if claimed and session.closed:
            # It ended while we waited: they stay for its next login.
            with _shielded():
                await offline.release(user, resource, [m.id for m in claimed])
            return
        sent: list[int] = []
        unreadable: list[int] = []
        for message in claimed:
            el = self._load(message, user)
            if el is None:
                unreadable.append(message.id)
            else:
                self.ctx.router.deliver(session, el)
                sent.append(message.id)
        # Then one transaction deletes what every known resource has had (or what expired);
        # ``sent`` is already recorded by the claim. Also run with nothing sent: a forgotten
        # resource may have completed older messages. Shielded: the claim has committed.
        gone: list[int] = []
        with _shielded():
            if unreadable:
                await offline.delete(user, unreadable)
            gone = await offline.mark_delivered(
                user, resource, sent, known_since=forget_before, expire_before=expire_before
            )
        if gone:
            log.debug("offline: %d message(s) for %s delivered everywhere or expired", len(gone), user)

    async def session_end(self, session: Session) -> None:
        """all-resources: a known resource was last seen now (so it is remembered from its end)."""
        if self._remembered.get(session.jid) is not session:
            return
        del self._remembered[session.jid]
        now = self.ctx.now()
        try:
            await self.ctx.storage.offline.remember_resource(
                str(session.bare), session.jid.resource or "", seen=now, forget_before=now - self.resource_memory
            )
        except Exception:  # best effort (e.g. storage closing at shutdown): last_seen stays at login
            log.warning("could not refresh last-seen of %s", session.jid, exc_info=True)

    @staticmethod
    def _load(message: OfflineMessage, user: str) -> Element | None:
        try:
            return loads(message.stanza)
        except ValueError:
            log.warning("dropping unreadable offline message %d for %s", message.id, user)
            return None

    @staticmethod
    def features(found: set[str]) -> None:
        found.add(FEATURE)


def register(hub: Hub, ctx: NodeContext) -> Offline:
    feature = Offline(ctx)
    hub.hook("message/offline", feature.store)
    hub.hook("presence/initial", feature.deliver)
    if feature.all_resources:
        hub.hook("session/end", feature.session_end)
    hub.hook("disco-features/host", feature.features)
    return feature
