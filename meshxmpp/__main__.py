"""``python -m meshxmpp``: the same as the ``meshxmpp`` command."""

from __future__ import annotations

from meshxmpp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
