"""Mesh wire format, sans-IO: frames, and the handshake that authenticates a link.

A frame is ``length (4 bytes, big-endian) | version (1) | kind (1) | payload``, where ``length``
counts the bytes after it (version, kind and payload: ``2 + len(payload)``). ``FrameDecoder`` checks
the length and the version as soon as their bytes arrive, so an oversized or foreign frame is
refused before its body is buffered. Nothing here awaits, reads a clock or touches a socket: the
caller feeds bytes and gets frames, bytes to send, or a ``WireError``.

The handshake (docs/mesh/transport.md) is a mutual HMAC-SHA256 challenge-response over both
nonces, both node names, both advertised addresses and the dialer's connection sequence::

    dialer                                   listener
      HELLO    nonce_d, seq, name_d, addr_d  ->
               <-  CHALLENGE  nonce_l
      AUTH     mac_d                         ->   listener checks mac_d (any configured secret)
               <-  AUTH_OK    mac_l, name_l, addr_l   dialer checks mac_l (any configured secret)

The dialer proves itself first, so a stranger who connects to port 5701 learns nothing but a random
nonce, and the listener's name and address travel only to a peer that has proved the secret. Before
that, the only thing parsed is the fixed-size hello, inside frames of at most
``HANDSHAKE_MAX_FRAME`` bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal

__all__ = [
    "APP_KINDS",
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_MAX_FRAME",
    "HEADER_SIZE",
    "MAX_HOST",
    "MAX_NAME",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "TRANSITIONS",
    "AuthFailed",
    "Authenticated",
    "FrameDecoder",
    "Handshake",
    "HandshakeState",
    "Kind",
    "WireError",
    "bye_reason",
    "encode_frame",
    "frame_header",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 1 << 20  #: payload bytes
HEADER_SIZE = 6
NONCE_SIZE = 32
MAC_SIZE = 32
MAX_NAME = 64  #: node name, UTF-8 bytes
MAX_HOST = 255  #: advertised host, ASCII bytes
MAX_BYE_REASON = 200
#: Payload cap for every frame before authentication: the largest hello is 32+8+1+64+1+255+2 bytes.
HANDSHAKE_MAX_FRAME = 512

_LENGTH = struct.Struct("!I")
_HEADER = struct.Struct("!IBB")
_SEQ = struct.Struct("!Q")
_PORT = struct.Struct("!H")
_MAX_LENGTH = 0xFFFFFFFF - 2


class Kind(IntEnum):
    """Frame kinds. The four handshake kinds are only valid before authentication."""

    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    AUTH_OK = 4
    MEMBERSHIP = 5
    DIRECTORY = 6
    FORWARD = 7
    ACK = 8
    BYE = 9  #: payload: a short UTF-8 reason; the sender writes nothing after it


#: Kinds whose payloads belong to the transport's owner (opaque here).
APP_KINDS = frozenset({Kind.MEMBERSHIP, Kind.DIRECTORY, Kind.FORWARD, Kind.ACK})


class WireError(Exception):
    """The peer broke the wire protocol (or failed to authenticate).

    ``reply`` holds bytes worth sending before closing (a BYE naming the reason), or ``b""``.
    """

    def __init__(self, message: str, *, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


class AuthFailed(WireError):
    """The peer's proof did not match any configured secret (or the peer rejected ours)."""


# --------------------------------------------------------------------------- frames


def frame_header(kind: int, payload_size: int) -> bytes:
    """The 6 header bytes of a frame carrying ``payload_size`` bytes."""
    return _HEADER.pack(payload_size + 2, PROTOCOL_VERSION, kind)


