"""XMPP addresses (RFC 7622): parse, normalise, bare/full.

A `JID` holds already-enforced parts, so equality and hashing are plain field comparisons.
`JID.parse` is on the hot path (every stanza's ``to``), so it is lru-cached and has a fast path
for ASCII input that is already in canonical form; the fast path must agree with the slow
(PRECIS) path, which ``tests/test_jid.py`` checks with hypothesis.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import precis_i18n

__all__ = [
    "JID",
    "MAX_PART_OCTETS",
    "InvalidJID",
    "prepare_domainpart",
    "prepare_localpart",
    "prepare_resourcepart",
]

#: RFC 7622 §3.2-3.4: every part is 1..1023 octets of UTF-8 after enforcement.
MAX_PART_OCTETS = 1023
# Enforcement can shrink a string (width mapping, NFC composition), so the raw input may be longer
# than 1023 octets; this cap only stops us feeding megabytes to PRECIS.
_MAX_INPUT_CHARS = 4 * 3 * MAX_PART_OCTETS

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")

# RFC 7622 §3.3.1: allowed by UsernameCaseMapped but excluded from XMPP localparts.
_LOCAL_EXCLUDED = frozenset("\"&'/:<>@")

# Fast paths: ASCII strings that PRECIS would return unchanged.  Localpart: printable ASCII
# (0x21-0x7E) minus the excluded characters and minus A-Z (case mapping would change them).
_LOCAL_FAST = re.compile(r"[!#-%(-.0-9;=?\[-~]{1,1023}")
# Resourcepart (OpaqueString): printable ASCII including space is left as is.
_RESOURCE_FAST = re.compile(r"[ -~]{1,1023}")
# Domainpart: lowercase LDH(+underscore) labels, no A-labels (those become U-labels).
_DOMAIN_FAST = re.compile(r"(?:(?!xn--)[a-z0-9_-]{1,63}\.)*(?!xn--)[a-z0-9_-]{1,63}")
_ASCII_LABEL = re.compile(r"[a-z0-9_-]{1,63}")

# IDNA label separators (RFC 3490 §3.1 / UTS #46) besides U+002E.
_LABEL_SEPARATORS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class InvalidJID(ValueError):
    """The string is not a valid XMPP address (or address part)."""


def _check_length(part: str, what: str) -> str:
    n = len(part.encode("utf-8"))
    if n == 0:
        raise InvalidJID(f"empty {what}")
    if n > MAX_PART_OCTETS:
        raise InvalidJID(f"{what} longer than {MAX_PART_OCTETS} octets")
    return part


def _localpart_slow(s: str) -> str:
    if len(s) > _MAX_INPUT_CHARS:
        raise InvalidJID("localpart too long")
    try:
        out: str = _USERNAME.enforce(s)
    except UnicodeEncodeError as e:
        raise InvalidJID(f"invalid localpart: {e.reason}") from None
    # Checked after enforcement: width mapping turns e.g. U+FF20 into '@'.
    if not _LOCAL_EXCLUDED.isdisjoint(out):
        raise InvalidJID("localpart contains a character excluded by RFC 7622 §3.3.1")
    return _check_length(out, "localpart")


def _resourcepart_slow(s: str) -> str:
    if len(s) > _MAX_INPUT_CHARS:
        raise InvalidJID("resourcepart too long")
    try:
        out: str = _OPAQUE.enforce(s)
    except UnicodeEncodeError as e:
        raise InvalidJID(f"invalid resourcepart: {e.reason}") from None
    return _check_length(out, "resourcepart")


def prepare_localpart(s: str) -> str:
    """Enforce the localpart rules (UsernameCaseMapped + RFC 7622 exclusions); raise InvalidJID."""
    if _LOCAL_FAST.fullmatch(s):
        return s
    return _localpart_slow(s)


def prepare_resourcepart(s: str) -> str:
    """Enforce the resourcepart rules (OpaqueString); raise InvalidJID."""
    if _RESOURCE_FAST.fullmatch(s):
        return s
    return _resourcepart_slow(s)


def _ulabel(label: str) -> str:
    """Validate one non-ASCII (already UTS #46 mapped) label or A-label; return the U-label."""
    import idna  # a dependency of trio; imported lazily, ASCII domains never need it

    try:
        if label.isascii():  # an A-label "xn--…": RFC 7622 §3.2.1 wants the U-label
            label = idna.decode(label)
            if idna.uts46_remap(label, std3_rules=False, transitional=False) != label:
                raise InvalidJID("A-label does not decode to a canonical U-label")
        if len(idna.encode(label)) > 63:
            raise InvalidJID("domain label longer than 63 octets")
    except idna.IDNAError as e:
        raise InvalidJID(f"invalid domain label: {e}") from None
    return label


def _domainpart_slow(s: str) -> str:
    if len(s) > _MAX_INPUT_CHARS:
        raise InvalidJID("domainpart too long")
    if not s.isascii():
        s = s.translate(_LABEL_SEPARATORS)
    # RFC 7622 §3.2: a final label separator is stripped before any other canonicalisation.
    if s.endswith("."):
        s = s[:-1]
    if not s:
        raise InvalidJID("empty domainpart")
    if s[0] == "[":  # IP-literal (RFC 3986); IPvFuture and zone ids are not accepted
        if s[-1] != "]" or not s.isascii() or "%" in s:
            raise InvalidJID("invalid IPv6 literal")
        try:
            return f"[{ipaddress.IPv6Address(s[1:-1]).compressed}]"
        except ValueError:
            raise InvalidJID("invalid IPv6 literal") from None
    if s.isascii():
        s = s.lower()
    else:
        import idna

        try:  # UTS #46 mapping: case, width, NFC (the RFC 5895 steps RFC 7622 §3.2.2 asks for)
            s = idna.uts46_remap(s, std3_rules=False, transitional=False)
        except idna.IDNAError as e:
            raise InvalidJID(f"invalid domainpart: {e}") from None
    labels = s.split(".")
    for i, label in enumerate(labels):
        if label.isascii() and not label.startswith("xn--"):
            if not _ASCII_LABEL.fullmatch(label):
                raise InvalidJID(f"invalid domain label {label!r}")
        else:
            labels[i] = _ulabel(label)
    # An all-numeric top label can only be an IPv4 address.
    if labels[-1].isascii() and labels[-1].isdigit():
        try:
            s = str(ipaddress.IPv4Address(s))
        except ValueError:
            raise InvalidJID("invalid IPv4 address") from None
    else:
        s = ".".join(labels)
    return _check_length(s, "domainpart")


def prepare_domainpart(s: str) -> str:
    """Canonicalise a domainpart: strip one final dot, lowercase / UTS #46 map, U-labels, IP
    literals; raise InvalidJID."""
    if len(s) <= MAX_PART_OCTETS and _DOMAIN_FAST.fullmatch(s) and not s.rpartition(".")[2].isdigit():
        return s
    return _domainpart_slow(s)


def _split(s: str) -> tuple[str | None, str, str | None]:
    # RFC 7622 §3.1: separators are found before any transformation: the resourcepart starts at
    # the first '/', then the localpart ends at the first '@' of what remains.
    rest, slash, resource = s.partition("/")
    local, at, domain = rest.partition("@")
    if not at:
        local, domain = "", rest
    return (local if at else None), domain, (resource if slash else None)


def _parse_uncached(s: str, *, fast: bool = True) -> JID:
    if len(s) > 3 * _MAX_INPUT_CHARS:
        raise InvalidJID("JID too long")
    local, domain, resource = _split(s)
    if fast:
        return JID(
            None if local is None else prepare_localpart(local),
            prepare_domainpart(domain),
            None if resource is None else prepare_resourcepart(resource),
        )
    return JID(
        None if local is None else _localpart_slow(local),
        _domainpart_slow(domain),
        None if resource is None else _resourcepart_slow(resource),
    )


_parse_cached = lru_cache(maxsize=8192)(_parse_uncached)


@dataclass(frozen=True, slots=True)
class JID:
    """An XMPP address whose parts are already enforced (use `JID.parse` for untrusted input)."""

    local: str | None
    domain: str
    resource: str | None = None

    @classmethod
    def parse(cls, s: str) -> JID:
        """Parse and enforce ``[local@]domain[/resource]``; raise InvalidJID."""
        return _parse_cached(s)

    @property
    def bare(self) -> JID:
        return self if self.resource is None else JID(self.local, self.domain, None)

    @property
    def is_bare(self) -> bool:
        return self.resource is None

    @property
    def is_full(self) -> bool:
        return self.resource is not None

    def with_resource(self, resource: str) -> JID:
        """This address with ``resource`` (validated and enforced) as its resourcepart."""
        return JID(self.local, self.domain, prepare_resourcepart(resource))

    def __str__(self) -> str:
        s = self.domain if self.local is None else f"{self.local}@{self.domain}"
        return s if self.resource is None else f"{s}/{self.resource}"
