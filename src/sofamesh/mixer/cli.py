"""`sofamesh mixer`: the process serving RLQS, the rate-limit service and the access log service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from sofamesh.mixer.policy import PolicyError, load_policy

log = logging.getLogger("sofamesh.mixer")


def _hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"sofamesh mixer: {flag} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sofamesh mixer",
        description="global quota (RLQS), rate-limit, access log and metrics services for a mesh",
    )
    p.add_argument("--grpc-address", default="127.0.0.1:15030", help="gRPC services (HOST:PORT)")
    p.add_argument(
        "--http-address",
        default="127.0.0.1:15031",
        help="the web page (/), /api/graph, /metrics and /healthz",
    )
    p.add_argument("--config", default=None, help="YAML policy: quotas and ratelimits")
    p.add_argument(
        "--quota-ttl",
        type=float,
        default=15.0,
        help="seconds an RLQS assignment lives (assignment_time_to_live), and how long a "
        "silent sidecar keeps its share (default 15: Envoy 1.40 reports every 5 s)",
    )
    p.add_argument(
        "--store",
        default=None,
        help="etcd://host:port[/prefix]: global quota state shared with the other mixers "
        "on the same store (default: this process alone)",
    )
    p.add_argument(
        "--pilot",
        default=None,
        help="pilot REST API base URL: its rate policies become global quotas (read each second)",
    )
    p.add_argument(
        "--metrics-counters",
        choices=("cumulative", "delta"),
        default="cumulative",
        help="what the sidecars' metrics service sinks send: cumulative counters (Envoy's "
        "default) or deltas (report_counters_as_deltas)",
    )
    p.add_argument("--log-level", default="info")
    return p


async def _run(args: argparse.Namespace) -> int:
    from sofamesh.mixer.quota_store import QuotaStoreError, parse_store
    from sofamesh.mixer.server import AddressInUse, Mixer

    try:
        policy = load_policy(args.config)
    except PolicyError as e:
        print(f"sofamesh mixer: --config {e}", file=sys.stderr)
        return 2
    if args.store:
        try:
            parse_store(args.store)
        except QuotaStoreError as e:
            print(f"sofamesh mixer: {e}", file=sys.stderr)
            return 2
    mixer = Mixer(
        policy,
        quota_ttl=args.quota_ttl,
        store=args.store,
        metrics_deltas=args.metrics_counters == "delta",
    )
    ghost, _ = gaddr = _hostport(args.grpc_address, "--grpc-address")
    hhost, _ = haddr = _hostport(args.http_address, "--http-address")
    try:
        gport, hport = await mixer.start(gaddr, haddr)
    except (AddressInUse, QuotaStoreError) as e:
        print(f"sofamesh mixer: {e}", file=sys.stderr)
        return 1
    pilot = None
    if args.pilot:
        from sofamesh.mixer.pilot_policy import PilotPolicies

        pilot = PilotPolicies(mixer, args.pilot, policy)
        pilot.start()
    # one line a supervisor (or a test using port 0) can read
    print(f"sofamesh mixer: grpc {ghost}:{gport} http {hhost}:{hport}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if pilot is not None:
        await pilot.stop()
    await mixer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import uvloop

    return uvloop.run(_run(args))
