"""Bytes for directory updates and digests: compact, bounded, strict.

Layout (integers are unsigned LEB128 varints of at most 63 bits; text is a varint length then UTF-8)::

    delta     FORMAT kind(1 put | 2 remove) flags node epoch counter jid [record]
    record    bits(available, carbons, interested, has-presence) show(0..4) priority(int8)
              last_activity(float64 BE) bound_at(float64 BE) [presence]
    manifest  FORMAT 3 flags node epoch low high count gap*     (each kept = previous + gap, gap >= 1)
    digest    FORMAT 4 count (node epoch counter)* count (node epoch+1, or 0 if unknown)*

``flags`` bit 0 is ``relayed``. A JID is its canonical string and must be a full JID. Decoding
hostile bytes raises `ValueError` (or a subclass such as `InvalidJID`) and nothing else; every
length is checked against a cap and against the bytes left before anything is allocated.
"""

from __future__ import annotations

import struct

from meshxmpp.jid import JID
from meshxmpp.mesh._records import (
    MAX_NODE_NAME,
    MAX_PRESENCE,
    SHOWS,
    Delta,
    Digest,
    Manifest,
    SessionRecord,
    Update,
    Version,
    check_node_name,
)

__all__ = ["FORMAT", "decode_delta", "decode_digest", "encode_delta", "encode_digest"]

FORMAT = 1
_PUT, _REMOVE, _MANIFEST, _DIGEST = 1, 2, 3, 4
_RELAYED = 1
_AVAILABLE, _CARBONS, _INTERESTED, _HAS_PRESENCE = 1, 2, 4, 8
_MAX_INT = (1 << 63) - 1
_MAX_JID = 3 * 1023 + 2  #: three parts of at most 1023 octets, '@' and '/'
_MAX_NODES = 4096  #: owners in a digest
_SHOW_CODE = {show: i for i, show in enumerate(SHOWS)}
_DOUBLES = struct.Struct(">dd")


# -- writing ---------------------------------------------------------------------------------------

def _varint(out: bytearray, n: int) -> None:
    if not 0 <= n <= _MAX_INT:
        raise ValueError(f"integer out of range 0..2**63-1: {n}")
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _text(out: bytearray, s: str, cap: int) -> None:
    raw = s.encode("utf-8")
    if len(raw) > cap:
        raise ValueError(f"text longer than {cap} bytes")
    _varint(out, len(raw))
    out += raw


def _head(out: bytearray, kind: int, relayed: bool, node: str, epoch: int) -> None:
    out += bytes((FORMAT, kind, _RELAYED if relayed else 0))
    _text(out, check_node_name(node), MAX_NODE_NAME)
    _varint(out, epoch)


def encode_delta(update: Update) -> bytes:
    """A `Delta` or `Manifest` as bytes (`ValueError` if a field cannot be represented)."""
    out = bytearray()
    if isinstance(update, Manifest):
        _head(out, _MANIFEST, update.relayed, update.node, update.epoch)
        _varint(out, update.low)
        _varint(out, update.high)
        _varint(out, len(update.kept))
        prev = update.low
        for n in update.kept:
            _varint(out, n - prev)
            prev = n
        return bytes(out)
    record = update.record
    _head(out, _REMOVE if record is None else _PUT, update.relayed, update.node, update.version.epoch)
    _varint(out, update.version.counter)
    if update.jid.resource is None:
        raise ValueError("a delta is about a full JID")
    _text(out, str(update.jid), _MAX_JID)
    if record is not None:
        bits = ((_AVAILABLE if record.available else 0) | (_CARBONS if record.carbons else 0)
                | (_INTERESTED if record.interested else 0)
                | (0 if record.presence is None else _HAS_PRESENCE))
        out += bytes((bits, _SHOW_CODE[record.show]))
        out += struct.pack(">b", record.priority)
        out += _DOUBLES.pack(record.last_activity, record.bound_at)
        if record.presence is not None:
            _text(out, record.presence, MAX_PRESENCE)
    return bytes(out)


