"""The sans-IO XEP-0114 stream: every input whole, byte by byte, and with trailing bytes."""

from __future__ import annotations

import ast
import hashlib
import itertools
import random
import re
from pathlib import Path

import pytest

from meshxmpp.component import handshake as hs
from meshxmpp.component.handshake import (
    TRANSITIONS,
    Close,
    ComponentStream,
    Established,
    Input,
    Send,
    Stanza,
    State,
    handshake_digest,
)
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.events import StanzaReceived, StreamClosed, StreamOpened

DOMAIN = "servicex.example.org"
SECRET = "s3cret"
HEADER = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
          b"xmlns:stream='http://etherx.jabber.org/streams' to='servicex.example.org'>")


def new() -> ComponentStream:
    return ComponentStream({DOMAIN: SECRET, "other.example.org": "x"}, rng=random.Random(1))


def feed(cs: ComponentStream, data: bytes, how: str) -> list[object]:
    """Feed ``data`` whole or byte by byte; the effects must not depend on the chunking."""
    if how == "whole":
        return list(cs.feed(data))
    out: list[object] = []
    for i in range(len(data)):
        out += cs.feed(data[i:i + 1])
        if cs.state is State.CLOSED:
            break
    return out


def sent(effects: list[object]) -> bytes:
    return b"".join(e.data for e in effects if isinstance(e, Send))


def handshake_for(cs: ComponentStream, secret: str = SECRET) -> bytes:
    return f"<handshake>{handshake_digest(cs.stream_id, secret)}</handshake>".encode()


HOW = ["whole", "bytewise"]


def test_digest_is_xep_0114() -> None:
    # XEP-0114 example 3: stream id 3BF96D32, secret "secret".
    assert handshake_digest("3BF96D32", "secret") == hashlib.sha1(b"3BF96D32secret").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{40}", handshake_digest("id", "é"))


