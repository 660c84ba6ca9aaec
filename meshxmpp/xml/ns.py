"""Every namespace URI meshxmpp uses, defined once."""

from __future__ import annotations

# Core (RFC 6120 / RFC 6121)
CLIENT = "jabber:client"
SERVER = "jabber:server"
COMPONENT = "jabber:component:accept"  # XEP-0114
STREAMS = "http://etherx.jabber.org/streams"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"  # RFC 3921 legacy, advertised as optional
ROSTER = "jabber:iq:roster"
ROSTER_VER = "urn:xmpp:features:rosterver"
PRE_APPROVAL = "urn:xmpp:features:pre-approval"
XML = "http://www.w3.org/XML/1998/namespace"

# Extensions
DISCO_INFO = "http://jabber.org/protocol/disco#info"  # XEP-0030
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
PING = "urn:xmpp:ping"  # XEP-0199
VERSION = "jabber:iq:version"  # XEP-0092
DELAY = "urn:xmpp:delay"  # XEP-0203
CARBONS = "urn:xmpp:carbons:2"  # XEP-0280
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
HINTS = "urn:xmpp:hints"  # XEP-0334
STANZA_ID = "urn:xmpp:sid:0"  # XEP-0359
CAPS = "http://jabber.org/protocol/caps"  # XEP-0115
DATA_FORMS = "jabber:x:data"  # XEP-0004
REGISTER = "jabber:iq:register"  # XEP-0077
PRIVATE = "jabber:iq:private"  # XEP-0049
LAST = "jabber:iq:last"  # XEP-0012
TIME = "urn:xmpp:time"  # XEP-0202
VCARD = "vcard-temp"  # XEP-0054
RECEIPTS = "urn:xmpp:receipts"  # XEP-0184
CHATSTATES = "http://jabber.org/protocol/chatstates"  # XEP-0085
BLOCKING = "urn:xmpp:blocking"  # XEP-0191
CSI = "urn:xmpp:csi:0"  # XEP-0352
SM = "urn:xmpp:sm:3"  # XEP-0198
MAM = "urn:xmpp:mam:2"  # XEP-0313
RSM = "http://jabber.org/protocol/rsm"  # XEP-0059
MUC = "http://jabber.org/protocol/muc"  # XEP-0045
MUC_USER = "http://jabber.org/protocol/muc#user"
MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
MUC_OWNER = "http://jabber.org/protocol/muc#owner"
CONFERENCE = "jabber:x:conference"  # XEP-0249 (added to mediated MUC invitations)
MUC_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"  # FORM_TYPE of the MUC owner form
MUC_ROOMINFO = "http://jabber.org/protocol/muc#roominfo"  # FORM_TYPE of the room's disco#info form
