#!/usr/bin/env python3
"""The whole proxy fuzzed: one `sofamesh proxy` with a listener of every kind, fed random and
mutated bytes. tests/fuzz/test_proxy_whole.py runs a bounded round in the suite; this runs
a long campaign by hand (from the repository root):

    .venv/bin/python -m tests.fuzz.proxy_campaign --seconds 600 --seed 1 [--out DIR]
    .venv/bin/python -m tests.fuzz.proxy_campaign --replay DIR/fail-....json

The proxy, its listeners and upstreams are tests/fuzz/proxy_world.py.

Each input goes on a new connection: sent whole then half-closed, sent a few bytes at a
time, or cut off (closed, sometimes with a reset) part way. After every batch: the process
is alive, a good request on each listener gets the right answer, and the proxy's counters
account for the connections and count at least one error per listener. On a failure the
batch's inputs are written to --out (JSON, hex) and --replay sends them again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuzz.proxy_world import H2_PREFACE, LOG_BAD, ProxyWorld, Target, read_all

# -- mutations -----------------------------------------------------------------------------

_HUGE_TEXT = [b"99999999999999999999", b"4294967296", b"18446744073709551616", b"ffffffffffffffff"]
_HUGE_BIN = [
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\xff\xff",
    b"\xff\xff\xff",
]


def mutate(rng: random.Random, seeds: list[bytes], len_offsets: tuple[int, ...] = ()) -> bytes:
    """A seed with 1 to 6 of: bit flips, truncation, a splice of another seed, a length field
    set huge (`len_offsets`: where a binary frame keeps its lengths), a repeated chunk, a
    random byte run inserted."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 6)):
        if not data:
            data = bytearray(rng.choice(seeds))
        op = rng.randrange(7)
        i = rng.randrange(len(data))
        if op == 0:  # bit flips
            for _ in range(rng.randint(1, 4)):
                j = rng.randrange(len(data))
                data[j] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncation
            del data[rng.randrange(1, len(data) + 1) :]
        elif op == 2:  # splice: the head of this one, the tail of another
            other = rng.choice(seeds)
            data = data[:i] + other[rng.randrange(len(other) + 1) :]
        elif op == 3:  # a length field set to a huge value
            text = [m.span() for m in re.finditer(rb"[0-9a-fA-F]+", bytes(data))]
            if text and rng.random() < 0.5:
                a, b = rng.choice(text)
                data[a:b] = rng.choice(_HUGE_TEXT)
            else:
                at = rng.choice(len_offsets) if len_offsets and rng.random() < 0.7 else i
                v = rng.choice(_HUGE_BIN)
                data[at : at + len(v)] = v
        elif op == 4:  # a chunk repeated
            n = rng.randint(1, 64)
            data[i:i] = data[i : i + n] * rng.randint(2, 40)
        elif op == 5:  # random bytes inserted
            data[i:i] = rng.randbytes(rng.randint(1, 16))
        else:  # one byte set to a boundary value
            data[i] = rng.choice([0, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x20, 0x3A])
    return bytes(data[:65536])


def random_input(rng: random.Random, prefix: bytes = b"") -> bytes:
    """Random bytes, sometimes behind a protocol's first bytes so they get past a sniffer."""
    body = rng.randbytes(rng.choice([1, 2, 7, 16, 64, 300, 2000]))
    return prefix + body if prefix and rng.random() < 0.5 else body


# -- sending ---------------------------------------------------------------------------------


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class Input:
    """One input as sent: the bytes, how (whole / slow / cut), and for the TLS listener
    whether they went inside a TLS session (with which ALPN)."""

    data: bytes
    mode: str
    cut: int = 0
    tls: str = ""  # "", "http/1.1" or "h2"
    rst: bool = False

    def to_json(self) -> dict:
        return {
            "data": self.data.hex(),
            "mode": self.mode,
            "cut": self.cut,
            "tls": self.tls,
            "rst": self.rst,
        }

    @classmethod
    def from_json(cls, d: dict) -> Input:
        return cls(bytes.fromhex(d["data"]), d["mode"], d["cut"], d["tls"], d["rst"])


