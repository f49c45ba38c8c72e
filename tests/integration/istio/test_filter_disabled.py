"""`ListenerFilter.filter_disabled` (istiod disables the TLS and HTTP inspectors of
virtualInbound for some destination ports): a disabled http_inspector does not run for the
connection, so a chain asking for `application_protocols: [http/1.1]` does not match it and
the listener's other chain serves it. Four listeners whose http_inspector is disabled for
their own port, or not, through each predicate form (destination_port_range, or_match,
and_match, not_match, any_match); Envoy 1.40 and sofamesh answer from the same chains and
count the same http_inspector stats."""

from __future__ import annotations

import json

from tests.conftest import free_port
from tests.integration.admin.helpers import get, start_envoy, start_sofamesh, stop
from tests.integration.istio.test_filter_chain_match import _ask, _chain

INSPECTOR = {
    "name": "envoy.filters.listener.http_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3"
        ".HttpInspector"
    },
}


def _range(port: int, width: int = 1) -> dict:
    return {"destination_port_range": {"start": port, "end": port + width}}


def _predicates(port: int) -> dict[str, dict | None]:
    """listener name -> filter_disabled for a listener on `port`."""
    other = port + 1000 if port < 60000 else port - 1000
    return {
        "off_range": _range(port),  # disabled here
        "on_range": _range(other),  # disabled elsewhere only
        "off_or": {"or_match": {"rules": [_range(other), _range(port - 1, 2)]}},
        "on_and": {"and_match": {"rules": [{"any_match": True}, _range(other)]}},
        "off_not": {"not_match": _range(other)},
        "none": None,
    }


def _bootstrap(admin: int, ports: dict[str, int]) -> dict:
    listeners = []
    for name, port in ports.items():
        insp = dict(INSPECTOR)
        pred = _predicates(port)[name]
        if pred is not None:
            insp["filter_disabled"] = pred
        listeners.append(
            {
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "listener_filters": [insp],
                "filter_chains": [
                    _chain(
                        "inspected-http",
                        {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1"]},
                    ),
                    _chain("raw", {"transport_protocol": "raw_buffer"}),
                ],
            }
        )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners},
    }


def _stats(admin: int) -> dict[str, str]:
    _, text = get(admin, "/stats?filter=http_inspector")
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_filter_disabled_as_envoy(tmp_path):
    got = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin = free_port()
        ports = {n: free_port() for n in _predicates(30000)}
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(_bootstrap(admin, ports)))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            answers = {n: _ask(p, None) for n, p in ports.items()}
            got[who] = (answers, _stats(admin))
        finally:
            stop(proc)
    assert got["sofamesh"] == got["envoy"]
    assert got["envoy"][0] == {
        "off_range": "raw",
        "on_range": "inspected-http",
        "off_or": "raw",
        "on_and": "inspected-http",
        "off_not": "raw",
        "none": "inspected-http",
    }
