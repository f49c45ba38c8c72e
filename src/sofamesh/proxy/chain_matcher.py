"""Listener.filter_chain_matcher: a filter chain chosen by an xds matcher (what istiod
writes for waypoints and ztunnel-facing listeners) instead of each chain's
filter_chain_match, as Envoy 1.40 does.

The matcher (xds.type.matcher.v3.Matcher) reads the connection through Envoy's network
inputs (envoy.extensions.matching.common_inputs.network.v3): destination and source IP and
port, direct source IP, source type ("local"), server name, transport protocol, and
application protocols (each quoted, joined by ","). Its action is a
google.protobuf.StringValue naming a filter chain. Implemented: `matcher_tree` with
`exact_match_map`, `prefix_match_map` (the longest prefix) and `custom_match`
xds.type.matcher.v3.IPMatcher (the most specific range); `matcher_list` with
`single_predicate` (value_match), `or_matcher`, `and_matcher`, `not_matcher`; nested
matchers and `on_no_match` at every level. An input with no value, or a nested matcher
that matches nothing, goes to the enclosing `on_no_match`. No match at all: the listener's
default_filter_chain, else the connection is closed (no_filter_chain_match).
Refused by path: `keep_matching`, other inputs (filter state), other custom matchers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from sofamesh.config.support import register_extension
from sofamesh.proxy.errors import UnsupportedConfig

NET = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
STRING_ACTION = "type.googleapis.com/google.protobuf.StringValue"
IP_MATCHER = "type.googleapis.com/xds.type.matcher.v3.IPMatcher"


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _local(c: Any) -> str | None:
    local = c.src_ip is not None and (c.src_ip.is_loopback or c.src_ip == c.dst_ip)
    return "local" if local else None


# input type -> (connection info -> value or None); info is listener_chains._ConnInfo
INPUTS: dict[str, Callable[[Any], str | None]] = {
    NET + "DestinationIPInput": lambda c: _str(c.dst_ip),
    NET + "DestinationPortInput": lambda c: str(c.dst_port),
    NET + "SourceIPInput": lambda c: _str(c.src_ip),
    NET + "DirectSourceIPInput": lambda c: _str(c.src_ip),
    NET + "SourcePortInput": lambda c: str(c.src_port),
    NET + "SourceTypeInput": _local,
    NET + "ServerNameInput": lambda c: c.sni or None,
    NET + "TransportProtocolInput": lambda c: c.transport or None,
    NET + "ApplicationProtocolInput": lambda c: ",".join(f"'{a}'" for a in c.alpn) or None,
}
for _url in (*INPUTS, STRING_ACTION, IP_MATCHER):
    register_extension(_url, __name__)

Node = Callable[[Any], "str | None"]  # connection info -> chain name, or None: no match


def _input(tc: Any, path: str) -> Callable[[Any], str | None]:
    fn = INPUTS.get(tc.typed_config.type_url)
    if fn is None:
        raise UnsupportedConfig(
            f"{path}: matching input {tc.typed_config.type_url or tc.name!r} is not "
            "implemented by sofamesh for filter chains (the network inputs are: "
            f"{', '.join(sorted(u.rsplit('.', 1)[-1] for u in INPUTS))})"
        )
    return fn


class _Compiler:
    def __init__(self, names: set[str]) -> None:
        self.names = names  # the listener's filter chain names

    def matcher(self, m: Any, path: str) -> Node:
        kind = m.WhichOneof("matcher_type")
        otherwise = (
            self.on_match(m.on_no_match, f"{path}.on_no_match")
            if m.HasField("on_no_match")
            else None
        )
        if kind == "matcher_tree":
            body = self.tree(m.matcher_tree, f"{path}.matcher_tree")
        elif kind == "matcher_list":
            body = self.list(m.matcher_list, f"{path}.matcher_list")
        else:
            raise UnsupportedConfig(f"{path}: a matcher_tree or matcher_list is required")

        def match(c: Any) -> str | None:
            got = body(c)
            if got is None and otherwise is not None:
                return otherwise(c)
            return got

        return match

    def on_match(self, om: Any, path: str) -> Node:
        if om.keep_matching:
            raise UnsupportedConfig(f"{path}.keep_matching is not implemented by sofamesh")
        which = om.WhichOneof("on_match")
        if which == "matcher":
            return self.matcher(om.matcher, f"{path}.matcher")
        if which != "action":
            raise UnsupportedConfig(f"{path}: an action or a matcher is required")
        tc = om.action.typed_config
        if tc.type_url != STRING_ACTION:
            raise UnsupportedConfig(
                f"{path}.action.typed_config: a filter chain matcher's action is a "
                f"google.protobuf.StringValue naming a chain, not {tc.type_url!r}"
            )
        from google.protobuf import wrappers_pb2

        v = wrappers_pb2.StringValue()
        tc.Unpack(v)
        if v.value not in self.names:
            raise UnsupportedConfig(
                f"{path}.action: filter chain '{v.value}' is not found in the listener"
            )
        name = v.value
        return lambda c: name

    def tree(self, t: Any, path: str) -> Node:
        get = _input(t.input, f"{path}.input")
        kind = t.WhichOneof("tree_type")
        if kind == "exact_match_map":
            table = {
                k: self.on_match(v, f"{path}.exact_match_map.map[{k!r}]")
                for k, v in t.exact_match_map.map.items()
            }

            def exact(c: Any) -> str | None:
                v = get(c)
                hit = table.get(v) if v is not None else None
                return hit(c) if hit is not None else None

            return exact
        if kind == "prefix_match_map":
            items = sorted(
                (
                    (k, self.on_match(v, f"{path}.prefix_match_map.map[{k!r}]"))
                    for k, v in t.prefix_match_map.map.items()
                ),
                key=lambda kv: -len(kv[0]),
            )

            def prefix(c: Any) -> str | None:
                v = get(c)
                if v is None:
                    return None
                for k, hit in items:
                    if v.startswith(k):
                        return hit(c)
                return None

            return prefix
        if kind == "custom_match":
            return self.ip_matcher(get, t.custom_match, f"{path}.custom_match")
        raise UnsupportedConfig(f"{path}: an exact, prefix or custom match is required")

    def ip_matcher(self, get: Callable[[Any], str | None], ext: Any, path: str) -> Node:
        from xds.type.matcher.v3 import ip_pb2

        if ext.typed_config.type_url != IP_MATCHER:
            raise UnsupportedConfig(
                f"{path}: custom matcher {ext.typed_config.type_url or ext.name!r} is not "
                "implemented by sofamesh (xds.type.matcher.v3.IPMatcher is)"
            )
        m = ip_pb2.IPMatcher()
        ext.typed_config.Unpack(m)
        ranges: list[tuple[Any, Node]] = []
        for i, rm in enumerate(m.range_matchers):
            rpath = f"{path}.range_matchers[{i}]"
            hit = self.on_match(rm.on_match, f"{rpath}.on_match")
            for j, r in enumerate(rm.ranges):
                plen = r.prefix_len.value if r.HasField("prefix_len") else None
                try:
                    net = ipaddress.ip_network(
                        r.address_prefix if plen is None else f"{r.address_prefix}/{plen}",
                        strict=False,
                    )
                except ValueError as e:
                    raise UnsupportedConfig(f"{rpath}.ranges[{j}]: {e}") from None
                ranges.append((net, hit))
        ranges.sort(key=lambda nh: -nh[0].prefixlen)  # the most specific range first

        def ip(c: Any) -> str | None:
            v = get(c)
            if v is None:
                return None
            try:
                addr = ipaddress.ip_address(v)
            except ValueError:
                return None
            for net, hit in ranges:
                if addr.version == net.version and addr in net:
                    return hit(c)
            return None

        return ip

    def list(self, ml: Any, path: str) -> Node:
        entries = [
            (
                self.predicate(fm.predicate, f"{path}.matchers[{i}].predicate"),
                self.on_match(fm.on_match, f"{path}.matchers[{i}].on_match"),
            )
            for i, fm in enumerate(ml.matchers)
        ]

        def first(c: Any) -> str | None:
            for pred, hit in entries:
                if pred(c):
                    return hit(c)
            return None

        return first

    def predicate(self, p: Any, path: str) -> Callable[[Any], bool]:
        from sofamesh.proxy.routes import string_matcher

        kind = p.WhichOneof("match_type")
        kpath = f"{path}.{kind}"
        if kind == "single_predicate":
            sp = p.single_predicate
            get = _input(sp.input, f"{kpath}.input")
            if sp.WhichOneof("matcher") != "value_match":
                raise UnsupportedConfig(f"{kpath}.custom_match is not implemented by sofamesh")
            sm = string_matcher(sp.value_match, f"{kpath}.value_match")

            def single(c: Any) -> bool:
                v = get(c)
                return v is not None and sm.test(v.encode())

            return single
        if kind in ("or_matcher", "and_matcher"):
            preds = [
                self.predicate(x, f"{kpath}.predicate[{i}]")
                for i, x in enumerate(getattr(p, kind).predicate)
            ]
            if kind == "or_matcher":
                return lambda c: any(q(c) for q in preds)
            return lambda c: all(q(c) for q in preds)
        if kind == "not_matcher":
            inner = self.predicate(p.not_matcher, kpath)
            return lambda c: not inner(c)
        raise UnsupportedConfig(f"{path}: predicate {kind!r} is not implemented by sofamesh")


def compile_chain_matcher(m: Any, names: set[str], path: str) -> Node:
    """The listener's filter_chain_matcher as (connection info) -> chain name or None."""
    return _Compiler(names).matcher(m, path)
