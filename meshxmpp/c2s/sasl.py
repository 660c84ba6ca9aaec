"""SASL mechanisms as pure step objects: SCRAM-SHA-256, SCRAM-SHA-1 (RFC 5802/7677), PLAIN (RFC 4616).

Sans-IO: no sockets, no trio, no awaits; the server nonce is passed in.  The caller decodes the
base64 of ``<auth/>``/``<response/>`` (``incorrect-encoding`` is its business), feeds the bytes to
`ServerMechanism.step`, looks the user up when it gets `NeedCredentials`, and hands the result to
`ServerMechanism.provide`.

Unknown users (``provide(None)``) go through the same exchange with a stable fake salt and fake keys
derived from ``fake_salt_key`` and the username, doing the same hashing work, and fail at the end
with the very `Failure` a wrong password gets, so the exchange does not reveal which accounts exist.

Usernames are JID localparts: the mechanism enforces them with the localpart rules
(PRECIS UsernameCaseMapped, RFC 7622) and reports the result as `NeedCredentials.username` and
`Success.username`.  Passwords are enforced with PRECIS OpaqueString (the successor of SASLprep).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import precis_i18n

from meshxmpp.jid import JID, InvalidJID, prepare_domainpart, prepare_localpart

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "Challenge",
    "Failure",
    "NeedCredentials",
    "PlainServer",
    "ScramClient",
    "ScramCredentials",
    "ScramServer",
    "ServerMechanism",
    "Success",
    "derive_credentials",
    "plain_client",
    "prepare_password",
    "server_mechanism",
]

MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")
#: RFC 7677 §4: the iteration count should be at least 4096.
MIN_ITERATIONS = 4096
DEFAULT_ITERATIONS = 4096
_SALT_BYTES = 16

# hash name as stored in ScramCredentials -> hashlib name
_HASHES = {"SHA-1": "sha1", "SHA-256": "sha256"}
_SCRAM_HASH = {"SCRAM-SHA-1": "SHA-1", "SCRAM-SHA-256": "SHA-256"}

_OPAQUE = precis_i18n.get_profile("OpaqueString")

# RFC 5802 §7: printable = %x21-2B / %x2D-7E (no ','); saslname escapes only '=2C' and '=3D';
# an extension is attr-val = ALPHA "=" value.
_PRINTABLE = re.compile(r"[!-+\--~]+")
_SASLNAME = re.compile(r"(?:[^=,\x00]|=2C|=3D)+")
_EXTENSION = re.compile(r"[A-Za-z]=[^,\x00]+")


# --------------------------------------------------------------------------- results


class Challenge(bytes):
    """Bytes to send in a ``<challenge/>`` (the caller base64-encodes them)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Success:
    additional: bytes  # additional data with success (SCRAM's server-final-message), b"" for PLAIN
    username: str  # the enforced localpart that authenticated


@dataclass(frozen=True, slots=True)
class Failure:
    condition: str  # RFC 6120 §6.5 condition: not-authorized, malformed-request, invalid-authzid…
    # Diagnostic for <text/>; only set for protocol errors, never for credential checks, so that
    # a wrong password and an unknown user stay indistinguishable.
    text: str | None = None


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    username: str  # enforced localpart; the caller looks up "<username>@<domain>"


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    hash_name: str  # "SHA-1" | "SHA-256"
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def prepare_password(password: str) -> bytes:
    """Enforce OpaqueString on a password and return its UTF-8; ValueError if not allowed."""
    try:
        out: str = _OPAQUE.enforce(password)
    except UnicodeEncodeError as e:
        raise ValueError(f"password not allowed: {e.reason}") from None
    return out.encode("utf-8")


def _hmac(key: bytes, msg: bytes, hash_name: str) -> bytes:
    return hmac.digest(key, msg, _HASHES[hash_name])


