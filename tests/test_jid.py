from __future__ import annotations

import pickle
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from meshxmpp.jid import (
    JID,
    InvalidJID,
    _parse_uncached,
    prepare_domainpart,
    prepare_localpart,
    prepare_resourcepart,
)

# RFC 7622 §3.5, Table 1: (input, local, domain, resource)
VALID = [
    ("juliet@example.com", "juliet", "example.com", None),
    ("juliet@example.com/foo", "juliet", "example.com", "foo"),
    ("juliet@example.com/foo bar", "juliet", "example.com", "foo bar"),
    ("juliet@example.com/foo@bar", "juliet", "example.com", "foo@bar"),
    ("foo\\20bar@example.com", "foo\\20bar", "example.com", None),
    ("fussball@example.com", "fussball", "example.com", None),
    ("fu\u00dfball@example.com", "fu\u00dfball", "example.com", None),
    ("\u03c0@example.com", "\u03c0", "example.com", None),
    ("\u03a3@example.com/foo", "\u03c3", "example.com", "foo"),
    ("\u03c3@example.com/foo", "\u03c3", "example.com", "foo"),
    ("\u03c2@example.com/foo", "\u03c2", "example.com", "foo"),
    ("king@example.com/\u265a", "king", "example.com", "\u265a"),
    ("example.com", None, "example.com", None),
    ("example.com/foobar", None, "example.com", "foobar"),
    ("a.example.com/b@example.net", None, "a.example.com", "b@example.net"),
]

# RFC 7622 §3.5, Table 2 (example 18 is handled separately below)
INVALID = [
    '"juliet"@example.com',
    "foo bar@example.com",
    "@example.com/",
    "henry\u2163@example.com",
    "\u265a@example.com",
    "juliet@",
    "/foobar",
]


@pytest.mark.parametrize(("s", "local", "domain", "resource"), VALID)
def test_rfc7622_valid(s: str, local: str | None, domain: str, resource: str | None) -> None:
    j = JID.parse(s)
    assert (j.local, j.domain, j.resource) == (local, domain, resource)
    assert JID.parse(str(j)) == j


@pytest.mark.parametrize("s", INVALID)
def test_rfc7622_invalid(s: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(s)


def test_rfc7622_example_18_leading_space_in_resource_is_accepted() -> None:
    # Table 2 lists it as invalid, but no rule forbids it: OpaqueString allows spaces anywhere
    # (as mellium/xmpp and others accept).  Refusing an address other servers route loses mail.
    j = JID.parse("juliet@example.com/ foo")
    assert j.resource == " foo"


def test_rfc7622_sigma_comparisons() -> None:
    # Examples 9 and 10 match, 11 matches neither.
    assert JID.parse("\u03a3@example.com/foo") == JID.parse("\u03c3@example.com/foo")
    assert JID.parse("\u03c2@example.com/foo") != JID.parse("\u03c3@example.com/foo")
    # Examples 6 and 7 are different localparts.
    assert JID.parse("fussball@example.com") != JID.parse("fu\u00dfball@example.com")


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("Juliet@Example.COM/Balcony", "juliet@example.com/Balcony"),  # resource keeps its case
        ("JULIET@EXAMPLE.COM.", "juliet@example.com"),  # one trailing dot stripped
        ("\uff2a\uff35\uff2c\uff29\uff25\uff34@example.com", "juliet@example.com"),  # fullwidth
        ("juliet@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45\u3002\uff43\uff4f\uff4d", "juliet@example.com"),
        ("juliet@example.com\u3002", "juliet@example.com"),  # ideographic full stop is a dot
        ("a@B\u00dc\u0308cher.example/x", "a@b\u00fc\u0308cher.example/x"),
        ("a@b\u0075\u0308cher.example", "a@b\u00fccher.example"),  # NFC
        ("a@XN--BCHER-KVA.example", "a@b\u00fccher.example"),  # A-label -> U-label
        ("a@b\u00fccher.example", "a@b\u00fccher.example"),
        ("x@[::1]", "x@[::1]"),
        ("x@[0:0:0:0:0:0:0:1]/r", "x@[::1]/r"),
        ("x@[2001:DB8::1]", "x@[2001:db8::1]"),
        ("x@192.0.2.1", "x@192.0.2.1"),
        ("x@192.0.2.1.", "x@192.0.2.1"),
        ("localhost", "localhost"),
        ("room@conference.localhost/nick name", "room@conference.localhost/nick name"),
        ("a@b/c/d@e", "a@b/c/d@e"),  # only the first '/' separates
        ("a/b@example.com", "a/b@example.com"),  # domain 'a', resource 'b@example.com'
        ("x@example.com/\u2163", "x@example.com/\u2163"),  # OpaqueString keeps compat chars
        ("x@example.com/a\u00a0b", "x@example.com/a b"),  # non-ASCII space -> ASCII space
        ("_c2s._tcp@my_host.example", "_c2s._tcp@my_host.example"),
    ],
)
def test_normalisation(s: str, expected: str) -> None:
    j = JID.parse(s)
    if s == "a/b@example.com":
        assert (j.local, j.domain, j.resource) == (None, "a", "b@example.com")
    assert str(j) == expected
    assert j == JID.parse(expected)
    assert hash(j) == hash(JID.parse(expected))
    assert _parse_uncached(s, fast=False) == j


