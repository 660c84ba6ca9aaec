"""A room's configuration (XEP-0045 §10.2): the dataclass, its owner form (XEP-0004) and disco#info.

Pure: no trio, no clock. ``room.py`` owns the state machine; this module only converts between
``RoomConfig`` and the elements that describe it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

__all__ = ["FormError", "RoomConfig", "apply_form", "config_form", "disco_info"]

#: The history length field. XEP-0045 registers no such roomconfig field; Prosody's name is the de
#: facto one (COMPAT), and the registered ``muc#maxhistoryfetch`` is accepted as a synonym.
HISTORY_FIELD = "muc#roomconfig_historylength"
HISTORY_FIELD_ALT = "muc#maxhistoryfetch"
MAX_HISTORY = 1000


@dataclass(slots=True)
class RoomConfig:
    """The owner form's fields, JSON-ready via ``to_dict()`` / ``from_dict()``."""

    name: str = ""
    description: str = ""
    persistent: bool = False
    public: bool = True
    members_only: bool = False
    password: str | None = None
    anonymity: str = "semi"  # "semi": real JIDs to moderators only | "non": to everyone
    moderated: bool = False
    history_size: int = 20
    change_subject: bool = False  # occupants (not only moderators) may change the subject
    allow_invites: bool = True
    max_users: int = 200  # 0 or less: no limit

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoomConfig:
        """Unknown keys are ignored (a newer node may have written more)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def copy(self) -> RoomConfig:
        return dataclasses.replace(self)


class FormError(Exception):
    """A submitted form cannot be applied; ``condition`` is the stanza error condition."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        super().__init__(condition)
        self.condition = condition
        self.text = text


def _field(x: Element, var: str, type_: str, label: str, value: str | None,
           options: tuple[tuple[str, str], ...] = ()) -> None:
    f = x.add("field", attrs={"var": var, "type": type_, **({"label": label} if label else {})})
    for opt_value, opt_label in options:
        f.add("option", attrs={"label": opt_label}).add("value", text=opt_value)
    if value is not None:
        f.add("value", text=value)


def _b(v: bool) -> str:
    return "1" if v else "0"


def config_form(cfg: RoomConfig, room: str) -> Element:
    """The ``<x xmlns='jabber:x:data' type='form'/>`` an owner gets (XEP-0045 §10.2)."""
    x = Element("x", ns.DATA_FORMS, {"type": "form"})
    x.add("title", text=f"Configuration for {room}")
    _field(x, "FORM_TYPE", "hidden", "", ns.MUC_ROOMCONFIG)
    _field(x, "muc#roomconfig_roomname", "text-single", "Natural-language room name", cfg.name)
    _field(x, "muc#roomconfig_roomdesc", "text-single", "Short description of the room", cfg.description)
    _field(x, "muc#roomconfig_persistentroom", "boolean", "Make room persistent", _b(cfg.persistent))
    _field(x, "muc#roomconfig_publicroom", "boolean", "Make room publicly searchable", _b(cfg.public))
    _field(x, "muc#roomconfig_membersonly", "boolean", "Make room members-only", _b(cfg.members_only))
    _field(x, "muc#roomconfig_passwordprotectedroom", "boolean", "Password required to enter",
           _b(cfg.password is not None))
    _field(x, "muc#roomconfig_roomsecret", "text-private", "Password", cfg.password or "")
    _field(x, "muc#roomconfig_whois", "list-single", "Who may discover real JIDs",
           "anyone" if cfg.anonymity == "non" else "moderators",
           (("moderators", "Moderators only"), ("anyone", "Anyone")))
    _field(x, "muc#roomconfig_moderatedroom", "boolean", "Make room moderated", _b(cfg.moderated))
    _field(x, "muc#roomconfig_changesubject", "boolean", "Allow occupants to change the subject",
           _b(cfg.change_subject))
    _field(x, "muc#roomconfig_allowinvites", "boolean", "Allow occupants to invite others",
           _b(cfg.allow_invites))
    _field(x, "muc#roomconfig_maxusers", "text-single", "Maximum number of occupants (0: no limit)",
           str(cfg.max_users))
    _field(x, HISTORY_FIELD, "text-single", "Number of messages kept as history", str(cfg.history_size))
    return x


def _values(x: Element) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in x.findall("field", ns.DATA_FORMS):
        var = f.get("var")
        if var is not None:
            out[var] = [v.text for v in f.findall("value", ns.DATA_FORMS)]
    return out


def _bool(var: str, vals: list[str]) -> bool:
    v = vals[0].strip().lower() if vals else "0"
    if v in ("1", "true"):
        return True
    if v in ("0", "false", ""):
        return False
    raise FormError("not-acceptable", f"{var}: not a boolean")


