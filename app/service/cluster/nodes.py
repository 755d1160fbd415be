"""Which node an alert is about. Pure: the known nodes are given.

NodeMemoryMajorPagesFaults is a node-exporter alert, so its labels are the exporter's target:
- `node`, `nodename`, `kubernetes_node`: added by some relabelings; the node's name;
- `instance`: kube-prometheus (jsonnet) relabels it to the node name; kube-prometheus-stack and
  plain scrape configs keep `<nodeIP>:9100` (node-exporter runs with hostNetwork); others use a
  hostname, short or fully qualified, with or without a port.
The exporter's own `pod`, `namespace`, `container` and `service` labels name the node-exporter pod,
never the culprit: they are not read here (nor anywhere in the service).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from app.collectors.apiserver import is_node_name

NODE_LABELS = ("node", "nodename", "kubernetes_node", "instance")

# A loopback target is the machine the service runs on: a single-machine setup (Prometheus,
# node-exporter and this service on one host). In a cluster node-exporter is scraped by node IP.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True)
class NodeIdentity:
    name: str
    ips: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Resolution:
    kind: Literal["local", "remote", "unknown", "none", "invalid"]
    node: str | None = None  # the node's name (remote/local), or the host part seen (unknown)
    label: str | None = None  # which label decided
    value: str | None = None  # its value


def split_host(value: str) -> str:
    """`10.0.3.7:9100` -> `10.0.3.7`; `[fd00::1]:9100` -> `fd00::1`; `node-a:9100` -> `node-a`;
    a bare IPv6 address stays whole."""
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        return v[1:end] if end > 0 else v.strip("[]")
    if v.count(":") == 1:
        return v.split(":", 1)[0]
    return v  # a name, an IPv4 address, or a bare IPv6 address (several colons)


def as_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def names_match(a: str, b: str) -> bool:
    """Node names compare case-insensitively; a short name matches an FQDN with that first label
    (`ip-10-0-3-7` vs `ip-10-0-3-7.ec2.internal`), two different FQDNs never match."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    if "." in a and "." in b:
        return False
    return a.split(".", 1)[0] == b.split(".", 1)[0]


def _matches(host: str, ip: str | None, node: NodeIdentity) -> bool:
    if ip is not None:
        return ip in node.ips
    return names_match(host, node.name)


def _is_loopback(host: str, ip: str | None) -> bool:
    if ip is not None:
        return ipaddress.ip_address(ip).is_loopback
    return host.lower() in LOOPBACK_NAMES


def host_is_valid(host: str) -> bool:
    """An IP address, or a name that can be a Node's (DNS-1123, compared case-insensitively)."""
    return as_ip(host) is not None or is_node_name(host.lower().rstrip("."))


def node_for_alert(labels: dict[str, str], local: NodeIdentity, others: list[NodeIdentity]) -> Resolution:
    """Find the node in the labels, in the order of NODE_LABELS; the first label whose value names
    a known node (this one first) wins. When none does, the first present label names an unknown
    node; with no node label at all the kind is "none". A value that is neither an IP nor a
    DNS-1123 name (`x,metadata.name!=y`) is skipped; when only such values are present the kind is
    "invalid" (label and value say which)."""
    first: Resolution | None = None
    invalid: Resolution | None = None
    for label in NODE_LABELS:
        value = labels.get(label, "").strip()
        if not value:
            continue
        host = split_host(value)
        if not host_is_valid(host):
            invalid = invalid or Resolution("invalid", None, label, value)
            continue
        ip = as_ip(host)
        if _matches(host, ip, local) or _is_loopback(host, ip):
            return Resolution("local", local.name, label, value)
        for other in others:
            if _matches(host, ip, other):
                return Resolution("remote", other.name, label, value)
        if first is None:
            first = Resolution("unknown", ip or host, label, value)
    return first or invalid or Resolution("none")
