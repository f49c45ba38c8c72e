"""sofamesh proxy-status's rows and table from /debug/connections bodies (no pilot)."""

from __future__ import annotations

from sofamesh.pilot.proxy_status import rows, table


def conn(node: str, statuses: dict, nack: dict | None = None, **extra) -> dict:
    types = {
        t: {"status": s, "version_sent": "v2", "version_acked": "v1", "nack": nack}
        for t, s in statuses.items()
    }
    return {"node": node, "node_info": None, "cluster": "c", "types": types, **extra}


def test_rows_and_table_stale_nacked_not_sent():
    body = {
        "pilot": "sofamesh-pilot@h",
        "connections": [
            conn(
                "sidecar~10.0.0.1~b.ns~ns.svc.cluster.local",
                {"cds": "STALE", "lds": "SYNCED", "eds": "NACKED"},
                nack={"error": "bad endpoint"},
                node_info={"pod": "b", "namespace": "ns"},
                user_agent="envoy/1.40.0",
            ),
            conn("grpc-client-7", {"lds": "SYNCED"}, user_agent="grpc"),
        ],
    }
    rs = rows([("http://p:15020", body)])
    assert [r["name"] for r in rs] == ["b.ns", "grpc-client-7"]
    assert rs[0]["types"]["cds"] == {
        "status": "STALE",
        "version_sent": "v2",
        "version_acked": "v1",
        "error": "",  # an old NACK is not shown once the type is not NACKED
    }
    assert rs[0]["types"]["eds"]["error"] == "bad endpoint"
    assert rs[0]["types"]["rds"] == {"status": "NOT SENT"}
    out = table(rs).splitlines()
    assert out[0].split() == ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "PILOT", "VERSION"]
    assert out[1].split() == [
        "b.ns",
        "c",
        "STALE",
        "SYNCED",
        "NACKED",
        "NOT",
        "SENT",
        "sofamesh-pilot@h",
        "envoy/1.40.0",
    ]
    assert out[-2:] == ["NACKED:", "  b.ns EDS: bad endpoint"]
    # columns line up: every row's CDS cell starts where the header's does
    col = out[0].index("CDS")
    assert out[1][col:].startswith("STALE") and out[2][col:].startswith("NOT SENT")
