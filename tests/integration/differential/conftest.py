"""Fixtures for the differential suite: the same bootstrap run by real Envoy and by sofamesh.

SOFAMESH_DIFF_CANDIDATE=envoy runs a second Envoy as the candidate: a self-check that the
normalisations are enough for two identical proxies to agree (the suite must pass then).
SOFAMESH_DIFF_CONCURRENCY=N runs the candidate with --concurrency N (default 1; Envoy always 1).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # `tests.support` is imported as a namespace package from the root
    sys.path.insert(0, str(ROOT))

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.differential import harness
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream


def _candidate() -> tuple[str, int]:
    return (
        os.environ.get("SOFAMESH_DIFF_CANDIDATE", "sofamesh"),
        int(os.environ.get("SOFAMESH_DIFF_CONCURRENCY", "1")),
    )


def _distinct_ports(n: int, exclude: set[int]) -> list[int]:
    """n free ports, all different (separate free_port() calls may return the same one)."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p not in out and p not in exclude:
            out.append(p)
    return out


_BIND_RACE = ("cannot bind", "Address already in use", "EADDRINUSE")


def _deployment(kind: str, workdir: Path, concurrency: int = 1, feature=None):
    upstream = RecordingUpstream(["a", "b"]).start()
    for attempt in range(3):
        # free_port() releases the port before the proxy binds it; on a busy machine another
        # process can take it in between. Only that start-up failure is retried.
        port, admin, dead = _distinct_ports(3, exclude=set(upstream.ports.values()))
        access_log = workdir / "access.log" if feature and feature.access_log else None
        boot = harness.bootstrap(
            port,
            admin,
            upstream.ports,
            dead,
            feature=feature,
            access_log_path=str(access_log) if access_log else None,
        )
        if kind == "envoy":
            proxy = ProxyProcess.envoy(envoy_binary(), boot, workdir, concurrency=concurrency)
        else:
            proxy = ProxyProcess.sofamesh(
                sofamesh_command(), boot, workdir, concurrency=concurrency
            )
        try:
            proxy.start()
            return harness.Deployment(kind, port, upstream, proxy, access_log)
        except RuntimeError as e:
            proxy.stop()
            if attempt < 2 and any(s in str(e) for s in _BIND_RACE):
                continue
            upstream.stop()
            raise
        except Exception:
            proxy.stop()
            upstream.stop()
            raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def envoy_dep(tmp_path_factory):
    dep = _deployment("envoy", tmp_path_factory.mktemp("envoy"))
    try:
        yield dep
    finally:
        dep.proxy.stop()
        dep.upstream.stop()


@pytest.fixture(scope="module")
def candidate_dep(tmp_path_factory):
    kind, concurrency = _candidate()
    dep = _deployment(kind, tmp_path_factory.mktemp(kind), concurrency)
    try:
        yield dep
    finally:
        dep.proxy.stop()
        dep.upstream.stop()


@pytest.fixture
def feature_pair(tmp_path):
    """Start (envoy, candidate) deployments with a harness.Feature; both stopped at teardown."""
    started: list = []

    def start(feature):
        kind, concurrency = _candidate()
        envoy = _deployment("envoy", tmp_path / "envoy", 1, feature)
        started.append(envoy)
        candidate = _deployment(kind, tmp_path / kind, concurrency, feature)
        started.append(candidate)
        return envoy, candidate

    try:
        yield start
    finally:
        for dep in started:
            dep.proxy.stop()
            dep.upstream.stop()
