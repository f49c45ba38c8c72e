"""`sofamesh pilot`: the control plane process (xDS server + registry REST API)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

log = logging.getLogger("sofamesh.pilot")


def _hostport(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"sofamesh pilot: {flag} {text!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _xds_address(text: str) -> tuple[str, int]:
    """--xds-address: HOST:PORT, or unix:PATH (a Unix socket, as pilot-agent's XDS proxy
    serves the bootstrap's `xds-grpc` pipe): ("unix:PATH", 0)."""
    if text.startswith("unix:"):
        if not text[5:]:
            raise SystemExit(f"sofamesh pilot: --xds-address {text!r}: expected unix:PATH")
        return text, 0
    return _hostport(text, "--xds-address")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sofamesh pilot", description="xDS control plane over several service registries"
    )
    p.add_argument(
        "--xds-address",
        default=None,
        help="ADS gRPC address, HOST:PORT or unix:PATH (default 127.0.0.1:15010)",
    )
    p.add_argument(
        "--api-address", default=None, help="registry REST API address (default 127.0.0.1:15020)"
    )
    p.add_argument(
        "--outbound-port",
        type=int,
        default=None,
        help="sidecar outbound HTTP listener port (default 15001)",
    )
    p.add_argument(
        "--listener-address",
        default=None,
        help="address the generated sidecar listeners bind (default 0.0.0.0)",
    )
    p.add_argument(
        "--tcp-port-offset",
        type=int,
        default=None,
        help="TCP services' listeners bind service port + N (default 0; for explicit-proxy "
        "sidecars sharing a host with the services they call)",
    )
    p.add_argument(
        "--scoped-routes",
        choices=("true", "false"),
        default=None,
        help="a scope and a route config per service (default true), or one route config of "
        "every service on the outbound listener (false)",
    )
    p.add_argument(
        "--store", default=None, help="'embedded' (default), 'embedded:DIR' or etcd://host:port"
    )
    p.add_argument(
        "--data-dir", default=None, help="embedded store directory (default ./sofamesh-pilot-data)"
    )
    p.add_argument(
        "--config", default=None, help="YAML config: registries list and any of these options"
    )
    p.add_argument("--debounce-ms", type=float, default=None, help="push debounce (default 100)")
    p.add_argument(
        "--ca",
        choices=("true", "false"),
        default=None,
        help="act as a CA serving SPIFFE identities over SDS (default true)",
    )
    p.add_argument(
        "--trust-domain", default=None, help="SPIFFE trust domain (default cluster.local)"
    )
    p.add_argument(
        "--ca-cert", default=None, help="PEM root certificate to sign with (default: made at start)"
    )
    p.add_argument("--ca-key", default=None, help="PEM key of --ca-cert")
    p.add_argument(
        "--secure-xds",
        choices=("true", "false"),
        default=None,
        help="serve ADS/SDS over mutual TLS (sidecars need a certificate of the pilot's CA; "
        "each stream's identity is its certificate's, not what its node says)",
    )
    p.add_argument(
        "--secure-api",
        choices=("true", "false"),
        default=None,
        help="serve the registration API and /debug over mutual TLS (clients need a "
        "certificate of the pilot's CA; each may write only its own service's instances)",
    )
    p.add_argument(
        "--cert-ttl",
        type=float,
        default=None,
        help="workload certificate lifetime in seconds (default 86400; pushed anew at half life)",
    )
    p.add_argument(
        "--join-secret",
        default=None,
        help="file with the join secret (`sofamesh cert secret`): serve certificate requests "
        "with join tokens on --ca-address (bootstrap certificates; needs the CA)",
    )
    p.add_argument(
        "--ca-address",
        default=None,
        help="HOST:PORT of the certificate requests' TLS port (default 127.0.0.1:15012)",
    )
    p.add_argument(
        "--mtls-mode",
        choices=("strict", "permissive"),
        default=None,
        help="the generated inbound listeners of instances labelled tlsMode: istio: strict "
        "(default) takes mutual TLS only; permissive also takes plaintext (Istio's PERMISSIVE)",
    )
    p.add_argument(
        "--mixer",
        default=None,
        help="HOST:PORT of `sofamesh mixer`'s gRPC services: rate policies become "
        "rate_limit_quota filters reporting there (without it they are not enforced)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="this pilot's cluster name: its services carry it, and it serves its catalog "
        "to peer pilots at /v1/catalog (registry sync)",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=None,
        metavar="URL",
        help="another pilot's registration API (http://HOST:PORT) to exchange service catalogs "
        "with; repeatable; needs --cluster",
    )
    p.add_argument(
        "--peer-lease",
        type=float,
        default=None,
        help="seconds a silent peer's entries are kept (default 10)",
    )
    p.add_argument(
        "--edge",
        default=None,
        metavar="IP:PORT",
        help="this cluster's edge sidecar (a sofamesh proxy whose node id starts router~), as "
        "this cluster's sidecars reach it: calls to peer clusters that name an edge go "
        "through it and theirs (mutual TLS, SNI routed); needs --cluster and the CA",
    )
    p.add_argument(
        "--edge-public",
        default=None,
        metavar="IP:PORT",
        help="where the peers' edge sidecars reach this cluster's edge (default: --edge)",
    )
    p.add_argument("--log-level", default="info")
    return p


