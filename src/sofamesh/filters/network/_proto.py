"""sofamesh's own filter messages (BoltProxy, Auto), compiled from proto/ at first import
(nothing generated is committed).

The .proto files under proto/sofamesh/ are the source of truth. On first import
grpcio-tools' protoc compiles each against the Envoy descriptors already in the
default pool (handed over with --descriptor_set_in: no Envoy .proto sources are needed),
the descriptor set is cached in src/sofamesh/_gen/ (git-ignored) keyed by the source's
hash, and the file is added to the default descriptor pool so json_format can parse
`@type: type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy` in a bootstrap.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_REL = "sofamesh/filters/network/bolt_proxy/v1/bolt_proxy.proto"
FULL_NAME = "sofamesh.filters.network.bolt_proxy.v1.BoltProxy"
TYPE_URL = "type.googleapis.com/" + FULL_NAME
AUTO_REL = "sofamesh/filters/network/auto/v1/auto.proto"
AUTO_NAME = "sofamesh.filters.network.auto.v1.Auto"
AUTO_TYPE_URL = "type.googleapis.com/" + AUTO_NAME
_ROOT = Path(__file__).resolve().parents[4]
PROTO_DIR = Path(os.environ.get("SOFAMESH_PROTO_DIR", _ROOT / "proto"))
GEN_DIR = Path(__file__).resolve().parents[2] / "_gen"


def _import_deps() -> None:
    from envoy.config.core.v3 import base_pb2  # noqa: F401
    from envoy.config.listener.v3 import listener_components_pb2  # noqa: F401
    from envoy.config.route.v3 import route_components_pb2  # noqa: F401
    from envoy.type.matcher.v3 import string_pb2  # noqa: F401
    from envoy.type.v3 import range_pb2  # noqa: F401
    from google.protobuf import any_pb2  # noqa: F401


def _deps_set() -> descriptor_pb2.FileDescriptorSet:
    """The transitive imports of our .proto, from the Python descriptors in the pool."""
    _import_deps()
    pool = descriptor_pool.Default()
    out = descriptor_pb2.FileDescriptorSet()
    seen: set[str] = set()

    def add(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        fd = pool.FindFileByName(name)
        for dep in fd.dependencies:
            add(dep.name)
        fdp = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(fdp)
        out.file.append(fdp)

    for name in (
        "envoy/config/core/v3/base.proto",
        "envoy/config/listener/v3/listener_components.proto",
        "envoy/config/route/v3/route_components.proto",
        "envoy/type/matcher/v3/string.proto",
        "envoy/type/v3/range.proto",
        "google/protobuf/any.proto",
    ):
        add(name)
    return out


def _compile(rel: str) -> bytes:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        deps = Path(tmp) / "deps.pb"
        out = Path(tmp) / "out.pb"
        deps.write_bytes(_deps_set().SerializeToString())
        rc = protoc.main(
            [
                "protoc",
                f"--descriptor_set_in={deps}",
                f"--proto_path={PROTO_DIR}",
                f"--descriptor_set_out={out}",
                rel,
            ]
        )
        if rc != 0 or not out.exists():
            raise RuntimeError(f"protoc failed ({rc}) on {PROTO_DIR / rel}")
        return out.read_bytes()


def _load(rel: str, full_name: str) -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName(full_name)
        return
    except KeyError:
        pass
    src = PROTO_DIR / rel
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    cache = GEN_DIR / f"{Path(rel).stem}.{digest}.desc"
    try:
        raw = cache.read_bytes()
    except OSError:
        raw = _compile(rel)
        try:
            GEN_DIR.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only install compiles each time
    _import_deps()
    fds = descriptor_pb2.FileDescriptorSet.FromString(raw)
    for fdp in fds.file:
        pool.Add(fdp)


_load(PROTO_REL, FULL_NAME)
_load(AUTO_REL, AUTO_NAME)
_pool = descriptor_pool.Default()
BoltProxy = message_factory.GetMessageClass(_pool.FindMessageTypeByName(FULL_NAME))
RouteConfiguration = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("sofamesh.filters.network.bolt_proxy.v1.RouteConfiguration")
)
Auto = message_factory.GetMessageClass(_pool.FindMessageTypeByName(AUTO_NAME))
