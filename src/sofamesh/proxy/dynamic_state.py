"""What proxy/dynamic.py's DynamicConfig holds per resource (_DynCluster, _DynListener,
_Held), and the small helpers and stat names it counts with."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

_EDS_STATS = (
    "update_attempt",
    "update_success",
    "update_rejected",
    "update_empty",
    "update_no_rebuild",
)
# indexes into _EDS_STATS (a cluster's StatGroup, _DynCluster.eds_stats)
_ATTEMPT, _SUCCESS, _REJECTED, _EMPTY, _NO_REBUILD = range(5)
_RDS_STATS = (
    "update_attempt",
    "update_success",
    "update_rejected",
    "update_empty",
    "config_reload",
)


def _now() -> float:
    return time.time()


def _bump(stats: Any, name: str) -> None:
    c = stats.counter(name)
    c.value += 1
    c.used = True


def _eds_bump(dc: Any, i: int) -> None:
    """PERF(benchmarks/xds_scale.py): the cluster's counter itself, not a name looked up
    (three per assignment: 50 ms of a 10k-service start)."""
    c = dc.eds_stats.c[i]
    c.value += 1
    c.used = True


def _release_free_memory() -> None:
    """Gives the heap's free pages back to the system (glibc), once the initial config is in.

    PERF(benchmarks/xds_scale.py): decoding the initial responses (MBs of protobuf at
    10,000 services) leaves freed chunks all over the heap; glibc keeps them mapped."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _warm() -> bool:
    return True


def _problems_text(problems: list) -> str:
    return "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in problems)


def _view_tls(view: Any) -> list[Any]:
    """The TLS contexts of a listener view (proxy/listener_chains.py), or []."""
    contexts = getattr(view, "tls_contexts", None)
    return contexts() if contexts is not None else []


def _chain_view(view: Any, index: int) -> Any:
    """The HcmConfig of filter chain `index` (-1: the default chain) of a listener view."""
    of = getattr(view, "chain_view", None)  # listener_chains.ListenerChains
    return of(index) if of is not None else view


def _cluster_tls(cluster: Any) -> list[Any]:
    return cluster.tls.contexts() if getattr(cluster, "tls", None) is not None else []


def _tls_pending(contexts: list[Any]) -> bool:
    return any(tc.pending() for tc in contexts)


class _Acceptor:
    """A listening socket's protocol factory: the listener's current view, so an update on
    the same address swaps what new connections get without closing the socket."""

    def __init__(self, view: Any) -> None:
        self.view = view

    def __call__(self) -> Any:
        return self.view.protocol_factory()


@dataclass
class _DynCluster:
    name: str
    version: str
    raw: bytes  # its envoy.config.cluster.v3.Cluster, serialized
    rt: Any  # proxy.cluster_build.ClusterRuntime
    eds_name: str | None
    updated: float = field(default_factory=_now)
    task: Any = None  # first DNS resolution
    eds_source: str = "ads"  # its eds_config's source key (xds/settings.py)
    eds_stats: Any = None  # stats.StatGroup of _EDS_STATS (EDS clusters)
    tls_wait: bool = False  # warming until its TLS contexts have their SDS secrets

    @property
    def config(self) -> Any:
        """Its envoy.config.cluster.v3.Cluster, parsed again from `raw` when read (admin,
        DNS refresh). PERF(benchmarks/xds_scale.py): 10,000 parsed clusters held ~12 MB."""
        from envoy.config.cluster.v3 import cluster_pb2

        return cluster_pb2.Cluster.FromString(self.raw)


@dataclass
class _DynListener:
    name: str
    version: str
    config: Any  # envoy.config.listener.v3.Listener
    raw: bytes
    view: Any  # HcmConfig or network Chain
    address: tuple[str, int]
    acceptor: _Acceptor
    server: Any  # asyncio.Server of its socket
    # (route config name, the chain's HcmConfig, its HCM proto) of each chain using rds
    rds: list[tuple[str, Any, Any]]
    hcm: Any  # the HCM proto of a listener with one chain ending in one (scoped routes)
    updated: float = field(default_factory=_now)
    info: Any = None  # proxy.server.ListenerInfo once active
    scoped: bool = False  # the HCM routes by scopes (SRDS)
    tls_wait: bool = False  # warming until its TLS contexts have their SDS secrets
    # {route config name: its rds.config_source's source key (xds/settings.py)}
    rds_sources: dict[str, str] = field(default_factory=dict)


# Cluster.name (1) and Cluster.eds_cluster_config (3).service_name (2): a cluster's shape is
# its bytes without them (xds_wire.strip_fields)
_CLUSTER_UNSHAPED = ((1,), (3, 2))
_RC_BARE = frozenset({1, 2})  # RouteConfiguration.name, .virtual_hosts


class _Held:
    """A resource accepted: its version, bytes and message. `lazy`: the message is parsed
    again from the bytes when read (endpoints and route configs are read only when a
    cluster or listener is rebuilt, and by /config_dump).

    PERF(benchmarks/xds_scale.py): 10,000 parsed ClusterLoadAssignments held ~25 MB."""

    __slots__ = ("_msg", "cls", "raw", "updated", "version")

    def __init__(self, version: str, msg: Any, raw: bytes, lazy: bool = False) -> None:
        self.version = version
        self.raw = raw
        self.updated = _now()
        self.cls = type(msg)
        self._msg = None if lazy else msg

    @property
    def msg(self) -> Any:
        if self._msg is not None:
            return self._msg
        return self.cls.FromString(self.raw)
