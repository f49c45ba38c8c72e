"""Validation of xDS resources at scale: the full check (`config.validate.validate_resource`)
once per distinct shape, and a direct check for the plain endpoint assignments a control
plane sends by the thousand.

PERF(benchmarks/xds_scale.py): at 10,000 services the full check (protoc-gen-validate rules,
then what sofamesh implements, walking every field) took ~60% of a sidecar's start: ~300 us
per ClusterLoadAssignment and ~150 us per Cluster, while a mesh's clusters differ only by
name and its assignments only by addresses, ports, weights and health.

- Clusters (and listeners, route configs): a resource whose bytes, with its `name` (and an
  EDS cluster's `service_name`) cleared, equal those of a resource that passed the full
  check passes too: no rule of either check reads those values (a name is any string).
- Route configurations by parts: the configuration without its virtual hosts, then each
  virtual host alone (inside a one-host configuration) with its name, plain host-name
  domains and route clusters replaced by placeholders (a virtual host already checked in
  the previous version passes as it is), then the domains across hosts (unique, as
  Envoy). Whatever fails is checked whole again, so problems carry the usual paths.
- ClusterLoadAssignments made only of the fields below are checked field by field against
  the rules that apply to them (Envoy's PGV rules, quoted); anything else takes the full
  check. `tests/unit/xds/test_checks.py` holds that whatever passes here passes there.
"""

from __future__ import annotations

import re
from typing import Any

from sofamesh._core import xds_wire
from sofamesh.config.errors import Problem

_CACHE_MAX = 1024

# Fields a plain assignment may carry, per message (what the pilot and Istio send).
_CLA = frozenset({"cluster_name", "endpoints"})
_LLE = frozenset({"locality", "lb_endpoints", "load_balancing_weight"})
_LBE = frozenset({"endpoint", "health_status", "load_balancing_weight"})
_EP = frozenset({"address"})
_ADDR = frozenset({"socket_address"})
_SA = frozenset({"address", "port_value"})
_LOC = frozenset({"region", "zone", "sub_zone"})

_PLAIN_DOMAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(:[0-9]{1,5})?$")
_RC = "envoy.config.route.v3.RouteConfiguration"
_RC_PLAIN = frozenset({"name", "virtual_hosts"})
_VH = "envoy.config.route.v3.VirtualHost"


def _names(msg: Any) -> set[str]:
    return {fd.name for fd, _ in msg.ListFields()}


def _others(desc: Any, allowed: frozenset[str]) -> Any:
    """A test that `msg` (of descriptor `desc`) sets none of the fields outside `allowed`.

    PERF(benchmarks/xds_scale.py): ListFields() on every sub-message cost ~42 us per
    5-endpoint assignment (0.45 s of a 10,000-service start); asking for each other field
    by name costs a fraction of that."""
    singular, repeated, scalars = [], [], []
    for f in desc.fields:
        if f.name in allowed:
            continue
        if f.is_repeated:
            repeated.append(f.name)
        elif f.message_type is not None or f.containing_oneof is not None:
            singular.append(f.name)
        else:
            scalars.append((f.name, f.default_value))

    def none_set(msg: Any) -> bool:
        for n in singular:
            if msg.HasField(n):
                return False
        for n in repeated:
            if len(getattr(msg, n)):
                return False
        for n, d in scalars:
            if getattr(msg, n) != d:
                return False
        return True

    return none_set


_PLAIN: dict[str, Any] = {}


def _plain_checks() -> tuple:
    if not _PLAIN:
        from envoy.config.core.v3 import address_pb2, base_pb2
        from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
        from envoy.config.endpoint.v3 import endpoint_pb2

        for key, desc, allowed in (
            ("cla", endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR, _CLA),
            ("lle", ec.LocalityLbEndpoints.DESCRIPTOR, _LLE),
            ("lbe", ec.LbEndpoint.DESCRIPTOR, _LBE),
            ("ep", ec.Endpoint.DESCRIPTOR, _EP),
            ("addr", address_pb2.Address.DESCRIPTOR, _ADDR),
            ("sa", address_pb2.SocketAddress.DESCRIPTOR, _SA),
            ("loc", base_pb2.Locality.DESCRIPTOR, _LOC),
        ):
            _PLAIN[key] = _others(desc, allowed)
    p = _PLAIN
    return p["cla"], p["lle"], p["lbe"], p["ep"], p["addr"], p["sa"], p["loc"]


