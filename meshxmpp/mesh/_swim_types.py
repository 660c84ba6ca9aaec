"""Values the membership core hands out: members, events, statistics, and the member-view TRANSITIONS."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INPUTS",
    "STATES",
    "TRANSITIONS",
    "Member",
    "MemberAlive",
    "MemberDead",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberSuspect",
    "MembershipStatistics",
]

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
STATES = (ALIVE, SUSPECT, DEAD, LEFT)

#: What can happen to one node's view of another member.  Each input has already passed the incarnation
#: rule (an alive claim must carry a higher incarnation than we know, other claims at least the same;
#: a dead or left member may also come back at a new address once reclaimable): the guards live in the code,
#: the resulting state only here.  Pairs that map a state to itself are ignored inputs.
#:
#: - alive:   an alive message (a refutation, a restart, a rejoin)
#: - suspect: a suspect message, or a push-pull entry saying suspect or dead (memberlist: suspect, do not kill)
#: - dead:    a dead message (another member's suspicion timer ran out)
#: - left:    a left message (graceful leave, only ever sent by the member itself)
#: - timeout: our own suspicion timer ran out
INPUTS = ("alive", "suspect", "dead", "left", "timeout")
TRANSITIONS: dict[tuple[str, str], str] = {
    (ALIVE, "alive"): ALIVE,  # newer incarnation: no event
    (ALIVE, "suspect"): SUSPECT,
    (ALIVE, "dead"): DEAD,
    (ALIVE, "left"): LEFT,
    (ALIVE, "timeout"): ALIVE,  # no timer runs for an alive member
    (SUSPECT, "alive"): ALIVE,  # refuted
    (SUSPECT, "suspect"): SUSPECT,  # an independent confirmation shortens the timer
    (SUSPECT, "dead"): DEAD,
    (SUSPECT, "left"): LEFT,
    (SUSPECT, "timeout"): DEAD,
    (DEAD, "alive"): ALIVE,  # came back with a higher incarnation
    (DEAD, "suspect"): DEAD,
    (DEAD, "dead"): DEAD,
    (DEAD, "left"): LEFT,  # it left after all: stop re-dialling it
    (DEAD, "timeout"): DEAD,
    (LEFT, "alive"): ALIVE,  # rejoined with a higher incarnation
    (LEFT, "suspect"): LEFT,
    (LEFT, "dead"): LEFT,
    (LEFT, "left"): LEFT,
    (LEFT, "timeout"): LEFT,
}


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    addr: tuple[str, int]
    incarnation: int
    state: str  # alive | suspect | dead | left


@dataclass(frozen=True, slots=True)
class MemberJoined:
    """A member we had never heard of, alive."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberAlive:
    """A suspect member refuted, or a dead or left one came back with a higher incarnation."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberSuspect:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberDead:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeft:
    member: Member


MemberEvent = MemberJoined | MemberAlive | MemberSuspect | MemberDead | MemberLeft


@dataclass(frozen=True, slots=True)
class MembershipStatistics:
    """A snapshot; member counts include the local member."""

    name: str
    incarnation: int
    alive: int
    suspect: int
    dead: int
    left: int
    health_score: int  # Lifeguard awareness: 0 healthy .. awareness_max_multiplier - 1
    probes_sent: int
    probes_failed: int  # probes that ended with us suspecting the target
    indirect_probes_sent: int  # ping-req messages
    acks_received: int
    nacks_received: int
    refutations: int  # times we bumped our incarnation because someone suspected us
    declared_dead: int  # our own suspicion timers that ran out
    gossip_packets_sent: int
    push_pulls_sent: int  # requests, from the timer, joins and reconnects
    reconnect_attempts: int
    packets_sent: int
    bytes_sent: int
    packets_received: int
    bytes_received: int
    malformed_received: int
    address_conflicts: int  # a known name announced at another address and not reclaimable
    send_failures: int
    broadcast_queue: int
