"""Hypothesis: serialise -> parse round trips, and the events never depend on chunk boundaries."""

from __future__ import annotations

import ast
import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xml_helpers import HEADER, feed_chunks

import meshxmpp.xml
from meshxmpp.xml import Element, StanzaReceived, StreamError, StreamOpened, XmlStream, ns, to_bytes

OPENED = StreamOpened({"to": "example.org", "version": "1.0", "xml:lang": "en"}, ns.CLIENT)


# every character XML 1.0 can carry (hypothesis favours ASCII, so <>&'" and CR/LF/tab come up often)
_NOT_XML = [chr(c) for c in range(0x20) if c not in (9, 10, 13)] + ["\ufffe", "\uffff"]
chars = st.characters(min_codepoint=9, blacklist_categories=("Cs",), blacklist_characters=_NOT_XML)
texts = st.text(chars, min_size=1, max_size=30)
values = st.text(chars, max_size=30)
_name_start = (
    "abcdefghijkmnopqrstuvwyzABCDEFGHIJKLMNOPQRSTUVWYZ_\u00c0\u00d6\u00e9\u4e2d"  # no x: "xml..." is reserved
)
names = st.builds(
    lambda a, b: a + b,
    st.sampled_from(_name_start),
    st.text(st.sampled_from(_name_start + "x0123456789.-\u00b7\u6587"), max_size=6),
)
namespaces = st.sampled_from([ns.CLIENT, ns.CLIENT, "urn:a", "urn:b&c'd<e>", "", ns.STREAMS, "jabber:server"])
attr_keys = st.one_of(
    names,
    st.just("xml:lang"),
    st.builds(lambda u, n: "{" + u + "}" + n, st.sampled_from(["urn:x", "urn:y'z"]), names),
)
attr_dicts = st.dictionaries(attr_keys, values, max_size=4)


def _merge_text(children: list[Element | str]) -> list[Element | str]:
    out: list[Element | str] = []
    for c in children:
        if isinstance(c, str) and out and isinstance(out[-1], str):
            out[-1] += c
        else:
            out.append(c)
    return out


def _element(children: st.SearchStrategy[list[Element | str]]) -> st.SearchStrategy[Element]:
    return st.builds(
        lambda n, u, a, c: Element(n, u, a, _merge_text(c)), names, namespaces, attr_dicts, children
    )


leaf = _element(st.lists(texts, max_size=2))
trees = st.recursive(
    leaf, lambda inner: _element(st.lists(st.one_of(inner, texts), max_size=4)), max_leaves=10
)
spaces = st.text(st.sampled_from(" \t\r\n"), max_size=3).map(str.encode)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip(el: Element) -> None:
    data = HEADER + to_bytes(el)
    assert feed_chunks(XmlStream(max_stanza_size=1 << 20), [data]) == [OPENED, StanzaReceived(el)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(trees, spaces), min_size=1, max_size=3), trees, st.data())
def test_chunking_never_changes_events_and_restart_is_exact(
    stanzas: list[tuple[Element, bytes]], extra: Element, data: st.DataObject
) -> None:
    body = b"".join(to_bytes(el) + ws for el, ws in stanzas)
    last_ws = stanzas[-1][1]
    partial = to_bytes(extra)
    partial = partial[: data.draw(st.integers(0, len(partial) - 1), label="partial")]
    stream = HEADER + body + partial
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    s = XmlStream(max_stanza_size=1 << 20)
    expected = [OPENED] + [StanzaReceived(el) for el, _ in stanzas]
    assert feed_chunks(s, chunks) == expected
    assert s.restart() == last_ws + partial


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.data())
def test_corrupted_input_only_ever_raises_stream_error(el: Element, data: st.DataObject) -> None:
    stream = bytearray(HEADER + to_bytes(el) + b"<presence/>")
    for _ in range(data.draw(st.integers(1, 3), label="n")):
        i = data.draw(st.integers(0, len(stream) - 1), label="at")
        stream[i : i + 1] = data.draw(st.binary(max_size=3), label="bytes")
    results = []
    for chunks in ([bytes(stream)], [bytes(stream[i : i + 1]) for i in range(len(stream))]):
        s = XmlStream(max_stanza_size=1 << 20)
        events: list[object] = []
        try:
            for c in chunks:
                events += s.feed(c)
            events += s.feed(b"")
            outcome = None
        except StreamError as exc:
            outcome = exc.condition
        results.append((events, outcome))
    assert results[0] == results[1]


def test_xml_package_is_sans_io() -> None:
    forbidden = {"trio", "socket", "sqlite3", "asyncio", "anyio", "ssl"}
    for path in pathlib.Path(meshxmpp.xml.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & forbidden, path
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in forbidden, path
            assert not isinstance(node, ast.Await | ast.AsyncFunctionDef | ast.AsyncWith | ast.AsyncFor), path
