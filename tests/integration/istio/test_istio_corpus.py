"""The Istio corpus (tests/fixtures/istio, built from Istio's own test data): Envoy 1.40
accepts each config (the envoy/ copy, without the filters only Istio's Envoy build has),
and `sofamesh proxy --mode validate` never calls one invalid: it accepts it, or refuses it
only by naming what it does not implement, with the field path. Istio's own filters never
appear among the refusals (they pass through)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import FIXTURES, envoy_binary, sofamesh_command

CORPUS = FIXTURES / "istio"
FILES = sorted(p.name for p in CORPUS.glob("*.json"))
# Configs sofamesh accepts whole (regression guard; the rest are refused by name only).
ACCEPTED = {
    "bootstrap_all.json",
    "bootstrap_default.json",
    "bootstrap_stats_inclusion.json",
    "gateway_istio_http.json",
    "gateway_k8s_http.json",
    "outbound_http_routes.json",
    "proxyconfig_main_internal.json",
    "sidecar_inbound_permissive.json",
    "sidecar_outbound_http.json",
    "sidecar_outbound_tcp.json",
    "sidecar_virtual_outbound.json",
    "sidecar_29_listeners.json",
    "waypoint_internal.json",
}


def _validate(cmd: list[str], name: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: PLW1510 - the exit code is what is tested
        [*cmd, "--mode", "validate", "-c", name, "-l", "critical"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_corpus_is_complete():
    assert len(FILES) == 13
    assert sorted(p.name for p in (CORPUS / "envoy").glob("*.json")) == FILES


@pytest.mark.parametrize("name", FILES)
def test_envoy_accepts(name):
    r = _validate([envoy_binary()], name, CORPUS / "envoy")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"configuration '{name}' OK" in r.stdout


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("copy", ["istio", "envoy"])
def test_sofamesh_verdict(name, copy):
    cwd = CORPUS if copy == "istio" else CORPUS / "envoy"
    r = _validate([*sofamesh_command(), "proxy"], name, cwd)
    if name in ACCEPTED:  # accepted whole once: must stay so
        assert r.returncode == 0, r.stderr
    if r.returncode == 0:
        assert f"configuration '{name}' OK" in r.stdout
        return
    assert r.returncode == 1, r.stdout + r.stderr
    msg = r.stderr.split("error initializing configuration", 1)[1].split("': ", 1)[1]
    findings = [line for line in msg.splitlines() if line.strip()]
    assert findings
    for line in findings:
        # Envoy accepts this config: a refusal may only name what sofamesh lacks
        assert "not implemented by sofamesh" in line, line
        path = line.split(":", 1)[0].strip()
        assert path, f"no field path in {line!r}"
        for istio in ("istio.", "io.istio.", "stats.PluginConfig", "metadataexchange"):
            assert istio not in line, f"an Istio filter was refused: {line}"
