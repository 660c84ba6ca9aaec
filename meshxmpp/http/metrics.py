"""``GET /metrics``: the node's counters in the Prometheus text format or OpenMetrics 1.0, by hand.

No client library at run time: a scrape reads the statistics snapshots the parts already keep
(``router.stats``, the mesh core's ``statistics()``, the listeners' ``statistics()``) into `Family`
values, and `render` writes them out, escaping label values and help text as each format requires.
The client picks the format with ``Accept``: ``application/openmetrics-text`` gets OpenMetrics
(``# EOF`` at the end), anything else the Prometheus text format 0.0.4.

What ``ctx`` reaches is read here (`node_families`). Other parts add theirs through the hub event
``metrics/collect`` (`Collection`, fired with ``fire_all``): `http.server.HttpServer` adds the
HTTP, client-listener and offline counters that way. docs/operations.md lists every metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshxmpp.http._base import Request, Response
from meshxmpp.routing import policy

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

__all__ = [
    "COLLECT_EVENT",
    "OPENMETRICS",
    "PROMETHEUS",
    "Collection",
    "Family",
    "OfflineCounter",
    "metrics",
    "node_families",
    "render",
]

PREFIX = "meshxmpp_"
#: Hub event fired (``fire_all``) with a `Collection` on every scrape.
COLLECT_EVENT = "metrics/collect"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: Above every feature's handler of ``message/offline``: it counts, returns None, the chain goes on.
OFFLINE_HOOK_PRIORITY = 10_000
_COMPONENT_RESOURCE = "component"  # mesh.service.COMPONENT_RESOURCE: a component marker, not a session

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. ``name`` without the ``meshxmpp_`` prefix nor (counters) ``_total``."""

    name: str
    type: str  #: "counter" or "gauge"
    help: str
    samples: tuple[tuple[Labels, float], ...]

    @classmethod
    def one(cls, name: str, type_: str, help_: str, value: float) -> Family:
        return cls(name, type_, help_, (((), value),))

    @classmethod
    def by(cls, name: str, type_: str, help_: str, label: str, values: Mapping[str, float]) -> Family:
        samples = tuple((((label, k),), v) for k, v in sorted(values.items()))
        return cls(name, type_, help_, samples)


