"""disco (XEP-0030), ping (XEP-0199), version (XEP-0092), the legacy session iq, and the
service-unavailable fallback, through the router."""

from __future__ import annotations

from meshxmpp.jid import JID
from meshxmpp.storage.base import RosterItem
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from tests.im._harness import Harness, error_condition

DOMAIN = "example.org"


def iq(type_: str, child_name: str, child_ns: str, to: str | None = None, **attrs: str) -> Element:
    el = Element("iq", ns.CLIENT, {"type": type_, "id": "q", **({"to": to} if to else {})})
    el.add(child_name, child_ns, attrs or None)
    return el


async def ask(h: Harness, el: Element, full: str = "alice@example.org/a") -> Element:
    session = h.sessions.get(JID.parse(full)) or h.bind(full)
    session.take()  # type: ignore[union-attr]
    await h.send(session, el)  # type: ignore[arg-type]
    replies = session.take(lambda r: r.name == "iq" and r.get("id") == "q")  # type: ignore[union-attr]
    assert len(replies) == 1, replies
    return replies[0]


def features(reply: Element) -> set[str]:
    query = reply.find("query", ns.DISCO_INFO)
    assert query is not None
    return {f.get("var") or "" for f in query.findall("feature", ns.DISCO_INFO)}


def identity(reply: Element) -> tuple[str | None, str | None]:
    query = reply.find("query", ns.DISCO_INFO)
    assert query is not None
    ident = query.find("identity", ns.DISCO_INFO)
    assert ident is not None
    return ident.get("category"), ident.get("type")


async def test_server_disco_info_lists_what_is_registered(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, DOMAIN))
    assert reply.get("type") == "result" and reply.get("from") == DOMAIN
    assert identity(reply) == ("server", "im")
    assert features(reply) >= {ns.DISCO_INFO, ns.DISCO_ITEMS, ns.PING, ns.VERSION, ns.ROSTER, "msgoffline"}


async def test_disco_features_come_from_the_hub(h: Harness) -> None:
    h.hub.hook("disco-features/host", lambda found: found.add("urn:example:extra"))
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, DOMAIN))
    assert "urn:example:extra" in features(reply)


async def test_server_disco_info_unknown_node(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, DOMAIN, node="nope"))
    assert error_condition(reply) == "item-not-found"


async def test_server_disco_items(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.DISCO_ITEMS, DOMAIN))
    assert reply.get("type") == "result"
    assert reply.find("query", ns.DISCO_ITEMS) is not None
    h.hub.hook("disco-items/host", lambda found: found.append(("conference.example.org", "Rooms")))
    reply = await ask(h, iq("get", "query", ns.DISCO_ITEMS, DOMAIN))
    query = reply.find("query", ns.DISCO_ITEMS)
    assert [(i.get("jid"), i.get("name")) for i in query.findall("item", ns.DISCO_ITEMS)] == [  # type: ignore[union-attr]
        ("conference.example.org", "Rooms")
    ]


async def test_account_disco_info_for_oneself(h: Harness) -> None:
    for to in (None, "alice@example.org"):
        reply = await ask(h, iq("get", "query", ns.DISCO_INFO, to))
        assert reply.get("type") == "result"
        assert identity(reply) == ("account", "registered")


async def test_account_disco_info_only_for_subscribers(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, "bob@example.org"))
    assert error_condition(reply) == "service-unavailable"
    await h.storage.rosters.put("bob@example.org", RosterItem(jid="alice@example.org", subscription="from"))
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, "bob@example.org"))
    assert reply.get("type") == "result" and reply.get("from") == "bob@example.org"
    assert identity(reply) == ("account", "registered")
    reply = await ask(h, iq("get", "query", ns.DISCO_ITEMS, "bob@example.org"))
    assert reply.get("type") == "result"


async def test_account_disco_info_unknown_user_looks_like_a_stranger(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.DISCO_INFO, "nobody@example.org"))
    assert error_condition(reply) == "service-unavailable"


async def test_ping(h: Harness) -> None:
    for to in (DOMAIN, None):
        reply = await ask(h, iq("get", "ping", ns.PING, to))
        assert reply.get("type") == "result"
        assert [c for c in reply.children if isinstance(c, Element)] == []


async def test_version(h: Harness) -> None:
    reply = await ask(h, iq("get", "query", ns.VERSION, DOMAIN))
    query = reply.find("query", ns.VERSION)
    assert query is not None
    assert query.find("name", ns.VERSION).text == "meshxmpp"  # type: ignore[union-attr]
    assert query.find("version", ns.VERSION).text  # type: ignore[union-attr]
    assert query.find("os", ns.VERSION) is None


async def test_legacy_session_iq(h: Harness) -> None:
    for to in (None, DOMAIN):
        reply = await ask(h, iq("set", "session", ns.SESSION, to))
        assert reply.get("type") == "result"


async def test_unknown_iq_is_service_unavailable(h: Harness) -> None:
    for to in (DOMAIN, None):
        reply = await ask(h, iq("get", "query", "urn:example:nothing", to))
        assert error_condition(reply) == "service-unavailable"
    reply = await ask(h, iq("set", "query", ns.VERSION, DOMAIN))
    assert error_condition(reply) == "service-unavailable"


async def test_server_iq_from_elsewhere_is_routed_back(h: Harness) -> None:
    b = h.bind("bob@example.org/b")
    el = iq("get", "ping", ns.PING, DOMAIN)
    el.set("from", "bob@example.org/b")
    await h.inject(el)
    (reply,) = b.got
    assert (
        reply.get("type") == "result"
        and reply.get("from") == DOMAIN
        and reply.get("to") == "bob@example.org/b"
    )
