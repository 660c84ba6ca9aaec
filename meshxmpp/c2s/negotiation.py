"""Client-to-server stream negotiation as a sans-IO state machine (RFC 6120 sections 4-7).

The glue (``c2s.listener``) feeds :class:`~meshxmpp.xml.events.XmlEvent` values to
:meth:`Negotiation.receive` and performs the returned effects *in order*: ``Send`` bytes, run the TLS
handshake (``StartTLS``), fetch credentials (``NeedCredentials``, answered with
:meth:`Negotiation.provide_credentials`), note an authentication result, bind the session, close.

Everything that changes the state lives in ``TRANSITIONS`` (h11 ``_state.py`` rule 1). Inputs are of
two kinds: what the peer sent (``HEADER``, ``AUTH``...) and what a step decided (``OFFER_*``,
``CHALLENGE``, ``SUCCESS``...), so a step with several possible outcomes passes through a transient
state whose exits are listed in the same table. A (state, input) pair that is not in the table raises
``StreamError`` and moves to ``CLOSED``; ``receive`` turns that into ``Close`` effects.

No trio, no sockets, no clock: randomness (stream ids, SCRAM nonces, generated resources) comes from
the ``rng`` argument.
"""

from __future__ import annotations

import base64
import binascii
import enum
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass

from meshxmpp.c2s import sasl
from meshxmpp.jid import JID, InvalidJID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent
from meshxmpp.xml.serialize import stream_header, to_bytes

__all__ = [
    "TRANSITIONS",
    "AuthFailed",
    "AuthSucceeded",
    "Bind",
    "Close",
    "Effect",
    "Input",
    "NeedCredentials",
    "Negotiation",
    "Send",
    "StartTLS",
    "Stanza",
    "State",
    "classify",
    "mermaid",
]


class State(enum.Enum):
    #: Waiting for the initial stream header.
    STREAM_START = "stream-start"
    #: (transient) A header was accepted; the features to offer are being chosen.
    OPENED = "opened"
    #: Features offered: STARTTLS only, marked ``<required/>``.
    TLS_REQUIRED = "tls-required"
    #: Features offered: STARTTLS (optional) and SASL mechanisms.
    TLS_OR_AUTH = "tls-or-auth"
    #: Features offered: SASL mechanisms only (already encrypted, or no TLS available).
    AUTH = "auth"
    #: ``<proceed/>`` sent; the glue runs the TLS handshake and calls ``tls_established``.
    TLS_HANDSHAKE = "tls-handshake"
    #: Waiting for the stream header of the encrypted stream.
    TLS_RESTART = "tls-restart"
    #: (transient) A SASL step is running.
    SASL = "sasl"
    #: A challenge was sent; waiting for ``<response/>`` or ``<abort/>``.
    SASL_CHALLENGED = "sasl-challenged"
    #: The mechanism needs the user's credentials; the glue calls ``provide_credentials``.
    SASL_CREDENTIALS = "sasl-credentials"
    #: ``<success/>`` sent; waiting for the stream header of the authenticated stream.
    AUTH_RESTART = "auth-restart"
    #: Features offered: resource binding (and the legacy session, optional).
    BIND = "bind"
    #: (transient) A bind request is being checked.
    BINDING = "binding"
    #: A resource is bound: stanzas flow.
    BOUND = "bound"
    #: Terminal: the stream is closed or failed.
    CLOSED = "closed"


class Input(enum.Enum):
    # --- from the peer (classify(event)) ---
    HEADER = "header"  #: the stream header (StreamOpened)
    CLOSE = "close"  #: the peer's </stream:stream>
    STREAM_ERROR = "stream-error"  #: the peer's <stream:error/>
    STARTTLS = "starttls"
    AUTH = "auth"
    RESPONSE = "response"
    ABORT = "abort"
    BIND = "bind"  #: <iq type='set'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>
    SESSION = "session"  #: <iq type='set'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>
    STANZA = "stanza"  #: any other message, presence or iq
    UNKNOWN = "unknown"  #: any other first-level element
    # --- from the glue ---
    TLS_DONE = "tls-done"
    CREDENTIALS = "credentials"
    # --- outcomes decided inside a step ---
    OFFER_TLS_REQUIRED = "offer-tls-required"
    OFFER_TLS_OR_AUTH = "offer-tls-or-auth"
    OFFER_AUTH = "offer-auth"
    OFFER_BIND = "offer-bind"
    CHALLENGE = "challenge"
    NEED_CREDENTIALS = "need-credentials"
    SUCCESS = "success"
    FAILURE = "failure"
    BIND_OK = "bind-ok"
    BIND_REJECTED = "bind-rejected"


