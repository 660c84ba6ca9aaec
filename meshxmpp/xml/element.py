"""The XML element every stanza is made of.

Kept deliberately small and slotted: the parser builds one per XML node of every stanza, so
``__init__`` does no copying (an ``attrs`` dict or ``children`` list passed in is owned by the element
from then on).
"""

from __future__ import annotations

from . import ns as _ns


class Element:
    """An XML element: local ``name``, namespace URI ``ns``, ``attrs`` and ``children``.

    ``ns`` None means "the parent's namespace" (only for hand-built trees; the parser and ``add()``
    always fill it in). ``attrs`` keys are local names; ``xml:lang`` (and other ``xml:`` attributes)
    keep the ``xml:`` prefix; attributes in any other namespace use Clark notation ``{uri}local``.
    ``children`` holds ``Element``s and non-empty ``str`` text nodes, never two strings in a row when
    built by the parser.

    ``_bytes`` caches ``to_bytes(el)``; ``set()``/``append()``/``add()``/``remove()`` clear it.
    Treat an element as immutable once it is handed to the router; ``copy()`` it to change it.
    """

    __slots__ = ("name", "ns", "attrs", "children", "_bytes")

    name: str
    ns: str | None
    attrs: dict[str, str]
    children: list[Element | str]
    _bytes: bytes | None

    def __init__(
        self,
        name: str,
        ns: str | None = None,
        attrs: dict[str, str] | None = None,
        children: list[Element | str] | None = None,
    ) -> None:
        self.name = name
        self.ns = ns
        self.attrs = {} if attrs is None else attrs
        self.children = [] if children is None else children
        self._bytes = None

    # -- attributes -------------------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrs.get(key, default)

    def set(self, key: str, value: str | None) -> None:
        """Set an attribute; ``None`` deletes it."""
        if value is None:
            self.attrs.pop(key, None)
        else:
            self.attrs[key] = value
        self._bytes = None

    # -- children ---------------------------------------------------------------------------------

    def find(self, name: str, ns: str | None = None) -> Element | None:
        """The first direct child called ``name`` (in namespace ``ns``; None matches any)."""
        for c in self.children:
            if c.__class__ is not str and c.name == name:  # type: ignore[union-attr]
                if ns is None or c.ns == ns or (c.ns is None and self.ns == ns):  # type: ignore[union-attr]
                    return c  # type: ignore[return-value]
        return None

    def findall(self, name: str | None = None, ns: str | None = None) -> list[Element]:
        """Direct children matching ``name`` and ``ns`` (None matches any)."""
        out: list[Element] = []
        for c in self.children:
            if isinstance(c, Element) and (name is None or c.name == name):
                if ns is None or c.ns == ns or (c.ns is None and self.ns == ns):
                    out.append(c)
        return out

    def findtext(self, name: str, ns: str | None = None) -> str | None:
        """The ``text`` of ``find(name, ns)``, or None when there is no such child."""
        c = self.find(name, ns)
        return None if c is None else c.text

    def append(self, child: Element | str) -> Element | str:
        """Append a child element or text node; returns it."""
        self.children.append(child)
        self._bytes = None
        return child

    def add(
        self,
        name: str,
        ns: str | None = None,
        attrs: dict[str, str] | None = None,
        text: str | None = None,
    ) -> Element:
        """Append a new child element (namespace defaults to this element's) and return it."""
        child = Element(name, self.ns if ns is None else ns, attrs, None if text is None else [text])
        self.children.append(child)
        self._bytes = None
        return child

    def remove(self, child: Element | str) -> None:
        """Remove a direct child (compared by identity for elements); ValueError when absent."""
        for i, c in enumerate(self.children):
            if c is child:
                del self.children[i]
                self._bytes = None
                return
        raise ValueError("not a child of this element")

    @property
    def text(self) -> str:
        """The direct text children, concatenated."""
        ch = self.children
        if len(ch) == 1 and ch[0].__class__ is str:
            return ch[0]
        return "".join([c for c in ch if isinstance(c, str)])

    # -- copies and replies -----------------------------------------------------------------------

    def copy(self) -> Element:
        """A deep copy without the serialisation cache."""
        return Element(
            self.name,
            self.ns,
            dict(self.attrs),
            [c if isinstance(c, str) else c.copy() for c in self.children],
        )

    def _swapped(self) -> dict[str, str]:
        a = self.attrs
        out: dict[str, str] = {}
        v = a.get("from")
        if v is not None:
            out["to"] = v
        v = a.get("to")
        if v is not None:
            out["from"] = v
        v = a.get("id")
        if v is not None:
            out["id"] = v
        return out

    def reply(self) -> Element:
        """A reply skeleton: same name/ns, to<->from swapped, id copied, no children.

        An iq's type becomes ``result``; other stanzas keep their type (a chat message gets a chat reply).
        """
        attrs = self._swapped()
        if self.name == "iq":
            attrs["type"] = "result"
        else:
            t = self.attrs.get("type")
            if t is not None:
                attrs["type"] = t
        return Element(self.name, self.ns, attrs, [])

    def error_reply(self, error_type: str, condition: str, text: str | None = None) -> Element:
        """The RFC 6120 §8.3 error stanza answering this one (original children are not included)."""
        attrs = self._swapped()
        attrs["type"] = "error"
        err = Element("error", self.ns, {"type": error_type}, [Element(condition, _ns.STANZA_ERRORS)])
        if text is not None:
            err.children.append(Element("text", _ns.STANZA_ERRORS, {}, [text]))
        return Element(self.name, self.ns, attrs, [err])

    # -- comparison and display -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Element):
            return NotImplemented
        return (
            self.name == other.name
            and self.ns == other.ns
            and self.attrs == other.attrs
            and self.children == other.children
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        from .serialize import to_str  # serialize needs nothing from here at import time

        return to_str(self)
