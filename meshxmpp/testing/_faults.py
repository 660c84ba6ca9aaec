"""Drop and delay mesh frames on arrival at one node of a `Cluster` (fault injection for tests).

`FrameTap` replaces the node's ``MeshService.transport.on_frame`` callback (which `MeshService.run` sets to
its ``_on_frame``) with a wrapper: each frame from a peer is dropped with probability ``drop_rate`` (a
seeded generator decides), or held for a delay before the original callback sees it. Held frames keep
their order per peer, as the TCP link they came over would. Partitions are not done here: the original
callback still honours ``MeshService.blocked`` at the moment it finally sees the frame.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
from collections.abc import Callable

import trio

__all__ = ["Delay", "FrameTap"]

log = logging.getLogger(__name__)

#: A delay: a fixed number of seconds, or ``(min, max)`` drawn uniformly per frame.
Delay = float | tuple[float, float]

OnFrame = Callable[[str, int, bytes], object]


class FrameTap:
    """Sits between a node's mesh transport and its `MeshService`; see the module docstring."""

    def __init__(self, original: OnFrame, rng: random.Random) -> None:
        self.original = original
        self.rng = rng
        self.drop_rate = 0.0
        self.delay: Delay | None = None
        self.dropped = 0
        self.delayed = 0
        self.passed = 0
        self._held: list[tuple[float, int, str, int, bytes]] = []
        self._last_due: dict[str, float] = {}
        self._pending: dict[str, int] = {}  # frames held per peer
        self._counter = itertools.count()
        self._wake = trio.Event()

    def __call__(self, peer: str, kind: int, payload: bytes) -> None:
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return
        delay = self._draw_delay()
        if delay <= 0.0 and not self._pending.get(peer):
            self.passed += 1
            self.original(peer, kind, payload)
            return
        # Never before a frame from the same peer that is still held: order per link is kept.
        due = max(trio.current_time() + delay, self._last_due.get(peer, -math.inf))
        self._last_due[peer] = due
        self._pending[peer] = self._pending.get(peer, 0) + 1
        self.delayed += 1
        heapq.heappush(self._held, (due, next(self._counter), peer, kind, bytes(payload)))
        self._wake.set()

    def _draw_delay(self) -> float:
        if self.delay is None:
            return 0.0
        if isinstance(self.delay, tuple):
            lo, hi = self.delay
            return lo + (hi - lo) * self.rng.random()
        return float(self.delay)

    async def run(self, stopped: trio.Event) -> None:
        """Deliver held frames when due, until the node has stopped (then they are lost, as in a crash)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._release)
            await stopped.wait()
            nursery.cancel_scope.cancel()

    async def _release(self) -> None:
        while True:
            self._wake = trio.Event()
            if not self._held:
                await self._wake.wait()
                continue
            with trio.move_on_at(self._held[0][0]):
                await self._wake.wait()  # an earlier frame may arrive meanwhile: look again
            now = trio.current_time()
            while self._held and self._held[0][0] <= now:
                _, _, peer, kind, payload = heapq.heappop(self._held)
                self._pending[peer] -= 1
                try:
                    self.original(peer, kind, payload)
                except Exception:  # as the transport does: one bad frame does not end the tap
                    log.exception("delayed mesh frame from %s failed", peer)
