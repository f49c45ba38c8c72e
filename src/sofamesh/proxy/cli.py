"""`sofamesh proxy`: Envoy's command line (the flags pilot-agent passes), `--mode validate`.

Exit codes follow Envoy: 0 on success (`--mode validate`: "configuration 'FILE' OK"),
1 when the config is rejected or a flag is bad.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from sofamesh.logs import BUILD_SHA, DEFAULT_LOG_FORMAT, LOG_LEVELS, version_string
from sofamesh.logs import PY_LEVEL as _PY_LEVEL
from sofamesh.logs import EnvoyFormatter as _EnvoyFormatter

log = logging.getLogger("sofamesh.main")

__all__ = ["BUILD_SHA", "LOG_LEVELS", "Options", "main", "version_string"]


@dataclass
class Options:
    """The parsed command line; the Server, workers and admin's /server_info read it."""

    config_path: str = ""
    config_yaml: str = ""
    mode: str = "serve"
    log_level: str = "info"
    component_log_level: str = ""
    log_format: str = DEFAULT_LOG_FORMAT
    log_path: str = ""
    concurrency: int = 1
    drain_time_s: int = 600
    drain_strategy: str = "gradual"
    parent_shutdown_time_s: int = 900
    base_id: int = 0
    use_dynamic_base_id: bool = False
    restart_epoch: int = 0
    disable_hot_restart: bool = False
    local_address_ip_version: str = "v4"
    file_flush_interval_msec: int = 10000
    file_flush_min_size_kb: int = 0  # 0: unset (Envoy default 64 KB, shown as 0 like Envoy)
    allow_unknown_static_fields: bool = False
    reject_unknown_dynamic_fields: bool = False
    skip_deprecated_logs: bool = False
    enable_core_dump: bool = False
    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""
    admin_address_path: str = ""
    # set by the process, not by a flag
    argv: list[str] = field(default_factory=list)
    worker_index: int = -1  # >= 0 inside a worker process

    def command_line_options(self) -> dict[str, Any]:
        """The `command_line_options` object of Envoy's /server_info (Envoy's JSON names)."""
        return {
            "base_id": str(self.base_id),
            "use_dynamic_base_id": self.use_dynamic_base_id,
            "skip_hot_restart_on_no_parent": False,
            "skip_hot_restart_parent_stats": False,
            "base_id_path": "",
            "concurrency": self.concurrency,
            "config_path": self.config_path,
            "config_yaml": self.config_yaml,
            "allow_unknown_static_fields": self.allow_unknown_static_fields,
            "reject_unknown_dynamic_fields": self.reject_unknown_dynamic_fields,
            "ignore_unknown_dynamic_fields": False,
            "admin_address_path": self.admin_address_path,
            "local_address_ip_version": self.local_address_ip_version,
            "log_level": self.log_level,
            "component_log_level": self.component_log_level,
            "log_format": self.log_format,
            "log_format_escaped": False,
            "log_path": self.log_path,
            "service_cluster": self.service_cluster,
            "service_node": self.service_node,
            "service_zone": self.service_zone,
            "drain_strategy": "Immediate" if self.drain_strategy == "immediate" else "Gradual",
            "mode": {"serve": "Serve", "validate": "Validate", "init_only": "InitOnly"}[self.mode],
            "disable_hot_restart": self.disable_hot_restart,
            "enable_mutex_tracing": False,
            "restart_epoch": self.restart_epoch,
            "cpuset_threads": False,
            "disabled_extensions": [],
            "enable_fine_grain_logging": False,
            "socket_path": "@envoy_domain_socket",
            "socket_mode": 0,
            "enable_core_dump": self.enable_core_dump,
            "stats_tag": [],
            "file_flush_interval": f"{self.file_flush_interval_msec / 1000:g}s",
            "file_flush_min_size": self.file_flush_min_size_kb * 1024,
            "log_stacktrace_single_entry": False,
            "drain_time": f"{self.drain_time_s}s",
            "parent_shutdown_time": f"{self.parent_shutdown_time_s}s",
            "skip_deprecated_logs": self.skip_deprecated_logs,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # Envoy: "PARSE ERROR", exit 1
        sys.stderr.write(f"PARSE ERROR: {message}\n\n{self.format_usage()}")
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sofamesh proxy", description="Envoy-compatible sidecar")
    a = p.add_argument
    a("-c", "--config-path", default="", help="bootstrap file (.yaml, .json, .pb, .pb_text)")
    a("--config-yaml", default="", help="YAML merged over the bootstrap file")
    a("--mode", choices=("serve", "validate", "init_only"), default="serve")
    a("-l", "--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    a("--component-log-level", default="", help="comp:level,comp:level")
    a("--log-format", default=Options.log_format)
    a("--log-path", default="")
    a("--log-format-escaped", action="store_true")
    a("--concurrency", type=int, default=None, help="worker processes (default: CPU count)")
    a("--drain-time-s", type=int, default=600)
    a("--drain-strategy", choices=("gradual", "immediate"), default="gradual")
    a("--parent-shutdown-time-s", type=int, default=900)
    a("--base-id", type=int, default=0)
    a("--use-dynamic-base-id", action="store_true")
    a("--base-id-path", default="")
    a("--restart-epoch", type=int, default=0)
    a("--disable-hot-restart", action="store_true")
    a("--local-address-ip-version", choices=("v4", "v6"), default="v4")
    a("--file-flush-interval-msec", type=int, default=10000)
    a("--file-flush-min-size-kb", type=int, default=0)
    a("--allow-unknown-static-fields", action="store_true")
    a("--reject-unknown-dynamic-fields", action="store_true")
    a("--ignore-unknown-dynamic-fields", action="store_true")
    a("--skip-deprecated-logs", action="store_true")
    a("--enable-core-dump", action="store_true")
    a("--service-cluster", default="")
    a("--service-node", default="")
    a("--service-zone", default="")
    a("--admin-address-path", default="")
    a("--version", action="store_true")
    a("--hot-restart-version", action="store_true")
    return p


def parse_options(argv: list[str]) -> Options:
    ns = build_parser().parse_args(argv)
    if ns.concurrency is None:
        ns.concurrency = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    ns.concurrency = max(ns.concurrency, 1)
    for spec in filter(None, ns.component_log_level.split(",")):
        comp, _, lvl = spec.partition(":")
        if not comp or lvl.lower() not in LOG_LEVELS:
            build_parser().error(f"error: component log level not correctly specified '{spec}'")
    opts = Options(
        config_path=ns.config_path,
        config_yaml=ns.config_yaml,
        mode=ns.mode,
        log_level="warning" if ns.log_level == "warn" else ns.log_level,
        component_log_level=ns.component_log_level,
        log_format=ns.log_format,
        log_path=ns.log_path,
        concurrency=ns.concurrency,
        drain_time_s=ns.drain_time_s,
        drain_strategy=ns.drain_strategy,
        parent_shutdown_time_s=ns.parent_shutdown_time_s,
        base_id=ns.base_id,
        use_dynamic_base_id=ns.use_dynamic_base_id,
        restart_epoch=ns.restart_epoch,
        disable_hot_restart=ns.disable_hot_restart,
        local_address_ip_version=ns.local_address_ip_version,
        file_flush_interval_msec=ns.file_flush_interval_msec,
        file_flush_min_size_kb=ns.file_flush_min_size_kb,
        allow_unknown_static_fields=ns.allow_unknown_static_fields,
        reject_unknown_dynamic_fields=ns.reject_unknown_dynamic_fields,
        skip_deprecated_logs=ns.skip_deprecated_logs,
        enable_core_dump=ns.enable_core_dump,
        service_cluster=ns.service_cluster,
        service_node=ns.service_node,
        service_zone=ns.service_zone,
        admin_address_path=ns.admin_address_path,
    )
    opts._version = ns.version  # type: ignore[attr-defined]
    opts._hot_restart_version = ns.hot_restart_version  # type: ignore[attr-defined]
    return opts


def setup_logging(opts: Options) -> None:
    logging.addLevelName(5, "TRACE")
    root = logging.getLogger("sofamesh")
    root.handlers.clear()
    handler: logging.Handler
    if opts.log_path:
        # reopens by itself when logrotate moves the file, as Envoy does on SIGUSR1
        handler = logging.handlers.WatchedFileHandler(opts.log_path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EnvoyFormatter(opts.log_format))
    root.addHandler(handler)
    root.setLevel(_PY_LEVEL[opts.log_level])
    root.propagate = False
    for spec in filter(None, opts.component_log_level.split(",")):
        comp, _, lvl = spec.partition(":")
        logging.getLogger(f"sofamesh.{comp}").setLevel(_PY_LEVEL[lvl.lower()])


def apply_node_flags(bootstrap: Any, opts: Options) -> None:
    """`--service-cluster/node/zone` override the bootstrap's node, as in Envoy."""
    if opts.service_cluster:
        bootstrap.node.cluster = opts.service_cluster
    if opts.service_node:
        bootstrap.node.id = opts.service_node
    if opts.service_zone:
        bootstrap.node.locality.zone = opts.service_zone


def load(opts: Options) -> tuple[Any, Any]:
    """(bootstrap, validation report); raises ConfigError."""
    from sofamesh.config import load_bootstrap, validate_bootstrap

    bootstrap = load_bootstrap(
        opts.config_path or None,
        config_yaml=opts.config_yaml or None,
        allow_unknown_fields=opts.allow_unknown_static_fields,
        validate=False,
    )
    apply_node_flags(bootstrap, opts)
    report = validate_bootstrap(bootstrap)
    return bootstrap, report


def _enable_core_dump() -> None:
    """`--enable-core-dump`: raise the core file size limit to the hard limit."""
    import resource

    try:
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    except (ValueError, OSError) as e:
        log.warning("--enable-core-dump: %s", e)


def server_check(bootstrap: Any, opts: Options) -> str | None:
    """The Server's own start-up checks without binding anything (`Server.check`, raising
    on a config it cannot run), as Envoy's validate mode builds everything but the sockets."""
    from sofamesh.proxy.server import Server

    try:
        Server.check(bootstrap, opts)
    except Exception as e:  # noqa: BLE001 - its message is the reason to report
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_options(argv)
    opts.argv = ["sofamesh", "proxy", *argv]
    if getattr(opts, "_hot_restart_version", False):  # Envoy prints its own, then exits
        from sofamesh.proxy.hot_restart import VERSION

        sys.stdout.write(VERSION)
        return 0
    if getattr(opts, "_version", False):
        print(f"\nsofamesh  version: {version_string()}\n")
        return 0
    setup_logging(opts)
    if opts.enable_core_dump:
        _enable_core_dump()
    from sofamesh.config import ConfigError

    name = opts.config_path or "--config-yaml"
    try:
        bootstrap, report = load(opts)
    except ConfigError as e:
        log.critical("error initializing configuration '%s': %s", name, e)
        return 1
    except Exception as e:  # e.g. a filter module that fails to import
        log.critical(
            "error initializing configuration '%s': %s: %s",
            name,
            type(e).__name__,
            e,
            exc_info=opts.log_level in ("trace", "debug"),
        )
        return 1
    app_format = bootstrap.application_log_config.log_format.text_format
    if app_format:  # Envoy switches to it once the bootstrap is loaded
        if any(a == "--log-format" or a.startswith("--log-format=") for a in argv):
            log.critical(
                "error initializing configuration '%s': Only one of "
                "ApplicationLogConfig.log_format or CLI option --log-format can be specified.",
                name,
            )
            return 1
        opts.log_format = app_format
        setup_logging(opts)
    for warning in report.warnings:
        log.warning("%s", warning)
    for path, what in report.passthrough:
        log.warning("%s: filter %s is passed through (not implemented by sofamesh)", path, what)
    if opts.mode == "validate":
        problem = server_check(bootstrap, opts)
        if problem:
            log.critical("error initializing configuration '%s': %s", name, problem)
            return 1
        print(f"configuration '{name}' OK")
        return 0
    event_log = bootstrap.cluster_manager.outlier_detection.event_log_path
    if event_log:  # Envoy opens (creates) it at start; outlier detection would write to it
        try:
            with open(event_log, "a"):
                pass
        except OSError as e:
            log.critical("error initializing configuration '%s': %s: %s", name, event_log, e)
            return 1
    from sofamesh.proxy.workers import run

    return run(bootstrap, opts, report)