def encode_frame(kind: int, payload: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame. Raises ``ValueError`` (our mistake, not the peer's) on a bad kind or size."""
    if not 0 <= kind <= 255:
        raise ValueError(f"frame kind out of range: {kind}")
    if len(payload) > max_frame:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the frame limit of {max_frame}")
    return _HEADER.pack(len(payload) + 2, PROTOCOL_VERSION, kind) + bytes(payload)


class FrameDecoder:
    """Bytes in, ``(kind, payload)`` out. Raises only ``WireError``; after one, it stays failed.

    ``feed(data)`` returns every complete frame. ``receive`` + ``next_frame`` take one frame at a
    time, so a caller can stop at a frame and hand the rest (``buffered()``) to another decoder.
    Kinds are not checked here: which kinds are valid depends on the caller's state.
    """

    __slots__ = ("_buf", "_error", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame out of range: {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._error: str | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.receive(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def receive(self, data: bytes) -> None:
        if self._error is not None:
            raise WireError(self._error)
        buf = self._buf
        if self._pos:
            if self._pos == len(buf):
                buf.clear()
            else:
                del buf[: self._pos]
            self._pos = 0
        buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        if self._error is not None:
            raise WireError(self._error)
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 4:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length < 2:
            self._fail(f"bad frame length {length}")
        if length - 2 > self.max_frame:
            self._fail(f"frame of {length - 2} bytes exceeds the limit of {self.max_frame}")
        if available < 5:
            return None
        if buf[pos + 4] != PROTOCOL_VERSION:
            self._fail(f"unsupported protocol version {buf[pos + 4]} (we speak {PROTOCOL_VERSION})")
        end = pos + 4 + length
        if len(buf) < end:
            return None
        kind = buf[pos + 5]
        payload = bytes(buf[pos + HEADER_SIZE : end])
        self._pos = end
        return kind, payload

    def buffered(self) -> bytes:
        """The bytes received but not yet returned as frames."""
        return bytes(self._buf[self._pos :])

    def _fail(self, message: str) -> None:
        self._error = message
        raise WireError(message)


def bye_reason(payload: bytes) -> str:
    """A BYE payload as text safe to log (bounded, undecodable bytes replaced)."""
    return payload[:MAX_BYE_REASON].decode("utf-8", "replace")


def _bye(reason: str) -> bytes:
    return encode_frame(Kind.BYE, reason.encode()[:MAX_BYE_REASON])


# --------------------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The handshake's result: who the peer proved to be.

    ``sequence`` is the dialer's number for this connection (ours when we dialled): both ends see
    the same value, which lets them agree on which of two links between them to keep.
    """

    peer_name: str
    peer_addr_advertised: tuple[str, int] | None
    sequence: int = 0


class HandshakeState(Enum):
    START = "start"  #: dialer, before start()
    SENT_HELLO = "sent-hello"  #: dialer, waiting for CHALLENGE
    SENT_AUTH = "sent-auth"  #: dialer, waiting for AUTH_OK
    WAIT_HELLO = "wait-hello"  #: listener, waiting for HELLO
    SENT_CHALLENGE = "sent-challenge"  #: listener, waiting for AUTH
    DONE = "done"  #: authenticated; later bytes are ``trailing``
    FAILED = "failed"  #: terminal


S = HandshakeState
#: The whole machine: a received (state, kind) pair not listed here fails the handshake.
TRANSITIONS: dict[tuple[HandshakeState, Kind], HandshakeState] = {
    (S.SENT_HELLO, Kind.CHALLENGE): S.SENT_AUTH,
    (S.SENT_AUTH, Kind.AUTH_OK): S.DONE,
    (S.WAIT_HELLO, Kind.HELLO): S.SENT_CHALLENGE,
    (S.SENT_CHALLENGE, Kind.AUTH): S.DONE,
}
del S

Role = Literal["dialer", "listener"]


def _name_field(name: str) -> bytes:
    raw = name.encode()
    return bytes([len(raw)]) + raw


def _addr_field(addr: tuple[str, int] | None) -> bytes:
    if addr is None:
        return b"\x00" + _PORT.pack(0)
    host = addr[0].encode("ascii")
    return bytes([len(host)]) + host + _PORT.pack(addr[1])


def _check_name(name: str) -> str:
    raw = name.encode()
    if not 0 < len(raw) <= MAX_NAME or not name.isprintable():
        raise ValueError(f"node name must be 1 to {MAX_NAME} printable UTF-8 bytes: {name!r}")
    return name


def _check_addr(addr: tuple[str, int] | None) -> tuple[str, int] | None:
    if addr is None:
        return None
    host, port = addr
    if not 0 < len(host) <= MAX_HOST or not host.isascii() or not host.isprintable() or " " in host:
        raise ValueError(f"advertised host must be 1 to {MAX_HOST} ASCII characters: {host!r}")
    if not 0 < port <= 65535:
        raise ValueError(f"advertised port out of range: {port}")
    return (host, port)


class _Reader:
    """Cursor over a handshake payload; any shortfall or malformation is a ``WireError``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError("malformed handshake frame")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def name(self) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return _check_name(raw.decode())
        except (UnicodeDecodeError, ValueError):
            raise WireError("malformed node name in handshake") from None

    def addr(self) -> tuple[str, int] | None:
        raw = self.take(self.take(1)[0])
        (port,) = _PORT.unpack(self.take(2))
        if not raw and not port:
            return None
        try:
            return _check_addr((raw.decode("ascii"), port))
        except (UnicodeDecodeError, ValueError):
            raise WireError("malformed address in handshake") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise WireError("malformed handshake frame")


class Handshake:
    """One side of the mesh handshake.

    ``start()`` returns the first bytes to send (the dialer's HELLO; ``b""`` for the listener).
    ``feed(data)`` returns bytes to send and, once the peer is authenticated, sets ``result``;
    bytes that followed the last handshake frame are in ``trailing`` and have not been parsed.
    Any failure raises ``WireError`` (``AuthFailed`` for a wrong proof) whose ``reply`` is worth
    sending before closing; the machine is then ``FAILED`` for good.

    ``secrets``: the first proves us; a peer's proof is accepted under any of them (rotation).
    The listener answers with the secret the dialer proved, so both ends agree on one secret
    whenever they share any. ``sequence``: the dialer's connection number (see ``Authenticated``).
    """

    def __init__(
        self,
        role: Role,
        *,
        node_name: str,
        secrets: Sequence[bytes],
        nonce: bytes,
        advertise: tuple[str, int] | None = None,
        sequence: int = 0,
    ) -> None:
        if role not in ("dialer", "listener"):
            raise ValueError(f"role must be 'dialer' or 'listener': {role!r}")
        if not secrets or not all(isinstance(s, bytes) and s for s in secrets):
            raise ValueError("at least one non-empty secret is required")
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        if not 0 <= sequence < 1 << 64:
            raise ValueError("sequence out of range")
        self.role: Role = role
        self.node_name = _check_name(node_name)
        self.secrets = tuple(secrets)
        self.nonce = bytes(nonce)
        self.advertise = _check_addr(advertise)
        self.sequence = sequence
        self.state = HandshakeState.START if role == "dialer" else HandshakeState.WAIT_HELLO
        self.result: Authenticated | None = None
        self.trailing = b""
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._peer_nonce = b""
        self._peer_name = ""
        #: The name the peer gave before proving anything: for logs only, never to be trusted.
        self.claimed_name = ""
        self._peer_addr: tuple[str, int] | None = None
        self._peer_sequence = 0
        self._secret = b""  # the secret both ends proved (listener: matched; dialer: ours)

    @property
    def done(self) -> bool:
        return self.state is HandshakeState.DONE

    def start(self) -> bytes:
        if self.state is HandshakeState.WAIT_HELLO:
            return b""
        if self.state is not HandshakeState.START:
            raise RuntimeError(f"start() in state {self.state.value}")
        self.state = HandshakeState.SENT_HELLO
        hello = self.nonce + _SEQ.pack(self.sequence) + _name_field(self.node_name)
        return encode_frame(Kind.HELLO, hello + _addr_field(self.advertise))

    def feed(self, data: bytes) -> bytes:
        if self.state is HandshakeState.FAILED:
            raise WireError("handshake failed")
        if self.state is HandshakeState.DONE:
            raise RuntimeError("feed() after the handshake is done: use the link's decoder")
        if self.state is HandshakeState.START:
            raise RuntimeError("feed() before start()")
        out = []
        try:
            self._decoder.receive(data)
            while not self.done:  # stop at the last handshake frame: the rest is not ours
                frame = self._decoder.next_frame()
                if frame is None:
                    break
                out.append(self._step(*frame))
        except WireError:
            self.state = HandshakeState.FAILED
            raise
        if self.done:
            self.trailing = self._decoder.buffered()
            self._decoder = FrameDecoder(0)
        return b"".join(out)

    # ------------------------------------------------------------------ steps

    def _step(self, kind: int, payload: bytes) -> bytes:
        state = self.state
        try:
            nxt = TRANSITIONS[(state, Kind(kind))]
        except (KeyError, ValueError):
            if kind == Kind.BYE:
                reason = bye_reason(payload)
                if state is HandshakeState.SENT_AUTH and reason == "auth failed":
                    raise AuthFailed("the peer rejected our secret") from None
                raise WireError(f"closed by peer during handshake: {reason}") from None
            raise WireError(f"unexpected frame kind {kind} in handshake state {state.value}") from None
        handler = {
            Kind.HELLO: self._on_hello,
            Kind.CHALLENGE: self._on_challenge,
            Kind.AUTH: self._on_auth,
            Kind.AUTH_OK: self._on_auth_ok,
        }[Kind(kind)]
        reply = handler(payload)
        self.state = nxt
        return reply

    def _transcript(self) -> bytes:
        if self.role == "dialer":
            nonce_d, nonce_l, name_d, addr_d = self.nonce, self._peer_nonce, self.node_name, self.advertise
        else:
            nonce_d, nonce_l, name_d, addr_d = self._peer_nonce, self.nonce, self._peer_name, self._peer_addr
        seq = self.sequence if self.role == "dialer" else self._peer_sequence
        return b"meshxmpp-mesh/%d\x00" % PROTOCOL_VERSION + b"".join(
            (nonce_d, nonce_l, _SEQ.pack(seq), _name_field(name_d), _addr_field(addr_d))
        )

    @staticmethod
    def _mac(secret: bytes, label: bytes, transcript: bytes) -> bytes:
        return hmac.new(secret, label + transcript, hashlib.sha256).digest()

    def _match(self, label: bytes, transcript: bytes, proof: bytes) -> bytes | None:
        """The secret under which ``proof`` is valid. Every secret is tried (no early exit)."""
        found = None
        for secret in self.secrets:
            if hmac.compare_digest(self._mac(secret, label, transcript), proof) and found is None:
                found = secret
        return found

    # dialer

    def _on_challenge(self, payload: bytes) -> bytes:
        r = _Reader(payload)
        self._peer_nonce = r.take(NONCE_SIZE)
        r.end()
        if hmac.compare_digest(self._peer_nonce, self.nonce):
            raise WireError("the peer echoed our nonce")
        self._secret = self.secrets[0]
        return encode_frame(Kind.AUTH, self._mac(self._secret, b"dialer\x00", self._transcript()))

    def _on_auth_ok(self, payload: bytes) -> bytes:
        r = _Reader(payload)
        proof = r.take(MAC_SIZE)
        name = self.claimed_name = r.name()
        addr = r.addr()
        r.end()
        transcript = self._transcript() + _name_field(name) + _addr_field(addr)
        if self._match(b"listener\x00", transcript, proof) is None:
            raise AuthFailed("auth failed", reply=_bye("auth failed"))
        if name == self.node_name:
            raise WireError("connected to ourselves", reply=_bye("same node name"))
        self.result = Authenticated(name, addr, self.sequence)
        return b""

    # listener

    def _on_hello(self, payload: bytes) -> bytes:
        r = _Reader(payload)
        self._peer_nonce = r.take(NONCE_SIZE)
        (self._peer_sequence,) = _SEQ.unpack(r.take(8))
        self._peer_name = self.claimed_name = r.name()
        self._peer_addr = r.addr()
        r.end()
        if hmac.compare_digest(self._peer_nonce, self.nonce):
            raise WireError("the peer echoed our nonce")
        return encode_frame(Kind.CHALLENGE, self.nonce)

    def _on_auth(self, payload: bytes) -> bytes:
        if len(payload) != MAC_SIZE:
            raise AuthFailed("auth failed", reply=_bye("auth failed"))
        transcript = self._transcript()
        secret = self._match(b"dialer\x00", transcript, payload)
        if secret is None:
            raise AuthFailed("auth failed", reply=_bye("auth failed"))
        if self._peer_name == self.node_name:
            raise WireError("the peer uses our node name", reply=_bye("same node name"))
        self._secret = secret
        ours = transcript + _name_field(self.node_name) + _addr_field(self.advertise)
        self.result = Authenticated(self._peer_name, self._peer_addr, self._peer_sequence)
        return encode_frame(
            Kind.AUTH_OK,
            self._mac(secret, b"listener\x00", ours)
            + _name_field(self.node_name)
            + _addr_field(self.advertise),
        )