def _h(data: bytes, hash_name: str) -> bytes:
    return hashlib.new(_HASHES[hash_name], data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _salted_password(hash_name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(_HASHES[hash_name], password, salt, iterations)


def _credentials_from_salted(hash_name: str, salted: bytes, salt: bytes, iterations: int) -> ScramCredentials:
    client_key = _hmac(salted, b"Client Key", hash_name)
    return ScramCredentials(
        hash_name=hash_name,
        salt=salt,
        iterations=iterations,
        stored_key=_h(client_key, hash_name),
        server_key=_hmac(salted, b"Server Key", hash_name),
    )


def derive_credentials(
    password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> dict[str, ScramCredentials]:
    """SCRAM credentials for both hashes (keys "SHA-1", "SHA-256"), sharing one salt.

    ``salt`` defaults to 16 random bytes.  Raises ValueError for a password OpaqueString refuses
    (empty, control characters…) or fewer than `MIN_ITERATIONS` iterations.
    """
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations must be at least {MIN_ITERATIONS}")
    if salt is None:
        salt = secrets.token_bytes(_SALT_BYTES)
    if not salt:
        raise ValueError("empty salt")
    pw = prepare_password(password)
    return {
        name: _credentials_from_salted(name, _salted_password(name, pw, salt, iterations), salt, iterations)
        for name in ("SHA-1", "SHA-256")
    }


def _fake_salt(fake_salt_key: bytes, username: str) -> bytes:
    # Stable per username, so probing the same unknown user twice shows the same salt, as a real
    # account would.  One salt for both hashes, like derive_credentials.
    return hmac.digest(fake_salt_key, username.encode("utf-8"), "sha256")[:_SALT_BYTES]


def _fake_credentials(fake_salt_key: bytes, username: str, hash_name: str) -> ScramCredentials:
    def key(label: bytes) -> bytes:
        msg = label + b"\x00" + hash_name.encode() + b"\x00" + username.encode("utf-8")
        return _hmac(fake_salt_key, msg, hash_name)

    return ScramCredentials(
        hash_name=hash_name,
        salt=_fake_salt(fake_salt_key, username),
        iterations=DEFAULT_ITERATIONS,
        stored_key=key(b"stored-key"),
        server_key=key(b"server-key"),
    )


# --------------------------------------------------------------------------- helpers


class _Malformed(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(s: str) -> bytes:
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("invalid base64") from None


def _escape_saslname(s: str) -> str:
    return s.replace("=", "=3D").replace(",", "=2C")


def _unescape_saslname(s: str) -> str:
    if not _SASLNAME.fullmatch(s):
        raise _Malformed("invalid saslname")
    # Every '=' starts an escape (checked above), so replacing =2C first cannot create a =3D.
    return s.replace("=2C", ",").replace("=3D", "=")


def _nonce_text(nonce: bytes | str) -> str:
    """A nonce as SCRAM's printable form: used verbatim when it already is printable (the RFC
    test vectors), base64-encoded otherwise (raw random bytes)."""
    if isinstance(nonce, str):
        nonce = nonce.encode("utf-8")
    if not nonce:
        raise ValueError("empty nonce")
    if nonce.isascii() and _PRINTABLE.fullmatch(nonce.decode("ascii")):
        return nonce.decode("ascii")
    return _b64(nonce)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8") from None


def _authzid_ok(authzid: str, username: str, domain: str | None) -> bool:
    """RFC 6120 §6.4.6: we only accept an authzid equal to the authenticated bare JID."""
    if not authzid:
        return True
    try:
        j = JID.parse(authzid)
    except InvalidJID:
        return False
    return j.is_bare and j.local == username and (domain is None or j.domain == domain)


# --------------------------------------------------------------------------- server


class _State(enum.Enum):
    START = "start"  # waiting for the initial response (one empty round allowed)
    EMPTY_SENT = "empty-sent"  # we answered an empty initial response with an empty challenge
    NEED_CREDENTIALS = "need-credentials"  # NeedCredentials returned, waiting for provide()
    CHALLENGED = "challenged"  # SCRAM: server-first sent, waiting for client-final
    DONE = "done"  # Success or Failure returned


Result = Challenge | Success | Failure | NeedCredentials


class ServerMechanism:
    """Server side of one SASL exchange.  Everything the peer can cause is a `Failure` (data out
    of turn included: it ends the exchange); calling provide() out of turn is a caller bug and
    raises RuntimeError."""

    name: str

    def __init__(self, *, fake_salt_key: bytes, domain: str | None) -> None:
        self._fake_salt_key = fake_salt_key
        self._domain = None if domain is None else prepare_domainpart(domain)
        self._state = _State.START
        self._username = ""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def step(self, data: bytes) -> Result:
        if self._state is _State.START and not data:
            # RFC 6120 §6.4.2: no (or an empty) initial response -> empty challenge, once.
            self._state = _State.EMPTY_SENT
            return Challenge(b"")
        if self._state in (_State.START, _State.EMPTY_SENT):
            return self._finish_if_final(self._client_first(data))
        if self._state is _State.CHALLENGED:
            return self._finish_if_final(self._client_next(data))
        # The peer spoke out of turn (e.g. a <response/> while we wait for credentials).
        self._state = _State.DONE
        return Failure("malformed-request", "unexpected SASL data")

    def provide(self, creds: dict[str, ScramCredentials] | None) -> Challenge | Success | Failure:
        if self._state is not _State.NEED_CREDENTIALS:
            raise RuntimeError(f"{self.name}: provide() called in state {self._state.value}")
        result = self._provide(creds)
        self._state = _State.DONE if isinstance(result, (Success, Failure)) else _State.CHALLENGED
        return result

    def _finish_if_final(self, result: Result) -> Result:
        if isinstance(result, (Success, Failure)):
            self._state = _State.DONE
        elif isinstance(result, NeedCredentials):
            self._state = _State.NEED_CREDENTIALS
        return result

    def _check_user(self, raw_username: str, authzid: str) -> NeedCredentials | Failure:
        try:
            self._username = prepare_localpart(raw_username)
        except InvalidJID:
            # No account can have this name, so answering at once reveals nothing.
            return Failure("not-authorized")
        if not _authzid_ok(authzid, self._username, self._domain):
            return Failure("invalid-authzid")
        return NeedCredentials(self._username)

    # subclasses
    def _client_first(self, data: bytes) -> Result:
        raise NotImplementedError

    def _provide(self, creds: dict[str, ScramCredentials] | None) -> Challenge | Success | Failure:
        raise NotImplementedError

    def _client_next(self, data: bytes) -> Result:
        raise NotImplementedError


class ScramServer(ServerMechanism):
    """SCRAM-SHA-1 / SCRAM-SHA-256 without channel binding (gs2 flags 'n' and 'y')."""

    def __init__(self, name: str, *, nonce: bytes, fake_salt_key: bytes, domain: str | None = None) -> None:
        super().__init__(fake_salt_key=fake_salt_key, domain=domain)
        self.name = name
        self._hash = _SCRAM_HASH[name]
        self._snonce = _nonce_text(nonce)
        self._gs2_header = b""
        self._client_first_bare = ""
        self._nonce = ""
        self._server_first = ""
        self._creds: ScramCredentials | None = None
        self._real = False

    def _client_first(self, data: bytes) -> Result:
        try:
            text = _decode(data)
            flag, sep1, rest = text.partition(",")
            authz, sep2, bare = rest.partition(",")
            if not (sep1 and sep2):
                raise _Malformed("missing gs2 header")
            if flag.startswith("p="):
                # We advertise no -PLUS mechanism, so a client demanding channel binding is
                # talking about something we do not offer.
                raise _Malformed("channel binding is not supported")
            if flag not in ("n", "y"):
                raise _Malformed("invalid gs2 channel binding flag")
            authzid = ""
            if authz:
                if not authz.startswith("a="):
                    raise _Malformed("invalid gs2 authzid")
                authzid = _unescape_saslname(authz[2:])
            attrs = bare.split(",")
            if attrs[0].startswith("m="):
                raise _Malformed("unsupported mandatory extension")
            if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
                raise _Malformed("expected n=…,r=…")
            username = _unescape_saslname(attrs[0][2:])
            cnonce = attrs[1][2:]
            if not _PRINTABLE.fullmatch(cnonce):
                raise _Malformed("invalid client nonce")
            if not all(_EXTENSION.fullmatch(a) for a in attrs[2:]):
                raise _Malformed("invalid extension")
        except _Malformed as e:
            return Failure("malformed-request", e.text)
        self._gs2_header = f"{flag},{authz},".encode()
        self._client_first_bare = bare
        self._nonce = cnonce + self._snonce
        return self._check_user(username, authzid)

    def _provide(self, creds: dict[str, ScramCredentials] | None) -> Challenge:
        c = creds.get(self._hash) if creds else None
        self._real = c is not None
        if c is None:
            c = _fake_credentials(self._fake_salt_key, self._username, self._hash)
        self._creds = c
        self._server_first = f"r={self._nonce},s={_b64(c.salt)},i={c.iterations}"
        return Challenge(self._server_first.encode())

    def _client_next(self, data: bytes) -> Success | Failure:
        assert self._creds is not None
        creds = self._creds
        try:
            text = _decode(data)
            attrs = text.split(",")
            if len(attrs) < 3 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
                raise _Malformed("expected c=…,r=…,…,p=…")
            if not attrs[-1].startswith("p="):
                raise _Malformed("proof missing or not last")
            if not all(_EXTENSION.fullmatch(a) for a in attrs[2:-1]):
                raise _Malformed("invalid extension")
            if _unb64(attrs[0][2:]) != self._gs2_header:
                raise _Malformed("channel binding data does not match the gs2 header")
            if attrs[1][2:] != self._nonce:
                raise _Malformed("nonce mismatch")
            proof = _unb64(attrs[-1][2:])
            if len(proof) != len(creds.stored_key):
                raise _Malformed("proof has the wrong length")
        except _Malformed as e:
            return Failure("malformed-request", e.text)
        without_proof = text[: len(text) - len(attrs[-1]) - 1]
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        # Same work for real and fake credentials.
        client_signature = _hmac(creds.stored_key, auth_message, self._hash)
        client_key = _xor(proof, client_signature)
        matches = hmac.compare_digest(_h(client_key, self._hash), creds.stored_key)
        server_signature = _hmac(creds.server_key, auth_message, self._hash)
        if matches and self._real:
            return Success(b"v=" + _b64(server_signature).encode(), self._username)
        return Failure("not-authorized")


class PlainServer(ServerMechanism):
    """PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd``, checked against SCRAM credentials by
    recomputing the SaltedPassword with the stored salt and iteration count."""

    name = "PLAIN"

    def __init__(self, *, fake_salt_key: bytes, domain: str | None = None) -> None:
        super().__init__(fake_salt_key=fake_salt_key, domain=domain)
        self._password: bytes | None = None

    def _client_first(self, data: bytes) -> Result:
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return Failure("malformed-request", "expected authzid NUL authcid NUL passwd")
        try:
            authzid, authcid, passwd = (_decode(p) for p in parts)
        except _Malformed as e:
            return Failure("malformed-request", e.text)
        if not authcid or not passwd:
            return Failure("malformed-request", "empty authcid or password")
        result = self._check_user(authcid, authzid)
        if isinstance(result, NeedCredentials):
            try:
                self._password = prepare_password(passwd)
            except ValueError:
                return Failure("not-authorized")  # no stored password can match it
        return result

    def _provide(self, creds: dict[str, ScramCredentials] | None) -> Success | Failure:
        assert self._password is not None
        password, self._password = self._password, None
        c = (creds.get("SHA-256") or creds.get("SHA-1")) if creds else None
        real = c is not None
        if c is None:
            c = _fake_credentials(self._fake_salt_key, self._username, "SHA-256")
        # The full PBKDF2 runs for unknown users too.
        salted = _salted_password(c.hash_name, password, c.salt, c.iterations)
        stored_key = _h(_hmac(salted, b"Client Key", c.hash_name), c.hash_name)
        matches = hmac.compare_digest(stored_key, c.stored_key)
        if matches and real:
            return Success(b"", self._username)
        return Failure("not-authorized")


def server_mechanism(
    name: str, *, nonce: bytes, fake_salt_key: bytes, domain: str | None = None
) -> ServerMechanism:
    """A fresh server-side exchange for ``name`` (one of `MECHANISMS`; ValueError otherwise).

    ``nonce``: the server's nonce part, fresh random bytes per exchange (used verbatim if already
    printable ASCII without ',', else base64-encoded).  ``fake_salt_key``: a server secret for the
    fake salt of unknown users.  ``domain``: if given, an authzid must be ``username@domain``;
    without it only the localpart of the authzid is checked.
    """
    if name == "PLAIN":
        return PlainServer(fake_salt_key=fake_salt_key, domain=domain)
    if name in _SCRAM_HASH:
        return ScramServer(name, nonce=nonce, fake_salt_key=fake_salt_key, domain=domain)
    raise ValueError(f"unknown SASL mechanism {name!r}")


# --------------------------------------------------------------------------- client


class ScramClient:
    """Client side of SCRAM, for meshxmpp.testing and the benchmarks.

    ``hash_name``: "SHA-1"/"SHA-256" (or the mechanism name).  The username is sent as given
    (escaped), so tests can check the server's normalisation.  `final` raises ValueError on a
    malformed or inconsistent server-first-message.
    """

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: str,
        nonce: bytes | str,
        *,
        authzid: str | None = None,
        gs2_flag: str = "n",
    ) -> None:
        hash_name = _SCRAM_HASH.get(hash_name, hash_name)
        if hash_name not in _HASHES:
            raise ValueError(f"unknown hash {hash_name!r}")
        if gs2_flag not in ("n", "y"):
            raise ValueError("gs2_flag must be 'n' or 'y'")
        self.hash_name = hash_name
        self.mechanism = "SCRAM-" + hash_name
        self._password = prepare_password(password)
        self._cnonce = _nonce_text(nonce)
        authz = f"a={_escape_saslname(authzid)}" if authzid else ""
        self._gs2_header = f"{gs2_flag},{authz},"
        self._client_first_bare = f"n={_escape_saslname(username)},r={self._cnonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("server-first-message is not UTF-8") from None
        attrs = text.split(",")
        if len(attrs) < 3 or [a[:2] for a in attrs[:3]] != ["r=", "s=", "i="]:
            raise ValueError("malformed server-first-message")
        nonce = attrs[0][2:]
        if not nonce.startswith(self._cnonce) or len(nonce) == len(self._cnonce):
            raise ValueError("server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(attrs[1][2:], validate=True)
            iterations = int(attrs[2][2:])
        except (binascii.Error, ValueError):
            raise ValueError("malformed salt or iteration count") from None
        if iterations < 1 or not salt:
            raise ValueError("bad salt or iteration count")
        h = self.hash_name
        salted = _salted_password(h, self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key", h)
        stored_key = _h(client_key, h)
        without_proof = f"c={_b64(self._gs2_header.encode())},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        proof = _xor(client_key, _hmac(stored_key, auth_message, h))
        self._server_signature = _hmac(_hmac(salted, b"Server Key", h), auth_message, h)
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> bool:
        """True if ``server_final`` (``v=…``) proves the server knew our credentials."""
        if self._server_signature is None:
            return False
        attrs = server_final.split(b",")
        if not attrs[0].startswith(b"v="):
            return False
        try:
            signature = base64.b64decode(attrs[0][2:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(signature, self._server_signature)


def plain_client(username: str, password: str, authzid: str | None = None) -> bytes:
    """The PLAIN initial response ``[authzid] NUL username NUL password``."""
    return f"{authzid or ''}\x00{username}\x00{password}".encode()
