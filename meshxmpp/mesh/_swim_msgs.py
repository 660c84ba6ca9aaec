"""The membership wire format: compact, bounded, binary; one exception type for every bad input.

A packet is one header and 1..255 messages (memberlist's "compound message")::

    packet  = magic "SW" | version u8 | sender str8 | sender host str8 | sender port u16
              | count u8 | message{count}
    message = kind u8 | body (below)
    str8    = length u8 | UTF-8 bytes (1..255 bytes, never empty)

All integers are big-endian.  Bodies:

    PING     seq u32 | target name str8                 ("are you <target>?": a node renamed since is not acked)
    ACK      seq u32
    NACK     seq u32                                    (an indirect prober could not reach the target)
    PING_REQ seq u32 | nack u8 | target str8 | host str8 | port u16
    ALIVE    incarnation u64 | name str8 | host str8 | port u16
    SUSPECT  incarnation u64 | name str8 | accuser str8
    DEAD     incarnation u64 | name str8 | accuser str8
    LEFT     incarnation u64 | name str8
    SYNC     reply u8 | count u16 | (incarnation u64 | state u8 | name str8 | host str8 | port u16){count}

Every packet names its sender and the address it listens on, so replies never depend on the source address
the transport saw.  `decode_packet` checks every length, count, code and the absence of trailing bytes, and
raises `DecodeError` (and nothing else) for any input that is not a well-formed packet.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "MAX_INCARNATION",
    "MAX_MESSAGES",
    "MAX_PACKET_BYTES",
    "MAX_SYNC_ENTRIES",
    "Ack",
    "Alive",
    "Dead",
    "DecodeError",
    "Left",
    "Message",
    "Nack",
    "Packet",
    "Ping",
    "PingReq",
    "Suspect",
    "Sync",
    "SyncEntry",
    "decode_packet",
    "encode_message",
    "encode_packet",
]

Addr = tuple[str, int]

MAGIC = b"SW"
VERSION = 1
#: Largest packet `decode_packet` accepts (a SYNC of MAX_SYNC_ENTRIES members with long names fits).
MAX_PACKET_BYTES = 1 << 20
MAX_MESSAGES = 255
MAX_SYNC_ENTRIES = 2048
MAX_INCARNATION = (1 << 64) - 1
MAX_SEQ = (1 << 32) - 1
_HEADERS_MAX = 4096  # bound of each memo below (encoded names, decoded headers)

STATES = ("alive", "suspect", "dead", "left")
_STATE_CODE = {s: i for i, s in enumerate(STATES)}

_PING, _ACK, _NACK, _PING_REQ, _ALIVE, _SUSPECT, _DEAD, _LEFT, _SYNC = range(1, 10)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U64U8 = struct.Struct(">QB")
_U32U8 = struct.Struct(">IB")
_KIND_U32 = struct.Struct(">BI")
_KIND_U64 = struct.Struct(">BQ")
_U8U16 = struct.Struct(">BH")


class DecodeError(ValueError):
    """The bytes are not a well-formed membership packet (the only exception `decode_packet` raises)."""


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_addr: Addr
    nack: bool


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    addr: Addr
    incarnation: int


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Left:
    name: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class SyncEntry:
    name: str
    addr: Addr
    incarnation: int
    state: str  # one of STATES


@dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull: a node's whole member table; a request (reply=False) is answered with the receiver's."""

    reply: bool
    entries: tuple[SyncEntry, ...]


Message = Ping | Ack | Nack | PingReq | Alive | Suspect | Dead | Left | Sync


@dataclass(frozen=True, slots=True)
class Packet:
    sender: str
    sender_addr: Addr
    messages: tuple[Message, ...]


_STR8: dict[str, bytes] = {}  # names we encode over and over, bounded like the header cache below

# -- encoding ---------------------------------------------------------------------------------------------


def _str8(value: str) -> bytes:
    cached = _STR8.get(value)
    if cached is not None:
        return cached
    raw = value.encode("utf-8")
    if not 0 < len(raw) <= 255:
        raise ValueError(f"name or host must be 1..255 UTF-8 bytes: {value!r}")
    if len(_STR8) >= _HEADERS_MAX:
        _STR8.clear()
    _STR8[value] = cached = _U8.pack(len(raw)) + raw
    return cached


def _addr(addr: Addr) -> bytes:
    return _str8(addr[0]) + _U16.pack(addr[1])


def encode_message(msg: Message) -> bytes:
    """One message (kind byte and body); `encode_packet` puts messages behind a header."""
    kind = type(msg)
    if kind is Ack:
        return _KIND_U32.pack(_ACK, msg.seq)  # type: ignore[union-attr]
    if kind is Ping:
        return _KIND_U32.pack(_PING, msg.seq) + _str8(msg.target)  # type: ignore[union-attr]
    match msg:
        case Nack(seq):
            return _KIND_U32.pack(_NACK, seq)
        case PingReq(seq, target, target_addr, nack):
            return _KIND_U32.pack(_PING_REQ, seq) + _U8.pack(int(nack)) + _str8(target) + _addr(target_addr)
        case Alive(name, addr, inc):
            return _KIND_U64.pack(_ALIVE, inc) + _str8(name) + _addr(addr)
        case Suspect(name, inc, accuser):
            return _KIND_U64.pack(_SUSPECT, inc) + _str8(name) + _str8(accuser)
        case Dead(name, inc, accuser):
            return _KIND_U64.pack(_DEAD, inc) + _str8(name) + _str8(accuser)
        case Left(name, inc):
            return _KIND_U64.pack(_LEFT, inc) + _str8(name)
        case Sync(reply, entries):
            if len(entries) > MAX_SYNC_ENTRIES:
                raise ValueError(f"a sync carries at most {MAX_SYNC_ENTRIES} members")
            parts = [bytes((_SYNC,)), _U8.pack(int(reply)), _U16.pack(len(entries))]
            for e in entries:
                parts += [_U64U8.pack(e.incarnation, _STATE_CODE[e.state]), _str8(e.name), _addr(e.addr)]
            return b"".join(parts)
    raise TypeError(f"not a membership message: {msg!r}")


