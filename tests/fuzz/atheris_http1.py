#!/usr/bin/env python3
"""A long fuzzing run of the HTTP/1.1 head parsers and the body reader under atheris
(libFuzzer for Python). Not part of the test suite: run it by hand, one target a run.

    .venv/bin/python tests/fuzz/atheris_http1.py --make-seeds tests/fuzz/corpus
    mkdir -p /tmp/fz-http1_head
    nice -n 19 .venv/bin/python tests/fuzz/atheris_http1.py --target=head -runs=1000000 \\
        -max_len=4096 /tmp/fz-http1_head tests/fuzz/corpus/http1_head

--target=head: byte 0 picks the mode and limits (bits 0-1: 0/3 raw bytes, 1 a request head
built from the input, 2 a response head built from it; bits 2-3 max_headers 100/4/32/128;
bits 4-5 max_bytes 61440/64/512/4096), bytes 1-2 a cut, the rest the input. Raw bytes go
through both parse_request_head and parse_response_head. Checked on every input (as
tests/fuzz/test_http1_fuzz.py states it): nothing raises; the result is a head length
(== head_start + head_length, within the input and max_bytes), 0 or an E_* code; a parsed
head holds at most max_headers headers, a token method, a target without spaces, controls
or '#', lower-case token names, values without controls or surrounding whitespace, a
content-length equal to its one header; it parses the same with anything after it, every
shorter prefix is "need more", and re-rendered (CRLF, "name: value") it parses to the same
fields; an E_OBS_FOLD head unfolded no longer folds. A built head must parse to exactly the
fields it was built from, or to the error the rules say (repeated/bad content-length, a third
Host, both framings, a transfer-coding other than chunked on a request, too many headers).

--target=body: byte 0 picks the mode (bits 0-1: 0 content-length, 1 chunked raw, 2 chunked
built from the input, 3 until close; bit 2: collect the payload; bit 3: built chunked body
with a trailer section over the 64 KiB limit), bytes 1-2 the length or a cut. Checked: the
reader returns -1 or a count within its input; fed whole and in pieces it consumes the same,
ends at the same byte, collects the same payload and forwards the same bytes (trailers
dropped); a built chunked body decodes to the payload it was built from, ends exactly after
its last CRLF and forwards everything before its trailers; the trailer limit holds.

Runs on 2026-12-03 (atheris 3.0.0, one core, nice -n 19 beside other work; -runs=1000000
-max_len=4096, seeds from --make-seeds):
  head: 1,000,000 inputs in 100 s (10,000/s), 183 corpus units added, 39 kept after
        -merge=1, peak RSS 43 MB. One contract failure, found in the first seconds and then
        tolerated so the run could go on: parse_response accepted a head up to 4 bytes over
        max_bytes (since fixed in codecs/http1.pyx). No other failure, no crash.
  body: 1,000,000 inputs in 124 s (8,064/s), 65 units added, 23 kept after -merge=1, peak
        RSS 44 MB. No failure of the contract, no crash.

The codecs are compiled Cython without coverage instrumentation (no clang here), so
libFuzzer's feedback comes from this harness's own branches (instrumented) and the
mutations from the seed corpus: a long mutation run rather than a coverage-guided one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import atheris

from sofamesh._core.codecs import http1

ERRORS = {
    http1.E_BAD,
    http1.E_TOO_LARGE,
    http1.E_TOO_MANY,
    http1.E_NOT_IMPL,
    http1.E_BAD_TARGET,
    http1.E_OBS_FOLD,
}
MAX_HEADERS = (100, 4, 32, 128)
MAX_BYTES = (61440, 64, 512, 4096)
TCHAR = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
CTL = set(range(32)) - {9} | {127}


class ContractError(AssertionError):
    pass


def check(cond: object, what: str, *detail: object) -> None:
    if not cond:
        raise ContractError(what + (": " + repr(detail) if detail else ""))


# -- heads ------------------------------------------------------------------------------


def _fields(h) -> tuple:
    return (
        h.method_bytes,
        h.target,
        h.version_minor,
        h.status_code,
        h.headers,
        h.body_length,
        h.is_chunked,
        h.keep_alive,
        h.upgrade,
        h.expects_continue,
    )


def _first_line(data: bytes, start: int) -> bytes:
    end = data.index(b"\n", start)
    line = data[start:end]
    return line[:-1] if line.endswith(b"\r") else line


def _check_parsed(data: bytes, n: int, h, max_bytes: int, max_headers: int, request: bool) -> None:
    check(n == h.head_start + h.head_length, "head length", n, h.head_start, h.head_length)
    # (the campaign of 2026-12-03 found parse_response taking a head up to 4 bytes over
    # max_bytes; fixed, tests/fuzz/test_http1_fuzz.py holds the case)
    check(h.head_length <= max_bytes, "head over max_bytes", h.head_length, max_bytes)
    hdrs = h.headers
    check(len(hdrs) <= max_headers, "more headers than max_headers", len(hdrs))
    cls = [v for k, v in hdrs if k == b"content-length"]
    check(len(cls) <= 1, "two content-length headers accepted", hdrs)
    if cls:
        check(
            cls[0].isdigit() and h.body_length == int(cls[0]), "content-length", cls, h.body_length
        )
    else:
        check(h.body_length == -1, "body_length without content-length", h.body_length)
    if h.is_chunked:
        check(any(k == b"transfer-encoding" for k, _ in hdrs) and not cls, "chunked", hdrs)
    for k, v in hdrs:
        check(k and all(c in TCHAR for c in k) and k == k.lower(), "header name", k)
        check(not any(c in CTL for c in v), "control in a header value", v)
        check(v == v.strip(b" \t"), "whitespace around a header value", v)
    if request:
        m, t = h.method_bytes, h.target
        check(m and all(c in TCHAR for c in m), "method", m)
        check(t and not any(c <= 32 or c == 127 or c == 35 for c in t), "target", t)
    else:
        check(100 <= h.status_code <= 999, "status", h.status_code)


def _parse(data: bytes, request: bool, max_bytes: int, max_headers: int):
    if request:
        return http1.parse_request_head(data, max_bytes=max_bytes, max_headers=max_headers)
    return http1.parse_response_head(data, max_bytes=max_bytes)


def check_head(data: bytes, cut: int, request: bool, max_bytes: int, max_headers: int) -> int:
    if not request:
        max_headers = 128
    n, h = _parse(data, request, max_bytes, max_headers)
    check(n in ERRORS or 0 <= n <= len(data), "result", n)
    if n > 0:
        _check_parsed(data, n, h, max_bytes, max_headers, request)
        want = _fields(h)
        n2, h2 = _parse(data[:n] + b"GARBAGE AFTER\r\n\r\n", request, max_bytes, max_headers)
        check(n2 == n and _fields(h2) == want, "the head parses differently with bytes after it")
        c = cut % n
        check(
            _parse(data[:c], request, max_bytes, max_headers)[0] == 0,
            "a prefix is not need-more",
            c,
        )
        line = _first_line(data, h.head_start)
        again = line + b"\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in h.headers) + b"\r\n"
        n3, h3 = _parse(again, request, 1 << 20, max_headers)
        check(n3 == len(again) and _fields(h3) == want, "re-rendered head differs", again, n3)
    elif n == http1.E_OBS_FOLD:
        check(request, "obs-fold in a response")
        fixed = http1.unfold_head(data, h.head_start, h.head_length)
        r = _parse(fixed, request, max_bytes + len(data), max_headers)[0]
        check(r != http1.E_OBS_FOLD, "unfolded head still folds", fixed)
    return n


_CUT = re.compile(rb"[\x00-\x20\x7f#]")


def _build(fdp, request: bool, max_headers: int) -> tuple[bytes, object]:
    """A head from the fuzz input and the result the rules give it: (bytes, expected),
    expected an E_* code or the tuple of fields."""
    eol = b"\r\n" if fdp.ConsumeBool() else b"\n"
    if request:
        method = bytes(c for c in fdp.ConsumeBytes(8) if c in TCHAR) or b"GET"
        target = b"/" + _CUT.sub(b"", fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
        minor = fdp.ConsumeIntInRange(0, 1)
        line = method + b" " + target + b" HTTP/1." + str(minor).encode()
        status = 0
    else:
        minor = fdp.ConsumeIntInRange(0, 1)
        status = fdp.ConsumeIntInRange(100, 999)
        reason = bytes(c for c in fdp.ConsumeBytes(12) if c not in CTL and c != 13)
        line = b"HTTP/1." + str(minor).encode() + b" " + str(status).encode() + b" " + reason
        method, target = b"", b""
    names = [
        b"Content-Length",
        b"Transfer-Encoding",
        b"Host",
        b"Connection",
        b"X-A",
        b"Upgrade",
        b"Expect",
        b"te",
        b"x-request-id",
    ]
    values = [
        b"chunked",
        b"gzip",
        b"gzip, chunked",
        b"close",
        b"keep-alive",
        b"upgrade",
        b"100-continue",
        b"12",
        b"0",
        b"x y",
        b"",
        b"1a",
    ]
    hdrs: list[tuple[bytes, bytes]] = []
    for _ in range(fdp.ConsumeIntInRange(0, 10)):
        if fdp.ConsumeBool():
            name = names[fdp.ConsumeIntInRange(0, len(names) - 1)]
        else:
            name = bytes(c for c in fdp.ConsumeBytes(6) if c in TCHAR) or b"x"
        if fdp.ConsumeBool():
            value = values[fdp.ConsumeIntInRange(0, len(values) - 1)]
        else:
            value = bytes(c for c in fdp.ConsumeBytes(10) if c not in CTL).strip(b" \t")
        if fdp.ConsumeBool():
            name = name.upper()
        hdrs.append((name, value))
    ows = [b"", b" ", b"\t", b"  "]
    out = [line, eol]
    for name, value in hdrs:
        out += [
            name,
            b":",
            ows[fdp.ConsumeIntInRange(0, 3)],
            value,
            ows[fdp.ConsumeIntInRange(0, 3)],
            eol,
        ]
    out.append(eol)
    data = b"".join(out)
    if not request:
        max_headers = 128
    # the rules, header by header, then the framing
    seen_cl = False
    hosts = 0
    chunked = te_other = False
    want_hdrs = []
    err = None
    for i, (name, value) in enumerate(hdrs):
        low = name.lower()
        if i >= max_headers:
            err = http1.E_TOO_MANY
            break
        want_hdrs.append((low, value))
        if low == b"content-length":
            if not value.isdigit() or seen_cl or len(value) > 16:
                err = http1.E_BAD
                break
            seen_cl = True
        elif low == b"host":
            hosts += 1
            if hosts > 2:
                err = http1.E_BAD
                break
        elif low == b"transfer-encoding":
            v = value.lower()
            if v.endswith(b"chunked") and (len(v) == 7 or v[-8] in b", \t"):
                chunked = True
                te_other = te_other or v != b"chunked"
            else:
                te_other = True
    if err is None:
        if request and (chunked or te_other):
            if seen_cl:
                err = http1.E_BAD
            elif te_other:
                err = http1.E_NOT_IMPL
        elif chunked and seen_cl:
            err = http1.E_BAD
    if err is not None:
        return data, err
    cl = [int(v) for k, v in want_hdrs if k == b"content-length"]
    return data, (method, target, minor, status, want_hdrs, cl[0] if cl else -1, chunked)


def check_built(data: bytes, request: bool, max_headers: int) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    head, want = _build(fdp, request, max_headers)
    n, h = _parse(head, request, 1 << 20, max_headers)
    if isinstance(want, int):
        check(n == want, "built head: not the expected error", want, n, head)
        return
    check(n == len(head), "built head did not parse", n, head)
    got = _fields(h)[:7]
    check(got == want, "built head parsed to other fields", got, want, head)
    check_head(head + data[:8], len(data), request, 1 << 20, max_headers)


def test_head(data: bytes) -> None:
    mode = data[0]
    cut = int.from_bytes(data[1:3], "big")
    rest = data[3:]
    max_headers = MAX_HEADERS[(mode >> 2) & 3]
    max_bytes = MAX_BYTES[(mode >> 4) & 3]
    kind = mode & 3
    if kind == 1:
        check_built(rest, True, max_headers)
    elif kind == 2:
        check_built(rest, False, max_headers)
    else:
        check_head(rest, cut, True, max_bytes, max_headers)
        check_head(rest, cut, False, max_bytes, max_headers)


# -- bodies -----------------------------------------------------------------------------


def _read(mode: int, length: int, pieces: list[bytes], collect: bool) -> tuple:
    """(consumed, error, complete, payload, forwarded, dropped) over the pieces."""
    r = http1.BodyReader()
    if collect:
        r.collect()
    r.begin(mode, length)
    used = 0
    fwd = []
    for p in pieces:
        k = r.feed_bytes(p)
        if k < 0:
            check(k == -1, "body: a negative count other than -1", k)
            return None, True, False, None, None, None
        check(0 <= k <= len(p), "body: count outside the piece", k, len(p))
        check(0 <= r.forward_length <= k, "body: forward_length", r.forward_length, k)
        fwd.append(p[: r.forward_length])
        used += k
        if r.complete:
            break
        check(k == len(p), "body: unfinished body left bytes of a piece", k, len(p))
    payload = b"".join(r.chunks) if collect else None
    return used, False, r.complete, payload, b"".join(fwd), r.dropped_trailers


def check_body_raw(mode: int, length: int, body: bytes, cut: int, collect: bool) -> tuple:
    whole = _read(mode, length, [body], collect)
    n = len(body)
    c1 = cut % (n + 1)
    c2 = (c1 * 5 + 1) % (n + 1)
    a, b = sorted((c1, c2))
    split = _read(mode, length, [body[:a], body[a:b], body[b:]], collect)
    check(whole == split, "body: pieces != whole", (a, b), whole, split)
    bytewise = _read(
        mode, length, [body[i : i + 1] for i in range(min(n, 64))] + [body[64:]], collect
    )
    check(whole == bytewise, "body: byte by byte != whole", whole, bytewise)
    if mode == http1.MODE_LENGTH:
        k = min(n, length)
        want = (k, False, n >= length, body[:k] if collect else None, body[:k], False)
        check(whole == want, "body: content-length", whole, want)
    elif mode == http1.MODE_EOF:
        check(
            whole == (n, False, False, body if collect else None, body, False), "body: until close"
        )
    return whole


def _build_chunked(fdp, huge_trailer: bool) -> tuple[bytes, bytes, int]:
    """(wire, payload, forwarded length) of a chunked body built from the input."""
    wire = []
    payload = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 300))
        if not data:
            break
        size = f"{len(data):x}"
        if fdp.ConsumeBool():
            size = size.upper()
        size = "0" * fdp.ConsumeIntInRange(0, 3) + size
        ext = [b"", b";a=b", b" ;x", b'\t;q="v"'][fdp.ConsumeIntInRange(0, 3)]
        wire += [size.encode(), ext, b"\r\n", data, b"\r\n"]
        payload.append(data)
    wire.append(
        b"0" * fdp.ConsumeIntInRange(1, 3) + [b"", b";last"][fdp.ConsumeIntInRange(0, 1)] + b"\r\n"
    )
    head = b"".join(wire)
    trailers = b""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        name = bytes(c for c in fdp.ConsumeBytes(6) if c in TCHAR) or b"t"
        trailers += name + b": " + bytes(c for c in fdp.ConsumeBytes(8) if c not in CTL) + b"\r\n"
    if huge_trailer:
        trailers += b"x-big: " + b"a" * 65536 + b"\r\n"
    return head + trailers + b"\r\n", b"".join(payload), len(head)


def test_body(data: bytes) -> None:
    mode = data[0]
    num = int.from_bytes(data[1:3], "big")
    rest = data[3:]
    collect = bool(mode & 4)
    kind = mode & 3
    if kind == 0:
        check_body_raw(http1.MODE_LENGTH, num, rest, num, collect)
    elif kind == 1:
        check_body_raw(http1.MODE_CHUNKED, 0, rest, num, collect)
    elif kind == 3:
        check_body_raw(http1.MODE_EOF, 0, rest, num, collect)
    else:
        fdp = atheris.FuzzedDataProvider(rest)
        huge = bool(mode & 8) and num % 16 == 0
        wire, payload, fwd = _build_chunked(fdp, huge)
        after = b"GET / HTTP/1.1\r\n\r\n"
        got = check_body_raw(http1.MODE_CHUNKED, 0, wire + after, num, collect)
        if huge:
            check(got[1], "body: a trailer section over the limit was accepted", len(wire))
            return
        dropped = fwd < len(wire) - 2
        want = (
            len(wire),
            False,
            True,
            payload if collect else None,
            wire[: fwd if dropped else len(wire)],
            dropped,
        )
        check(got == want, "body: built chunked body", got, want, wire)


TARGET = "head"


def test_one(data: bytes) -> None:
    if len(data) < 3:
        return
    if TARGET == "head":
        test_head(data)
    else:
        test_body(data)


# -- seeds --------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent


def make_seeds(root: str) -> None:
    """Seeds in this harness's format under root/http1_head/ and root/http1_body/."""
    heads = [p.read_bytes() for p in sorted((HERE / "corpus" / "http1").glob("*.bin"))]
    heads += [
        b"POST /a?b=c HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        b"GET http://a.test/x HTTP/1.1\r\nConnection: x-hop, close\r\nX-Hop: 1\r\nTE: trailers\r\n\r\n",
        b"\r\n\r\nGET / HTTP/1.0\nHost: a\nHost: b\n\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nA: b\r\n c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 204\r\nTransfer-Encoding: gzip, chunked\r\nServer: s\r\n\r\n",
        b"HTTP/1.0 301 Moved Permanently\nLocation: /b\nConnection: keep-alive\n\n",
    ]
    dest = Path(root) / "http1_head"
    dest.mkdir(parents=True, exist_ok=True)
    i = 0
    for h in heads:
        for mode in (0, 0x14, 0x28):
            (dest / f"seed-{i:02d}").write_bytes(bytes([mode]) + b"\x00\x10" + h)
            i += 1
    for mode in (1, 2, 5, 6):
        (dest / f"seed-{i:02d}").write_bytes(bytes([mode]) + b"\x00\x10" + bytes(range(7, 200, 3)))
        i += 1
    bodies = [
        b"5\r\nhello\r\n0\r\n\r\n",
        b"A;ext=1\r\n0123456789\r\n000\r\nX-Trailer: t\r\nY: u\r\n\r\n",
        b"1 ;x\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"fffffffffffffff\r\n",
        b"hello world",
    ]
    dest = Path(root) / "http1_body"
    dest.mkdir(parents=True, exist_ok=True)
    i = 0
    for b in bodies:
        for mode in (0, 1, 3, 5):
            (dest / f"seed-{i:02d}").write_bytes(bytes([mode]) + b"\x00\x07" + b)
            i += 1
    for mode in (2, 6, 10):
        (dest / f"seed-{i:02d}").write_bytes(bytes([mode]) + b"\x00\x10" + bytes(range(1, 250, 2)))
        i += 1


def main() -> None:
    global TARGET
    argv = [a for a in sys.argv if not a.startswith("--target=")]
    for a in sys.argv:
        if a.startswith("--target="):
            TARGET = a.split("=", 1)[1]
    if TARGET not in ("head", "body"):
        raise SystemExit(f"unknown --target {TARGET}")
    if len(argv) == 3 and argv[1] == "--make-seeds":
        make_seeds(argv[2])
        return
    for fn in (
        test_one,
        test_head,
        test_body,
        check_head,
        _check_parsed,
        check_built,
        _build,
        _read,
        check_body_raw,
        _build_chunked,
    ):
        atheris.instrument_func(fn)
    atheris.Setup(sys.argv, test_one)  # --target= too: -merge=1 re-runs this script
    atheris.Fuzz()


if __name__ == "__main__":
    main()
