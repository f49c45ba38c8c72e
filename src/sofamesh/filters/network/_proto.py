"""sofamesh's own filter messages (BoltProxy, Auto), compiled when the package is built.

The .proto files under proto/sofamesh/ are the source of truth. Building the package
(`pip install`, `pip wheel`, `pip install -e .`; setup.py's `build_protos` command) compiles
them with protoc into one FileDescriptorSet, `sofamesh/_gen/protos.binpb`, shipped in the
package. Importing this module adds those files to the default descriptor pool, so that
json_format parses `@type: type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy`
in a bootstrap. Nothing is compiled or written at run time (the install may be read-only).

A descriptor set rather than generated `*_pb2` code: its wire format does not depend on the
protoc that wrote it, so any `protobuf` runtime the package allows reads it.
"""

from __future__ import annotations

import importlib
from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FULL_NAME = "sofamesh.filters.network.bolt_proxy.v1.BoltProxy"
TYPE_URL = "type.googleapis.com/" + FULL_NAME
AUTO_NAME = "sofamesh.filters.network.auto.v1.Auto"
AUTO_TYPE_URL = "type.googleapis.com/" + AUTO_NAME
DESCRIPTOR_SET = ("_gen", "protos.binpb")  # inside the sofamesh package


def _read_set() -> descriptor_pb2.FileDescriptorSet:
    try:
        raw = resources.files("sofamesh").joinpath(*DESCRIPTOR_SET).read_bytes()
    except FileNotFoundError as e:
        raise ImportError(
            "sofamesh/" + "/".join(DESCRIPTOR_SET) + " is missing: proto/ is compiled when the "
            "package is built (pip install .; in a source tree `python setup.py build_protos "
            "--inplace`)"
        ) from e
    return descriptor_pb2.FileDescriptorSet.FromString(raw)


def _load() -> None:
    pool = descriptor_pool.Default()
    own = {fdp.name: fdp for fdp in _read_set().file}

    def add(name: str) -> None:
        try:
            pool.FindFileByName(name)
            return
        except KeyError:
            pass
        fdp = own.get(name)
        if fdp is None:  # an Envoy or Google file: its generated module adds it
            importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
            return
        for dep in fdp.dependency:
            add(dep)
        pool.Add(fdp)

    for name in own:
        add(name)


_load()
_pool = descriptor_pool.Default()
BoltProxy = message_factory.GetMessageClass(_pool.FindMessageTypeByName(FULL_NAME))
RouteConfiguration = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("sofamesh.filters.network.bolt_proxy.v1.RouteConfiguration")
)
Auto = message_factory.GetMessageClass(_pool.FindMessageTypeByName(AUTO_NAME))
