"""Cross-node forwarding, sans-IO: a stanza for a session on another node, acked, ordered, never lost.

Per peer, the sender numbers the stanzas it puts on the wire ``1, 2, 3...`` (``seq``) under its own
``epoch`` (one per process; a restart must bring a higher one). A FORWARD frame carries an envelope
``(epoch, base, seq, stanzas...)``: consecutive stanzas from ``seq`` on, and ``base``, the sender's lowest
unacked number, which promises that nothing below it needs the receiver any more (acked, or handed back to
the sender's router by `on_peer_dead` / `on_peer_restarted`). The receiver keeps per (peer, epoch) the next
number it expects, hands stanzas out in order and once each, holds up to ``window`` early ones, and answers
with a cumulative ACK ``(epoch, seq)`` once its caller has taken responsibility for everything up to
``seq`` (`acknowledge`). A sender keeps at most ``window`` unacked stanzas per peer; more wait in a bounded
backlog. Unacked stanzas go out again after ``retransmit_after`` (doubling while nothing is acked, up to
`MAX_BACKOFF` times). Sequence numbers never restart within an epoch: after a peer dies or restarts, the
stream goes on above the stanzas handed back, and ``base`` tells the peer to skip them.
docs/mesh/forward.md has the reasoning and the at-least-once corner. Nothing here awaits, reads a clock or
touches a socket.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass
from itertools import islice

from meshxmpp.mesh.wire import DEFAULT_MAX_FRAME, Kind

__all__ = [
    "ENVELOPE_OVERHEAD", "MAX_BACKOFF", "Ack", "Envelope", "ForwardStatistics", "Forwarder", "Inbound",
    "decode_ack", "decode_forward", "encode_ack", "encode_forward",
]

_HEAD = struct.Struct("!QQQ")  # sender epoch, base, seq of the first stanza
_SIZE = struct.Struct("!I")  # before each stanza
_ACK = struct.Struct("!QQ")  # acked (sender) epoch, cumulative seq
_U64 = 1 << 64
#: Bytes a one-stanza FORWARD payload adds to the stanza.
ENVELOPE_OVERHEAD = _HEAD.size + _SIZE.size
#: The retransmission interval doubles while nothing is acked, up to this many times ``retransmit_after``.
MAX_BACKOFF = 16


# --------------------------------------------------------------------------- codec


@dataclass(frozen=True, slots=True)
class Envelope:
    """A FORWARD payload: ``stanzas[i]`` has number ``seq + i``; nothing below ``base`` is outstanding."""

    epoch: int
    base: int
    seq: int
    stanzas: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """An ACK payload: the receiver took responsibility for every stanza up to ``seq`` of ``epoch``."""

    epoch: int
    seq: int


def encode_forward(env: Envelope) -> bytes:
    if not env.stanzas or not 1 <= env.base <= env.seq or env.seq + len(env.stanzas) > _U64:
        raise ValueError(f"bad envelope numbers: base {env.base}, seq {env.seq}, {len(env.stanzas)} stanzas")
    parts = [_HEAD.pack(env.epoch, env.base, env.seq)]
    for stanza in env.stanzas:
        parts += (_SIZE.pack(len(stanza)), stanza)
    return b"".join(parts)


def decode_forward(payload: bytes) -> Envelope:
    """Raises ``ValueError`` (only) on anything malformed."""
    end = len(payload)
    if end < ENVELOPE_OVERHEAD:
        raise ValueError("FORWARD payload too short")
    epoch, base, seq = _HEAD.unpack_from(payload)
    if not 1 <= base <= seq:
        raise ValueError(f"FORWARD numbers out of order: base {base}, seq {seq}")
    stanzas = []
    pos = _HEAD.size
    while pos < end:
        if pos + _SIZE.size > end:
            raise ValueError("truncated FORWARD stanza length")
        (size,) = _SIZE.unpack_from(payload, pos)
        pos += _SIZE.size
        if pos + size > end:
            raise ValueError("truncated FORWARD stanza")
        stanzas.append(bytes(payload[pos : pos + size]))
        pos += size
    if seq + len(stanzas) > _U64:
        raise ValueError("FORWARD sequence numbers overflow")
    return Envelope(epoch, base, seq, tuple(stanzas))


def encode_ack(ack: Ack) -> bytes:
    return _ACK.pack(ack.epoch, ack.seq)


def decode_ack(payload: bytes) -> Ack:
    """Raises ``ValueError`` (only) on anything malformed."""
    if len(payload) != _ACK.size:
        raise ValueError(f"ACK payload of {len(payload)} bytes, expected {_ACK.size}")
    return Ack(*_ACK.unpack(payload))


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Inbound:
    """A stanza from a peer, to route locally; pass ``token`` to `Forwarder.acknowledge` once done."""

    stanza: bytes
    token: object


@dataclass(frozen=True, slots=True)
class _Token:
    peer: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class ForwardStatistics:
    accepted: int  #: send() returned True
    refused: int  #: send() returned False (backlog full)
    transmitted: int  #: stanzas put on the wire a first time
    retransmitted: int  #: stanza copies sent again after a timeout
    acked: int  #: stanzas a peer acked
    returned: int  #: stanzas handed back for re-routing (on_peer_dead / on_peer_restarted)
    in_flight: int  #: now: unacked, all peers
    backlog: int  #: now: waiting for window room, all peers
    received: int  #: stanzas handed out by on_frame
    duplicates: int  #: copies not handed out again
    held: int  #: now: early stanzas waiting for a gap to fill, all peers
    dropped: int  #: copies beyond the hold window, of a dead epoch, or below a peer's base
    acks_sent: int
    frames_sent: int  #: FORWARD frames


# --------------------------------------------------------------------------- per-peer state


class _Out:
    """What we send to one peer. The unacked stanzas are numbered ``base .. next_seq - 1``."""

    __slots__ = ("backlog", "deadline", "next_seq", "rto", "tx_from", "unacked")

    def __init__(self, rto: float) -> None:
        self.next_seq = 1
        self.unacked: deque[bytes] = deque()
        self.backlog: deque[bytes] = deque()
        self.tx_from: int | None = None  # (re)send unacked from this number on at the next drain
        self.deadline = math.inf
        self.rto = rto

    @property
    def base(self) -> int:
        return self.next_seq - len(self.unacked)


class _In:
    """What we receive from one peer epoch. Below ``expected`` every number was handed out, released
    (routed by `on_peer_dead`) or skipped by the sender's ``base``; ``held`` maps early numbers to their
    stanza (``None`` once released). ``pending`` lists handed-out numbers in order; ``outstanding``
    those of them the caller has not acknowledged yet."""

    __slots__ = ("acked_sent", "epoch", "expected", "held", "outstanding", "pending")

    def __init__(self, epoch: int, expected: int) -> None:
        self.epoch = epoch
        self.expected = expected
        self.held: dict[int, bytes | None] = {}
        self.pending: deque[int] = deque()
        self.outstanding: set[int] = set()
        self.acked_sent = 0

    def ack_point(self) -> int:
        return (self.pending[0] if self.pending else self.expected) - 1

    def release(self) -> list[bytes]:
        """Held stanzas, in order, marked as routed (a retransmit of one is then not handed out again)."""
        out = []
        for seq in sorted(self.held):
            stanza = self.held[seq]
            if stanza is not None:
                out.append(stanza)
                self.held[seq] = None
        return out


# --------------------------------------------------------------------------- the core


class Forwarder:
    """One node's end of every forwarding link. See the module docstring and docs/mesh/forward.md."""

    def __init__(self, node: str, *, epoch: int, window: int = 512, backlog_limit: int = 100_000,
                 retransmit_after: float = 1.0, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= epoch < _U64:
            raise ValueError(f"epoch out of range: {epoch}")
        if window < 1 or backlog_limit < 0:
            raise ValueError("window must be at least 1 and backlog_limit not negative")
        if not retransmit_after > 0:
            raise ValueError("retransmit_after must be positive")
        if max_frame < ENVELOPE_OVERHEAD + 1:
            raise ValueError(f"max_frame too small: {max_frame}")
        self.node = node
        self.epoch = epoch
        self.window = window
        self.backlog_limit = backlog_limit
        self.retransmit_after = retransmit_after
        self.max_frame = max_frame
        #: The largest stanza `send` takes: one stanza per frame at worst.
        self.max_stanza = max_frame - ENVELOPE_OVERHEAD
        self._out: dict[str, _Out] = {}
        self._in: dict[str, _In] = {}
        self._peer_epoch: dict[str, int] = {}  # from on_peer_restarted: older epochs are dead
        self._tx: dict[str, None] = {}  # peers with stanzas to (re)send (an ordered set)
        self._ack_due: dict[str, None] = {}  # peers owed an ACK
        self._n = dict.fromkeys(("accepted", "refused", "transmitted", "retransmitted", "acked", "returned",
                                 "received", "duplicates", "dropped", "acks_sent", "frames_sent"), 0)

    # ------------------------------------------------------------------ sending

    def send(self, now: float, peer: str, stanza: bytes) -> bool:
        """Accept ``stanza`` for delivery on ``peer``. False only when that peer's backlog is full."""
        if peer == self.node:
            raise ValueError("cannot forward to ourselves")
        if len(stanza) > self.max_stanza:
            raise ValueError(f"stanza of {len(stanza)} bytes exceeds the limit of {self.max_stanza}")
        out = self._out.get(peer)
        if out is None:
            out = self._out[peer] = _Out(self.retransmit_after)
        if out.backlog or len(out.unacked) >= self.window:
            if len(out.backlog) >= self.backlog_limit:
                self._n["refused"] += 1
                return False
            out.backlog.append(bytes(stanza))
        else:
            self._transmit(now, peer, out, bytes(stanza))
        self._n["accepted"] += 1
        return True

    def _transmit(self, now: float, peer: str, out: _Out, stanza: bytes) -> None:
        if not out.unacked:
            out.deadline = now + out.rto
        if out.tx_from is None:
            out.tx_from = out.next_seq
            self._tx[peer] = None
        out.next_seq += 1
        out.unacked.append(stanza)
        self._n["transmitted"] += 1

    def drain_outgoing(self) -> list[tuple[str, int, bytes]]:
        """``(peer, wire kind, payload)`` frames for the transport: coalesced ACKs, then FORWARDs."""
        frames: list[tuple[str, int, bytes]] = []
        for peer in self._ack_due:
            st = self._in.get(peer)
            if st is not None and (point := st.ack_point()) >= 1:
                frames.append((peer, Kind.ACK.value, encode_ack(Ack(st.epoch, point))))
                st.acked_sent = max(st.acked_sent, point)
                self._n["acks_sent"] += 1
        self._ack_due.clear()
        for peer in self._tx:
            out = self._out[peer]
            if out.tx_from is None:
                continue
            base, seq = out.base, out.tx_from
            batch: list[bytes] = []
            size = _HEAD.size
            for stanza in islice(out.unacked, seq - base, None):
                cost = _SIZE.size + len(stanza)
                if batch and size + cost > self.max_frame:
                    frames.append((peer, Kind.FORWARD.value, encode_forward(Envelope(self.epoch, base, seq,
                                                                                     tuple(batch)))))
                    seq += len(batch)
                    batch, size = [], _HEAD.size
                batch.append(stanza)
                size += cost
            if batch:
                frames.append((peer, Kind.FORWARD.value, encode_forward(Envelope(self.epoch, base, seq,
                                                                                 tuple(batch)))))
            out.tx_from = None
        self._n["frames_sent"] += sum(1 for f in frames if f[1] == Kind.FORWARD)
        self._tx.clear()
        return frames

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        return min((out.deadline for out in self._out.values()), default=math.inf)

    def on_timer(self, now: float) -> None:
        """Send every unacked stanza of a peer whose deadline passed again (the receiver dedupes)."""
        for peer, out in self._out.items():
            if out.deadline > now:
                continue
            if not out.unacked:
                out.deadline = math.inf
                continue
            out.tx_from = out.base
            self._tx[peer] = None
            self._n["retransmitted"] += len(out.unacked)
            out.rto = min(out.rto * 2, self.retransmit_after * MAX_BACKOFF)
            out.deadline = now + out.rto

    # ------------------------------------------------------------------ receiving

    def on_frame(self, now: float, peer: str, kind: int, payload: bytes) -> list[Inbound]:
        """A FORWARD gives the stanzas to route locally, in order, each once; an ACK frees the window.
        A malformed payload or another kind raises ``ValueError`` (the glue closes the link)."""
        if kind == Kind.ACK:
            self._on_ack(now, peer, decode_ack(payload))
            return []
        if kind != Kind.FORWARD:
            raise ValueError(f"not a forwarding frame kind: {kind}")
        return self._on_envelope(peer, decode_forward(payload))

    def _on_ack(self, now: float, peer: str, ack: Ack) -> None:
        out = self._out.get(peer)
        if out is None or ack.epoch != self.epoch:
            return  # an ack for an earlier incarnation of us
        base = out.base
        if not base <= ack.seq < out.next_seq:
            return  # nothing new (reordered, duplicated, or below stanzas handed back), or bogus
        for _ in range(ack.seq - base + 1):
            out.unacked.popleft()
        self._n["acked"] += ack.seq - base + 1
        out.rto = self.retransmit_after
        if out.tx_from is not None and out.tx_from <= ack.seq:
            out.tx_from = ack.seq + 1 if out.unacked else None
        while out.backlog and len(out.unacked) < self.window:
            self._transmit(now, peer, out, out.backlog.popleft())
        out.deadline = now + out.rto if out.unacked else math.inf

    def _on_envelope(self, peer: str, env: Envelope) -> list[Inbound]:
        inbound: list[Inbound] = []
        st = self._in.get(peer)
        if env.epoch < self._peer_epoch.get(peer, 0) or (st is not None and env.epoch < st.epoch):
            self._n["dropped"] += len(env.stanzas)  # from a dead incarnation of the peer
            return inbound
        if st is None or env.epoch > st.epoch:
            if st is not None:  # the peer restarted: what its old incarnation left with us goes on
                inbound += (Inbound(s, _Token(peer, st.epoch, -1)) for s in st.release())
                self._n["received"] += len(inbound)
            st = self._in[peer] = _In(env.epoch, env.base)
            self._ack_due.pop(peer, None)
        elif env.base > st.expected:  # the sender handed those back: stop waiting for them
            for seq in [seq for seq in st.held if seq < env.base]:
                if st.held.pop(seq) is not None:
                    self._n["dropped"] += 1
            st.expected = env.base
            self._advance(peer, st, inbound)
        for seq, stanza in enumerate(env.stanzas, env.seq):
            if seq == st.expected:
                self._hand_out(peer, st, seq, stanza, inbound)
                st.expected += 1
                self._advance(peer, st, inbound)
            elif seq < st.expected or seq in st.held:
                self._n["duplicates"] += 1
                if seq <= st.ack_point():
                    self._ack_due[peer] = None  # our ack was lost: say it again
            elif seq < st.expected + self.window:
                st.held[seq] = stanza
            else:
                self._n["dropped"] += 1  # beyond what we hold; the sender will send it again
        return inbound

    def _hand_out(self, peer: str, st: _In, seq: int, stanza: bytes, inbound: list[Inbound]) -> None:
        st.pending.append(seq)
        st.outstanding.add(seq)
        inbound.append(Inbound(stanza, _Token(peer, st.epoch, seq)))
        self._n["received"] += 1

    def _advance(self, peer: str, st: _In, inbound: list[Inbound]) -> None:
        while st.expected in st.held:
            stanza = st.held.pop(st.expected)
            if stanza is not None:
                self._hand_out(peer, st, st.expected, stanza, inbound)
            st.expected += 1
        if st.ack_point() > st.acked_sent:  # released or skipped numbers may complete an ack
            self._ack_due[peer] = None

    def acknowledge(self, peer: str, token: object) -> None:
        """The caller took responsibility for an `Inbound` from ``peer`` (delivered, stored, re-routed or
        bounced). Idempotent; acks go out cumulative and coalesced at the next `drain_outgoing`."""
        if not isinstance(token, _Token) or token.peer != peer:
            raise ValueError(f"not a token of an Inbound from {peer!r}: {token!r}")
        st = self._in.get(peer)
        if st is None or st.epoch != token.epoch or token.seq not in st.outstanding:
            return
        st.outstanding.discard(token.seq)
        while st.pending and st.pending[0] not in st.outstanding:
            st.pending.popleft()
        if st.ack_point() > st.acked_sent:
            self._ack_due[peer] = None

    # ------------------------------------------------------------------ peers leaving

    def on_peer_dead(self, peer: str) -> list[bytes]:
        """Every stanza for ``peer`` not acked (in order: in flight, then backlog), then the stanzas from
        ``peer`` held here behind a gap. The caller routes them all again with the updated table."""
        returned = self._take_back(peer)
        st = self._in.get(peer)
        if st is not None:
            returned += st.release()
        self._n["returned"] += len(returned)
        return returned

    def on_peer_restarted(self, peer: str, new_epoch: int) -> list[bytes]:
        """A new incarnation of ``peer``: like `on_peer_dead`, and frames of its older epochs are ignored
        from now on. A repeated or stale notice (``new_epoch`` not above the last one) returns ``[]``."""
        known = self._peer_epoch.get(peer)
        if known is not None and new_epoch <= known:
            return []
        self._peer_epoch[peer] = new_epoch
        returned = self._take_back(peer)
        st = self._in.get(peer)
        if st is not None and st.epoch < new_epoch:
            returned += st.release()
            del self._in[peer]
            self._ack_due.pop(peer, None)
        self._n["returned"] += len(returned)
        return returned

    def _take_back(self, peer: str) -> list[bytes]:
        out = self._out.get(peer)
        if out is None:
            return []
        returned = [*out.unacked, *out.backlog]
        out.unacked.clear()  # base becomes next_seq: the peer skips what we took back
        out.backlog.clear()
        out.tx_from = None
        out.deadline = math.inf
        out.rto = self.retransmit_after
        self._tx.pop(peer, None)
        return returned

    # ------------------------------------------------------------------ observing

    def in_flight(self, peer: str) -> int:
        out = self._out.get(peer)
        return len(out.unacked) if out is not None else 0

    def backlogged(self, peer: str) -> int:
        out = self._out.get(peer)
        return len(out.backlog) if out is not None else 0

    def statistics(self) -> ForwardStatistics:
        return ForwardStatistics(
            in_flight=sum(len(o.unacked) for o in self._out.values()),
            backlog=sum(len(o.backlog) for o in self._out.values()),
            held=sum(1 for st in self._in.values() for s in st.held.values() if s is not None),
            **self._n,
        )