PEER_INPUTS: frozenset[Input] = frozenset(
    {
        Input.HEADER,
        Input.CLOSE,
        Input.STREAM_ERROR,
        Input.STARTTLS,
        Input.AUTH,
        Input.RESPONSE,
        Input.ABORT,
        Input.BIND,
        Input.SESSION,
        Input.STANZA,
        Input.UNKNOWN,
    }
)

S, In = State, Input

# States in which the peer may speak; each accepts the peer's close and stream error.
_LISTENING = (
    S.STREAM_START,
    S.TLS_REQUIRED,
    S.TLS_OR_AUTH,
    S.AUTH,
    S.TLS_RESTART,
    S.SASL_CHALLENGED,
    S.AUTH_RESTART,
    S.BIND,
    S.BOUND,
)

#: (state, input) -> next state. The whole machine; nothing else changes ``Negotiation.state``.
TRANSITIONS: dict[tuple[State, Input], State] = {
    # stream headers: the initial one and the two restarts
    (S.STREAM_START, In.HEADER): S.OPENED,
    (S.TLS_RESTART, In.HEADER): S.OPENED,
    (S.AUTH_RESTART, In.HEADER): S.OPENED,
    (S.OPENED, In.OFFER_TLS_REQUIRED): S.TLS_REQUIRED,
    (S.OPENED, In.OFFER_TLS_OR_AUTH): S.TLS_OR_AUTH,
    (S.OPENED, In.OFFER_AUTH): S.AUTH,
    (S.OPENED, In.OFFER_BIND): S.BIND,
    # STARTTLS (RFC 6120 section 5)
    (S.TLS_REQUIRED, In.STARTTLS): S.TLS_HANDSHAKE,
    (S.TLS_OR_AUTH, In.STARTTLS): S.TLS_HANDSHAKE,
    (S.TLS_HANDSHAKE, In.TLS_DONE): S.TLS_RESTART,
    # <auth/> while TLS is still required: <failure><encryption-required/></failure>
    (S.TLS_REQUIRED, In.AUTH): S.TLS_REQUIRED,
    # SASL (RFC 6120 section 6)
    (S.TLS_OR_AUTH, In.AUTH): S.SASL,
    (S.AUTH, In.AUTH): S.SASL,
    (S.SASL_CHALLENGED, In.RESPONSE): S.SASL,
    (S.SASL_CHALLENGED, In.ABORT): S.AUTH,
    (S.SASL_CREDENTIALS, In.CREDENTIALS): S.SASL,
    (S.SASL, In.CHALLENGE): S.SASL_CHALLENGED,
    (S.SASL, In.NEED_CREDENTIALS): S.SASL_CREDENTIALS,
    (S.SASL, In.SUCCESS): S.AUTH_RESTART,
    (S.SASL, In.FAILURE): S.AUTH,
    # resource binding (RFC 6120 section 7) and the legacy session (RFC 3921 section 3)
    (S.BIND, In.BIND): S.BINDING,
    (S.BINDING, In.BIND_OK): S.BOUND,
    (S.BINDING, In.BIND_REJECTED): S.BIND,
    (S.BOUND, In.SESSION): S.BOUND,
    (S.BOUND, In.STANZA): S.BOUND,
    # the peer ends the stream
    **{(s, In.CLOSE): S.CLOSED for s in _LISTENING},
    **{(s, In.STREAM_ERROR): S.CLOSED for s in _LISTENING},
}

_AUTHENTICATED_STATES = frozenset({S.AUTH_RESTART, S.BIND, S.BINDING, S.BOUND})


# --------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes for the peer, in order with the other effects."""

    data: bytes


