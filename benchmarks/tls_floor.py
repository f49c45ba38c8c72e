"""The floor under a TLS handshake: server CPU per handshake inside each TLS library, alone.

    .venv/bin/python benchmarks/tls_floor.py [--handshakes 3000] [--rounds 3] [--core 1]
        [--boringssl INCLUDE_DIR LIB_DIR] [--json out.json]

benchmarks/tls_bench.py measures whole handshakes through Envoy 1.40 and sofamesh (sockets,
event loop, listener, TLS library, HTTP). This measures only the library's part: a client
and a server in one thread joined by memory BIOs, the server's calls timed with the
thread's CPU clock (`tls_floor/handshake.c` for C, the same loop in Python for the bindings
sofamesh can use). Same certificate for all (ECDSA P-256), groups X25519 then P-256,
session tickets at each library's default (both OpenSSL and BoringSSL send them).

Libraries, each when present:
- OpenSSL, the system's (libssl-dev), C: what Python's `ssl`, and so sofamesh, links;
- Python's `ssl` (SSLObject over MemoryBIO, as uvloop's SSLProtocol drives it): the same
  OpenSSL plus the binding's cost, i.e. sofamesh's TLS library cost today;
- the OpenSSL that the `cryptography` wheel bundles, through its cffi bindings;
- BoringSSL from Debian (android-libboringssl-dev: `apt-get install android-libboringssl-dev`), C;
- `--boringssl INCLUDE LIBDIR`: any other BoringSSL build (libssl.a and libcrypto.a), C.

Envoy links its own BoringSSL; its whole handshake (tls_bench.py) minus this floor is what
Envoy spends outside the library. Figures in benchmarks/RESULTS.md ("TLS library floor").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.support.certs import make_ca, make_leaf

C_SOURCE = HERE / "tls_floor" / "handshake.c"
DEBIAN_BSSL = (Path("/usr/include/android"), Path("/usr/lib/x86_64-linux-gnu/android"))

# One handshake loop for the Python bindings; argv: kind cert key version n.
PY_LOOP = r"""
import sys, time
kind, cert, key, version, n = sys.argv[1:6]
n = int(n)
if kind == "ssl":
    import ssl
    s_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    s_ctx.load_cert_chain(cert, key)
    # OpenSSL 3.0's default groups already start with X25519, then P-256.
    if version == "1.2":
        s_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    c_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c_ctx.check_hostname = False
    c_ctx.verify_mode = ssl.CERT_NONE
    spent = 0.0
    for _ in range(n):
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        t = time.thread_time()
        s = s_ctx.wrap_bio(s_in, s_out, server_side=True)
        spent += time.thread_time() - t
        c = c_ctx.wrap_bio(c_in, c_out)
        c_done = s_done = False
        while not (c_done and s_done):
            if not c_done:
                try:
                    c.do_handshake(); c_done = True
                except ssl.SSLWantReadError:
                    pass
            data = c_out.read()
            if data:
                s_in.write(data)
            if not s_done or data:
                t = time.thread_time()
                try:
                    s.do_handshake(); s_done = True
                except ssl.SSLWantReadError:
                    pass
                spent += time.thread_time() - t
            data = s_out.read()
            if data:
                c_in.write(data)
        try:
            c.read(1)
        except ssl.SSLWantReadError:
            pass
        t = time.thread_time()
        del s
        spent += time.thread_time() - t
    name = "Python ssl, " + ssl.OPENSSL_VERSION
else:
    from cryptography.hazmat.bindings.openssl.binding import Binding
    b = Binding(); lib, ffi = b.lib, b.ffi
    def ctx(server):
        c = lib.SSL_CTX_new(lib.TLS_method())
        lib.SSL_CTX_set1_curves_list(c, b"X25519:P-256")
        if server:
            assert lib.SSL_CTX_use_certificate_chain_file(c, cert.encode()) == 1
            assert lib.SSL_CTX_use_PrivateKey_file(c, key.encode(), lib.SSL_FILETYPE_PEM) == 1
            if version == "1.2":
                lib.SSL_CTX_set_max_proto_version(c, lib.TLS1_2_VERSION)
        return c
    s_ctx, c_ctx = ctx(True), ctx(False)
    buf = ffi.new("char[]", 65536)
    def move(a, b):
        k = lib.BIO_read(a, buf, 65536)
        if k > 0:
            lib.BIO_write(b, buf, k)
        return k > 0
    def new(c, server):
        s = lib.SSL_new(c); i = lib.BIO_new(lib.BIO_s_mem()); o = lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(s, i, o)
        (lib.SSL_set_accept_state if server else lib.SSL_set_connect_state)(s)
        return s, i, o
    spent = 0.0
    for _ in range(n):
        t = time.thread_time(); s, s_in, s_out = new(s_ctx, True); spent += time.thread_time() - t
        c, c_in, c_out = new(c_ctx, False)
        c_done = s_done = False
        while not (c_done and s_done):
            if not c_done:
                c_done = lib.SSL_do_handshake(c) == 1
            moved = move(c_out, s_in)
            if not s_done or moved:
                t = time.thread_time(); s_done = lib.SSL_do_handshake(s) == 1; spent += time.thread_time() - t
            move(s_out, c_in)
        lib.SSL_read(c, buf, 1)
        t = time.thread_time(); lib.SSL_free(s); spent += time.thread_time() - t
        lib.SSL_free(c)
    name = "cryptography's bundled " + ffi.string(lib.OpenSSL_version(0)).decode()
