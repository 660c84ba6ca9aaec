from __future__ import annotations

import meshxmpp


def test_public_names() -> None:
    assert meshxmpp.__version__ == "0.1.0"
    assert meshxmpp.Node.__name__ == "Node"
    assert meshxmpp.Config.__name__ == "Config"
    assert str(meshxmpp.JID.parse("Alice@Example.org/x")) == "alice@example.org/x"
