"""The mixer's TCP series from tcp_grpc entries: one connection closed and its bytes per
entry, by reporter, source and destination, rendered as Prometheus counters."""

from __future__ import annotations

from sofamesh.mixer.metrics import RequestMetrics


def test_tcp_entries_add_up_per_series():
    m = RequestMetrics()
    m.record_tcp(("sidecar", "front", "db"), 13, 26)
    m.record_tcp(("sidecar", "front", "db"), 7, 0)
    m.record_tcp(("other", "front", "cache"), 1, 2)
    lines = m.render()
    assert (
        'istio_tcp_connections_closed_total{reporter="sidecar",source="front",destination="db"} 2'
        in lines
    )
    assert (
        'istio_tcp_received_bytes_total{reporter="sidecar",source="front",destination="db"} 20'
        in lines
    )
    assert (
        'istio_tcp_sent_bytes_total{reporter="sidecar",source="front",destination="db"} 26' in lines
    )
    assert (
        'istio_tcp_sent_bytes_total{reporter="other",source="front",destination="cache"} 2' in lines
    )
    assert "# TYPE istio_tcp_connections_closed_total counter" in lines
    assert m.entries == 3
    assert m.total() == 0  # no HTTP request among them