print(f"{name}\t{version}\t{spent / n * 1e6:.1f}")
"""


def build(out: Path, name: str, cflags: list[str], libs: list[str]) -> Path | None:
    exe = out / name
    argv = ["gcc", "-O2", "-o", str(exe), str(C_SOURCE), *cflags, *libs]
    r = subprocess.run(argv, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"  {name}: not built ({r.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return exe


def candidates(out: Path, args) -> dict[str, list[str]]:
    """label -> argv prefix (cert, key, version and n follow)."""
    found: dict[str, list[str]] = {}
    exe = build(out, "openssl", [], ["-lssl", "-lcrypto"])
    if exe:
        found["openssl-system"] = [str(exe)]
    found["python-ssl"] = [sys.executable, "-c", PY_LOOP, "ssl"]
    try:
        import cryptography.hazmat.bindings.openssl.binding  # noqa: F401

        found["cryptography-openssl"] = [sys.executable, "-c", PY_LOOP, "cffi"]
    except ImportError:
        pass
    inc, lib = DEBIAN_BSSL
    if (inc / "openssl" / "ssl.h").exists():
        exe = build(
            out,
            "boringssl-debian",
            [f"-I{inc}"],
            [f"-L{lib}", f"-Wl,-rpath,{lib}", "-lssl", "-lcrypto"],
        )
        if exe:
            found["boringssl-debian"] = [str(exe)]
    if args.boringssl:
        inc, lib = (Path(p) for p in args.boringssl)
        exe = build(
            out,
            "boringssl-given",
            [f"-I{inc}"],
            [str(lib / "libssl.a"), str(lib / "libcrypto.a"), "-lstdc++", "-lpthread"],
        )
        if exe:
            found["boringssl-given"] = [str(exe)]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--handshakes", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--boringssl", nargs=2, metavar=("INCLUDE", "LIBDIR"))
    ap.add_argument("--json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        ca = make_ca("floor CA")
        cert, key = make_leaf(ca, cn="bench.local", dns=("bench.local",)).write(out, "server")
        libs = candidates(out, args)
        runs: dict[tuple[str, str], list[float]] = {}
        names: dict[str, str] = {}
        for _ in range(args.rounds):
            for version in ("1.3", "1.2"):
                for label, argv in libs.items():
                    full = [
                        "taskset",
                        "-c",
                        str(args.core),
                        *argv,
                        cert,
                        key,
                        version,
                        str(args.handshakes),
                    ]
                    r = subprocess.run(
                        full,
                        check=False,
                        capture_output=True,
                        text=True,
                        env={**os.environ, "PYTHONPATH": ""},
                    )
                    if r.returncode != 0:
                        raise SystemExit(f"{label} {version} failed:\n{r.stderr[-2000:]}")
                    lib_name, _, us = r.stdout.strip().split("\t")
                    names[label] = lib_name
                    runs.setdefault((label, version), []).append(float(us))
    print(
        f"server CPU per handshake inside the library, us (median of {args.rounds}; {time.strftime('%Y-%m-%d %H:%M')})"
    )
    print(f"{'library':<24} {'TLS 1.3':>8} {'TLS 1.2':>8}  version")
    table = {}
    for label in libs:
        v13 = statistics.median(runs[(label, "1.3")])
        v12 = statistics.median(runs[(label, "1.2")])
        table[label] = {
            "name": names[label],
            "tls13_us": v13,
            "tls12_us": v12,
            "runs": {"1.3": runs[(label, "1.3")], "1.2": runs[(label, "1.2")]},
        }
        print(f"{label:<24} {v13:8.1f} {v12:8.1f}  {names[label]}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