def _vlen(n: int) -> int:
    """Bytes of a varint."""
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _ld(n: int) -> int:
    """Bytes of a length-delimited field of n bytes (fields 1-15: one-byte tags)."""
    return 1 + _vlen(n) + n


def _slen(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode())


def plain_size(cla: Any) -> int:
    """The serialized size `cla` has if it holds nothing but the fields of a plain
    assignment, each within its rules; -1 if a rule fails. Equal to `cla.ByteSize()` only
    when no other field is set (any other field adds bytes).

    PERF(benchmarks/xds_scale.py): asking each message for every field it must not hold
    (plain_assignment_ok) was 14 us of an assignment of 5 hosts; this is a few."""
    if not cla.cluster_name:
        return -1
    total = _ld(_slen(cla.cluster_name))  # 1: cluster_name
    for lle in cla.endpoints:  # 2: endpoints
        size = 0
        if lle.HasField("locality"):  # 1: region 1, zone 2, sub_zone 3
            loc = lle.locality
            n = 0
            for v in (loc.region, loc.zone, loc.sub_zone):
                if v:
                    n += _ld(_slen(v))
            size += _ld(n)
        for lbe in lle.lb_endpoints:  # 2: lb_endpoints
            sa = lbe.endpoint.address.socket_address
            port = sa.port_value
            if not sa.address or port > 65535:
                return -1  # min_len 1; port_value lte 65535
            n = _ld(_slen(sa.address)) + (1 + _vlen(port) if port else 0)  # 2, 3
            n = _ld(_ld(_ld(n)))  # Address 1: socket_address, in Endpoint 1, in LbEndpoint 1
            hs = lbe.health_status
            if hs:
                if not 0 < hs <= 5:
                    return -1  # HealthStatus: defined values only
                n += 1 + _vlen(hs)  # 2: health_status
            if lbe.HasField("load_balancing_weight"):  # 4: a UInt32Value, gte 1
                w = lbe.load_balancing_weight.value
                if w < 1:
                    return -1
                n += _ld(1 + _vlen(w))
            size += _ld(n)
        if lle.HasField("load_balancing_weight"):  # 3: a UInt32Value, gte 1
            w = lle.load_balancing_weight.value
            if w < 1:
                return -1
            size += _ld(1 + _vlen(w))
        total += _ld(size)
    return total


def plain_assignment_ok(cla: Any) -> bool:
    """True when `cla` is a plain assignment that satisfies every rule; False means "take
    the full check" (which then says what is wrong, if anything)."""
    cla_ok, lle_ok, lbe_ok, ep_ok, addr_ok, sa_ok, loc_ok = _plain_checks()
    if not cla.cluster_name or not cla_ok(cla):  # cluster_name: min_len 1
        return False
    for lle in cla.endpoints:
        if not lle_ok(lle):
            return False
        if lle.HasField("load_balancing_weight") and lle.load_balancing_weight.value < 1:
            return False  # LocalityLbEndpoints.load_balancing_weight: uint32 gte 1
        if lle.HasField("locality") and not loc_ok(lle.locality):
            return False
        for lbe in lle.lb_endpoints:
            if not lbe_ok(lbe):
                return False
            if lbe.HasField("load_balancing_weight") and lbe.load_balancing_weight.value < 1:
                return False  # LbEndpoint.load_balancing_weight: uint32 gte 1
            if not 0 <= lbe.health_status <= 5:  # HealthStatus: defined values only
                return False
            ep = lbe.endpoint
            if not ep_ok(ep):
                return False
            addr = ep.address
            if not addr.HasField("socket_address") or not addr_ok(addr):
                return False
            sa = addr.socket_address
            if not sa_ok(sa) or not sa.address or sa.port_value > 65535:
                return False  # min_len 1; port_value lte 65535
    return True


