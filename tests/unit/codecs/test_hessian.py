"""Hessian readers: the final-spec skipper against python-hessian 1.2.0 as an oracle, the
reader's simple values, and SOFA's pre-final dialect (SofaRequest method names)."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhessian.parser import Parser

from sofamesh._core.codecs import hessian

from .conftest import golden, local
from .hessian2_gen import objects, scalars, values, w_str


def oracle(data: bytes, count: int = 1):
    """(values, bytes consumed) as python-hessian decodes `count` final-spec values."""
    p = Parser()
    p.version = 2
    p._stream = io.BytesIO(data)
    out = [p.read_object() for _ in range(count)]
    return out, p._stream.tell()


def skip_all(data: bytes, count: int) -> tuple[int, int]:
    c = hessian.H2Cursor(data)
    for _ in range(count):
        if c.py_skip():
            break
    return c.err, c.offset


@settings(max_examples=400, deadline=None)
@given(scalars)
def test_scalars_match_the_oracle(pair):
    data, value = pair
    vals, used = oracle(data)
    assert skip_all(data, 1) == (0, len(data)) and used == len(data)
    got = hessian.H2Cursor(data).py_read_simple()
    if value is not ...:
        assert got == vals[0] == value or (isinstance(value, float))
    if isinstance(value, str):
        assert hessian.H2Cursor(data).py_read_str() == value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(values(), objects()), min_size=1, max_size=5))
def test_nested_values_skip_exactly_like_the_oracle(items):
    data = b"".join(items)
    _, used = oracle(data, len(items))
    assert used == len(data)
    assert skip_all(data, len(items)) == (0, len(data))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(values(), objects()), min_size=1, max_size=3), st.data())
def test_truncation_anywhere_is_an_error_code_never_an_exception(items, data):
    blob = b"".join(items)
    cut = data.draw(st.integers(0, len(blob) - 1))
    err, off = skip_all(blob[:cut], len(items))
    assert err != 0 and off <= cut


def test_golden_dubbo_arguments_skip_like_the_oracle():
    for name, nargs in (("dubbo_benchmarkData.bin", 1), ("dubbo_complexData.bin", 4)):
        body = golden(name)[16:]
        c = hessian.H2Cursor(body)
        for _ in range(5):  # version, service, version, method, descriptor
            c.py_read_str()
        start = c.offset
        for _ in range(nargs):
            assert c.py_skip() == 0
        _, used = oracle(body[start:], nargs)
        assert c.offset - start == used
        att, used2 = oracle(body[c.offset :])
        assert isinstance(att[0], dict) and c.offset + used2 == len(body)
        assert hessian.H2Cursor(body, c.offset).py_read_map() == att[0]


def test_long_strings_chunk_like_java_and_read_back():
    s = "é" * 70000
    enc = hessian.h2_encode_str(s)
    assert enc[:1] == b"R" and int.from_bytes(enc[1:3], "big") == 0x8000
    assert hessian.H2Cursor(enc).py_read_str() == s
    assert skip_all(enc, 1) == (0, len(enc))
    assert hessian.h2_encode_str("a" * 40) == w_str("a" * 40)
    assert hessian.h2_encode_str("😀") == b"\x02" + "😀".encode()


def test_bad_tags_and_depth_bomb_are_codes():
    assert skip_all(b"\x40", 1)[0] != 0  # reserved
    assert skip_all(b"Z", 1)[0] != 0  # an end marker is not a value
    assert skip_all(b"W" * 10000, 1)[0] == 3  # nesting past the limit
    assert skip_all(b"\x61", 1)[0] == 4  # object of an undefined class
    assert skip_all(b"X\xd7\xff\xff", 1)[0] != 0  # a list claiming 2^18 items


def test_sofa_request_method_from_pre_final_hessian():
    req = local("sofa_rpc_node_request_v1.bin")
    content = req[-239:]
    assert hessian.sofa_request_method(content) == "plus"
    for cut in range(len(content)):
        assert hessian.sofa_request_method(content[:cut]) in (None, "plus")
    assert hessian.sofa_request_method(b"") is None
    assert hessian.sofa_request_method(b"O\x91") is None


def test_pre_final_dialect_skips_a_sofa_response():
    data = golden("bolt_node_0.bin")
    content = data[22 + 46 : -4]
    c = hessian.H1Cursor(content)
    assert c.py_skip() == 0 and c.offset == len(content)


@pytest.mark.parametrize(
    "v",
    [
        None,
        True,
        False,
        0,
        -16,
        47,
        48,
        -2048,
        2047,
        262143,
        -262144,
        2**31 - 1,
        -(2**31),
        2**40,
        "",
        "abc",
        "x" * 2000,
    ],
)
def test_simple_encoder_round_trips_through_the_oracle(v):
    data = hessian.h2_encode_simple(v)
    vals, used = oracle(data)
    assert used == len(data) and vals[0] == v


def test_chunked_strings_in_each_dialect():
    # a non-final chunk is 'R' in Hessian 2.0 and 's' in SOFA's draft; 'S' ends both
    assert hessian.H2Cursor(b"R\x00\x02abS\x00\x01c").py_read_str() == "abc"
    assert hessian.H1Cursor(b"s\x00\x02abS\x00\x01c").py_read_str() == "abc"
    for cursor, foreign in ((hessian.H2Cursor, b"s"), (hessian.H1Cursor, b"R")):
        c = cursor(foreign + b"\x00\x02abS\x00\x01c")
        assert c.py_read_str() is None and c.err == 7  # H_ERR_NOT_STRING
