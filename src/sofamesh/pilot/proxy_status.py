"""`sofamesh proxy-status`: which sidecars each pilot serves, and whether they are in sync.

    sofamesh proxy-status                               # the pilot at 127.0.0.1:15020
    sofamesh proxy-status --pilot http://p1:15020,http://p2:15020
    sofamesh proxy-status --json
    sofamesh proxy-status reviews-1                     # the rows whose name contains it

As `istioctl proxy-status`: one row per connected sidecar (Envoy, sofamesh, proxyless gRPC)
and, per resource type, SYNCED (the last version sent is ACKed, nothing owed), STALE (a
push is in flight or owed), NACKED (the last push was rejected: the error follows the
table) or NOT SENT (never asked for / nothing sent). It reads each pilot's
`GET /debug/connections`.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

TYPES = ("cds", "lds", "eds", "rds")
COLUMNS = ("NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "PILOT", "VERSION")


def fetch(pilot: str, timeout: float = 5.0) -> dict:
    url = pilot.rstrip("/") + "/debug/connections"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _name(conn: dict) -> str:
    info = conn.get("node_info")
    if info:  # Istio's node id: pod.namespace, as istioctl shows it
        return f"{info['pod']}.{info['namespace']}" if info.get("namespace") else info["pod"]
    return conn.get("node") or conn.get("peer", "?")


def rows(payloads: list[tuple[str, dict]]) -> list[dict]:
    """One row per connection, from (pilot URL, /debug/connections body) pairs."""
    out = []
    for url, body in payloads:
        pilot = body.get("pilot") or url
        for c in body.get("connections", []):
            types = {}
            for t in TYPES:
                w = c.get("types", {}).get(t)
                if w is None:
                    types[t] = {"status": "NOT SENT"}
                    continue
                nack = w.get("nack")
                types[t] = {
                    "status": w.get("status", "NOT SENT"),
                    "version_sent": w.get("version_sent", ""),
                    "version_acked": w.get("version_acked", ""),
                    "error": nack.get("error", "") if nack and w.get("status") == "NACKED" else "",
                }
            out.append(
                {
                    "name": _name(c),
                    "node": c.get("node", ""),
                    "cluster": c.get("cluster_id") or c.get("cluster", ""),
                    "pilot": pilot,
                    "version": c.get("istio_version") or c.get("user_agent", ""),
                    "mode": c.get("mode", ""),
                    "types": types,
                }
            )
    out.sort(key=lambda r: (r["name"], r["pilot"]))
    return out


def table(rs: list[dict]) -> str:
    cells = [list(COLUMNS)]
    for r in rs:
        cells.append(
            [
                r["name"],
                r["cluster"] or "-",
                *(r["types"][t]["status"] for t in ("cds", "lds", "eds", "rds")),
                r["pilot"],
                r["version"] or "-",
            ]
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["   ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    errors = [
        f"{r['name']} {t.upper()}: {r['types'][t]['error']}"
        for r in rs
        for t in TYPES
        if r["types"][t]["status"] == "NACKED"
    ]
    if errors:
        lines += ["", "NACKED:", *(f"  {e}" for e in errors)]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sofamesh proxy-status", description=__doc__.split("\n")[0])
    p.add_argument(
        "--pilot",
        action="append",
        default=None,
        help="pilot REST API base URL; repeat (or comma-separate) for replicas "
        "(default http://127.0.0.1:15020)",
    )
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.add_argument("name", nargs="?", help="only the sidecars whose name or node id has this")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    pilots = [u for arg in args.pilot or ["http://127.0.0.1:15020"] for u in arg.split(",") if u]
    payloads: list[tuple[str, Any]] = []
    failed = False
    for url in pilots:
        try:
            payloads.append((url, fetch(url)))
        except (OSError, ValueError) as e:
            print(f"sofamesh proxy-status: {url}: {e}", file=sys.stderr)
            failed = True
    rs = rows(payloads)
    if args.name:
        rs = [r for r in rs if args.name in r["name"] or args.name in r["node"]]
    if args.json:
        print(json.dumps(rs, indent=2))
    else:
        print(table(rs))
    return 1 if failed and not payloads else 0