def make_input(rng: random.Random, t: Target, mutated: bool) -> Input:
    if mutated:
        data = mutate(rng, t.seeds, t.len_offsets)
    else:
        data = random_input(rng, rng.choice(t.prefixes) if t.prefixes else b"")
    if not data:
        data = b"\x00"
    r = rng.random()
    mode = "whole" if r < 0.6 else "slow" if r < 0.8 else "cut"
    tls = ""  # on the TLS listener, most inputs go inside a session; TLS records do not
    if t.kind == "tls" and data[:1] != b"\x16" and rng.random() < 0.7:
        tls = "h2" if data.startswith(H2_PREFACE[:4]) else "http/1.1"
    return Input(data, mode, rng.randrange(len(data) + 1), tls, rng.random() < 0.5)


def send(world: ProxyWorld, t: Target, inp: Input, read_timeout: float) -> bytes:
    """Sends one input on a new connection; what came back (b"" when cut)."""
    s = socket.create_connection(("127.0.0.1", t.port), timeout=2)
    try:
        if inp.tls:
            ctx = ssl.create_default_context(cadata=world.ca_pem.decode())
            ctx.set_alpn_protocols([inp.tls])
            s = ctx.wrap_socket(s, server_hostname="localhost")
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if inp.mode == "whole":
            s.sendall(inp.data)
        elif inp.mode == "slow":  # a few bytes at a time, for the first 256 bytes
            i = 0
            pace = random.Random(len(inp.data))
            while i < min(len(inp.data), 256):
                n = pace.randint(1, 5)
                s.sendall(inp.data[i : i + n])
                i += n
                time.sleep(0.001)
            s.sendall(inp.data[i:])
        else:
            s.sendall(inp.data[: inp.cut])
            if inp.rst:
                _reset(s)
            return b""
        if inp.tls:
            # no half-close across TLS (a close_notify ends the connection: README): a
            # short read for the answer to bytes already refused, then our close
            return read_all(s, min(read_timeout, 0.3))
        s.shutdown(socket.SHUT_WR)
        return read_all(s, read_timeout)
    except (ConnectionError, ssl.SSLError, TimeoutError, OSError):
        return b""
    finally:
        s.close()


# -- the campaign ----------------------------------------------------------------------------


class Failure(AssertionError):
    pass


def _h2_frames(got: bytes) -> bool:
    """`got` opens with the server's SETTINGS or a GOAWAY on stream 0 (an HTTP/2 reply)."""
    return len(got) >= 9 and got[3] in (4, 7) and got[5:9] == b"\0\0\0\0"


def check_reply(t: Target, inp: Input, got: bytes) -> None:
    """What the client got back is the listener's protocol (or nothing)."""
    if not got or inp.tls:
        return
    if t.kind == "admin" and not got.startswith(b"HTTP/1."):
        raise Failure(f"admin: a reply that is not HTTP/1: {got[:80]!r}")
    if t.kind == "http1" and not (got.startswith(b"HTTP/1.") or _h2_frames(got)):
        raise Failure(f"{t.name}: a reply that is not HTTP: {got[:80]!r}")
    if t.kind == "http2" and not _h2_frames(got):
        raise Failure(f"{t.name}: a reply that is not HTTP/2: {got[:80]!r}")
    if t.kind in ("bolt", "dubbo"):
        ok = got[:2] == b"\xda\xbb" if t.kind == "dubbo" else got[0] in (1, 2)
        if not ok:
            raise Failure(f"{t.name}: a reply that is no {t.kind} frame: {got[:40].hex()}")
    if t.kind == "tcp" and not got.startswith(b"echo:"):
        raise Failure(f"tcp: the echo did not come back: {got[:40]!r}")


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# connections a listener's good request opens (HTTP: one HTTP/1.1, one HTTP/2)
GOOD_CONNS = {"h1": 2, "h2": 1, "tls": 2, "tcp": 1, "bolt": 1, "dubbo": 1, "auto": 4, "admin": 1}


