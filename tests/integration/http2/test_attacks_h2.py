"""HTTP/2 attacks against Envoy 1.40 and `sofamesh proxy` on one bootstrap (with Envoy's
http2_protocol_options knobs set): rapid reset (CVE-2023-44487), CONTINUATION flood
(CVE-2024-27316), HPACK bomb, oversized header lists, SETTINGS and PING floods, empty-frame,
PRIORITY and WINDOW_UPDATE floods, a zero-window stall and stream-id exhaustion.

Each attack runs on its own connection (raw frames, tests/support/h2raw.py) against both
proxies; what the attacker sees (GOAWAY code, reset, closed, served) and the change of the
proxy's counters named by the attack (Envoy's `http2.*` and `http.<prefix>.*` names) must be
the same for both, and a well-behaved client on another connection is served while the
attack connection is open.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.h2_peers import h2_exchange
from tests.support.h2raw import (
    CANCEL,
    END_HEADERS,
    END_STREAM,
    S_INITIAL_WINDOW_SIZE,
    H2Client,
    continuation,
    data,
    headers,
    ping,
    priority,
    req,
    rst_stream,
    settings,
    window_update,
)

from .harness import KINDS, alive, start

HCM = {
    "http2_protocol_options": {
        "max_concurrent_streams": 100,
        "max_outbound_control_frames": 200,
        "max_outbound_frames": 2000,
        "max_consecutive_inbound_frames_with_empty_payload": 3,
        "max_inbound_priority_frames_per_stream": 20,
        "max_inbound_window_update_frames_per_data_frame_sent": 5,
    },
    "max_request_headers_kb": 16,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: Any):
    out: dict[str, Any] = {}
    try:
        for kind in KINDS:
            out[kind] = start(kind, tmp_path_factory, hcm=HCM)
        yield out
    finally:
        for r in out.values():
            r.proc.stop()
            r.echo.stop()
            r.upstream.stop()


def served(r: Any) -> int | None:
    """A well-behaved client on its own connection: the status it got."""
    return h2_exchange(r.port, req(path="/bystander"), timeout=5).status


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (sofamesh may fork workers)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except OSError:
            pass
    return total


Attack = Callable[[H2Client, Any], dict]
ATTACKS: dict[str, tuple[Attack, tuple[str, ...], tuple[str, ...]]] = {}


def attack(
    name: str, *counters: str, sofamesh_counts: tuple[str, ...] = ()
) -> Callable[[Attack], Attack]:
    """`counters`: what Envoy 1.40 increments for this attack (both must count them);
    `sofamesh_counts`: counted by sofamesh where Envoy counts nothing of its own."""

    def deco(fn: Attack) -> Attack:
        ATTACKS[name] = (fn, counters, sofamesh_counts)
        return fn

    return deco


def ending(c: H2Client, timeout: float = 5.0, sid: int | None = None) -> str:
    """How the attack connection ended: "connection ended" (a GOAWAY with an error, or
    closed: Envoy 1.40 mostly closes without its GOAWAY, sofamesh sends it), "rst:CODE",
    "response:STATUS" or "open" (nothing within the timeout)."""
    o = c.outcome(sid, timeout=timeout)
    if o.kind in ("goaway", "closed"):
        return "connection ended"
    if o.kind in ("rst", "response"):
        return f"{o.kind}:{o.rst if o.kind == 'rst' else o.status}"
    return "open"


@attack(
    "rapid reset: 1000 streams opened and reset at once",
    "http2.rx_reset",
    "http.ingress.downstream_rq_too_many_premature_resets",
    "http.ingress.downstream_cx_protocol_error",
)
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    burst = []
    for i in range(1000):
        sid = 1 + 2 * i
        burst.append(headers(sid, c.block(req("POST", path="/rr")), END_HEADERS))
        burst.append(rst_stream(sid, CANCEL))
    c.send(*burst)
    return {"bystander": served(r), "attacker": ending(c)}


@attack("CONTINUATION flood: a header block that never ends", "http2.header_list_size_too_large")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    c.send(headers(1, c.block(req()), END_STREAM))
    chunk = (b"\x00\x05x-pad\x7f\x80\x01" + b"v" * 255) * 60  # literal fields, 255-byte values
    for _ in range(300):  # 4.8 MB, no END_HEADERS
        c.send(continuation(1, chunk, 0))
        if c.eof:
            break
    return {"bystander": served(r), "attacker": ending(c, sid=1)}


@attack("CONTINUATION flood of empty frames", "http2.inbound_empty_frames_flood")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    blk = c.block(req())
    c.send(headers(1, blk[:2], END_STREAM), *[continuation(1, b"", 0) for _ in range(50)])
    return {"bystander": served(r), "attacker": ending(c)}


@attack(
    "HPACK bomb: one 4 KB table entry referenced 1000 times", "http2.header_list_size_too_large"
)
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    big = b"\x40\x05x-bom" + b"\x7f\xa1\x1e" + b"b" * 4000  # incremental indexing, 4000-byte value
    block = c.block(req()) + big + b"\xbe" * 1000  # index 62: the entry just added (4 MB decoded)
    c.send(headers(1, block))
    out = {"bystander": served(r), "attacker": ending(c, sid=1)}
    # sofamesh's table stays in step: the entry serves a request on the same connection
    # (Envoy 1.40 closes the connection there: its decoder dropped the entry); not compared
    c.send(headers(3, c.block(req()) + b"\xbe"))
    out["sofamesh only: after"] = ending(c, sid=3)
    return out


@attack(
    "oversized header list: 40 KB of fields", "http2.header_list_size_too_large", "http2.tx_reset"
)
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    fields = req() + [(f"x-big-{i}", "h" * 1000) for i in range(40)]
    block = c.block(fields, huffman=False)
    parts = [block[i : i + 16000] for i in range(0, len(block), 16000)]
    frames = [headers(1, parts[0], END_STREAM)]
    frames += [
        continuation(1, p, END_HEADERS if i == len(parts) - 1 else 0)
        for i, p in enumerate(parts[1:], 1)
    ]
    c.send(*frames)
    return {"bystander": served(r), "attacker": ending(c, sid=1)}


@attack("too many header fields (150)", "http2.header_overflow", "http2.tx_reset")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    c.send(headers(1, c.block(req() + [(f"x-n{i}", "1") for i in range(150)])))
    return {"bystander": served(r), "attacker": ending(c, sid=1), "after": c.still_alive(3).status}


def _flood_unread(c: H2Client, one: bytes, n: int) -> None:
    """Sends n frames that each make the server answer, never reading the answers."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    blob = one * 1000
    for _ in range(n // 1000):
        c.send(blob)
        if c.eof:
            return


@attack(
    "SETTINGS flood, answers never read",
    # Envoy counts it when its own limit trips before nghttp2's ACK limit: not always
    sofamesh_counts=("http2.outbound_control_flood",),
)
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    t = threading.Thread(target=_flood_unread, args=(c, settings(), 200_000))
    t.start()
    time.sleep(0.5)
    by = served(r)
    t.join(20)
    return {"bystander": by, "attacker": ending(c)}


@attack(
    "PING flood, answers never read",
    sofamesh_counts=("http2.outbound_control_flood",),  # Envoy: nghttp2's own ACK limit, uncounted
)
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    t = threading.Thread(target=_flood_unread, args=(c, ping(), 200_000))
    t.start()
    time.sleep(0.5)
    by = served(r)
    t.join(20)
    return {"bystander": by, "attacker": ending(c)}


@attack("empty DATA frames flood", "http2.inbound_empty_frames_flood")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    c.send(headers(1, c.block(req("POST")), END_HEADERS), *[data(1, b"") for _ in range(20)])
    return {"bystander": served(r), "attacker": ending(c)}


@attack("PRIORITY flood", "http2.inbound_priority_frames_flood")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    c.send(*[priority(1 + 2 * (i % 50), 0, i % 256) for i in range(2000)])
    return {"bystander": served(r), "attacker": ending(c)}


@attack("WINDOW_UPDATE flood", "http2.inbound_window_update_frames_flood")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    c.send(*[window_update(0, 1) for _ in range(2000)])
    return {"bystander": served(r), "attacker": ending(c)}


@attack("zero-window stall: 20 streams of 4 MB responses, the window never opens")
def _(c: H2Client, r: Any) -> dict:
    c.handshake((S_INITIAL_WINDOW_SIZE, 0))
    before = rss_kb(r.proc.pid)
    for i in range(20):
        c.send(
            headers(1 + 2 * i, c.block(req(path=f"/stall{i}", x_upstream_action="size=4194304")))
        )
    time.sleep(2.0)
    grown_mb = (rss_kb(r.proc.pid) - before) / 1024
    by = served(r)
    c.close()
    return {"bystander": by, "grown_mb": round(grown_mb)}


@attack("stream-id exhaustion: the last stream id 2^31-1, then nothing more")
def _(c: H2Client, r: Any) -> dict:
    c.handshake()
    last = 0x7FFFFFFF
    c.request(last)
    first = c.outcome(last)
    # a lower id after it cannot open a stream (closed implicitly, RFC 9113 5.1.1)
    c.request(last - 2)
    after = c.outcome(last - 2, ping_mark=True)
    return {"bystander": served(r), "last": f"{first.kind}:{first.status}", "after": after.kind}


def _counters(r: Any, names: tuple[str, ...]) -> dict[str, int]:
    st = r.stats()
    return {n: st.get(n, -1) for n in names}


@pytest.fixture(scope="module")
def observed(pair: dict) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, r in pair.items():
        out[kind] = {}
        for name, (fn, envoy_counts, sofamesh_counts) in ATTACKS.items():
            counters = envoy_counts + (sofamesh_counts if kind == "sofamesh" else ())
            before = _counters(r, counters)
            full0 = r.stats()
            with H2Client(r.port, timeout=10) as c:
                seen = fn(c, r)
            time.sleep(0.2)
            after = _counters(r, counters)
            full1 = r.stats()
            if os.environ.get("H2_ATTACK_SHOW"):
                seen["deltas"] = {
                    k: v - full0.get(k, 0)
                    for k, v in full1.items()
                    if v != full0.get(k, 0)
                    and (
                        k.startswith("http2.")
                        or "downstream_cx" in k
                        or "premature" in k
                        or "downstream_rq_4" in k
                        or "rx_" in k
                    )
                }
            seen["counted"] = {
                n: ("missing" if after[n] < 0 else after[n] - before[n] > 0) for n in counters
            }
            out[kind][name] = seen
        alive(r)
    return out


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(observed: dict, name: str) -> None:
    e, s = observed["envoy"][name], observed["sofamesh"][name]
    if os.environ.get("H2_ATTACK_SHOW"):
        print(f"\n{name}\n  envoy:    {e}\n  sofamesh: {s}")
    assert e["bystander"] == 200 and s["bystander"] == 200, (e, s)
    if "grown_mb" in s:
        # 80 MB of responses were asked for and none read: sofamesh holds a bounded part
        # (the upstream paused past the buffer limit). Envoy 1.40 measured here grows by
        # about the whole 80 MB, so this one is not a comparison.
        assert s["grown_mb"] < 50, s
        e = {k: v for k, v in e.items() if k != "grown_mb"}
        s = {k: v for k, v in s.items() if k != "grown_mb"}
    e.pop("deltas", None)
    s.pop("deltas", None)
    for k in [k for k in s if k.startswith("sofamesh only: ")]:
        assert s.pop(k) == "response:200", (k, s)
        e.pop(k, None)
    assert all(s["counted"].values()), s
    assert s == {
        **e,
        "counted": {**e["counted"], **{k: True for k in s["counted"] if k not in e["counted"]}},
    }
