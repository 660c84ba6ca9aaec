"""XmlStream: events, restarts and limits, each case fed whole, byte by byte and with trailing bytes."""

from __future__ import annotations

import pytest
from xml_helpers import CLOSE, HEADER, bytewise, feed_chunks, tr

from meshxmpp.xml import (
    Element,
    StanzaReceived,
    StreamClosed,
    StreamError,
    StreamOpened,
    XmlStream,
    ns,
    parse_element,
    stream_header,
    to_bytes,
)

OPENED = StreamOpened({"to": "example.org", "version": "1.0", "xml:lang": "en"}, ns.CLIENT)
MSG = b"<message to='bob@example.org/phone' type='chat' id='abc'><body>hello there</body></message>"


def msg_el() -> Element:
    m = Element("message", ns.CLIENT, {"to": "bob@example.org/phone", "type": "chat", "id": "abc"})
    m.add("body", text="hello there")
    return m


def stanza(xml: bytes) -> StanzaReceived:
    return StanzaReceived(parse_element(xml))


def test_header_only() -> None:
    tr(HEADER, [OPENED])


def test_header_without_xml_declaration_and_other_prefix() -> None:
    data = b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:client' to='x' version='1.0'>"
    tr(data, [StreamOpened({"to": "x", "version": "1.0"}, ns.CLIENT)])


def test_header_attribute_containing_gt() -> None:
    data = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='a>b'>"
    tr(data, [StreamOpened({"to": "a>b"}, ns.CLIENT)])


def test_message() -> None:
    tr(HEADER + MSG, [OPENED, StanzaReceived(msg_el())])


def test_several_stanzas_whitespace_keepalives_and_close() -> None:
    data = (
        HEADER
        + b" \n"
        + MSG
        + b"\n\n \t"
        + b"<presence/>  "
        + b"<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq>"
        + b" "
        + CLOSE
    )
    iq = Element("iq", ns.CLIENT, {"type": "get", "id": "1"}, [Element("ping", ns.PING)])
    expected = [
        OPENED,
        StanzaReceived(msg_el()),
        StanzaReceived(Element("presence", ns.CLIENT)),
        StanzaReceived(iq),
        StreamClosed(),
    ]
    tr(data, expected)


def test_keepalives_only_yield_nothing_and_are_not_counted() -> None:
    s = XmlStream(max_stanza_size=100)
    assert s.feed(HEADER) == [OPENED]
    for _ in range(1000):
        assert s.feed(b" ") == []
    assert s.feed(b"\n" + MSG) == [StanzaReceived(msg_el())]


def test_stanza_namespace_from_xmlns() -> None:
    data = HEADER + b"<message xmlns='jabber:server'><x xmlns='urn:x'><y/></x></message>"
    el = Element("message", ns.SERVER, {}, [Element("x", "urn:x", {}, [Element("y", "urn:x")])])
    tr(data, [OPENED, StanzaReceived(el)])


def test_prefixed_stanza_children_and_attributes() -> None:
    data = HEADER + (
        b"<message xmlns:a='urn:a' xml:lang='de' a:k='v'><a:x a:z='1'>t</a:x><stream:features/></message>"
    )
    el = Element(
        "message",
        ns.CLIENT,
        {"xml:lang": "de", "{urn:a}k": "v"},
        [Element("x", "urn:a", {"{urn:a}z": "1"}, ["t"]), Element("features", ns.STREAMS)],
    )
    tr(data, [OPENED, StanzaReceived(el)])


def test_escapes_cdata_and_character_references() -> None:
    data = HEADER + (
        b"<message id='&lt;&amp;&gt;&quot;&apos;' x='a>b\"c'><body>a &amp; b &lt; c &#x1F600; d &#65;"
        b"<![CDATA[<raw> 'q' \"q\" & ]]>e\r\nf</body></message>"
    )
    body = "a & b < c \U0001f600 d A<raw> 'q' \"q\" & e\nf"
    el = Element(
        "message", ns.CLIENT, {"id": "<&>\"'", "x": 'a>b"c'}, [Element("body", ns.CLIENT, {}, [body])]
    )
    tr(data, [OPENED, StanzaReceived(el)])