def packet_header(sender: str, sender_addr: Addr) -> bytes:
    """The header without the count byte; cache it, it never changes for one node."""
    return MAGIC + bytes((VERSION,)) + _str8(sender) + _addr(sender_addr)


def encode_packet(header: bytes, messages: list[bytes]) -> bytes:
    if not 0 < len(messages) <= MAX_MESSAGES:
        raise ValueError(f"a packet carries 1..{MAX_MESSAGES} messages")
    data = b"".join([header, _U8.pack(len(messages)), *messages])
    if len(data) > MAX_PACKET_BYTES:
        raise ValueError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    return data


# -- decoding ---------------------------------------------------------------------------------------------


_HEADERS: dict[bytes, tuple[str, Addr]] = {}


def _str8_at(data: bytes, pos: int) -> tuple[str, int]:
    n = data[pos]
    end = pos + 1 + n
    if n == 0 or end > len(data):
        raise DecodeError("empty or truncated name")
    return data[pos + 1 : end].decode("utf-8"), end


def _addr_at(data: bytes, pos: int) -> tuple[Addr, int]:
    host, pos = _str8_at(data, pos)
    return (host, _U16.unpack_from(data, pos)[0]), pos + 2


def _flag(value: int) -> bool:
    if value > 1:
        raise DecodeError(f"flag byte {value} is neither 0 nor 1")
    return value == 1


def _message_at(data: bytes, pos: int) -> tuple[Message, int]:
    kind = data[pos]
    pos += 1
    if kind == _PING:
        seq = _U32.unpack_from(data, pos)[0]
        target, pos = _str8_at(data, pos + 4)
        return Ping(seq, target), pos
    if kind == _ACK:
        return Ack(_U32.unpack_from(data, pos)[0]), pos + 4
    if kind == _NACK:
        return Nack(_U32.unpack_from(data, pos)[0]), pos + 4
    if kind == _PING_REQ:
        seq, nack = _U32U8.unpack_from(data, pos)
        target, pos = _str8_at(data, pos + 5)
        addr, pos = _addr_at(data, pos)
        return PingReq(seq, target, addr, _flag(nack)), pos
    if kind == _ALIVE:
        inc = _U64.unpack_from(data, pos)[0]
        name, pos = _str8_at(data, pos + 8)
        addr, pos = _addr_at(data, pos)
        return Alive(name, addr, inc), pos
    if kind == _SUSPECT or kind == _DEAD:
        inc = _U64.unpack_from(data, pos)[0]
        name, pos = _str8_at(data, pos + 8)
        accuser, pos = _str8_at(data, pos)
        return (Suspect(name, inc, accuser) if kind == _SUSPECT else Dead(name, inc, accuser)), pos
    if kind == _LEFT:
        inc = _U64.unpack_from(data, pos)[0]
        name, pos = _str8_at(data, pos + 8)
        return Left(name, inc), pos
    if kind == _SYNC:
        reply, count = _U8U16.unpack_from(data, pos)
        pos += 3
        if count > MAX_SYNC_ENTRIES:
            raise DecodeError(f"sync of {count} members exceeds {MAX_SYNC_ENTRIES}")
        entries = []
        for _ in range(count):
            inc, code = _U64U8.unpack_from(data, pos)
            if code >= len(STATES):
                raise DecodeError(f"unknown member state {code}")
            name, pos = _str8_at(data, pos + 9)
            addr, pos = _addr_at(data, pos)
            entries.append(SyncEntry(name, addr, inc, STATES[code]))
        return Sync(_flag(reply), tuple(entries)), pos
    raise DecodeError(f"unknown message kind {kind}")


def decode_packet(data: bytes) -> Packet:
    """Parse one packet; raises `DecodeError` for anything that is not exactly one well-formed packet."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_PACKET_BYTES:
        raise DecodeError(f"packet of {len(data)} bytes exceeds {MAX_PACKET_BYTES}")
    if type(data) is not bytes:
        data = bytes(data)
    try:
        if data[:2] != MAGIC:
            raise DecodeError("not a membership packet (bad magic)")
        if data[2] != VERSION:
            raise DecodeError(f"unsupported membership protocol version {data[2]}")
        # A node sends every packet with the same header: remember the few we see.
        end = 5 + data[3]
        end += data[end - 1] + 2
        key = data[:end]
        cached = _HEADERS.get(key)
        if cached is None:
            sender, pos = _str8_at(data, 3)
            sender_addr, pos = _addr_at(data, pos)
            if len(_HEADERS) >= _HEADERS_MAX:
                _HEADERS.clear()
            _HEADERS[key] = cached = (sender, sender_addr)
        sender, sender_addr = cached
        pos = end
        count = data[pos]
        pos += 1
        if count == 0:
            raise DecodeError("packet without messages")
        messages = []
        for _ in range(count):
            msg, pos = _message_at(data, pos)
            messages.append(msg)
    except (IndexError, struct.error):
        raise DecodeError("truncated packet") from None
    except UnicodeDecodeError:
        raise DecodeError("name is not UTF-8") from None
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the last message")
    return Packet(sender, sender_addr, tuple(messages))