def encode_digest(digest: Digest) -> bytes:
    out = bytearray((FORMAT, _DIGEST))
    if len(digest.versions) > _MAX_NODES or len(digest.dead) > _MAX_NODES:
        raise ValueError(f"more than {_MAX_NODES} nodes in a digest")
    _varint(out, len(digest.versions))
    for node, version in digest.versions.items():
        _text(out, check_node_name(node), MAX_NODE_NAME)
        _varint(out, version.epoch)
        _varint(out, version.counter)
    _varint(out, len(digest.dead))
    for node, epoch in digest.dead.items():
        _text(out, check_node_name(node), MAX_NODE_NAME)
        _varint(out, 0 if epoch is None else epoch + 1)
    return bytes(out)


# -- reading ---------------------------------------------------------------------------------------

class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, data: bytes) -> None:
        self.buf = data
        self.pos = 0

    def left(self) -> int:
        return len(self.buf) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ValueError("truncated")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def raw(self, n: int) -> bytes:
        if n > self.left():
            raise ValueError("truncated")
        chunk = self.buf[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def varint(self, cap: int = _MAX_INT) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")
        if b == 0 and shift:
            raise ValueError("varint not minimal")
        if n > cap:
            raise ValueError(f"integer above {cap}")
        return n

    def text(self, cap: int) -> str:
        return self.raw(self.varint(cap)).decode("utf-8")

    def node(self) -> str:
        return check_node_name(self.text(MAX_NODE_NAME))

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ValueError("trailing bytes")


def _start(data: bytes) -> tuple[_Reader, int]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("not bytes")
    r = _Reader(bytes(data))
    if r.byte() != FORMAT:
        raise ValueError("unknown directory format")
    return r, r.byte()


def _full_jid(text: str) -> JID:
    jid = JID.parse(text)
    if jid.resource is None or str(jid) != text:
        raise ValueError("not a canonical full JID")
    return jid


def decode_delta(data: bytes) -> Update:
    """The `Delta` or `Manifest` in ``data``; `ValueError` for anything else."""
    r, kind = _start(data)
    if kind not in (_PUT, _REMOVE, _MANIFEST):
        raise ValueError(f"not a directory update: kind {kind}")
    flags = r.byte()
    if flags & ~_RELAYED:
        raise ValueError("unknown flags")
    relayed = bool(flags & _RELAYED)
    node = r.node()
    epoch = r.varint()
    if kind == _MANIFEST:
        low = r.varint()
        high = r.varint()
        if high < low:
            raise ValueError("manifest range is negative")
        count = r.varint(min(high - low, r.left()))  # every gap takes at least a byte
        kept = []
        n = low
        for _ in range(count):
            n += r.varint(high - n)
            kept.append(n)
        r.end()
        return Manifest(node, epoch, low, high, tuple(kept), relayed)  # checks ascending
    counter = r.varint()
    if counter < 1:
        raise ValueError("write numbers start at 1")
    jid = _full_jid(r.text(_MAX_JID))
    record = None
    if kind == _PUT:
        bits = r.byte()
        if bits & ~(_AVAILABLE | _CARBONS | _INTERESTED | _HAS_PRESENCE):
            raise ValueError("unknown record bits")
        show = r.byte()
        if show >= len(SHOWS):
            raise ValueError("unknown show")
        (priority,) = struct.unpack(">b", r.raw(1))
        last_activity, bound_at = _DOUBLES.unpack(r.raw(_DOUBLES.size))
        presence = r.text(MAX_PRESENCE) if bits & _HAS_PRESENCE else None
        record = SessionRecord(jid, node, bool(bits & _AVAILABLE), priority, SHOWS[show], last_activity,
                               bool(bits & _CARBONS), bool(bits & _INTERESTED), bound_at, presence)
    r.end()
    return Delta(node, Version(epoch, counter), jid, record, relayed)


def decode_digest(data: bytes) -> Digest:
    r, kind = _start(data)
    if kind != _DIGEST:
        raise ValueError(f"not a directory digest: kind {kind}")
    versions: dict[str, Version] = {}
    for _ in range(r.varint(_MAX_NODES)):
        node = r.node()
        if node in versions:
            raise ValueError("node twice in a digest")
        versions[node] = Version(r.varint(), r.varint())
    dead: dict[str, int | None] = {}
    for _ in range(r.varint(_MAX_NODES)):
        node = r.node()
        if node in dead:
            raise ValueError("node twice in a digest")
        epoch = r.varint()
        dead[node] = None if epoch == 0 else epoch - 1
    r.end()
    return Digest(versions, dead)