@pytest.mark.parametrize("how", HOW)
def test_good_handshake(how: str) -> None:
    cs = new()
    effects = feed(cs, HEADER, how)
    header = sent(effects)
    assert header.startswith(b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept'")
    assert f"from='{DOMAIN}'".encode() in header and f"id='{cs.stream_id}'".encode() in header
    assert b" version=" not in header.split(b"?>", 1)[1]  # XEP-0114 streams have no version
    assert cs.state is State.HANDSHAKE
    effects = feed(cs, handshake_for(cs), how)
    assert effects == [Send(b"<handshake/>"), Established(DOMAIN)]
    assert cs.established


@pytest.mark.parametrize("how", HOW)
def test_header_handshake_and_stanza_in_one_chunk_keep_their_order(how: str) -> None:
    cs = new()
    first = cs.feed(HEADER)
    assert cs.state is State.HANDSHAKE and first
    msg = b"<message from='bot@servicex.example.org/x' to='alice@example.org'><body>hi</body></message>"
    effects = feed(cs, handshake_for(cs) + msg + b" ", how)
    assert [type(e) for e in effects] == [Send, Established, Stanza]
    el = effects[2].element  # type: ignore[attr-defined]
    # moved to jabber:client, children too: clients and the router see a client stanza
    assert el.ns == ns.CLIENT and el.find("body", ns.CLIENT) is not None
    assert el.get("from") == "bot@servicex.example.org/x"


@pytest.mark.parametrize("how", HOW)
def test_wrong_secret_is_not_authorized(how: str) -> None:
    cs = new()
    cs.feed(HEADER)
    effects = feed(cs, handshake_for(cs, "wrong") + b"<message/>", how)
    assert effects == [Close("not-authorized", None)]
    assert cs.state is State.CLOSED
    assert cs.feed(b"<handshake/>") == []  # nothing more after the end


def test_handshake_is_case_and_space_tolerant_but_exact() -> None:
    cs = new()
    cs.feed(HEADER)
    digest = handshake_digest(cs.stream_id, SECRET).upper()
    assert Established(DOMAIN) in cs.feed(f"<handshake>\n {digest} </handshake>".encode())
    cs = new()
    cs.feed(HEADER)
    assert cs.feed(f"<handshake>{digest[:-1]}</handshake>".encode()) == [Close("not-authorized", None)]


def test_another_domains_secret_is_refused() -> None:
    cs = new()
    cs.feed(HEADER)
    assert cs.feed(handshake_for(cs, "x")) == [Close("not-authorized", None)]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("to", ["unknown.example.org", "bot@servicex.example.org", "servicex.example.org/r",
                                "", None, "example..org"])
def test_unknown_domain_is_host_unknown(how: str, to: str | None) -> None:
    cs = new()
    attr = "" if to is None else f" to='{to}'"
    data = (f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='{ns.STREAMS}'{attr}>").encode()
    effects = feed(cs, data, how)
    assert isinstance(effects[0], Send) and effects[0].data.startswith(b"<?xml")
    assert f"id='{cs.stream_id}'".encode() in effects[0].data
    assert effects[1:] == [Close("host-unknown", None)]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize(("data", "condition"), [
    (b"GET / HTTP/1.1\r\n\r\n", "not-well-formed"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not-well-formed"),
    (b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
     b"to='servicex.example.org'>", "invalid-namespace"),
    (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>", "restricted-xml"),
])
def test_garbage_gets_a_header_then_a_stream_error(how: str, data: bytes, condition: str) -> None:
    cs = new()
    effects = feed(cs, data, how)
    assert isinstance(effects[0], Send) and effects[0].data.startswith(b"<?xml")
    assert isinstance(effects[-1], Close) and effects[-1].condition == condition, effects
    assert cs.state is State.CLOSED


@pytest.mark.parametrize("how", HOW)
def test_stanza_before_handshake_is_not_authorized(how: str) -> None:
    cs = new()
    cs.feed(HEADER)
    effects = feed(cs, b"<message from='servicex.example.org' to='a@example.org'/>", how)
    assert effects == [Close("not-authorized", "unexpected stanza in state handshake")]


def established() -> ComponentStream:
    cs = new()
    cs.feed(HEADER)
    assert Established(DOMAIN) in cs.feed(handshake_for(cs))
    return cs


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("sender", ["servicex.example.org", "bot@servicex.example.org",
                                    "bot@servicex.example.org/x", "SERVICEX.example.org"])
def test_from_in_the_components_domain_is_accepted(how: str, sender: str) -> None:
    cs = established()
    effects = feed(cs, f"<iq type='get' id='1' from='{sender}' to='example.org'><ping xmlns='urn:xmpp:ping'/></iq>"
                   .encode(), how)
    assert [type(e) for e in effects] == [Stanza]
    ping = effects[0].element.find("ping", ns.PING)  # type: ignore[attr-defined]
    assert ping is not None  # other namespaces are left alone


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("sender", ["alice@example.org", "example.org", "other.example.org",
                                    "evil.servicex.example.org", "servicex.example.org.evil", "", None,
                                    "@@@"])
def test_spoofed_from_is_invalid_from(how: str, sender: str | None) -> None:
    cs = established()
    attr = "" if sender is None else f" from='{sender}'"
    effects = feed(cs, f"<message{attr} to='alice@example.org'><body>x</body></message>".encode(), how)
    assert len(effects) == 1 and isinstance(effects[0], Close) and effects[0].condition == "invalid-from"
    assert cs.state is State.CLOSED


def test_missing_to_is_improper_addressing() -> None:
    cs = established()
    effects = cs.feed(b"<presence from='servicex.example.org'/>")
    assert len(effects) == 1 and isinstance(effects[0], Close)
    assert effects[0].condition == "improper-addressing"


def test_unknown_element_after_handshake() -> None:
    cs = established()
    effects = cs.feed(b"<handshake>again</handshake>")
    assert effects == [Close("policy-violation", "unexpected handshake in state established")]
    cs = established()
    assert cs.feed(b"<foo/>")[0] == Close("unsupported-stanza-type", "unexpected unknown in state established")


def test_stanza_size_limit_rises_after_the_handshake() -> None:
    cs = ComponentStream({DOMAIN: SECRET}, rng=random.Random(2), max_stanza_size=200,
                         max_stanza_size_after=2000)
    cs.feed(HEADER)
    effects = cs.feed(b"<handshake>" + b"a" * 300 + b"</handshake>")
    assert isinstance(effects[-1], Close) and effects[-1].condition == "policy-violation"
    cs = ComponentStream({DOMAIN: SECRET}, rng=random.Random(2), max_stanza_size=200,
                         max_stanza_size_after=2000)
    cs.feed(HEADER)
    cs.feed(handshake_for(cs))
    body = b"b" * 1000
    effects = cs.feed(b"<message from='servicex.example.org' to='a@example.org'><body>" + body + b"</body></message>")
    assert [type(e) for e in effects] == [Stanza]


def test_depth_limit() -> None:
    cs = ComponentStream({DOMAIN: SECRET}, rng=random.Random(2), max_depth=4)
    cs.feed(HEADER)
    cs.feed(handshake_for(cs))
    effects = cs.feed(b"<message from='servicex.example.org' to='a@example.org'><a><b><c><d/></c></b></a></message>")
    assert isinstance(effects[-1], Close) and effects[-1].condition == "policy-violation"


@pytest.mark.parametrize("state", [State.HANDSHAKE, State.ESTABLISHED])
def test_closing_tag_and_stream_error_close_cleanly(state: State) -> None:
    for tail in (b"</stream:stream>", b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                 b"</stream:error>"):
        cs = established() if state is State.ESTABLISHED else new()
        if state is State.HANDSHAKE:
            cs.feed(HEADER)
        assert cs.feed(tail) == [Close()]
        assert cs.state is State.CLOSED


def test_glue_failure_before_header_opens_the_stream_first() -> None:
    cs = new()
    effects = cs.fail("connection-timeout")
    assert isinstance(effects[0], Send) and effects[1] == Close("connection-timeout", None)
    assert cs.fail("connection-timeout") == []


def events() -> dict[Input, object]:
    return {
        Input.HEADER: StreamOpened({"to": DOMAIN}, ns.COMPONENT),
        Input.HANDSHAKE: StanzaReceived(Element("handshake", ns.COMPONENT, {}, ["00"])),
        Input.STANZA: StanzaReceived(Element("message", ns.COMPONENT, {"from": DOMAIN, "to": "a@example.org"})),
        Input.CLOSE: StreamClosed(),
        Input.STREAM_ERROR: StanzaReceived(Element("error", ns.STREAMS)),
        Input.UNKNOWN: StanzaReceived(Element("foo", ns.COMPONENT)),
    }


def _in_state(state: State) -> ComponentStream:
    cs = new()
    if state is State.STREAM_START:
        return cs
    cs.feed(HEADER)
    if state is State.HANDSHAKE:
        return cs
    if state is State.ESTABLISHED:
        cs.feed(handshake_for(cs))
        return cs
    cs.feed(b"</stream:stream>")
    return cs


@pytest.mark.parametrize(("state", "inp"), list(itertools.product(State, Input)))
def test_every_state_and_input(state: State, inp: Input) -> None:
    """Pairs in TRANSITIONS move where the table says (or close with an error the handler raised);
    every other pair closes the stream with a stream error; CLOSED swallows everything."""
    cs = _in_state(state)
    assert cs.state is state
    event = events()[inp]
    assert hs.classify(event) is inp  # type: ignore[arg-type]
    effects = cs.receive(event)  # type: ignore[arg-type]
    if state is State.CLOSED:
        assert effects == []
        return
    nxt = TRANSITIONS.get((state, inp))
    if nxt is None:
        assert cs.state is State.CLOSED
        assert isinstance(effects[-1], Close) and effects[-1].condition is not None
    elif inp is Input.HANDSHAKE:  # "00" is the wrong digest
        assert effects == [Close("not-authorized", None)]
    else:
        assert cs.state is nxt


def test_mermaid_lists_every_transition() -> None:
    assert hs.mermaid().count("-->") == len(TRANSITIONS)


def test_module_is_sans_io() -> None:
    tree = ast.parse(Path(hs.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert not imported & {"trio", "socket", "sqlite3", "asyncio", "os", "time"}
    assert not any(isinstance(n, (ast.Await, ast.AsyncFunctionDef)) for n in ast.walk(tree))


def test_docs_diagram_is_the_table() -> None:
    doc = (Path(__file__).resolve().parent.parent.parent / "docs" / "components.md").read_text(encoding="utf-8")
    assert hs.mermaid() in doc
