"""The sans-IO negotiation FSM, driven with bytes through real parsers; no I/O, no clock."""

from __future__ import annotations

import ast
import base64
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshxmpp.c2s import negotiation as n
from meshxmpp.c2s.negotiation import TRANSITIONS, Input, State
from meshxmpp.c2s.sasl import ScramClient, plain_client
from meshxmpp.jid import JID
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened, XmlEvent
from meshxmpp.xml.serialize import STREAM_FOOTER, to_bytes
from tests.c2s._helpers import DOMAIN, Driver, auth, bind_iq, header, response, session_iq

RAW_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams'{attrs}>"
)


def raw_header(**attrs: str) -> bytes:
    text = "".join(f" {k.replace('_', ':')}='{v}'" for k, v in attrs.items())
    return RAW_HEADER.format(attrs=text).encode()


def children(el: Element) -> list[str]:
    return [c.name for c in el.children if isinstance(c, Element)]


def close_condition(effects: list[n.Effect]) -> str | None:
    closes = [e for e in effects if isinstance(e, n.Close)]
    assert closes, effects
    return closes[-1].condition


# ---------------------------------------------------------------------------------- happy paths


def test_module_is_sans_io() -> None:
    source = Path(n.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        assert not isinstance(node, (ast.Await, ast.AsyncFunctionDef))
    assert not imported & {"trio", "socket", "ssl", "sqlite3", "asyncio", "time"}


def test_scram_sha256_after_starttls_to_bound() -> None:
    d = Driver()
    features = d.open()
    # TLS required: STARTTLS alone, marked required, no mechanisms yet (RFC 6120 5.3.1)
    assert children(features) == ["starttls"]
    assert features.find("starttls", ns.TLS).find("required", ns.TLS) is not None  # type: ignore[union-attr]
    opened = d.headers()[0]
    assert opened.attrs["from"] == DOMAIN and opened.attrs["version"] == "1.0" and opened.attrs["id"]
    assert d.neg.state is State.TLS_REQUIRED

    effects = d.send(to_bytes(Element("starttls", ns.TLS)))
    assert [type(e) for e in effects][:2] == [n.Send, n.StartTLS]
    assert d.neg.encrypted and d.neg.state is State.TLS_RESTART

    features = d.open()
    mechs = [m.text for m in features.find("mechanisms", ns.SASL).findall("mechanism")]  # type: ignore[union-attr]
    assert mechs == ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"]  # PLAIN: the stream is encrypted now
    assert d.neg.state is State.AUTH

    assert d.scram().name == "success"
    assert d.neg.state is State.AUTH_RESTART
    succeeded = [e for e in d.effects if isinstance(e, n.AuthSucceeded)]
    assert succeeded == [n.AuthSucceeded("alice", JID.parse(f"alice@{DOMAIN}"))]
    assert [e for e in d.effects if isinstance(e, n.NeedCredentials)] == [n.NeedCredentials("alice")]

    features = d.open()
    assert children(features) == ["bind", "session"]
    assert features.find("session", ns.SESSION).find("optional", ns.SESSION) is not None  # type: ignore[union-attr]

    d.received.clear()
    effects = d.send(bind_iq("laptop"))
    result = d.last()
    assert result.attrs == {"type": "result", "id": "b1"}
    assert result.find("bind", ns.BIND).findtext("jid", ns.BIND) == f"alice@{DOMAIN}/laptop"  # type: ignore[union-attr]
    assert effects[-1] == n.Bind(JID.parse(f"alice@{DOMAIN}/laptop"), "laptop")
    assert d.neg.state is State.BOUND and d.neg.jid == JID.parse(f"alice@{DOMAIN}/laptop")

    # legacy session (RFC 3921), then a stanza for the router, then a clean close
    d.received.clear()
    d.send(session_iq("s1"))
    assert d.last().attrs == {"type": "result", "id": "s1"}
    message = to_bytes(Element("message", ns.CLIENT, {"to": "bob@example.org"}))
    (effect,) = d.send(message)
    assert isinstance(effect, n.Stanza) and effect.element.name == "message"
    assert d.send(STREAM_FOOTER) == [n.Close(None, None)]
    assert d.neg.state is State.CLOSED


def test_every_restart_gets_a_new_stream_id() -> None:
    d = Driver()
    d.open()
    ids = [d.headers()[0].attrs["id"]]
    d.send(to_bytes(Element("starttls", ns.TLS)))
    d.open()
    ids.append(d.headers()[0].attrs["id"])
    d.scram()
    d.open()
    ids.append(d.headers()[0].attrs["id"])
    assert len(set(ids)) == 3


@pytest.mark.parametrize("hash_name", ["SHA-1", "SHA-256"])
def test_scram_without_tls_when_not_required(hash_name: str) -> None:
    d = Driver(require_encryption=False)
    features = d.open()
    assert children(features) == ["starttls", "mechanisms"]
    assert features.find("starttls", ns.TLS).find("required", ns.TLS) is None  # type: ignore[union-attr]
    mechs = [m.text for m in features.find("mechanisms", ns.SASL).findall("mechanism")]  # type: ignore[union-attr]
    assert "PLAIN" in mechs  # allowed in clear only because require_encryption is false
    assert d.scram(hash_name=hash_name).name == "success"


def test_plain_without_tls_when_not_required() -> None:
    d = Driver(require_encryption=False)
    d.open()
    assert d.plain().name == "success"
    assert d.neg.user == JID.parse(f"alice@{DOMAIN}")


def test_plain_refused_without_tls_when_required() -> None:
    d = Driver()
    d.open()
    effects = d.send(auth("PLAIN", plain_client("alice", "secret")))
    failure = d.last()
    assert failure.name == "failure" and children(failure) == ["encryption-required"]
    assert not any(isinstance(e, (n.AuthSucceeded, n.NeedCredentials)) for e in effects)
    assert d.neg.state is State.TLS_REQUIRED and not d.neg.authenticated
    # the client can still do the right thing
    d.send(to_bytes(Element("starttls", ns.TLS)))
    assert d.neg.state is State.TLS_RESTART


def test_direct_tls_offers_plain_at_once() -> None:
    d = Driver(encrypted=True)
    features = d.open()
    assert children(features) == ["mechanisms"]
    assert d.plain().name == "success"


def test_tls_required_but_unavailable_is_a_policy_violation() -> None:
    d = Driver(tls_available=False)
    effects = d.send(header())
    assert close_condition(effects) == "policy-violation"


def test_no_tls_available_and_not_required_offers_sasl_without_plain() -> None:
    d = Driver(tls_available=False, require_encryption=False)
    features = d.open()
    assert children(features) == ["mechanisms"]


def test_empty_auth_gets_an_empty_challenge() -> None:
    d = Driver(require_encryption=False)
    d.open()
    client = ScramClient("SHA-256", "alice", "secret", b"nonce-123")
    d.received.clear()
    d.send(to_bytes(Element("auth", ns.SASL, {"mechanism": "SCRAM-SHA-256"})))
    challenge = d.last()
    assert challenge.name == "challenge" and challenge.text == ""
    d.send(response(client.first()))
    server_first = base64.b64decode(d.last().text)
    d.send(response(client.final(server_first)))
    assert d.last().name == "success"


# ----------------------------------------------------------------------------------- SASL errors


def test_bad_base64_is_incorrect_encoding_and_retry_works() -> None:
    d = Driver(require_encryption=False)
    d.open()
    d.received.clear()
    effects = d.send(to_bytes(Element("auth", ns.SASL, {"mechanism": "PLAIN"}, ["not base64!!"])))
    assert children(d.last()) == ["incorrect-encoding"]
    assert [e.condition for e in effects if isinstance(e, n.AuthFailed)] == ["incorrect-encoding"]
    assert d.neg.state is State.AUTH
    assert d.plain().name == "success"


def test_bad_base64_in_response() -> None:
    d = Driver(require_encryption=False)
    d.open()
    client = ScramClient("SHA-256", "alice", "secret", b"nonce-123")
    d.send(auth("SCRAM-SHA-256", client.first()))
    d.send(to_bytes(Element("response", ns.SASL, children=["@@@"])))
    assert children(d.last()) == ["incorrect-encoding"]
    assert d.neg.state is State.AUTH


def test_abort() -> None:
    d = Driver(require_encryption=False)
    d.open()
    client = ScramClient("SHA-256", "alice", "secret", b"nonce-123")
    d.send(auth("SCRAM-SHA-256", client.first()))
    assert d.neg.state is State.SASL_CHALLENGED
    d.send(to_bytes(Element("abort", ns.SASL)))
    assert d.last().name == "failure" and children(d.last()) == ["aborted"]
    assert d.neg.state is State.AUTH
    assert d.scram().name == "success"


@pytest.mark.parametrize("mechanism", ["DIGEST-MD5", "SCRAM-SHA-512", "EXTERNAL", None])
def test_unknown_mechanism(mechanism: str | None) -> None:
    d = Driver(require_encryption=False)
    d.open()
    el = Element("auth", ns.SASL, {"mechanism": mechanism} if mechanism else {}, ["="])
    d.send(to_bytes(el))
    assert children(d.last()) == ["invalid-mechanism"]
    assert d.neg.state is State.AUTH


@pytest.mark.parametrize("who", ["wrong-password", "unknown-user"])
def test_wrong_password_and_unknown_user_look_alike(who: str) -> None:
    d = Driver(require_encryption=False)
    d.open()
    outcome = d.scram("alice", "wrong") if who == "wrong-password" else d.scram("mallory", "secret")
    assert outcome.name == "failure" and children(outcome) == ["not-authorized"]
    failed = [e for e in d.effects if isinstance(e, n.AuthFailed)]
    assert [(f.condition, f.attempts) for f in failed] == [("not-authorized", 1)]
    assert d.neg.state is State.AUTH


def test_unknown_user_gets_a_stable_salt() -> None:
    def salt_for(user: str) -> bytes:
        d = Driver(require_encryption=False, rng=random.Random())
        d.open()
        client = ScramClient("SHA-256", user, "x", b"nonce-123")
        d.send(auth("SCRAM-SHA-256", client.first()))
        return base64.b64decode(d.last().text).split(b",")[1]

    assert salt_for("mallory") == salt_for("mallory")
    assert salt_for("mallory") != salt_for("trudy")


def test_too_many_failures_close_the_stream() -> None:
    d = Driver(require_encryption=False, max_auth_attempts=3)
    d.open()
    assert d.plain("alice", "x").name == "failure"
    assert d.plain("alice", "y").name == "failure"
    effects = d.send(auth("PLAIN", plain_client("alice", "z")))
    # the third failure is still answered, then the stream ends (RFC 6120 6.4.5)
    assert [type(e) for e in effects] == [n.NeedCredentials, n.AuthFailed, n.Send, n.Close]
    assert close_condition(effects) == "policy-violation"
    assert d.neg.state is State.CLOSED


def test_auth_after_success_is_refused() -> None:
    d = Driver()
    d.login()
    effects = d.send(auth("PLAIN", plain_client("alice", "secret")))
    assert close_condition(effects) == "policy-violation"


# ------------------------------------------------------------------------------- stream headers


def test_missing_to_is_our_domain() -> None:
    d = Driver()
    d.send(raw_header(version="1.0"))
    assert d.neg.state is State.TLS_REQUIRED
    assert d.headers()[0].attrs["from"] == DOMAIN


@pytest.mark.parametrize("to", ["other.org", "alice@example.org", "example.org/r", "EXAMPLE.org."])
def test_wrong_host(to: str) -> None:
    d = Driver()
    effects = d.send(raw_header(to=to, version="1.0"))
    if to == "EXAMPLE.org.":  # the same domain, normalised (RFC 7622 3.2)
        assert d.neg.state is State.TLS_REQUIRED
        return
    assert close_condition(effects) == "host-unknown"
    # RFC 6120 4.9.1.1: our header goes out before the error
    assert d.raw.startswith(b"<?xml version='1.0'?><stream:stream")
    assert d.neg.state is State.CLOSED


@pytest.mark.parametrize(
    ("version", "ok"),
    [(None, False), ("0.9", False), ("1.0", True), ("1.1", True), ("2.0", True), ("x", False)],
)
def test_version(version: str | None, ok: bool) -> None:
    d = Driver()
    effects = d.send(raw_header(to=DOMAIN, **({"version": version} if version else {})))
    if ok:
        assert d.neg.state is State.TLS_REQUIRED
        assert d.headers()[0].attrs["version"] == "1.0"
    else:
        assert close_condition(effects) == "unsupported-version"


def test_wrong_default_namespace() -> None:
    d = Driver()
    effects = d.event(StreamOpened({"to": DOMAIN, "version": "1.0"}, "jabber:server"))
    assert close_condition(effects) == "invalid-namespace"


def test_xml_lang_is_echoed() -> None:
    d = Driver()
    d.send(raw_header(to=DOMAIN, version="1.0", xml_lang="de-CH"))
    assert d.headers()[0].attrs.get("xml:lang") == "de-CH"
    d = Driver()
    d.send(raw_header(to=DOMAIN, version="1.0", xml_lang="&lt;bad&gt;"))
    assert d.headers()[0].attrs.get("xml:lang") == "en"


def test_from_is_echoed_as_to() -> None:
    d = Driver()
    d.send(raw_header(to=DOMAIN, version="1.0", **{"from": "alice@example.org"}))
    assert d.headers()[0].attrs.get("to") == "alice@example.org"


def test_glue_errors_open_the_stream_first_when_needed() -> None:
    d = Driver()
    # before any header: ours goes out first (RFC 6120 4.9.1.1)
    effects = d.neg.fail("connection-timeout")
    assert [type(e) for e in effects] == [n.Send, n.Close]
    assert effects[0].data.startswith(b"<?xml")  # type: ignore[union-attr]
    # after our header: the error follows it directly
    d = Driver()
    d.open()
    assert d.neg.fail("connection-timeout") == [n.Close("connection-timeout", None)]
    # after <proceed/> the stream restarts, so a new header precedes the error again
    d = Driver()
    d.open()
    d.neg.receive(_ELEMENTS[Input.STARTTLS])
    assert [type(e) for e in d.neg.fail("connection-timeout")] == [n.Send, n.Close]


def test_starttls_twice_is_refused() -> None:
    d = Driver()
    d.starttls()
    assert close_condition(d.send(to_bytes(Element("starttls", ns.TLS)))) == "policy-violation"


# ---------------------------------------------------------------------------------- before auth


@pytest.mark.parametrize(
    "payload",
    [
        to_bytes(Element("message", ns.CLIENT, {"to": "bob@example.org"})),
        to_bytes(Element("presence", ns.CLIENT)),
        to_bytes(Element("iq", ns.CLIENT, {"type": "get", "id": "1"}, [Element("ping", ns.PING)])),
        bind_iq("r"),
        session_iq(),
    ],
)
def test_stanzas_before_auth_are_not_authorized(payload: bytes) -> None:
    d = Driver(require_encryption=False)
    d.open()
    assert close_condition(d.send(payload)) == "not-authorized"


def test_stanza_after_auth_before_bind_is_not_authorized() -> None:
    d = Driver()
    d.starttls()
    d.scram()
    d.open()
    assert close_condition(d.send(to_bytes(Element("presence", ns.CLIENT)))) == "not-authorized"


def test_unknown_element_is_unsupported_stanza_type() -> None:
    d = Driver()
    d.open()
    assert close_condition(d.send(b"<foo xmlns='urn:example'/>")) == "unsupported-stanza-type"


def test_peer_stream_error_closes() -> None:
    d = Driver()
    d.open()
    effects = d.send(b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
    assert effects == [n.Close(None, None)]


# ------------------------------------------------------------------------------------- binding


def test_server_generated_resource() -> None:
    d = Driver()
    result = d.login(resource=None)
    jid = JID.parse(result.find("bind", ns.BIND).findtext("jid", ns.BIND))  # type: ignore[arg-type,union-attr]
    assert jid.bare == JID.parse(f"alice@{DOMAIN}") and jid.resource
    bind = [e for e in d.effects if isinstance(e, n.Bind)]
    assert bind == [n.Bind(jid, None)]


def test_server_generated_resources_differ() -> None:
    rng = random.Random(1)
    a, b = Driver(rng=rng), Driver(rng=rng)
    ja = a.login(resource=None).find("bind", ns.BIND).findtext("jid", ns.BIND)  # type: ignore[union-attr]
    jb = b.login(resource=None).find("bind", ns.BIND).findtext("jid", ns.BIND)  # type: ignore[union-attr]
    assert ja != jb


def test_invalid_resource_is_bad_request_and_binding_can_be_retried() -> None:
    d = Driver()
    d.starttls()
    d.scram()
    d.open()
    d.received.clear()
    effects = d.send(bind_iq("x" * 2000, iq_id="bad"))
    error = d.last()
    assert error.attrs["type"] == "error" and error.attrs["id"] == "bad"
    assert error.find("error").find("bad-request", ns.STANZA_ERRORS) is not None  # type: ignore[union-attr]
    assert not any(isinstance(e, n.Bind) for e in effects)
    assert d.neg.state is State.BIND
    d.send(bind_iq("ok"))
    assert d.neg.state is State.BOUND


def test_second_bind_is_refused() -> None:
    d = Driver()
    d.login()
    assert close_condition(d.send(bind_iq("again"))) == "policy-violation"


def test_restart_bytes_byte_by_byte() -> None:
    """Feeding the whole conversation one byte at a time gives the same result."""
    d = Driver(require_encryption=False)
    for b in header():
        d.send(bytes([b]))
    for b in auth("PLAIN", plain_client("alice", "secret")):
        d.send(bytes([b]))
    assert d.neg.state is State.AUTH_RESTART
    for b in header() + bind_iq("r"):
        d.send(bytes([b]))
    assert d.neg.state is State.BOUND


# ------------------------------------------------------------------------ the table, every pair

_ELEMENTS: dict[Input, XmlEvent] = {
    Input.HEADER: StreamOpened({"to": DOMAIN, "version": "1.0"}, ns.CLIENT),
    Input.CLOSE: StreamClosed(),
    Input.STREAM_ERROR: StanzaReceived(
        Element("error", ns.STREAMS, children=[Element("conflict", ns.STREAM_ERRORS)])
    ),
    Input.STARTTLS: StanzaReceived(Element("starttls", ns.TLS)),
    Input.AUTH: StanzaReceived(
        Element("auth", ns.SASL, {"mechanism": "PLAIN"}, [base64.b64encode(b"\0alice\0secret").decode()])
    ),
    Input.RESPONSE: StanzaReceived(Element("response", ns.SASL, children=["="])),
    Input.ABORT: StanzaReceived(Element("abort", ns.SASL)),
    Input.BIND: StanzaReceived(
        Element("iq", ns.CLIENT, {"type": "set", "id": "1"}, [Element("bind", ns.BIND)])
    ),
    Input.SESSION: StanzaReceived(
        Element("iq", ns.CLIENT, {"type": "set", "id": "2"}, [Element("session", ns.SESSION)])
    ),
    Input.STANZA: StanzaReceived(Element("message", ns.CLIENT, {"to": "bob@example.org"})),
    Input.UNKNOWN: StanzaReceived(Element("foo", "urn:example")),
}
PEER_INPUTS = list(_ELEMENTS)
assert set(PEER_INPUTS) == set(n.PEER_INPUTS)


def _driver_in(state: State) -> Driver:
    """A negotiation brought to ``state`` by a real conversation (or, for the transient and the
    glue-waiting states, which no peer input may touch, by assignment)."""
    if state is State.TLS_OR_AUTH:
        d = Driver(require_encryption=False)
        d.open()
    elif state is State.AUTH:
        d = Driver(encrypted=True)
        d.open()
    else:
        d = Driver()
        if state is State.TLS_REQUIRED:
            d.open()
        elif state is State.TLS_HANDSHAKE:
            d.open()
            d.neg.receive(_ELEMENTS[Input.STARTTLS])
        elif state is State.TLS_RESTART:
            d.open()
            d.send(to_bytes(Element("starttls", ns.TLS)))
        elif state is State.SASL_CHALLENGED:
            d.starttls()
            d.send(to_bytes(Element("auth", ns.SASL, {"mechanism": "SCRAM-SHA-256"})))
        elif state is State.SASL_CREDENTIALS:
            d.starttls()
            client = ScramClient("SHA-256", "alice", "secret", b"nonce")
            d.neg.receive(
                StanzaReceived(
                    Element(
                        "auth",
                        ns.SASL,
                        {"mechanism": "SCRAM-SHA-256"},
                        [base64.b64encode(client.first()).decode()],
                    )
                )
            )
        elif state is State.AUTH_RESTART:
            d.starttls()
            d.scram()
        elif state is State.BIND:
            d.starttls()
            d.scram()
            d.open()
        elif state is State.BOUND:
            d.login()
        elif state is State.CLOSED:
            d.open()
            d.send(STREAM_FOOTER)
        elif state is not State.STREAM_START:
            d.neg.state = state  # OPENED, SASL, BINDING: transient, never wait for input
    assert d.neg.state is state, (state, d.neg.state)
    return d


def _check_pair(state: State, inp: Input) -> None:
    d = _driver_in(state)
    effects = d.neg.receive(_ELEMENTS[inp])
    assert all(isinstance(e, n.Effect.__args__) for e in effects)  # type: ignore[attr-defined]
    if (state, inp) not in TRANSITIONS:
        assert d.neg.state is State.CLOSED
        assert isinstance(effects[-1], n.Close) and effects[-1].condition is not None
    else:
        # a listed pair never ends in a *different* error than its handler's own checks allow
        assert d.neg.state in set(TRANSITIONS.values()) | {State.CLOSED}
        if d.neg.state is State.CLOSED and inp not in (Input.CLOSE, Input.STREAM_ERROR):
            assert isinstance(effects[-1], n.Close)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("inp", PEER_INPUTS)
def test_every_state_and_peer_input(state: State, inp: Input) -> None:
    _check_pair(state, inp)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(State)), st.sampled_from(list(Input)))
def test_table_semantics_every_state_and_input(state: State, inp: Input) -> None:
    """h2-style: any (state, input), peer or internal, either follows the table or raises a
    StreamError and lands in CLOSED."""
    neg = n.Negotiation(domain=DOMAIN, rng=random.Random(0))
    neg.state = state
    expected = TRANSITIONS.get((state, inp))
    if expected is None:
        with pytest.raises(n.StreamError):
            neg._advance(inp)
        assert neg.state is State.CLOSED
    else:
        neg._advance(inp)
        assert neg.state is expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PEER_INPUTS), max_size=12), st.sampled_from(list(State)))
def test_random_input_sequences_never_raise(inputs: list[Input], start: State) -> None:
    d = _driver_in(start)
    for inp in inputs:
        effects = d.neg.receive(_ELEMENTS[inp])
        if d.neg.state is State.CLOSED:
            assert any(isinstance(e, n.Close) for e in effects) or start is State.CLOSED
            break


def test_every_state_is_reachable_in_the_table() -> None:
    targets = {State.STREAM_START} | set(TRANSITIONS.values())
    assert targets == set(State)


def test_mermaid_diagram_lists_every_transition() -> None:
    diagram = n.mermaid()
    assert diagram.count("-->") == len(TRANSITIONS)
