"""Moving users to meshxmpp from other servers: ``meshxmpp import SOURCE`` (docs/import.md).

- `meshxmpp.importer.prosody`: accounts and rosters of a Prosody data directory (file storage);
- `meshxmpp.importer.lua`: the Lua data-literal parser it reads Prosody's files with (no Lua runs).
"""

from __future__ import annotations