def run_batch(
    world: ProxyWorld,
    t: Target,
    inputs: list[Input],
    read_timeout: float = 1.0,
) -> dict[str, int]:
    """Sends `inputs` to `t`, one connection each, then checks the proxy; raises Failure
    (with the input that killed it, when it died) or returns the counters' growth."""
    before = world.stats()
    reads0 = world.stats_reads
    for inp in inputs:
        got = send(world, t, inp, read_timeout)
        t.sent += 1
        t.modes[inp.mode] = t.modes.get(inp.mode, 0) + 1
        if not world.alive():
            raise Failure(f"{t.name}: the proxy died on {inp.to_json()}")
        logged = world.new_log()
        if LOG_BAD.search(logged):
            raise Failure(f"{t.name}: the proxy logged an error on {inp.to_json()}:\n{logged}")
        check_reply(t, inp, got)
    try:
        t.good()
    except (AssertionError, OSError) as e:
        raise Failure(f"{t.name}: after the batch, a good request failed: {e!r}") from e
    # Every connection is counted once. Sniffing listeners (tls_inspector, Auto) count a
    # connection when its first bytes name a protocol: one closed before any byte is not,
    # nor (as in Envoy) one closed while tls_inspector waits for the rest of a ClientHello.
    silent = maybe = 0
    if t.kind in ("tls", "auto"):
        silent = sum(1 for i in inputs if i.mode == "cut" and i.cut == 0 and not i.tls)
    if t.kind == "tls":
        maybe = sum(1 for i in inputs if not i.tls and i.data[:1] == b"\x16" and i.cut != 0)
    base = len(inputs) - silent - maybe + GOOD_CONNS[t.name]
    last: dict[str, int] = {}

    def want() -> int:  # the admin listener also counts our /stats reads (each its own)
        return base + (world.stats_reads - reads0 if t.kind == "admin" else 0)

    def counted() -> bool:
        last.update(world.stats())
        return sum_of(last, t.cx) - sum_of(before, t.cx) >= want()

    wait_for(counted, 3.0)
    if maybe:
        time.sleep(0.2)
        counted()
    after = last
    cx = sum_of(after, t.cx) - sum_of(before, t.cx)
    if not want() <= cx <= want() + maybe:
        raise Failure(
            f"{t.name}: {want()} connections (+ up to {maybe}), {'+'.join(t.cx)} counted {cx}"
        )
    growth = {k: after.get(k, 0) - before.get(k, 0) for k in t.errors}
    if t.errors and sum(growth.values()) < 1:
        raise Failure(f"{t.name}: no error counted for {len(inputs)} bad inputs: {growth}")
    if t.kind == "tcp":
        rx = "tcp.tcp.downstream_cx_rx_bytes_total"
        growth[rx] = after.get(rx, 0) - before.get(rx, 0)
        if growth[rx] <= 0:
            raise Failure(f"tcp: no bytes counted for {len(inputs)} inputs")
    growth["cx"] = cx
    return growth


def sum_of(stats: dict[str, int], names: list[str]) -> int:
    return sum(stats.get(n, 0) for n in names)


def batch_inputs(rng: random.Random, t: Target, n: int) -> list[Input]:
    out = [make_input(rng, t, mutated=False) for _ in range(n)]
    out += [make_input(rng, t, mutated=True) for _ in range(n)]
    rng.shuffle(out)
    return out


@contextlib.contextmanager
def world_at(workdir: Path) -> Iterator[ProxyWorld]:
    with ProxyWorld(workdir) as w:
        for t in w.targets.values():
            t.good()  # warm: upstream pools open, every listener answers
        yield w


