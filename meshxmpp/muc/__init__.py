"""Multi-user chat (XEP-0045): ``room`` is the pure per-room state machine; ``service`` (the
conference domain) places rooms across the mesh and persists them."""

from __future__ import annotations

from meshxmpp.muc._room_config import RoomConfig
from meshxmpp.muc._room_stanzas import AFFILIATIONS, ROLES
from meshxmpp.muc.room import Room

__all__ = ["AFFILIATIONS", "ROLES", "Room", "RoomConfig"]
