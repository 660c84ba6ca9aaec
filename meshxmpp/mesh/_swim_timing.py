"""Membership timings and the pure formulas behind them (memberlist ``util.go``, ``suspicion.go``, ``awareness.go``).

Nothing here reads a clock: the suspicion timer is a start time and a deadline the caller compares with
``now``; the awareness score is a number the caller scales intervals with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = [
    "PROFILES",
    "Awareness",
    "Suspicion",
    "Timing",
    "push_pull_scale",
    "remaining_suspicion_time",
    "retransmit_limit",
    "suspicion_timeout",
]


@dataclass(frozen=True, slots=True)
class Timing:
    """Every knob of the membership protocol; seconds for times.  `PROFILES` holds the presets."""

    probe_interval: float  # one probe of one member per interval (scaled by local health)
    probe_timeout: float  # wait for the direct ack before asking others (not scaled, as in memberlist)
    indirect_checks: int  # members asked to probe for us (ping-req) when the direct probe times out
    suspicion_mult: int  # suspicion timeout = mult * max(1, log10(n)) * probe_interval ...
    suspicion_max_timeout_mult: int  # ... starting at max_mult times that, shrinking with confirmations
    gossip_interval: float  # gossip pending broadcasts to gossip_nodes random members this often
    gossip_nodes: int
    retransmit_mult: int  # each broadcast is sent retransmit_mult * ceil(log10(n + 1)) times
    awareness_max_multiplier: int  # local health scales probe_interval by 1..this
    dead_reclaim_time: float  # a dead name may come back at a new address after this long (0: never)
    reconnect_interval: float  # re-dial dead members and absent seeds this often ...
    reconnect_timeout: float  # ... for this long after they died (then forget them)
    push_pull_interval: float = 30.0  # full member-table exchange with one random member
    gossip_to_the_dead_time: float = 30.0  # keep gossiping to a dead member this long so it can refute

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"mesh timing {f.name} must be a finite number, got {value!r}")
        positive = ("probe_interval", "probe_timeout", "gossip_interval", "reconnect_interval",
                    "push_pull_interval")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"mesh timing {name} must be > 0")
        at_least_one = ("suspicion_mult", "suspicion_max_timeout_mult", "retransmit_mult",
                        "awareness_max_multiplier", "gossip_nodes")
        for name in at_least_one:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"mesh timing {name} must be an integer >= 1")
        if not isinstance(self.indirect_checks, int) or self.indirect_checks < 0:
            raise ValueError("mesh timing indirect_checks must be an integer >= 0")
        for name in ("dead_reclaim_time", "reconnect_timeout", "gossip_to_the_dead_time"):
            if getattr(self, name) < 0:
                raise ValueError(f"mesh timing {name} must be >= 0")
        if self.probe_timeout >= self.probe_interval:
            raise ValueError("mesh timing probe_timeout must be shorter than probe_interval")


PROFILES: dict[str, Timing] = {
    # memberlist DefaultLANConfig (config.go); the reconnect pair is Serf's (ReconnectInterval 30 s,
    # ReconnectTimeout 24 h), which memberlist leaves to its user.
    "lan": Timing(
        probe_interval=1.0, probe_timeout=0.5, indirect_checks=3, suspicion_mult=4,
        suspicion_max_timeout_mult=6, gossip_interval=0.2, gossip_nodes=3, retransmit_mult=4,
        awareness_max_multiplier=8, dead_reclaim_time=0.0, reconnect_interval=30.0,
        reconnect_timeout=24 * 3600.0, push_pull_interval=30.0, gossip_to_the_dead_time=30.0,
    ),
    # Loopback and CI: a dead node is detected in about 2.5 s on average (docs/mesh/membership.md).
    # Broadcasts are retransmitted twice as often as on a LAN, which bandwidth on loopback allows and which
    # keeps refutations ahead of the short suspicion timeout even at 10 % packet loss.
    "test": Timing(
        probe_interval=0.4, probe_timeout=0.2, indirect_checks=3, suspicion_mult=4,
        suspicion_max_timeout_mult=4, gossip_interval=0.1, gossip_nodes=3, retransmit_mult=8,
        awareness_max_multiplier=4, dead_reclaim_time=1.0, reconnect_interval=1.0,
        reconnect_timeout=600.0, push_pull_interval=5.0, gossip_to_the_dead_time=5.0,
    ),
}


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """Minimum time a member stays suspect in a cluster of n: mult * max(1, log10(n)) * interval."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * interval


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one broadcast is sent: mult * ceil(log10(n + 1))."""
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int, threshold: int = 32) -> float:
    """Above `threshold` members, stretch the push-pull interval by log2(n) - log2(threshold) + 1."""
    if n <= threshold:
        return interval
    return (math.ceil(math.log2(n) - math.log2(threshold)) + 1.0) * interval


def remaining_suspicion_time(n: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """memberlist ``remainingSuspicionTime``: with n of k wanted confirmations the timeout has fallen from hi
    towards lo by log(n + 1) / log(k + 1); returns what is left after `elapsed` (may be negative)."""
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = hi - frac * (hi - lo)
    timeout = math.floor(1000.0 * raw) / 1000.0
    return max(timeout, lo) - elapsed


class Suspicion:
    """The suspicion timer of one member: starts at `hi` (or `lo` if no confirmations can be expected),
    falls towards `lo` as up to k other members independently confirm it."""

    __slots__ = ("confirmations", "deadline", "hi", "k", "lo", "n", "start")

    def __init__(self, accuser: str, k: int, lo: float, hi: float, start: float) -> None:
        self.k = k
        self.lo = lo
        self.hi = hi
        self.start = start
        self.n = 0
        # The accuser's own message may come back to it by gossip: it does not count as a confirmation.
        self.confirmations = {accuser}
        self.deadline = start + (hi if k >= 1 else lo)

    def confirm(self, accuser: str) -> bool:
        """Count an independent confirmation; True if it was new (then it is worth re-broadcasting)."""
        if self.n >= self.k or accuser in self.confirmations:
            return False
        self.confirmations.add(accuser)
        self.n += 1
        self.deadline = self.start + remaining_suspicion_time(self.n, self.k, 0.0, self.lo, self.hi)
        return True


class Awareness:
    """Local health (Lifeguard): 0 is healthy; missed nacks and being suspected raise it, successful
    probes lower it; intervals are scaled by score + 1, so a struggling node probes more slowly."""

    __slots__ = ("max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self.max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self.max - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