def save(out: Path, name: str, inputs: list[Input], why: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fail-{name}-{int(time.time())}.json"
    path.write_text(
        json.dumps({"listener": name, "why": why, "inputs": [i.to_json() for i in inputs]})
    )
    return path


# Idle connections an upstream cluster's pool may keep at the end (two listeners share
# bolt_up and dubbo_up; 10 minutes of campaign never saw more than 4 on one)
POOL_MAX = 4


def leaks(w: ProxyWorld, fds0: dict[str, Any]) -> list[str]:
    """What the proxy holds once every client has closed that it did not hold before: a
    client connection, a file or pipe, a listening socket, a connection to the tcp_proxy
    upstream (each closes with its client), an upstream pool over its size."""
    out = []
    if not wait_for(lambda: not w.downstream_sockets(), 5.0):
        out.append(f"client connections still held: {w.downstream_sockets()}")
    wait_for(lambda: w.fd_kinds()["other_sockets"] <= fds0["other_sockets"], 5.0)
    fds1 = w.fd_kinds()
    for kind in ("files", "listening", "other_tcp"):
        if fds1[kind] != fds0[kind]:
            out.append(f"{kind}: {fds0[kind]} before, {fds1[kind]} after")
    if fds1["other_sockets"] > fds0["other_sockets"]:
        out.append(f"sockets: {fds0['other_sockets']} before, {fds1['other_sockets']} after")
    if fds1["up_echo"]:
        out.append(f"{fds1['up_echo']} tcp_proxy upstream connections left")
    for pool in ("up_http", "up_bolt", "up_dubbo"):
        if fds1[pool] > POOL_MAX:
            out.append(f"{pool}: {fds1[pool]} connections (before: {fds0[pool]})")
    return out


def campaign(seconds: float, seed: int, out: Path, n: int) -> int:
    import tempfile

    rng = random.Random(seed)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="proxy-fuzz-") as tmp, world_at(Path(tmp)) as w:
        fds0, n0 = w.fd_kinds(), w.fd_count()
        totals: dict[str, dict[str, int]] = {name: {} for name in w.targets}
        start = time.monotonic()
        batches = 0
        while time.monotonic() - start < seconds:
            for t in w.targets.values():
                inputs = batch_inputs(rng, t, n)
                try:
                    growth = run_batch(w, t, inputs)
                except Failure as e:
                    failures += 1
                    path = save(out, t.name, inputs, str(e))
                    print(f"FAIL {e}\n  inputs saved to {path}", flush=True)
                    if not w.alive():
                        print(w.log()[-4000:])
                        return 1
                    continue
                for k, v in growth.items():
                    totals[t.name][k] = totals[t.name].get(k, 0) + v
            batches += 1
            w.http.clear()
            if batches % 10 == 0:
                print(
                    f"{time.monotonic() - start:6.0f}s "
                    + " ".join(f"{t.name}={t.sent}" for t in w.targets.values()),
                    flush=True,
                )
        elapsed = time.monotonic() - start
        leaked = leaks(w, fds0)
        bad = w.bad_log_lines()
        print(f"\nseed {seed}, {elapsed:.0f} s, {batches} rounds of {2 * n} inputs a listener")
        for t in w.targets.values():
            errs = {k.rsplit(".", 1)[-1] if k != "cx" else k: v for k, v in totals[t.name].items()}
            print(f"  {t.name:6} inputs {t.sent:7d}  modes {t.modes}  counted {errs}")
        total = sum(t.sent for t in w.targets.values())
        print(f"  total inputs {total}, failures {failures}")
        print(f"  descriptors before {n0}, after {w.fd_count()}; leaks: {leaked or 'none'}")
        print(f"  proxy log lines with a traceback/unhandled error: {len(bad)}")
        for line in bad[:20]:
            print("   ", line)
        if bad or leaked or not w.alive():
            failures += 1
    return 1 if failures else 0


def replay(path: Path) -> int:
    import tempfile

    saved = json.loads(path.read_text())
    inputs = [Input.from_json(d) for d in saved["inputs"]]
    print(f"replaying {len(inputs)} inputs on {saved['listener']}: {saved['why']}")
    with tempfile.TemporaryDirectory(prefix="proxy-fuzz-") as tmp, world_at(Path(tmp)) as w:
        t = w.targets[saved["listener"]]
        try:
            print(run_batch(w, t, inputs))
        except Failure as e:
            print(f"FAIL {e}")
            return 1
        print("bad log lines:", w.bad_log_lines())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-batch", type=int, default=50, help="random and mutated inputs each")
    ap.add_argument("--out", type=Path, default=Path("proxy-fuzz-failures"))
    ap.add_argument("--replay", type=Path)
    ns = ap.parse_args(argv)
    if ns.replay:
        return replay(ns.replay)
    return campaign(ns.seconds, ns.seed, ns.out, ns.per_batch)


if __name__ == "__main__":
    sys.exit(main())