def test_text_split_across_feeds_is_one_string() -> None:
    s = XmlStream()
    s.feed(HEADER)
    assert s.feed(b"<message><body>hel") == []
    assert s.feed(b"lo &am") == []
    assert s.feed(b"p; wor") == []
    assert s.feed(b"ld</body>\xe2\x82\xac<b/>x\xe2") == []
    (ev,) = s.feed(b"\x82\xacy</message>")
    assert isinstance(ev, StanzaReceived)
    msg = ev.element
    assert msg.children == [
        Element("body", ns.CLIENT, {}, ["hello & world"]),
        "\u20ac",
        Element("b", ns.CLIENT),
        "x\u20acy",
    ]


def test_multibyte_utf8_split_anywhere() -> None:
    text = "h\u00e9llo \u20ac \U0001f600 \u4e2d\u6587"
    data = HEADER + f"<message><body>{text}</body></message>".encode()
    tr(
        data,
        [OPENED, StanzaReceived(Element("message", ns.CLIENT, {}, [Element("body", ns.CLIENT, {}, [text])]))],
    )


def test_events_arrive_with_their_last_byte() -> None:
    # Nothing is delayed waiting for more input, not even with '>' inside attribute values
    # (the stall scanner path) or a long tag fed byte by byte.
    long_attr = b"'" + b">" * 600 + b"'"
    data = (
        HEADER
        + b"<a x="
        + long_attr
        + b"/><b y='>'>t</b>"
        + b"<c "
        + b"".join(b"k%d='v' " % i for i in range(100))
        + b"/>"
        + CLOSE
    )
    ends: list[int] = []
    s = XmlStream(max_stanza_size=100_000)
    for i, chunk in enumerate(bytewise(data)):
        for _ in s.feed(chunk):
            ends.append(i + 1)
    assert len(XmlStream(max_stanza_size=100_000).feed(data)) == 5
    # the offsets where each event is complete: after its tag's '>'
    expected_ends = [len(HEADER)]
    pos = data.index(b"/>", len(HEADER) + 5 + len(long_attr)) + 2
    expected_ends.append(pos)
    pos = data.index(b"</b>") + 4
    expected_ends.append(pos)
    pos = data.index(b"/>", pos) + 2
    expected_ends.append(pos)
    expected_ends.append(len(data))
    assert ends == expected_ends


def test_feed_empty_is_not_eof() -> None:
    s = XmlStream()
    assert s.feed(b"") == []
    assert s.feed(HEADER[:10]) == []
    assert s.feed(b"") == []
    assert s.feed(HEADER[10:]) == [OPENED]


def test_restart_returns_bytes_after_last_event() -> None:
    new_header = stream_header(from_=None, to="example.org", id=None)
    auth = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>"
    data = HEADER + auth + new_header + MSG
    for chunks in ([data], list(bytewise(data)), [data[:200], data[200:]]):
        s = XmlStream()
        events = []
        fed = 0
        for chunk in chunks:
            fed += len(chunk)
            events += s.feed(chunk)
            if len(events) == 2:
                break
        assert [type(e) for e in events] == [StreamOpened, StanzaReceived]
        assert events[1].element.name == "auth"
        tail = s.restart()
        assert tail == data[len(HEADER) + len(auth) : fed]
        # the caller feeds the tail, then the rest, to the fresh parser
        got = s.feed(tail) + feed_chunks(s, [data[fed:]])
        assert got == [OPENED, StanzaReceived(msg_el())]


