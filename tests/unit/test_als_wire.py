"""_core.als_wire: gRPC access log batches encoded by hand must parse, field by field, with the
generated envoy.service.accesslog.v3 classes (what an access log service reads)."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from sofamesh._core.als_wire import encode_http_logs

ENTRY = (
    1764770000.123456,  # start time, seconds
    12.5,  # duration, ms
    503,
    b"POST",
    b"/checkout?x=1",
    b"shop.local",
    "checkout",
    "10.1.2.3:8080",
    b"127.0.0.9",
    17,
    1234,
)


def _parse(data: bytes) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.ParseFromString(data)
    return msg


def test_every_field_reads_back_with_the_generated_classes():
    ident = als_pb2.StreamAccessLogsMessage.Identifier()
    ident.node.CopyFrom(base_pb2.Node(id="sidecar-1", cluster="shop"))
    ident.log_name = "mesh"
    msg = _parse(encode_http_logs([ENTRY], ident.SerializeToString()))
    assert msg.identifier.node.id == "sidecar-1"
    assert msg.identifier.node.cluster == "shop"
    assert msg.identifier.log_name == "mesh"
    [e] = msg.http_logs.log_entry
    c = e.common_properties
    assert e.protocol_version == 2  # HTTP11
    assert c.start_time.seconds == 1764770000
    assert abs(c.start_time.nanos - 123456000) < 1000
    assert c.duration.ToNanoseconds() == 12_500_000
    assert c.time_to_last_downstream_tx_byte.ToNanoseconds() == 12_500_000
    assert c.upstream_cluster == "checkout"
    assert c.upstream_remote_address.socket_address.address == "10.1.2.3"
    assert c.upstream_remote_address.socket_address.port_value == 8080
    assert c.downstream_remote_address.socket_address.address == "127.0.0.9"
    r = e.request
    assert r.request_method == 3  # POST
    assert (r.scheme, r.authority, r.path) == ("http", "shop.local", "/checkout?x=1")
    assert r.request_body_bytes == 17
    assert e.response.response_code.value == 503
    assert e.response.response_body_bytes == 1234


def test_missing_values_are_left_unset_as_protobuf_would():
    # a request whose head did not parse: no method, path, authority, cluster, upstream, status
    entry = (1764770000.0, 0.0, 0, None, b"", b"", "", "-", b"", 0, 0)
    [e] = _parse(encode_http_logs([entry])).http_logs.log_entry
    assert not e.response.HasField("response_code")
    assert e.request.request_method == 0
    assert e.request.path == "" and e.request.authority == ""
    assert not e.common_properties.HasField("upstream_remote_address")
    assert not e.common_properties.HasField("downstream_remote_address")
    assert e.common_properties.upstream_cluster == ""


def test_a_large_batch_and_long_fields_keep_their_lengths():
    long_path = b"/" + b"p" * 70000  # a length varint of three bytes, buffers regrown
    batch = [ENTRY[:4] + (long_path,) + ENTRY[5:]] + [ENTRY] * 999
    msg = _parse(encode_http_logs(batch))
    assert len(msg.http_logs.log_entry) == 1000
    assert msg.http_logs.log_entry[0].request.path == long_path.decode()
    assert msg.http_logs.log_entry[999].request.path == "/checkout?x=1"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 4e9, allow_nan=False),
            st.floats(0, 1e7, allow_nan=False),
            st.integers(0, 999),
            st.sampled_from([None, b"GET", b"HEAD", b"PATCH", b"BREW"]),
            st.binary(max_size=300),  # raw request bytes: read as Latin-1, as before
            st.binary(max_size=50),
            st.text(max_size=30),
            # a host name over 100 bytes takes the nested-length path of socket_address
            st.sampled_from(["-", "1.2.3.4:1", "[::1]:65535", "bad", "h" * 150 + ":80"]),
            st.sampled_from([b"", b"127.0.0.1", b"::1"]),
            st.integers(0, 2**40),
            st.integers(0, 2**40),
        ),
        max_size=20,
    )
)
def test_any_batch_parses_to_the_same_values(batch):
    entries = _parse(encode_http_logs(batch)).http_logs.log_entry
    assert len(entries) == len(batch)
    for e, t in zip(entries, batch):
        assert e.request.path == t[4].decode("latin-1")
        assert e.request.authority == t[5].decode("latin-1")
        assert e.common_properties.upstream_cluster == t[6]
        assert e.response.response_code.value == t[2]
        assert e.request.request_body_bytes == t[9]
        assert e.response.response_body_bytes == t[10]
        assert e.common_properties.duration.ToNanoseconds() == int(t[1] * 1e6)
        host, _, port = t[7].rpartition(":")
        up = e.common_properties.upstream_remote_address.socket_address
        if port.isdigit():
            assert (up.address, up.port_value) == (host, int(port))
        else:
            assert not e.common_properties.HasField("upstream_remote_address")
        down = e.common_properties.downstream_remote_address.socket_address
        assert down.address == t[8].decode()
