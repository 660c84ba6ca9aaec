"""Element, errors and serialisation."""

from __future__ import annotations

import pytest

from meshxmpp.xml import (
    STANZA_CONDITIONS,
    STREAM_CONDITIONS,
    STREAM_FOOTER,
    Element,
    StanzaError,
    StreamError,
    ns,
    parse_element,
    stream_error,
    stream_header,
    to_bytes,
    to_str,
)


def make_iq() -> Element:
    iq = Element("iq", ns.CLIENT, {"from": "a@x/r", "to": "x", "id": "1", "type": "get"})
    iq.add("query", ns.ROSTER, {"ver": "3"})
    return iq


def test_construction_defaults() -> None:
    el = Element("message")
    assert (el.name, el.ns, el.attrs, el.children, el._bytes) == ("message", None, {}, [], None)
    assert not hasattr(el, "__dict__")


def test_get_set_delete() -> None:
    el = Element("message", ns.CLIENT, {"to": "a"})
    assert el.get("to") == "a"
    assert el.get("from") is None
    assert el.get("from", "d") == "d"
    to_bytes(el)
    assert el._bytes is not None
    el.set("from", "b")
    assert el._bytes is None
    assert to_bytes(el) == b"<message to='a' from='b'/>"
    el.set("to", None)
    el.set("missing", None)
    assert to_bytes(el) == b"<message from='b'/>"


def test_find_findall_findtext_and_text() -> None:
    el = parse_element(
        b"<message><body>one</body><body xml:lang='de'>eins</body><x xmlns='urn:x'>"
        b"<body/></x>tail &amp; more</message>"
    )
    body = el.find("body")
    assert body is not None and body.text == "one"
    assert el.find("body", ns.CLIENT) is body
    assert el.find("body", "urn:x") is None
    assert el.find("x", "urn:x") is not None
    assert el.find("nothing") is None
    assert [b.text for b in el.findall("body")] == ["one", "eins"]
    assert len(el.findall()) == 3
    assert len(el.findall(ns="urn:x")) == 1
    assert el.findtext("body") == "one"
    assert el.findtext("nothing") is None
    assert el.text == "tail & more"
    assert Element("a").text == ""


def test_find_resolves_inherited_namespace() -> None:
    el = Element("query", ns.ROSTER, {}, [Element("item")])
    assert el.find("item", ns.ROSTER) is el.children[0]
    assert el.findall("item", ns.ROSTER) == [el.children[0]]


def test_append_add_remove_clear_cache() -> None:
    el = Element("message", ns.CLIENT)
    to_bytes(el)
    body = el.add("body", text="hi")
    assert body.ns == ns.CLIENT  # inherited
    assert el._bytes is None
    to_bytes(el)
    assert el.append("tail") == "tail"
    assert el._bytes is None
    x = el.add("x", "urn:x", {"a": "1"})
    assert x.ns == "urn:x"
    assert to_bytes(el) == b"<message><body>hi</body>tail<x xmlns='urn:x' a='1'/></message>"
    el.remove(x)
    assert el._bytes is None
    assert to_bytes(el) == b"<message><body>hi</body>tail</message>"
    with pytest.raises(ValueError):
        el.remove(x)


def test_copy_is_deep_and_uncached() -> None:
    iq = make_iq()
    to_bytes(iq)
    c = iq.copy()
    assert c == iq and c is not iq
    assert c._bytes is None
    assert c.attrs is not iq.attrs
    c.children[0].set("ver", "4")  # type: ignore[union-attr]
    assert iq.children[0].get("ver") == "3"  # type: ignore[union-attr]


def test_equality_is_structural() -> None:
    assert make_iq() == make_iq()
    other = make_iq()
    other.set("id", "2")
    assert other != make_iq()
    assert Element("a", "x") != Element("a", "y")
    assert Element("a") != "a"
    with pytest.raises(TypeError):
        hash(Element("a"))


