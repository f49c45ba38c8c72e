"""Protocol-neutral header maps (sofamesh._core.headers) and HTTP/1 chunked trailers."""

from sofamesh._core.codecs import http1
from sofamesh._core.headers import HeaderList
from sofamesh._core.router import S_EXACT, HeaderMatcher, StringMatcher


def test_header_list_lookup_is_case_insensitive_and_joins_repeats():
    h = HeaderList([("X-A", "1"), ("x-b", "2"), ("x-a", "3")], method=b"GET", path=b"/p")
    assert h.get_value("X-A") == b"1,3"
    assert h.get_value(b"x-b") == b"2"
    assert h.get_value("missing") is None
    assert h.method_value == b"GET" and h.path_value == b"/p"
    h.remove_name("x-a")
    assert h.get_value("x-a") is None
    assert h.items() == [(b"x-b", b"2")]
    assert len(h) == 1


def test_adopted_decoded_block_skips_pseudo_headers():
    pairs = [
        (b":method", b"POST"),
        (b":path", b"/a?b"),
        (b":authority", b"h:1"),
        (b":scheme", b"http"),
        (b"te", b"trailers"),
    ]
    h = HeaderList.adopt(pairs, 4)
    assert (h.method_value, h.path_value, h.authority_value) == (b"POST", b"/a?b", b"h:1")
    assert h.items() == [(b"te", b"trailers")]
    assert h.get_value(":method") is None
    assert h.pairs is pairs  # not copied


def test_route_header_matcher_reads_any_header_map():
    m = HeaderMatcher("x-env", StringMatcher(S_EXACT, "a,b"))
    h = HeaderList([("x-env", "a"), ("X-Env", "b")])
    assert m.test(h) is True
    assert m.test(HeaderList([("x-env", "a")])) is False


def test_trailer_section_round_trip():
    t = http1.trailers_from_bytes(b"Grpc-Status: 0\r\nx-sum:  abc \r\nbad line\r\n\r\n")
    assert t.items() == [(b"grpc-status", b"0"), (b"x-sum", b"abc")]
    assert http1.trailers_to_bytes(t) == b"grpc-status: 0\r\nx-sum: abc\r\n\r\n"
    assert http1.trailers_to_bytes(HeaderList()) == b"\r\n"