@dataclass(frozen=True, slots=True)
class StartTLS:
    """``<proceed/>`` was sent: run the server side of the TLS handshake, then ``tls_established()``.

    Bytes the peer sent after ``<starttls/>`` must not be processed (STARTTLS command injection)."""


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Fetch the SCRAM credentials of ``username`` (a localpart) and call ``provide_credentials``."""

    username: str


@dataclass(frozen=True, slots=True)
class AuthSucceeded:
    """Authenticated as ``jid`` (bare). Restart the parser (stream restart) and raise its limits."""

    username: str
    jid: JID


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """An authentication attempt failed with SASL ``condition``; ``attempts`` so far on this stream.

    The glue may delay the following ``Send`` (throttling by address)."""

    username: str | None
    condition: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind the session as ``jid``. ``resource`` is what the client asked for (None: we chose)."""

    jid: JID
    resource: str | None


@dataclass(frozen=True, slots=True)
class Stanza:
    """A stanza after binding, for the router. (The listener takes a faster path to the same end.)"""

    element: Element


@dataclass(frozen=True, slots=True)
class Close:
    """End the stream: send ``<stream:error>`` when ``condition`` is set, then the footer; close."""

    condition: str | None = None
    text: str | None = None


Effect = Send | StartTLS | NeedCredentials | AuthSucceeded | AuthFailed | Bind | Stanza | Close


# ------------------------------------------------------------------------------------ classifier

_ELEMENT_INPUTS: dict[tuple[str | None, str], Input] = {
    (ns.STREAMS, "error"): In.STREAM_ERROR,
    (ns.TLS, "starttls"): In.STARTTLS,
    (ns.SASL, "auth"): In.AUTH,
    (ns.SASL, "response"): In.RESPONSE,
    (ns.SASL, "abort"): In.ABORT,
}
_STANZA_NAMES = frozenset({"message", "presence", "iq"})


def classify(event: XmlEvent) -> Input:
    """The peer input an XmlEvent stands for."""
    if isinstance(event, StreamOpened):
        return In.HEADER
    if isinstance(event, StreamClosed):
        return In.CLOSE
    el = event.element
    found = _ELEMENT_INPUTS.get((el.ns, el.name))
    if found is not None:
        return found
    if el.ns != ns.CLIENT or el.name not in _STANZA_NAMES:
        return In.UNKNOWN
    if el.name == "iq" and el.get("type") == "set":
        payload = [c for c in el.children if isinstance(c, Element)]
        if len(payload) == 1:
            child = payload[0]
            if child.name == "bind" and child.ns == ns.BIND:
                return In.BIND
            if child.name == "session" and child.ns == ns.SESSION:
                return In.SESSION
    return In.STANZA


def _condition_for(state: State, inp: Input) -> str:
    """The stream error for a (state, input) pair that is not in the table."""
    if inp not in PEER_INPUTS:
        return "internal-server-error"  # the glue misused the API
    if inp is In.UNKNOWN:
        return "unsupported-stanza-type"
    if inp in (In.STANZA, In.BIND, In.SESSION) and state not in (S.BOUND, S.CLOSED):
        # RFC 6120 4.9.3.12: stanzas before the stream is authenticated (and bound)
        return "not-authorized"
    return "policy-violation"