def _int(var: str, vals: list[str], *, none_is: int | None = None) -> int:
    v = vals[0].strip() if vals else ""
    if none_is is not None and v.lower() in ("", "none"):
        return none_is
    try:
        n = int(v)
    except ValueError:
        raise FormError("not-acceptable", f"{var}: not a number") from None
    if n < 0:
        raise FormError("not-acceptable", f"{var}: negative")
    return n


def apply_form(cfg: RoomConfig, x: Element) -> RoomConfig:
    """A new config: ``cfg`` with the submitted fields of ``x`` (type submit) applied.

    Fields not submitted keep their value (an empty submit is the instant room). Raises FormError.
    """
    vals = _values(x)
    form_type = vals.get("FORM_TYPE")
    if form_type is not None and form_type[:1] != [ns.MUC_ROOMCONFIG]:
        raise FormError("bad-request", "FORM_TYPE is not muc#roomconfig")
    new = cfg.copy()

    def text(var: str) -> str | None:
        v = vals.get(var)
        return None if v is None else "\n".join(v)

    if (s := text("muc#roomconfig_roomname")) is not None:
        new.name = s
    if (s := text("muc#roomconfig_roomdesc")) is not None:
        new.description = s
    for var, attr in (("muc#roomconfig_persistentroom", "persistent"), ("muc#roomconfig_publicroom", "public"),
                      ("muc#roomconfig_membersonly", "members_only"),
                      ("muc#roomconfig_moderatedroom", "moderated"),
                      ("muc#roomconfig_changesubject", "change_subject"),
                      ("muc#roomconfig_allowinvites", "allow_invites")):
        if var in vals:
            setattr(new, attr, _bool(var, vals[var]))
    if "muc#roomconfig_whois" in vals:
        whois = (vals["muc#roomconfig_whois"][:1] or [""])[0]
        if whois not in ("moderators", "anyone"):
            raise FormError("not-acceptable", "muc#roomconfig_whois: moderators or anyone")
        new.anonymity = "non" if whois == "anyone" else "semi"
    if "muc#roomconfig_maxusers" in vals:
        new.max_users = _int("muc#roomconfig_maxusers", vals["muc#roomconfig_maxusers"], none_is=0)
    for var in (HISTORY_FIELD, HISTORY_FIELD_ALT):
        if var in vals:
            new.history_size = min(_int(var, vals[var]), MAX_HISTORY)
    # Password: "protected" defaults to what it was; the secret to the old one.
    protected = cfg.password is not None
    if "muc#roomconfig_passwordprotectedroom" in vals:
        protected = _bool("muc#roomconfig_passwordprotectedroom", vals["muc#roomconfig_passwordprotectedroom"])
    secret = text("muc#roomconfig_roomsecret")
    if secret is None:
        secret = cfg.password
    elif "muc#roomconfig_passwordprotectedroom" not in vals and secret:
        protected = True  # a secret alone asks for protection
    if protected and not secret:
        raise FormError("not-acceptable", "a password-protected room needs muc#roomconfig_roomsecret")
    new.password = secret if protected else None
    return new


def disco_info(cfg: RoomConfig, room: str, *, occupants: int, subject: str | None) -> Element:
    """The room's ``<query xmlns=disco#info>`` (XEP-0045 §6.4), with the muc#roominfo form."""
    q = Element("query", ns.DISCO_INFO)
    q.add("identity", attrs={"category": "conference", "type": "text", "name": cfg.name or room})
    features = [
        ns.MUC,
        "muc_persistent" if cfg.persistent else "muc_temporary",
        "muc_membersonly" if cfg.members_only else "muc_open",
        "muc_passwordprotected" if cfg.password is not None else "muc_unsecured",
        "muc_nonanonymous" if cfg.anonymity == "non" else "muc_semianonymous",
        "muc_moderated" if cfg.moderated else "muc_unmoderated",
        "muc_public" if cfg.public else "muc_hidden",
        f"{ns.MUC}#self-ping-optimization",  # XEP-0410: the room answers self-pings itself
        ns.DISCO_INFO,
        ns.PING,
    ]
    for f in features:
        q.add("feature", attrs={"var": f})
    x = q.add("x", ns.DATA_FORMS, {"type": "result"})
    _field(x, "FORM_TYPE", "hidden", "", ns.MUC_ROOMINFO)
    _field(x, "muc#roominfo_description", "text-single", "Description", cfg.description)
    _field(x, "muc#roominfo_occupants", "text-single", "Number of occupants", str(occupants))
    _field(x, "muc#roominfo_subject", "text-single", "Subject", subject or "")
    _field(x, "muc#roominfo_changesubject", "boolean", "Occupants may change the subject",
           _b(cfg.change_subject))
    _field(x, "muc#maxhistoryfetch", "text-single", "Maximum history", str(cfg.history_size))
    return q