def test_repr_is_xml_and_does_not_cache() -> None:
    iq = make_iq()
    assert (
        repr(iq) == "<iq from='a@x/r' to='x' id='1' type='get'><query xmlns='jabber:iq:roster' ver='3'/></iq>"
    )
    assert iq._bytes is None


def test_reply() -> None:
    r = make_iq().reply()
    assert r == Element("iq", ns.CLIENT, {"to": "a@x/r", "from": "x", "id": "1", "type": "result"})
    m = Element("message", ns.CLIENT, {"from": "a@x/r", "type": "chat"}, ["x"]).reply()
    assert m == Element("message", ns.CLIENT, {"to": "a@x/r", "type": "chat"})
    assert Element("presence", ns.CLIENT).reply() == Element("presence", ns.CLIENT)


def test_error_reply_rfc6120_8_3() -> None:
    err = make_iq().error_reply("cancel", "service-unavailable")
    assert to_bytes(err) == (
        b"<iq to='a@x/r' from='x' id='1' type='error'><error type='cancel'>"
        b"<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    )
    err = Element("message", ns.CLIENT, {"to": "b@x", "from": "a@x/r", "type": "chat"}, ["x"]).error_reply(
        "wait", "recipient-unavailable", "try <later>"
    )
    assert to_bytes(err) == (
        b"<message to='a@x/r' from='b@x' type='error'><error type='wait'>"
        b"<recipient-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>try &lt;later&gt;</text></error></message>"
    )
    e = err.find("error", ns.CLIENT)
    assert e is not None and e.find("recipient-unavailable", ns.STANZA_ERRORS) is not None


def test_serialise_escaping() -> None:
    el = Element("message", ns.CLIENT, {"a": "<&>\"'\t\n\r"}, ["<&>\"'\r\n]]>"])
    assert to_bytes(el) == (
        b"<message a='&lt;&amp;&gt;&quot;&apos;&#9;&#10;&#13;'>&lt;&amp;&gt;\"'&#13;\n]]&gt;</message>"
    )
    assert parse_element(to_bytes(el)) == el


def test_serialise_replaces_characters_xml_cannot_carry() -> None:
    el = Element("message", ns.CLIENT, {"a": "x\x00y"}, ["\x01\ud800\ufffe ok \U0001f600"])
    assert to_str(el) == "<message a='x\ufffdy'>\ufffd\ufffd\ufffd ok \U0001f600</message>"
    parse_element(to_bytes(el))


def test_serialise_namespaces() -> None:
    el = Element(
        "message",
        ns.CLIENT,
        {},
        [
            Element("body", ns.CLIENT, {}, ["x"]),
            Element(
                "received",
                ns.CARBONS,
                {},
                [
                    Element(
                        "forwarded",
                        ns.FORWARD,
                        {},
                        [
                            Element("message", ns.CLIENT, {"to": "a"}, [Element("body", None, {}, ["y"])]),
                        ],
                    ),
                ],
            ),
            Element("nons", "", {}, [Element("child", "")]),
            Element("inherits"),
        ],
    )
    assert to_str(el) == (
        "<message><body>x</body><received xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        "<message xmlns='jabber:client' to='a'><body>y</body></message></forwarded></received>"
        "<nons xmlns=''><child/></nons><inherits/></message>"
    )
    assert to_str(el, ns.SERVER).startswith("<message xmlns='jabber:client'>")
    assert to_bytes(Element("handshake", ns.COMPONENT), ns.COMPONENT) == b"<handshake/>"


def test_serialise_stream_namespace_uses_prefix() -> None:
    features = Element(
        "features",
        ns.STREAMS,
        {},
        [
            Element("starttls", ns.TLS, {}, [Element("required", ns.TLS)]),
            Element("mechanisms", ns.SASL, {}, [Element("mechanism", ns.SASL, {}, ["PLAIN"])]),
            Element("c", ns.CLIENT),
        ],
    )
    assert to_bytes(features) == (
        b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
        b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms>"
        b"<c/></stream:features>"
    )


def test_serialise_namespaced_attributes() -> None:
    el = Element(
        "x",
        ns.CLIENT,
        {
            "xml:lang": "en",
            "{urn:a}k": "1",
            "{urn:a}j": "2",
            "{urn:b}k": "3",
            "{http://www.w3.org/XML/1998/namespace}space": "preserve",
        },
    )
    out = to_str(el)
    assert out == (
        "<x xml:lang='en' xmlns:ns0='urn:a' ns0:k='1' ns0:j='2' xmlns:ns1='urn:b' ns1:k='3'"
        " xml:space='preserve'/>"
    )
    back = parse_element(out)
    assert back.attrs == {
        "xml:lang": "en",
        "{urn:a}k": "1",
        "{urn:a}j": "2",
        "{urn:b}k": "3",
        "xml:space": "preserve",
    }


def test_to_bytes_cache_only_for_default_namespace() -> None:
    el = Element("message", ns.CLIENT)
    first = to_bytes(el)
    assert el._bytes is first and to_bytes(el) is first
    other = Element("message", ns.CLIENT)
    to_bytes(other, ns.SERVER)
    assert other._bytes is None


def test_stream_header_footer_error() -> None:
    assert stream_header(from_="example.org", to="a@example.org", id="abc") == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" from='example.org' to='a@example.org' id='abc' version='1.0' xml:lang='en'>"
    )
    assert stream_header(from_=None, to=None, id=None, default_ns=ns.COMPONENT, lang=None) == (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept'"
        b" xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    assert stream_header(from_="a'b", to=None, id=None).count(b"a&apos;b") == 1
    assert STREAM_FOOTER == b"</stream:stream>"
    assert stream_error("not-well-formed") == (
        b"<stream:error><not-well-formed xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
    )
    assert stream_error("conflict", "Replaced by <new> connection") == (
        b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced by &lt;new&gt; connection</text></stream:error>"
    )
    with pytest.raises(ValueError):
        stream_error("made-up")


def test_condition_tables_are_the_full_rfc_lists() -> None:
    assert len(STREAM_CONDITIONS) == 25
    assert {
        "restricted-xml",
        "policy-violation",
        "invalid-namespace",
        "see-other-host",
        "reset",
    } <= STREAM_CONDITIONS
    assert len(STANZA_CONDITIONS) == 22
    assert STANZA_CONDITIONS["service-unavailable"] == "cancel"
    assert STANZA_CONDITIONS["forbidden"] == "auth"
    assert STANZA_CONDITIONS["bad-request"] == "modify"
    assert STANZA_CONDITIONS["recipient-unavailable"] == "wait"
    assert set(STANZA_CONDITIONS.values()) <= {"auth", "cancel", "continue", "modify", "wait"}


def test_stream_error_exception() -> None:
    e = StreamError("policy-violation", "too big")
    assert (e.condition, e.text) == ("policy-violation", "too big")
    assert e.to_bytes() == stream_error("policy-violation", "too big")
    assert StreamError("reset").text is None
    with pytest.raises(ValueError):
        StreamError("nope")


def test_stanza_error_exception_both_argument_orders() -> None:
    e = StanzaError("item-not-found")
    assert (e.error_type, e.condition, e.text) == ("cancel", "item-not-found", None)
    e = StanzaError("not-allowed", "no", error_type="auth")
    assert (e.error_type, e.condition, e.text) == ("auth", "not-allowed", "no")
    e = StanzaError("modify", "bad-request", "why")
    assert (e.error_type, e.condition, e.text) == ("modify", "bad-request", "why")
    e = StanzaError(condition="forbidden", text="t")
    assert (e.error_type, e.condition, e.text) == ("auth", "forbidden", "t")
    for bad in (("nope",), ("cancel", "nope"), ("x", "y", "z", "w")):
        with pytest.raises((ValueError, TypeError)):
            StanzaError(*bad)
    with pytest.raises(ValueError):
        StanzaError("forbidden", error_type="sometimes")