def mermaid() -> str:
    """The table as a Mermaid state diagram (for the docs; generated, never drawn by hand)."""
    lines = ["stateDiagram-v2"]
    for (state, inp), nxt in TRANSITIONS.items():
        lines.append(f"    {state.name} --> {nxt.name}: {inp.value}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the machine

_LANG_RE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*\Z")
_SASL_MECHANISMS = tuple(sasl.MECHANISMS)


class Negotiation:
    """One client stream from its first header to a bound resource.

    ``tls_available``: a server certificate is configured (STARTTLS can be offered).
    ``encrypted``: the transport is already TLS (direct TLS, XEP-0368).
    ``fake_salt_key``: secret for the stable fake SCRAM salt of unknown users.
    """

    def __init__(
        self,
        *,
        domain: str,
        rng: random.Random,
        require_encryption: bool = True,
        tls_available: bool = True,
        encrypted: bool = False,
        max_auth_attempts: int = 3,
        fake_salt_key: bytes = b"",
    ) -> None:
        self.domain = JID.parse(domain).domain
        self._rng = rng
        self.require_encryption = require_encryption
        self.tls_available = tls_available
        self.encrypted = encrypted
        self.max_auth_attempts = max_auth_attempts
        self._fake_salt_key = fake_salt_key
        self.state = S.STREAM_START
        self.stream_id = self._new_stream_id()
        self.lang = "en"
        self.auth_failures = 0
        self.user: JID | None = None  # bare JID once authenticated
        self.jid: JID | None = None  # full JID once bound
        self._header_sent = False
        self._mech: sasl.ServerMechanism | None = None
        self._sasl_username: str | None = None
        self._out: list[Effect] = []

    # ------------------------------------------------------------------ public API

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def mechanisms(self) -> tuple[str, ...]:
        """SASL mechanisms offered now: PLAIN only over TLS or when encryption is not required."""
        if self.encrypted or not self.require_encryption:
            return _SASL_MECHANISMS
        return tuple(m for m in _SASL_MECHANISMS if m != "PLAIN")

    def receive(self, event: XmlEvent) -> list[Effect]:
        """Handle one event from the peer; return the effects to perform, in order."""
        self._out = []
        try:
            inp = classify(event)
            self._advance(inp)
            self._handle(inp, event)
        except StreamError as err:
            self._fail(err)
        return self._out

    def tls_established(self) -> list[Effect]:
        """The glue finished the TLS handshake: expect the header of the encrypted stream."""
        self._out = []
        try:
            self._advance(In.TLS_DONE)
            self.encrypted = True
        except StreamError as err:
            self._fail(err)
        return self._out

    def provide_credentials(self, creds: Mapping[str, sasl.ScramCredentials] | None) -> list[Effect]:
        """Answer ``NeedCredentials``; ``None`` for an unknown user (fails like a wrong password)."""
        self._out = []
        try:
            self._advance(In.CREDENTIALS)
            assert self._mech is not None
            self._sasl_result(self._mech.provide(dict(creds) if creds is not None else None))
        except StreamError as err:
            self._fail(err)
        return self._out

    def fail(self, condition: str, text: str | None = None) -> list[Effect]:
        """Close with a stream error found by the glue (parser limits, timeouts...)."""
        self._out = []
        self._fail(StreamError(condition, text))
        return self._out

    # ------------------------------------------------------------------ the table

    def _advance(self, inp: Input) -> None:
        nxt = TRANSITIONS.get((self.state, inp))
        if nxt is None:
            state, self.state = self.state, S.CLOSED
            raise StreamError(_condition_for(state, inp), f"unexpected {inp.value} in state {state.value}")
        self.state = nxt

    def _fail(self, err: StreamError) -> None:
        self.state = S.CLOSED
        self._mech = None
        if not self._header_sent:
            # RFC 6120 4.9.1.1: an error before our header still opens the stream first.
            self._send(stream_header(from_=self.domain, to=None, id=self.stream_id, lang=self.lang))
            self._header_sent = True
        self._out.append(Close(err.condition, err.text))

    def _restarting(self) -> None:
        # The next stream is a new one: it gets a new id (RFC 6120 4.7.3) and a new header.
        self._header_sent = False
        self.stream_id = self._new_stream_id()

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    def _send_el(self, el: Element) -> None:
        self._out.append(Send(to_bytes(el)))

    # ------------------------------------------------------------------ handlers

    def _handle(self, inp: Input, event: XmlEvent) -> None:
        if inp is In.HEADER:
            assert isinstance(event, StreamOpened)
            self._on_header(event)
        elif inp in (In.CLOSE, In.STREAM_ERROR):
            self._mech = None
            self._out.append(Close())
        elif inp is In.STARTTLS:
            self._restarting()
            self._send_el(Element("proceed", ns.TLS))
            self._out.append(StartTLS())
        else:
            assert isinstance(event, StanzaReceived)
            el = event.element
            if inp is In.AUTH:
                self._on_auth(el)
            elif inp is In.RESPONSE:
                self._on_response(el)
            elif inp is In.ABORT:
                self._mech = None
                self._auth_failed("aborted")
            elif inp is In.BIND:
                self._on_bind(el)
            elif inp is In.SESSION:
                self._send_el(Element("iq", ns.CLIENT, _result_attrs(el)))
            elif inp is In.STANZA:
                self._out.append(Stanza(el))

    def _on_header(self, opened: StreamOpened) -> None:
        attrs = opened.attrs
        lang = attrs.get("xml:lang")
        if lang is not None and _LANG_RE.match(lang):
            self.lang = lang
        if opened.ns != ns.CLIENT:
            raise StreamError("invalid-namespace", "the default namespace must be jabber:client")
        to = attrs.get("to")
        # RFC 6120 4.7.2: 'to' SHOULD be present; a missing one is taken as our domain.
        if to is not None and not self._is_our_domain(to):
            raise StreamError("host-unknown", None)
        if not _version_ok(attrs.get("version")):
            raise StreamError("unsupported-version", "XMPP 1.0 is required")
        peer = _valid_jid(attrs.get("from"))
        self._send(stream_header(from_=self.domain, to=peer, id=self.stream_id, lang=self.lang))
        self._header_sent = True

        features = Element("features", ns.STREAMS)
        if self.user is not None:
            self._advance(In.OFFER_BIND)
            features.add("bind", ns.BIND)
            features.add("session", ns.SESSION).add("optional", ns.SESSION)
        elif not self.encrypted and self.tls_available:
            starttls = features.add("starttls", ns.TLS)
            if self.require_encryption:
                starttls.add("required", ns.TLS)
                self._advance(In.OFFER_TLS_REQUIRED)
            else:
                self._advance(In.OFFER_TLS_OR_AUTH)
                _add_mechanisms(features, self.mechanisms())
        else:
            if not self.encrypted and self.require_encryption:
                raise StreamError("policy-violation", "encryption is required but TLS is not configured")
            self._advance(In.OFFER_AUTH)
            _add_mechanisms(features, self.mechanisms())
        self._send(_features_bytes(features))

    def _is_our_domain(self, to: str) -> bool:
        try:
            jid = JID.parse(to)
        except InvalidJID:
            return False
        return jid.local is None and jid.resource is None and jid.domain == self.domain

    # --- SASL

    def _on_auth(self, el: Element) -> None:
        if self.state is S.TLS_REQUIRED:
            # RFC 6120 6.5.4: authentication must wait for TLS.
            self._auth_failed("encryption-required")
            return
        name = el.get("mechanism")
        if name is None or name not in self.mechanisms():
            self._advance(In.FAILURE)
            self._auth_failed("invalid-mechanism")
            return
        data = _decode(el.text)
        if data is None:
            self._advance(In.FAILURE)
            self._auth_failed("incorrect-encoding")
            return
        self._sasl_username = None
        self._mech = sasl.server_mechanism(
            name, nonce=self._nonce(), fake_salt_key=self._fake_salt_key, domain=self.domain
        )
        # No initial response (an empty <auth/>) or an empty one ('='): the mechanism answers
        # with an empty challenge asking for its client-first message.
        self._sasl_result(self._mech.step(data))

    def _on_response(self, el: Element) -> None:
        data = _decode(el.text)
        if data is None:
            self._mech = None
            self._advance(In.FAILURE)
            self._auth_failed("incorrect-encoding")
            return
        assert self._mech is not None
        self._sasl_result(self._mech.step(data))

    def _sasl_result(self, result: object) -> None:
        if isinstance(result, sasl.NeedCredentials):
            self._advance(In.NEED_CREDENTIALS)
            self._sasl_username = result.username
            self._out.append(NeedCredentials(result.username))
        elif isinstance(result, sasl.Success):
            user = self._user_jid(result.username)
            if user is None:  # cannot happen with credentials from storage; fail closed
                self._advance(In.FAILURE)
                self._auth_failed("not-authorized")
                return
            self._advance(In.SUCCESS)
            self._mech = None
            self.user = user
            self._restarting()  # RFC 6120 6.4.6
            success = Element("success", ns.SASL)
            if result.additional:
                success.append(base64.b64encode(result.additional).decode("ascii"))
            self._send_el(success)
            self._out.append(AuthSucceeded(user.local or "", user))
        elif isinstance(result, sasl.Failure):
            self._advance(In.FAILURE)
            self._mech = None
            self._auth_failed(result.condition, result.text)
        elif isinstance(result, (bytes, bytearray)):  # sasl.Challenge is a bytes subclass
            self._advance(In.CHALLENGE)
            challenge = Element("challenge", ns.SASL)
            if result:
                challenge.append(base64.b64encode(bytes(result)).decode("ascii"))
            self._send_el(challenge)
        else:  # pragma: no cover - a mechanism returned something outside its contract
            raise StreamError("internal-server-error", None)

    def _auth_failed(self, condition: str, text: str | None = None) -> None:
        self.auth_failures += 1
        self._out.append(AuthFailed(self._sasl_username, condition, self.auth_failures))
        failure = Element("failure", ns.SASL)
        failure.add(condition, ns.SASL)
        if text:
            failure.add("text", ns.SASL, text=text)
        self._send_el(failure)
        if self.auth_failures >= self.max_auth_attempts:
            # RFC 6120 6.4.5: past the retry limit, close with a stream error.
            raise StreamError("policy-violation", "too many failed authentication attempts")

    def _user_jid(self, username: str) -> JID | None:
        try:
            jid = JID.parse(f"{username}@{self.domain}")
        except InvalidJID:
            return None
        if jid.local is None or jid.resource is not None or jid.domain != self.domain:
            return None
        return jid

    # --- binding

    def _on_bind(self, el: Element) -> None:
        assert self.user is not None
        bind = el.find("bind", ns.BIND)
        assert bind is not None
        res_el = bind.find("resource", ns.BIND)
        requested = res_el.text if res_el is not None else ""
        try:
            if requested:
                jid = self.user.with_resource(requested)
            else:
                jid = self.user.with_resource(self._new_resource())
        except InvalidJID:
            self._advance(In.BIND_REJECTED)
            self._send_el(el.error_reply("modify", "bad-request", "invalid resource"))
            return
        self._advance(In.BIND_OK)
        self.jid = jid
        result = Element("iq", ns.CLIENT, _result_attrs(el))
        result.add("bind", ns.BIND).add("jid", ns.BIND, text=str(jid))
        self._send_el(result)
        self._out.append(Bind(jid, requested or None))

    # --- chance

    def _new_stream_id(self) -> str:
        return self._rng.randbytes(12).hex()

    def _nonce(self) -> bytes:
        # printable and comma-free, as SCRAM requires
        return base64.b64encode(self._rng.randbytes(18))

    def _new_resource(self) -> str:
        return "mx-" + self._rng.randbytes(8).hex()


# ------------------------------------------------------------------------------------- helpers


def _decode(text: str) -> bytes | None:
    """SASL payload: '' (no data) and '=' (zero-length data) -> b"", else strict base64 (RFC 4648
    section 4, no whitespace inside); None when invalid."""
    text = text.strip()
    if not text or text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _version_ok(version: str | None) -> bool:
    # RFC 6120 4.7.5: no version means pre-1.0 (unsupported); a higher minor or major version gets
    # our "1.0" in the response header.
    if version is None:
        return False
    major, dot, minor = version.partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        return False
    return int(major) >= 1


def _valid_jid(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(JID.parse(value))
    except InvalidJID:
        return None


def _result_attrs(iq: Element) -> dict[str, str]:
    attrs = {"type": "result"}
    iq_id = iq.get("id")
    if iq_id is not None:
        attrs["id"] = iq_id
    return attrs


def _add_mechanisms(features: Element, names: tuple[str, ...]) -> None:
    mechs = features.add("mechanisms", ns.SASL)
    for name in names:
        mechs.add("mechanism", ns.SASL, text=name)


def _features_bytes(features: Element) -> bytes:
    # Written with the 'stream' prefix the header declared, which every client expects.
    inner = b"".join(to_bytes(c) for c in features.children if isinstance(c, Element))
    return b"<stream:features>" + inner + b"</stream:features>"
