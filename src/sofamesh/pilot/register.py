"""`sofamesh register`: register one instance with a pilot, heartbeat it, deregister on exit.

    sofamesh register --pilot http://127.0.0.1:15020 --service reviews --id reviews-1 \\
        --address 10.0.0.5 --port 9080 --protocol http --label version=v1 --ttl 10

Runs until SIGINT/SIGTERM (then deregisters), or with `--once` registers and exits. A
heartbeat answered 404 (the pilot expired or lost the instance) re-registers it; a pilot that
cannot be reached is retried every heartbeat interval without exiting.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from urllib.parse import quote


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sofamesh register", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pilot",
        action="append",
        default=None,
        help="pilot REST API base URL; repeat (or comma-separate) for replicas sharing a store: "
        "the next is tried when one is unreachable (default http://127.0.0.1:15020)",
    )
    p.add_argument("--service", required=True)
    p.add_argument(
        "--id", dest="instance_id", required=True, help="instance id, unique in the service"
    )
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", default="http")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ttl", type=float, default=10.0, help="seconds; 0 registers without expiry")
    p.add_argument("--weight", type=int, default=None)
    p.add_argument("--service-port", type=int, default=None)
    p.add_argument("--region", default=None)
    p.add_argument("--zone", default=None)
    p.add_argument("--sub-zone", default=None)
    p.add_argument(
        "--interval", type=float, default=None, help="heartbeat interval (default ttl/3)"
    )
    p.add_argument("--once", action="store_true", help="register and exit (no heartbeats)")
    # a pilot run with --secure-api: HTTPS, this workload's certificate of the pilot's CA
    p.add_argument("--cert", default=None, help="PEM client certificate (https pilots)")
    p.add_argument("--key", default=None, help="PEM key of --cert")
    p.add_argument("--cacert", default=None, help="PEM root the pilot's certificate chains to")
    return p


_TLS: list = [None]  # the ssl.SSLContext https pilots are called with (main sets it)


def _request(
    method: str, url: str, body: dict | None = None, timeout: float = 5.0
) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_TLS[0]) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, (json.loads(raw) if raw else {})
    except ValueError:
        return status, {"error": raw.decode(errors="replace")}


def body_from(args: argparse.Namespace) -> dict:
    labels = {}
    for item in args.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"sofamesh register: --label {item!r}: expected KEY=VALUE")
        labels[k] = v
    body: dict = {
        "address": args.address,
        "port": args.port,
        "protocol": args.protocol,
        "labels": labels,
        "ttl_seconds": args.ttl,
    }
    if args.weight is not None:
        body["weight"] = args.weight
    if args.service_port is not None:
        body["service_port"] = args.service_port
    loc = {
        k: v
        for k, v in (("region", args.region), ("zone", args.zone), ("sub_zone", args.sub_zone))
        if v
    }
    if loc:
        body["locality"] = loc
    return body


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    body = body_from(args)
    if args.cert or args.key or args.cacert:
        import ssl

        ctx = ssl.create_default_context(cafile=args.cacert)
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
        _TLS[0] = ctx
    bases = [
        u.strip().rstrip("/")
        for arg in (args.pilot or ["http://127.0.0.1:15020"])
        for u in arg.split(",")
        if u.strip()
    ]
    path = (
        f"/v1/services/{quote(args.service, safe='')}/instances/{quote(args.instance_id, safe='')}"
    )
    stop = threading.Event()
    current = [0]

    def call(method: str, suffix: str = "", payload: dict | None = None, timeout: float = 5.0):
        """Try the pilot that worked last, then the others; OSError if none answers (5xx too)."""
        last: Exception = OSError("no pilot")
        for k in range(len(bases)):
            i = (current[0] + k) % len(bases)
            try:
                status, out = _request(method, bases[i] + path + suffix, payload, timeout)
            except OSError as e:
                last = e
                continue
            if status >= 500:
                last = OSError(f"{bases[i]}: {status} {out.get('error', out)}")
                continue
            current[0] = i
            return status, out
        raise last

    def register() -> bool:
        try:
            status, out = call("PUT", "", body)
        except OSError as e:
            print(
                f"sofamesh register: pilot unavailable ({e}); retrying", file=sys.stderr, flush=True
            )
            return False
        if status >= 400:
            # a rejected body will not get better by retrying
            raise SystemExit(f"sofamesh register: {status} {out.get('error', out)}")
        print(
            f"registered {args.service}/{args.instance_id} at {args.address}:{args.port} "
            f"via {bases[current[0]]}",
            flush=True,
        )
        return True

    registered = False
    while not registered:
        registered = register()
        if args.once:
            return 0 if registered else 1
        if not registered and stop.wait(2.0):
            return 1

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    interval = args.interval or (max(0.2, args.ttl / 3.0) if args.ttl > 0 else 30.0)
    while not stop.wait(interval):
        if args.ttl <= 0:
            continue
        try:
            status, _ = call("PUT", "/heartbeat", timeout=max(1.0, interval))
        except OSError as e:
            print(f"sofamesh register: heartbeat failed ({e})", file=sys.stderr, flush=True)
            continue
        if status == 404:
            print(
                "sofamesh register: pilot no longer knows the instance; registering again",
                file=sys.stderr,
                flush=True,
            )
            register()
    try:
        status, _ = call("DELETE")
        print(f"deregistered {args.service}/{args.instance_id} ({status})", flush=True)
    except OSError as e:
        print(f"sofamesh register: deregistration failed ({e})", file=sys.stderr, flush=True)
        return 1
    return 0