def load_config(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except OSError as e:
        raise SystemExit(f"sofamesh pilot: --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SystemExit(f"sofamesh pilot: --config {path}: invalid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"sofamesh pilot: --config {path}: expected a mapping at the top level")
    regs = cfg.get("registries", [])
    if not isinstance(regs, list) or not all(isinstance(r, dict) for r in regs):
        raise SystemExit(
            f"sofamesh pilot: --config {path}: registries: expected a list of mappings"
        )
    return cfg


def build_registries(cfg: dict) -> list:
    """Adapters named in the config, through `sofamesh.pilot.registries.build(cfg)`."""
    regs = cfg.get("registries") or []
    if not regs:
        return []
    try:
        from sofamesh.pilot.registries import build  # type: ignore[attr-defined]
    except ImportError as e:
        kinds = ", ".join(str(r.get("type", r.get("name", "?"))) for r in regs)
        raise SystemExit(
            f"sofamesh pilot: config names registries ({kinds}) but the registry "
            f"adapters are not available: {e}"
        ) from None
    out = []
    for i, rc in enumerate(regs):
        try:
            out.append(build(rc, path=f"registries[{i}]"))
        except Exception as e:  # noqa: BLE001 - a config error; the message names the field
            raise SystemExit(f"sofamesh pilot: config: {e}") from None
    names = [r.name for r in out]
    if len(set(names)) != len(names) or "api" in names:
        raise SystemExit(f"sofamesh pilot: registry names must be unique and not 'api': {names}")
    return out


async def run(opts: dict, ready=None, stop: asyncio.Event | None = None) -> None:
    from sofamesh.pilot.api import ApiRegistry, RestApi
    from sofamesh.pilot.core import Pilot
    from sofamesh.pilot.generate import Generator
    from sofamesh.pilot.store import StoreError, open_store

    try:
        store = open_store(opts["store"], opts["data_dir"])
    except StoreError as e:
        raise SystemExit(f"sofamesh pilot: {e}") from None
    policy_store = open_store(opts["store"], opts["data_dir"], kind="policies")
    try:
        await store.open()
        await policy_store.open()
    except Exception as e:  # noqa: BLE001
        raise SystemExit(
            f"sofamesh pilot: cannot open store {opts['store'] or 'embedded'}: {e}"
        ) from None
    gen = Generator(
        outbound_port=opts["outbound_port"],
        listener_address=opts["listener_address"],
        tcp_port_offset=opts.get("tcp_port_offset", 0),
        scoped_routes=opts.get("scoped_routes", True),
    )
    api_reg = ApiRegistry(store)
    peers = _peer_sync(opts)
    regs = [api_reg] + opts["registries"] + ([peers] if peers is not None else [])
    for reg in opts["registries"]:  # `export_address: sidecar`: where the sidecars listen
        if hasattr(reg, "export_to"):
            reg.export_to.sidecar_port_offset = gen.tcp_port_offset
    pilot = Pilot(regs, gen=gen, debounce=opts["debounce"])
    api = RestApi(store, pilot, api_reg)
    if peers is not None:
        api.cluster = peers.cluster
        peers.attach(pilot, api.app)
    _policies(opts, policy_store, pilot, api)
    doors = None
    if opts.get("ca"):
        pilot.ads.sds = _ca_sds(opts, pilot.metrics)
        gen.trust_domain = pilot.ads.sds.ca.trust_domain  # auto mTLS to tlsMode: istio
    pilot.ads.inbound.mode = opts.get("mtls_mode", "strict")
    if opts.get("secure_api"):
        from sofamesh.pilot.doors import LockedDoors

        if pilot.ads.sds is None:
            raise SystemExit("sofamesh pilot: --secure-api needs the CA (--ca true)")
        doors = LockedDoors(pilot.ads.sds.ca, opts["api_address"][0], pilot.metrics)
        api.ssl_context = doors.context
        api.app.middlewares.append(doors.middleware)
    if peers is not None and pilot.ads.sds is not None:
        peers.use_ca(pilot.ads.sds.ca)  # https:// peers: our certificate, our root
    _edges(opts, pilot, peers)
    if opts.get("secure_xds"):
        from sofamesh.pilot.doors import xds_credentials

        if pilot.ads.sds is None:
            raise SystemExit("sofamesh pilot: --secure-xds needs the CA (--ca true)")
        pilot.ads.credentials = xds_credentials(pilot.ads.sds.ca, opts["xds_address"][0])
    cert_door = None
    if opts.get("join_secret"):
        from sofamesh.pilot.bootstrap import CertificateDoor, load_secret

        if pilot.ads.sds is None:
            raise SystemExit("sofamesh pilot: --join-secret needs the CA (--ca true)")
        try:
            secret = load_secret(opts["join_secret"])
        except (OSError, ValueError) as e:
            raise SystemExit(f"sofamesh pilot: --join-secret: {e}") from None
        cert_door = CertificateDoor(pilot.ads.sds.ca, secret, opts["ca_address"][0], pilot.metrics)
    stop = stop or asyncio.Event()
    try:
        await pilot.start()
        if cert_door is not None:
            ch, cp = opts["ca_address"]
            cert_port = await cert_door.start(ch, cp)
            log.info("certificate requests (join tokens) on https://%s:%d", ch, cert_port)
            print(f"sofamesh pilot: ca=https://{ch}:{cert_port}", flush=True)
        xh, xp = opts["xds_address"]
        if xh.startswith("unix:"):  # a Unix socket: a stale one from a previous run goes
            try:
                os.unlink(xh[5:])
            except FileNotFoundError:
                pass
            await pilot.ads.start(xh)
            xds_port = 0
        else:
            xds_port = await pilot.ads.start(f"[{xh}]:{xp}" if ":" in xh else f"{xh}:{xp}")
        ah, ap = opts["api_address"]
        api_port = await api.start(ah, ap)
        scheme = "https" if doors is not None else "http"
        if doors is None:
            log.warning(
                "registration API and /debug on %s:%d are open (plain HTTP, no client "
                "authentication): anyone who reaches them may register or delete instances; "
                "--secure-api locks them with mutual TLS",
                ah,
                api_port,
            )
        xds_at = xh if xh.startswith("unix:") else f"{xh}:{xds_port}"
        log.info(
            "pilot ready: xDS %s, API %s://%s:%d, store %s",
            xds_at,
            scheme,
            ah,
            api_port,
            store.kind,
        )
        print(
            f"sofamesh pilot: xds={xds_at} api={scheme}://{ah}:{api_port} store={store.kind}",
            flush=True,
        )
        if ready is not None:
            ready(pilot, api)
        await stop.wait()
    finally:
        await api.stop()
        if cert_door is not None:
            await cert_door.stop()
        if doors is not None:
            doors.close()
        await pilot.ads.stop()
        await pilot.stop()
        await store.close()
        await policy_store.close()


def _peer_sync(opts: dict):
    """Registry sync (pilot/sync.py): with --cluster, a `peers` registry fed by --peer's."""
    cluster, urls = opts.get("cluster"), opts.get("peers") or []
    if urls and not cluster:
        raise SystemExit("sofamesh pilot: --peer needs --cluster (this pilot's cluster name)")
    if not cluster:
        return None
    from sofamesh.pilot.sync import CLUSTER_RE, PeerSync

    if not CLUSTER_RE.match(cluster):
        raise SystemExit(f"sofamesh pilot: --cluster {cluster!r}: letters, digits, '.-_' (1-63)")
    lease = opts.get("peer_lease") or 10.0
    if lease < 1:
        raise SystemExit(f"sofamesh pilot: --peer-lease {lease:g}: at least 1 second")
    try:
        return PeerSync(cluster, urls, lease=lease)
    except ValueError as e:
        raise SystemExit(f"sofamesh pilot: {e}") from None


def _edges(opts: dict, pilot, peers) -> None:
    """--edge / --edge-public (pilot/edge.py)."""
    if not opts.get("edge"):
        if opts.get("edge_public"):
            raise SystemExit("sofamesh pilot: --edge-public needs --edge")
        return
    from sofamesh.pilot.edge import Edges, parse_hostport

    if peers is None:
        raise SystemExit("sofamesh pilot: --edge needs --cluster (this pilot's cluster name)")
    if pilot.ads.sds is None:
        raise SystemExit("sofamesh pilot: --edge needs the CA (--ca true): edges use mutual TLS")
    try:
        local = parse_hostport(opts["edge"], "--edge")
        public = parse_hostport(opts.get("edge_public") or opts["edge"], "--edge-public")
    except ValueError as e:
        raise SystemExit(f"sofamesh pilot: {e}") from None
    pilot.use_edges(Edges(peers.cluster, local, public, peers))


def _policies(opts: dict, store, pilot, api) -> None:
    """Operator policies (pilot/policy.py): REST routes, stored beside the instances; a
    change (here or, on etcd, through another replica) rebuilds the model."""
    from sofamesh.pilot.policy import PolicyApi, resolve

    PolicyApi(store).add_routes(api.app)
    pilot.gen.policy_source = lambda instances: resolve(store, instances)
    pilot.gen.mixer = opts.get("mixer")
    store.listeners.append(lambda _service: pilot.on_change("policies"))


def _mtls_mode(value: object) -> str:
    mode = str(value).lower()
    if mode not in ("strict", "permissive"):
        raise SystemExit(f"sofamesh pilot: mtls_mode must be strict or permissive, got {value!r}")
    return mode


def _ca_sds(opts: dict, metrics) -> object:
    """The pilot's CA (its own root, or --ca-cert/--ca-key) serving SDS (pilot/sds.py)."""
    from sofamesh.pilot.ca import CaError, CertificateAuthority
    from sofamesh.pilot.sds import PilotSds

    cert = key = None
    try:
        if opts.get("ca_cert") or opts.get("ca_key"):
            with open(opts["ca_cert"] or "", "rb") as f:
                cert = f.read()
            with open(opts["ca_key"] or "", "rb") as f:
                key = f.read()
        ca = CertificateAuthority(opts["trust_domain"], cert, key, ttl=opts["cert_ttl"])
    except (OSError, CaError) as e:
        raise SystemExit(f"sofamesh pilot: CA: {e}") from None
    log.info("pilot CA: trust domain %s, certificates for %.0f s", ca.trust_domain, ca.ttl)
    return PilotSds(ca, metrics)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


def _fixed_mmap_threshold() -> None:
    """PERF (benchmarks/pilot_scale.py, RSS with 100 clients 398 -> 263 MB): pushes build
    megabyte-sized responses per stream. glibc raises its mmap threshold after freeing such a
    block, so later ones come from the heap and fragment it; a fixed threshold keeps them
    mmapped and returned to the OS when freed."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _fixed_mmap_threshold()

    def pick(flag, key, default):
        return flag if flag is not None else cfg.get(key, default)

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    opts = {
        "xds_address": _xds_address(pick(args.xds_address, "xds_address", "127.0.0.1:15010")),
        "api_address": _hostport(
            pick(args.api_address, "api_address", "127.0.0.1:15020"), "--api-address"
        ),
        "outbound_port": int(pick(args.outbound_port, "outbound_port", 15001)),
        "listener_address": pick(args.listener_address, "listener_address", "0.0.0.0"),
        "tcp_port_offset": int(pick(args.tcp_port_offset, "tcp_port_offset", 0)),
        "scoped_routes": str(pick(args.scoped_routes, "scoped_routes", True)).lower()
        in ("true", "1", "yes"),
        "store": pick(args.store, "store", None),
        "data_dir": pick(
            args.data_dir, "data_dir", os.path.join(os.getcwd(), "sofamesh-pilot-data")
        ),
        "debounce": float(pick(args.debounce_ms, "debounce_ms", 100)) / 1000.0,
        "ca": str(pick(args.ca, "ca", True)).lower() in ("true", "1", "yes"),
        "trust_domain": pick(args.trust_domain, "trust_domain", "cluster.local"),
        "ca_cert": pick(args.ca_cert, "ca_cert", None),
        "ca_key": pick(args.ca_key, "ca_key", None),
        "cert_ttl": float(pick(args.cert_ttl, "cert_ttl", 86400)),
        "mtls_mode": _mtls_mode(pick(args.mtls_mode, "mtls_mode", "strict")),
        "join_secret": pick(args.join_secret, "join_secret", None),
        "ca_address": _hostport(
            pick(args.ca_address, "ca_address", "127.0.0.1:15012"), "--ca-address"
        ),
        "secure_api": str(pick(args.secure_api, "secure_api", False)).lower()
        in ("true", "1", "yes"),
        "secure_xds": str(pick(args.secure_xds, "secure_xds", False)).lower()
        in ("true", "1", "yes"),
        "registries": build_registries(cfg),
        "cluster": pick(args.cluster, "cluster", None),
        "peers": list(args.peer or cfg.get("peers") or []),
        "peer_lease": float(pick(args.peer_lease, "peer_lease", 10.0)),
        "edge": pick(args.edge, "edge", None),
        "edge_public": pick(args.edge_public, "edge_public", None),
        "mixer": _hostport(args.mixer or cfg["mixer"], "--mixer")
        if (args.mixer or cfg.get("mixer"))
        else None,
    }
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(opts, stop=stop)

    try:
        asyncio.run(amain())
    except OSError as e:
        print(f"sofamesh pilot: {e}", file=sys.stderr)
        return 1
    return 0