@pytest.mark.parametrize(
    "s",
    [
        "",
        "@",
        "/",
        "@/",
        "a@",
        "a@/r",
        "example.com/",
        "a@example.com/",
        "a@b@example.com",
        "a:b@example.com",
        "a<b@example.com",
        "a>b@example.com",
        "a&b@example.com",
        "a'b@example.com",
        "a\uff20b@example.com",  # fullwidth @ maps to '@'
        "a\uff1ab@example.com",  # fullwidth : maps to ':'
        "a\x00b@example.com",
        "a@example..com",
        "a@.example.com",
        "a@example.com..",
        "a@.",
        "a@exa mple.com",
        "a@exa:mple.com",
        "a@[::1",
        "a@::1",
        "a@[not-ip]",
        "a@[fe80::1%eth0]",
        "a@[192.0.2.1]",
        "a@999.0.2.1",
        "a@1.2.3",
        "a@01.2.3.4",
        "a@" + "a" * 64 + ".example",
        "a@xn--zz.example",  # not valid punycode
        "a@exa\u2488mple.com",
        "a@example.com/\x00",
        "a@example.com/\u0007",
    ],
)
def test_invalid(s: str) -> None:
    with pytest.raises(InvalidJID):
        JID.parse(s)
    with pytest.raises(InvalidJID):
        _parse_uncached(s, fast=False)


def test_invalid_jid_is_value_error() -> None:
    assert issubclass(InvalidJID, ValueError)


def test_lengths() -> None:
    ok = "a" * 1023
    assert JID.parse(f"{ok}@example.com/{ok}").local == ok
    with pytest.raises(InvalidJID):
        JID.parse(f"{ok}a@example.com")
    with pytest.raises(InvalidJID):
        JID.parse(f"x@example.com/{ok}a")
    # octets, not characters: 512 two-octet characters are 1024 octets
    with pytest.raises(InvalidJID):
        JID.parse("\u00e9" * 512 + "@example.com")
    assert JID.parse("\u00e9" * 511 + "@example.com").local == "\u00e9" * 511
    with pytest.raises(InvalidJID):
        JID.parse("x@example.com/" + "\u265a" * 342)  # 1026 octets
    assert JID.parse("x@example.com/" + "\u265a" * 341).resource == "\u265a" * 341
    # the limit applies after enforcement: 1023 fullwidth letters shrink to 1023 octets
    assert JID.parse("\uff41" * 1023 + "@example.com").local == "a" * 1023
    # domain: 1023 octets of 63-octet labels
    labels = ["a" * 63] * 16
    domain = ".".join(labels)[:1023]
    assert len(domain) == 1023
    assert JID.parse(domain).domain == domain
    with pytest.raises(InvalidJID):
        JID.parse(domain + "b")
    with pytest.raises(InvalidJID):
        JID.parse("x" * 100_000)


