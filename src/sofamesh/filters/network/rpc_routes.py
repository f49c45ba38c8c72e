"""Compiles DubboProxy / BoltProxy route configurations into the hot path's RpcRouteTable.

Config errors raise UnsupportedConfig naming the field path; nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.rpc_routes import (
    SM,
    HeaderMatch,
    RpcRoute,
    RpcRouteConfig,
    RpcRouteTable,
    StrMatch,
)
from sofamesh.proxy.errors import UnsupportedConfig


def string_matcher(m: Any, path: str) -> StrMatch:
    which = m.WhichOneof("match_pattern")
    if which is None:
        return StrMatch(SM["any"])
    if which == "safe_regex":
        return StrMatch(SM["regex"], m.safe_regex.regex, False)
    if which in ("exact", "prefix", "suffix", "contains"):
        return StrMatch(SM[which], getattr(m, which), m.ignore_case)
    raise UnsupportedConfig(f"{path}: string match {which} is not supported")


def header_matcher(h: Any, path: str) -> HeaderMatch:
    which = h.WhichOneof("header_match_specifier")
    inv = h.invert_match
    if which is None:
        return HeaderMatch(h.name, None, True, inv)
    if which == "present_match":
        return HeaderMatch(h.name, None, h.present_match, inv)
    if which == "string_match":
        return HeaderMatch(
            h.name, string_matcher(h.string_match, f"{path}.string_match"), False, inv
        )
    if which == "exact_match":
        return HeaderMatch(h.name, StrMatch(SM["exact"], h.exact_match), False, inv)
    if which == "prefix_match":
        return HeaderMatch(h.name, StrMatch(SM["prefix"], h.prefix_match), False, inv)
    if which == "suffix_match":
        return HeaderMatch(h.name, StrMatch(SM["suffix"], h.suffix_match), False, inv)
    if which == "contains_match":
        return HeaderMatch(h.name, StrMatch(SM["contains"], h.contains_match), False, inv)
    if which == "safe_regex_match":
        return HeaderMatch(h.name, StrMatch(SM["regex"], h.safe_regex_match.regex), False, inv)
    raise UnsupportedConfig(f"{path}.{which}: header match {which} is not supported")


def compile_routes(route_configs: Any, clusters: dict, path: str) -> RpcRouteTable:
    configs = []
    for ci, rc in enumerate(route_configs):
        cpath = f"{path}.route_config[{ci}]"
        routes = []
        for ri, r in enumerate(rc.routes):
            rpath = f"{cpath}.routes[{ri}]"
            mm = r.match.method
            if len(mm.params_match):
                raise UnsupportedConfig(
                    f"{rpath}.match.method.params_match: parameter matching is not supported"
                )
            method = None
            if r.match.HasField("method") and mm.HasField("name"):
                method = string_matcher(mm.name, f"{rpath}.match.method.name")
            headers = [
                header_matcher(h, f"{rpath}.match.headers[{hi}]")
                for hi, h in enumerate(r.match.headers)
            ]
            if r.route.HasField("metadata_match"):
                raise UnsupportedConfig(
                    f"{rpath}.route.metadata_match: endpoint metadata matching is not supported"
                )
            which = r.route.WhichOneof("cluster_specifier")
            if which == "cluster":
                if r.route.cluster not in clusters:
                    raise UnsupportedConfig(
                        f"{rpath}.route.cluster: unknown cluster {r.route.cluster!r}"
                    )
                routes.append(RpcRoute(method, headers, r.route.cluster, None))
            elif which == "weighted_clusters":
                ws = []
                for wi, wc in enumerate(r.route.weighted_clusters.clusters):
                    if wc.name not in clusters:
                        raise UnsupportedConfig(
                            f"{rpath}.route.weighted_clusters.clusters"
                            f"[{wi}].name: unknown cluster {wc.name!r}"
                        )
                    w = wc.weight.value if wc.HasField("weight") else 1
                    if w > 0:
                        ws.append((wc.name, w))
                if not ws:
                    raise UnsupportedConfig(f"{rpath}.route.weighted_clusters: no weight")
                routes.append(RpcRoute(method, headers, "", ws))
            else:
                raise UnsupportedConfig(
                    f"{rpath}.route: a cluster or weighted_clusters is required"
                )
        configs.append(RpcRouteConfig(rc.interface or "*", rc.group, rc.version, routes))
    return RpcRouteTable(configs)