def test_restart_tail_after_empty_element_and_with_gt_in_attribute() -> None:
    data = HEADER + b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls' x='/>'/>"
    tr(data, [OPENED, stanza(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls' x='/&gt;'/>")])


def test_restart_after_header_keeps_partial_stanza() -> None:
    s = XmlStream()
    assert s.feed(HEADER + b"  <presence><sta") == [OPENED]
    assert s.restart() == b"  <presence><sta"


def test_restart_with_pipelined_header_after_xml_declaration_error() -> None:
    # The old parser sees the new <?xml?> declaration as an error; the events before it are still
    # returned and restart() hands the offending bytes to the new stream instead of raising.
    success = b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"
    data = HEADER + success + b"\n" + HEADER + MSG
    s = XmlStream()
    events = s.feed(data)
    assert [type(e) for e in events] == [StreamOpened, StanzaReceived]
    tail = s.restart()
    assert tail == b"\n" + HEADER + MSG
    assert feed_chunks(s, [tail]) == [OPENED, StanzaReceived(msg_el())]


def test_error_after_events_is_raised_by_next_feed() -> None:
    s = XmlStream()
    events = s.feed(HEADER + MSG + b"<!-- no -->")
    assert events == [OPENED, StanzaReceived(msg_el())]
    with pytest.raises(StreamError) as info:
        s.feed(b"")
    assert info.value.condition == "restricted-xml"
    with pytest.raises(StreamError):
        s.feed(MSG)


def test_nothing_parsed_after_stream_close() -> None:
    s = XmlStream()
    assert s.feed(HEADER + CLOSE + b"garbage <<<") == [OPENED, StreamClosed()]
    assert s.feed(b"more") == []
    assert s.restart() == b"garbage <<<more"


def test_stanza_size_limit_is_exact() -> None:
    body = b"<message><body>" + b"x" * 300 + b"</body></message>"
    limit = len(body)
    tr(HEADER + body, [OPENED, stanza(body)], max_stanza_size=limit)
    from xml_helpers import tr_error

    over = b"<message><body>" + b"x" * 301 + b"</body></message>"
    tr_error(HEADER + over, "policy-violation", max_stanza_size=limit)


def test_stanza_size_limit_can_be_raised() -> None:
    s = XmlStream()
    s.feed(HEADER)
    big = b"<message><body>" + b"x" * 20000 + b"</body></message>"
    s.max_stanza_size = 256 * 1024
    assert len(s.feed(big)) == 1


def test_depth_limit_is_exact() -> None:
    from xml_helpers import tr_error

    ok = b"<a>" * 5 + b"</a>" * 5
    tr(HEADER + ok, [OPENED, stanza(ok)], max_depth=5)
    deep = b"<a>" * 6 + b"</a>" * 6
    tr_error(HEADER + deep, "policy-violation", max_depth=5)


def test_component_namespace_allowed_when_configured() -> None:
    header = stream_header(from_=None, to="muc.example.org", id=None, default_ns=ns.COMPONENT, lang=None)
    s = XmlStream(allowed_ns=frozenset({ns.COMPONENT}))
    (opened,) = s.feed(header)
    assert opened == StreamOpened({"to": "muc.example.org", "version": "1.0"}, ns.COMPONENT)
    (ev,) = s.feed(b"<handshake>abc</handshake>")
    assert isinstance(ev, StanzaReceived)
    assert ev.element == Element("handshake", ns.COMPONENT, {}, ["abc"])
    assert to_bytes(ev.element, ns.COMPONENT) == b"<handshake>abc</handshake>"


def test_leading_whitespace_before_xml_declaration_is_tolerated() -> None:
    tr(b"\r\n  " + HEADER, [OPENED])


def test_parse_element() -> None:
    assert parse_element(MSG) == msg_el()
    assert parse_element(MSG.decode()) == msg_el()
    for bad in (b"<a>", b"<a/><b/>", b"<a/>junk<", b"", b"<!-- -->"):
        with pytest.raises(StreamError):
            parse_element(bad)


def test_name_caches_stay_bounded() -> None:
    from meshxmpp.xml import stream as stream_module

    s = XmlStream(max_stanza_size=1 << 20)
    s.feed(HEADER)
    for i in range(0, 12_000, 1000):
        s.feed(b"".join(b"<n%d a%d='1'/>" % (j, j) for j in range(i, i + 1000)))
    assert len(stream_module._names) <= stream_module._CACHE_LIMIT
    assert len(stream_module._intern) <= stream_module._CACHE_LIMIT + 2000


def test_nothing_is_retained_between_whole_stanzas() -> None:
    # an idle connection must not keep its last 64 KiB read alive
    s = XmlStream(max_stanza_size=1 << 20)
    s.feed(HEADER)
    s.feed(MSG * 500)
    assert s.restart() == b""


def test_restart_discards_a_pending_error() -> None:
    s = XmlStream()
    assert s.feed(HEADER + MSG + b" <1/>") == [OPENED, StanzaReceived(msg_el())]  # error pending
    assert s.restart() == b" <1/>"
    with pytest.raises(StreamError) as info:
        s.feed(b" <1/>")
    assert info.value.condition == "not-well-formed"


def test_empty_root_element_opens_and_closes() -> None:
    data = b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'/>"
    tr(data, [StreamOpened({}, ns.CLIENT), StreamClosed()])