def test_properties() -> None:
    full = JID.parse("juliet@example.com/balcony")
    bare = JID.parse("juliet@example.com")
    assert full.is_full and not full.is_bare
    assert bare.is_bare and not bare.is_full
    assert full.bare == bare
    assert bare.bare is bare
    assert bare.with_resource("balcony") == full
    assert bare.with_resource("a\u00a0b").resource == "a b"
    with pytest.raises(InvalidJID):
        bare.with_resource("")
    with pytest.raises(InvalidJID):
        bare.with_resource("\x00")
    assert str(full) == "juliet@example.com/balcony"
    assert str(JID.parse("example.com/r")) == "example.com/r"
    assert JID(None, "example.com").is_bare
    assert {full, bare, JID.parse("Juliet@Example.com")} == {full, bare}


def test_frozen_hashable_picklable() -> None:
    j = JID.parse("juliet@example.com/balcony")
    with pytest.raises(AttributeError):
        j.local = "romeo"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(j)) == j
    assert {j: 1}[JID.parse("JULIET@example.com/balcony")] == 1


def test_parse_is_cached() -> None:
    s = "cached-user@example.com/res"
    assert JID.parse(s) is JID.parse(s)


def test_prepare_functions() -> None:
    assert prepare_localpart("ALICE") == "alice"
    assert prepare_domainpart("Example.ORG.") == "example.org"
    assert prepare_resourcepart("Phone") == "Phone"
    for bad in ("", "a b", "a@b"):
        with pytest.raises(InvalidJID):
            prepare_localpart(bad)


# --------------------------------------------------------------------------- properties

_ascii_printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@settings(max_examples=500)
@given(st.one_of(_ascii_printable, st.text(max_size=30)))
def test_fast_path_agrees_with_slow_path(s: str) -> None:
    def outcome(fast: bool) -> JID | None:
        try:
            return _parse_uncached(s, fast=fast)
        except InvalidJID:
            return None

    assert outcome(True) == outcome(False)


_jidish = st.builds(
    lambda local, domain, resource: (
        (f"{local}@" if local is not None else "") + domain + (f"/{resource}" if resource is not None else "")
    ),
    st.one_of(st.none(), st.text(string.ascii_letters + string.digits + "._-+!\\~", min_size=1, max_size=12)),
    st.sampled_from(["example.com", "Example.COM", "EXAMPLE.com.", "localhost", "[::1]", "10.0.0.1"]),
    st.one_of(st.none(), st.text(string.printable, min_size=1, max_size=12)),
)


@settings(max_examples=300)
@given(_jidish)
def test_fast_path_agrees_on_jid_like_input(s: str) -> None:
    try:
        fast: JID | None = _parse_uncached(s, fast=True)
    except InvalidJID:
        fast = None
    try:
        slow: JID | None = _parse_uncached(s, fast=False)
    except InvalidJID:
        slow = None
    assert fast == slow


def _valid(prepare: object, s: str) -> str | None:
    try:
        return prepare(s)  # type: ignore[operator,no-any-return]
    except InvalidJID:
        return None


_locals = st.one_of(st.none(), st.text(min_size=1, max_size=20).map(lambda s: _valid(prepare_localpart, s)))
_resources = st.one_of(
    st.none(), st.text(min_size=1, max_size=20).map(lambda s: _valid(prepare_resourcepart, s))
)
_labels = st.one_of(
    st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=10),
    st.sampled_from(["b\u00fccher", "\u4f8b\u3048", "\u043f\u0440\u0438\u043c\u0435\u0440", "fa\u00df"]),
)
_domains = st.one_of(
    st.lists(_labels, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["[::1]", "[2001:db8::1]", "192.0.2.7"]),
)


@settings(max_examples=300)
@given(_locals, _domains, _resources)
def test_parse_str_roundtrip(local: str | None, domain: str, resource: str | None) -> None:
    try:
        d = prepare_domainpart(domain)
    except InvalidJID:
        assume(False)
        raise
    j = JID(local, d, resource)
    assert JID.parse(str(j)) == j
    assert _parse_uncached(str(j), fast=False) == j
    assert JID.parse(str(j.bare)) == j.bare


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_parse_is_idempotent(s: str) -> None:
    try:
        j = JID.parse(s)
    except InvalidJID:
        return
    assert JID.parse(str(j)) == j
