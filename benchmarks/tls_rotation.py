"""Rotation under load (issue 11's proof): identities from `sofamesh pilot` that live 30 s,
wrk through two sidecars over mTLS for 2 minutes across several rotations: zero failed
requests.

    .venv/bin/python benchmarks/tls_rotation.py [--ttl 30] [--duration 120] [--inbound envoy]

wrk (keep-alive, --connections) -> sidecar A outbound (sofamesh, plaintext in) -> mTLS
(A's SPIFFE certificate, B's checked; at most 100 requests per upstream connection, so new
handshakes with the current certificates all along) -> sidecar B inbound (sofamesh or
Envoy 1.40, mTLS required, A's SPIFFE id checked) -> nginx. Both sidecars take their
`default` and `ROOTCA` secrets from the pilot (standalone SDS) and get a new certificate at
half life. Prints requests, failures (non-2xx + socket errors), rotations the pilot pushed
and the serials each sidecar went through; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from http1_e2e import proxy_argv
from lib import nginx, wrk
from lib.bootstrap import BENCH_HOST
from lib.proc import Proc, free_port, http_get

from tests.integration.pilot.conftest import PilotProcess, http
from tests.integration.tls.test_pilot_ca import sidecar


def serials(admin: int) -> set[str]:
    status, body = http_get(admin, "/certs")
    if status != 200:
        return set()
    doc = json.loads(body)
    return {
        cert["serial_number"].lstrip("0") for c in doc["certificates"] for cert in c["cert_chain"]
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ttl", type=float, default=30)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--inbound", choices=("sofamesh", "envoy"), default="sofamesh")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tls-rotation-") as tmp:
        wd = Path(tmp)
        up = free_port()
        ngx = nginx.start(wd, up, 1)
        pilot = PilotProcess(
            wd / "pilot", extra=["--trust-domain", "mesh.test", "--cert-ttl", str(args.ttl)]
        ).start()
        ports = {s: {"out": free_port(), "in": free_port()} for s in "ab"}
        admins = {s: free_port() for s in "ab"}
        procs = []
        try:
            for side, kind, me, peer, upstream in (
                ("b", args.inbound, "svc-b", "svc-a", ports["a"]["in"]),
                ("a", "sofamesh", "svc-a", "svc-b", ports["b"]["in"]),
            ):
                boot = sidecar(me, peer, pilot, admins[side], ports[side], up, upstream, False)
                boot["static_resources"]["clusters"][2]["max_requests_per_connection"] = 100
                cfg = wd / f"{side}.json"
                cfg.write_text(json.dumps(boot))
                p = Proc(f"{kind}-{side}", proxy_argv(kind, cfg), wd / f"{side}.log", 0).start()
                procs.append(p)
                adm = admins[side]
                p.wait_ready(lambda adm=adm: http_get(adm, "/ready")[0] == 200)
            deadline = time.monotonic() + 15
            while http_get(ports["a"]["out"])[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("no answer through the two sidecars")
                time.sleep(0.2)
            seen = {s: serials(admins[s]) for s in "ab"}
            url = f"http://127.0.0.1:{ports['a']['out']}/"
            t0 = time.monotonic()
            out: dict = {}
            load = threading.Thread(
                target=lambda: out.update(
                    res=wrk.run(url, args.connections, args.duration, 1, BENCH_HOST)
                )
            )
            load.start()
            while load.is_alive():  # the certificates each sidecar holds, every 2 s
                for s in "ab":
                    seen[s] |= serials(admins[s])
                load.join(2.0)
            res = out["res"]
            elapsed = time.monotonic() - t0
            _, metrics = http("GET", pilot.api + "/metrics")
            rot = [ln for ln in str(metrics).splitlines() if ln.startswith("pilot_sds_rotations")]
        finally:
            for p in procs:
                p.stop()
            pilot.stop()
            ngx.stop()
    failed = res.non_2xx + res.socket_errors
    print(
        f"{res.requests} requests in {elapsed:.0f} s ({res.rps:.0f}/s, p99 {res.p99_ms} ms), "
        f"certificates of {args.ttl:.0f} s, inbound {args.inbound}: {failed} failed "
        f"({res.non_2xx} non-2xx, {res.socket_errors} socket errors); pilot: {rot}; "
        f"certificates held over the run: a {len(seen['a'])}, b {len(seen['b'])}"
    )
    return 1 if failed or res.requests == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