class Collection:
    """The families of one scrape; the first family of a name wins (two sources, one name)."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}

    def add(self, family: Family) -> None:
        self.families.setdefault(family.name, family)

    def extend(self, families: Iterable[Family]) -> None:
        for family in families:
            self.add(family)


# -- exposition ----------------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def render(families: Iterable[Family], *, openmetrics: bool = False) -> str:
    """The exposition text. Prometheus format: a counter family is named ``x_total``; OpenMetrics:
    ``x``, with ``x_total`` samples, and ``# EOF`` closes the text."""
    out: list[str] = []
    for f in families:
        name = PREFIX + f.name
        sample = name + "_total" if f.type == "counter" else name
        family = name if openmetrics else sample
        out.append(f"# HELP {family} {_escape_help(f.help, openmetrics)}\n")
        out.append(f"# TYPE {family} {f.type}\n")
        for labels, value in f.samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                out.append(f"{sample}{{{text}}} {_value(value)}\n")
            else:
                out.append(f"{sample} {_value(value)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out)


def wants_openmetrics(accept: str) -> bool:
    for item in accept.split(","):
        media, _, params = item.partition(";")
        if media.strip().lower() == "application/openmetrics-text":
            q = next((p.split("=", 1)[1] for p in params.split(";") if p.strip().startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return False
    return False


# -- what ctx reaches ----------------------------------------------------------------------------


def node_families(ctx: NodeContext) -> list[Family]:
    """Sessions, routing decisions and (with a mesh) members, forwarding and gossip counters."""
    from meshxmpp import __version__

    node = str(getattr(ctx, "node_name", "local"))
    out: list[Family] = [
        Family("info", "gauge", "Always 1; the labels say which node, domain and version.",
               (((("node", node), ("domain", str(ctx.domain)), ("version", __version__)), 1),)),
        Family.one("sessions", "gauge", "Client sessions bound on this node.", len(ctx.sessions)),
    ]
    routed = dict.fromkeys(policy.RULES_BY_NAME, 0)
    routed.update(ctx.router.stats)
    out.append(Family.by("stanzas_routed", "counter",
                         "Messages routed by the policy engine since start, by the rule that decided "
                         "(docs/routing.md).", "rule", routed))
    mesh = getattr(ctx, "mesh", None)
    core = getattr(mesh, "core", None)
    if mesh is None or core is None:
        out.append(Family.by("mesh_sessions", "gauge", "Client sessions per node of the mesh, as this node "
                             "sees the replicated directory.", "node", {node: len(ctx.sessions)}))
        return out
    per_node: dict[str, int] = {m.name: 0 for m in core.membership.members()}
    for member in core.directory.nodes():
        per_node[member] = sum(1 for r in core.directory.records_of(member)
                               if r.jid.resource != _COMPONENT_RESOURCE)
    out.append(Family.by("mesh_sessions", "gauge", "Client sessions per node of the mesh, as this node "
                         "sees the replicated directory.", "node", per_node))
    out += _mesh_families(mesh, core)
    return out


def _mesh_families(mesh: Any, core: Any) -> list[Family]:
    m = core.membership.statistics()
    f = core.forwarder.statistics()
    t = mesh.transport.statistics()
    c = core.counters
    members = {"alive": m.alive, "suspect": m.suspect, "dead": m.dead, "left": m.left}
    counter, gauge = "counter", "gauge"
    rows: list[tuple[str, str, str, float]] = [
        ("mesh_joined", gauge, "1 once a seed answered with the cluster's directory.", int(mesh.joined.is_set())),
        ("mesh_health_score", gauge, "Lifeguard awareness: 0 is healthy; higher means this node "
         "is slow to answer probes.", m.health_score),
        ("mesh_probes", counter, "SWIM probes sent.", m.probes_sent),
        ("mesh_probes_failed", counter, "Probes that ended with the target suspected.", m.probes_failed),
        ("mesh_indirect_probes", counter, "Indirect probes (ping-req) sent.", m.indirect_probes_sent),
        ("mesh_acks_received", counter, "Probe acks received.", m.acks_received),
        ("mesh_nacks_received", counter, "Indirect-probe nacks received.", m.nacks_received),
        ("mesh_refutations", counter, "Times this node refuted a suspicion of itself.", m.refutations),
        ("mesh_declared_dead", counter, "Members this node declared dead.", m.declared_dead),
        ("mesh_gossip_packets", counter, "Gossip packets sent.", m.gossip_packets_sent),
        ("mesh_push_pulls", counter, "Full state exchanges (push-pull) requested.", m.push_pulls_sent),
        ("mesh_directory_records", gauge, "Session records in the replicated directory.",
         len(core.directory)),
        ("mesh_directory_updates_sent", counter, "Directory deltas pushed to members.", c["updates_sent"]),
        ("mesh_directory_updates_received", counter, "Directory deltas received.", c["updates_received"]),
        ("mesh_directory_repairs", counter, "Anti-entropy digest exchanges started (convergence "
         "repairs).", c["repairs"]),
        ("mesh_forwards_in_flight", gauge, "Forwarded stanzas not yet acked, all peers.", f.in_flight),
        ("mesh_forwards_backlog", gauge, "Stanzas waiting for window room, all peers.", f.backlog),
        ("mesh_forwards_accepted", counter, "Stanzas accepted for forwarding to another node.", f.accepted),
        ("mesh_forwards_refused", counter, "Stanzas refused for forwarding (backlog full).", f.refused),
        ("mesh_forwards_retransmitted", counter, "Forwarded stanza copies sent again after a timeout.",
         f.retransmitted),
        ("mesh_forwards_acked", counter, "Forwarded stanzas a peer acked.", f.acked),
        ("mesh_forwards_returned", counter, "Forwarded stanzas handed back for re-routing (peer died or "
         "restarted).", f.returned),
        ("mesh_forwards_received", counter, "Stanzas other nodes forwarded to this one.", f.received),
        ("mesh_forwards_duplicates", counter, "Forwarded copies received again and dropped.", f.duplicates),
        ("mesh_worker_queue", gauge, "Forwarded stanzas and re-routes waiting for the mesh worker.",
         mesh.busy),
        ("mesh_links", gauge, "Authenticated links to other nodes.", t.links),
        ("mesh_dial_failures", counter, "Failed dials to other nodes.", t.dial_failures),
        ("mesh_auth_failures", counter, "Mesh handshakes with a bad proof or a failed TLS handshake.",
         t.auth_failures),
    ]
    out = [Family.by("mesh_members", gauge, "Members of the mesh by state, as this node sees them "
                     "(itself included).", "state", members)]
    out += [Family.one(name, type_, help_, value) for name, type_, help_, value in rows]
    return out


class OfflineCounter:
    """Counts the messages the router hands to offline storage (hub ``message/offline``), by type.

    It runs before the storing feature and lets it handle the message, so the count includes
    messages that feature then refuses (quota, no such account) or ignores (headlines)."""

    def __init__(self, hub: Hub) -> None:
        self.by_type: dict[str, int] = {}
        hub.hook("message/offline", self._seen, OFFLINE_HOOK_PRIORITY)

    def _seen(self, event: StanzaEvent) -> None:
        type_ = event.stanza.attrs.get("type") or "normal"
        self.by_type[type_] = self.by_type.get(type_, 0) + 1

    def families(self) -> list[Family]:
        counts = {"chat": 0, "normal": 0, **self.by_type}
        return [Family.by("offline_handoffs", "counter", "Messages handed to offline storage since the HTTP "
                          "listener started, by message type.", "type", counts)]


# -- the route ------------------------------------------------------------------------------------


async def metrics(ctx: NodeContext, request: Request) -> Response:
    """``GET /metrics``: `node_families` plus what the hub's ``metrics/collect`` handlers add."""
    collection = Collection()
    collection.extend(node_families(ctx))
    hub = getattr(ctx, "hub", None)
    if hub is not None:
        await hub.fire_all(COLLECT_EVENT, collection)
    openmetrics = wants_openmetrics(request.headers.get("accept", ""))
    text = render(collection.families.values(), openmetrics=openmetrics)
    return Response(200, text.encode("utf-8"), OPENMETRICS if openmetrics else PROMETHEUS)