class ResourceChecks:
    """`check(resource)`: the problems of one resource, as validate_resource gives them."""

    def __init__(self) -> None:
        # shapes that passed the full check: (kind, bytes), or (_VH, domains, bytes)
        self._good: dict[tuple[Any, ...], bool] = {}
        self._vhosts: dict[str, set[bytes]] = {}  # route config -> its hosts that passed
        self.full = 0  # full checks run (tests, benchmarks)

    def check(
        self,
        msg: Any,
        shape: bytes | None = None,
        parts: list[bytes] | None = None,
        bare: bool = False,
    ) -> list[Problem]:
        """shape: the bytes of a named resource without the values no rule reads, when
        the caller has them (proxy/dynamic.py: a cluster's, from its wire bytes). parts: a
        route config's virtual hosts as received (xds_wire.repeated), one per host; bare:
        its bytes hold nothing but its name and hosts."""
        from sofamesh.config.validate import validate_resource

        kind = msg.DESCRIPTOR.full_name
        if kind == "envoy.config.endpoint.v3.ClusterLoadAssignment":
            if plain_size(msg) == msg.ByteSize() or plain_assignment_ok(msg):
                return []
            self.full += 1
            return validate_resource(msg)
        if kind == _RC and msg.virtual_hosts and msg.name:
            if self._route_config_ok(msg, parts, bare):
                return []
            self.full += 1
            return validate_resource(msg)
        return self._by_shape(kind, msg, shape=shape)

    def _by_shape(
        self, kind: str, msg: Any, shaped: bool = False, shape: bytes | None = None
    ) -> list[Problem]:
        """shaped: `msg` holds placeholders already; its bytes are the shape."""
        from sofamesh.config.validate import validate_resource

        if shape is None:
            shape = msg.SerializeToString(deterministic=True) if shaped else self._shape(msg)
        key = (kind, shape)
        if key in self._good:
            return []
        self.full += 1
        problems = validate_resource(msg)
        if not problems:
            if len(self._good) >= _CACHE_MAX:
                self._good.pop(next(iter(self._good)))
            self._good[key] = True
        return problems

    def _route_config_ok(
        self, rc: Any, parts: list[bytes] | None = None, bare: bool = False
    ) -> bool:
        if not bare and not _names(rc) <= _RC_PLAIN:  # a name and hosts: nothing else to check
            head = type(rc)()
            head.CopyFrom(rc)
            head.ClearField("virtual_hosts")
            if self._by_shape(_RC, head):
                return False
        before = self._vhosts.get(rc.name, set())
        now: set[bytes] = set()
        seen: set[str] = set()
        for i in range(len(rc.virtual_hosts)):
            # PERF(benchmarks/xds_scale.py): from its bytes as received, a host's name,
            # domains and shape are one pass (xds_wire.vhost_shape); the placeholder copy
            # of the full check is made once per shape
            info = xds_wire.vhost_shape(parts[i], False) if parts is not None else None
            if info is not None:
                raw, domains = parts[i], info[1]  # type: ignore[index]
            else:
                vh = rc.virtual_hosts[i]
                domains = vh.domains
                raw = parts[i] if parts is not None else vh.SerializeToString(deterministic=True)
            for d in domains:
                d = d.lower()
                if d in seen:
                    return False
                seen.add(d)
            if raw not in before:
                if info is None:
                    if not self._vhost_ok(rc.virtual_hosts[i]):
                        return False
                else:
                    # the check puts placeholders for the name, the (plain) domains and the
                    # route clusters: the rest of the bytes and the domain count decide
                    key = (_VH, len(domains), info[2])
                    if key not in self._good:
                        if not self._vhost_shape_ok(rc.virtual_hosts[i]):
                            return False
                        if len(self._good) >= _CACHE_MAX:
                            self._good.pop(next(iter(self._good)))
                        self._good[key] = True
            now.add(raw)
        self._vhosts[rc.name] = now
        while len(self._vhosts) > _CACHE_MAX:
            self._vhosts.pop(next(iter(self._vhosts)))
        return True

    def _vhost_ok(self, vh: Any) -> bool:
        if not vh.name or not vh.domains:
            return False
        return self._vhost_shape_ok(vh)

    def _vhost_shape_ok(self, vh: Any) -> bool:
        one = type(vh)()
        one.CopyFrom(vh)
        one.name = "v"
        for i, d in enumerate(vh.domains):
            if _PLAIN_DOMAIN.match(d):
                one.domains[i] = f"h{i}"
        for r in one.routes:
            if r.WhichOneof("action") == "route" and r.route.cluster:
                r.route.cluster = "c"
        from envoy.config.route.v3 import route_pb2

        rc = route_pb2.RouteConfiguration(name="r")
        rc.virtual_hosts.append(one)
        return not self._by_shape(_RC, rc, shaped=True)

    @staticmethod
    def _shape(msg: Any) -> bytes:
        """The resource's bytes without the values no rule reads."""
        if not msg.name:
            return msg.SerializeToString(deterministic=True)  # name: the full check decides
        shape = type(msg)()
        shape.CopyFrom(msg)
        shape.ClearField("name")
        if shape.DESCRIPTOR.name == "Cluster" and shape.HasField("eds_cluster_config"):
            shape.eds_cluster_config.ClearField("service_name")
        return shape.SerializeToString(deterministic=True)
