"""Envoy's v3 API messages (xds-protos): find types by URL, importing their modules lazily.

`json_format` resolves an Any's `@type` only for message types already in the default
descriptor pool. A type is looked up first in the pool, then by importing the generated
modules of its proto package (`envoy.extensions.filters.http.router.v3` -> every `*_pb2`
in that folder), and only if that fails, every `*_pb2` module under `envoy`, `xds`,
`udpa` and `validate` (`import_all`, about 0.6 s, once). A typical bootstrap so loads in
a fraction of the time the full import takes. sofamesh's own filter messages
(`sofamesh.filters.network.bolt_proxy.v1.BoltProxy`, ...) are found by importing the
built-in filters (`sofamesh.filters`), each of which registers its config type.
"""

from __future__ import annotations

import importlib
import os
import re
import threading

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

PACKAGES = ("validate", "udpa", "xds", "envoy")
OWN_PACKAGE = "sofamesh."
TYPE_URL_PREFIX = "type.googleapis.com/"

_lock = threading.Lock()
_imported = False
_failures: dict[str, str] = {}


def import_all() -> None:
    """Imports every generated `*_pb2` module of the API packages (once per process)."""
    global _imported
    if _imported:
        return
    with _lock:
        if _imported:
            return
        for pkg_name in PACKAGES:
            try:
                pkg = importlib.import_module(pkg_name)
            except ImportError as e:  # pragma: no cover - xds-protos is a runtime dependency
                _failures[pkg_name] = str(e)
                continue
            for base in pkg.__path__:
                parent = os.path.dirname(base)
                for dirpath, dirnames, filenames in os.walk(base):
                    dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                    for fn in sorted(filenames):
                        if not fn.endswith("_pb2.py"):
                            continue
                        rel = os.path.relpath(os.path.join(dirpath, fn[:-3]), parent)
                        mod = rel.replace(os.sep, ".")
                        try:
                            importlib.import_module(mod)
                        except Exception as e:  # a broken module must not hide the others  # noqa: BLE001
                            _failures[mod] = f"{type(e).__name__}: {e}"
        _imported = True


_packages_done: set[str] = set()


def _import_package(pkg: str) -> bool:
    """Imports every `*_pb2` module of one proto package; False if it is not a folder."""
    if pkg in _packages_done:
        return True
    if not pkg.startswith(tuple(p + "." for p in PACKAGES)):
        return False
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        return False
    for base in getattr(mod, "__path__", ()):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for fn in names:
            if fn.endswith("_pb2.py"):
                try:
                    importlib.import_module(f"{pkg}.{fn[:-3]}")
                except Exception as e:  # noqa: BLE001 - recorded; other modules still load
                    _failures[f"{pkg}.{fn[:-3]}"] = f"{type(e).__name__}: {e}"
    _packages_done.add(pkg)
    return True


def import_failures() -> dict[str, str]:
    """Generated modules that failed to import (module -> error); empty when all is well."""
    return dict(_failures)


def pool() -> descriptor_pool.DescriptorPool:
    """The default pool: message types become findable through `find_descriptor`."""
    return descriptor_pool.Default()


def type_name(type_url: str) -> str:
    """`type.googleapis.com/a.b.C` -> `a.b.C` (any host prefix, as protobuf allows)."""
    return type_url.rsplit("/", 1)[-1]


def find_descriptor(type_url_or_name: str, everything: bool = True) -> Descriptor | None:
    """The message descriptor for a type URL or full name, or None if no module defines it.
    everything: when its package has no module for it, import every module before giving up
    (once per process)."""
    name = type_name(type_url_or_name)
    if not name:
        return None
    p = descriptor_pool.Default()
    try:
        return p.FindMessageTypeByName(name)
    except KeyError:
        pass
    if name.startswith(OWN_PACKAGE):
        import sofamesh.filters  # noqa: F401 - the built-in filters add their messages

        try:
            return p.FindMessageTypeByName(name)
        except KeyError:
            return None
    # a.b.v3.Msg (or a.b.v3.Outer.Inner): try the enclosing packages, innermost first
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if _import_package(".".join(parts[:i])):
            try:
                return p.FindMessageTypeByName(name)
            except KeyError:
                continue
    if not _imported and everything:
        import_all()
        try:
            return p.FindMessageTypeByName(name)
        except KeyError:
            return None
    return None


# what a type URL names after its last "/", for the packages find_descriptor can import
_TYPE_NAMES = re.compile(rb"/((?:envoy|udpa|xds|validate|google|sofamesh)\.[A-Za-z0-9_.]+)")
_types_found: set[bytes] = set()


def ensure_types_in(raw: bytes) -> None:
    """ensure_types for a message given as its bytes: the modules of every type named
    the way an Any's type URL names it, nested ones included (anything else that looks like
    one costs a descriptor lookup, nothing more).

    PERF(benchmarks/xds_scale.py): walking a route config of 10,000 hosts field by field
    (ensure_types) for its few Anys was 8% of a 10,000-service start; this is one scan."""
    for name in set(_TYPE_NAMES.findall(raw)):
        if name not in _types_found:
            # not every import: a gRPC path (/google.pubsub.v1.Publisher/...) looks the same
            find_descriptor(name.decode(), everything=False)
            _types_found.add(name)


def ensure_types(msg: Message) -> None:
    """Imports the modules of every Any type inside `msg` (recursively), so that code
    handed the message can unpack them; e.g. a worker given a serialized Bootstrap."""
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        inner = unpack_any(msg)
        if inner is not None:
            ensure_types(inner)
        return
    for f, val in msg.ListFields():  # type: ignore[attr-defined]
        if f.message_type is None:
            continue
        if f.message_type.GetOptions().map_entry:
            if f.message_type.fields_by_name["value"].message_type is not None:
                for v in val.values():
                    ensure_types(v)
        elif f.is_repeated:
            for v in val:
                ensure_types(v)
        else:
            ensure_types(val)


def message_class(desc: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(desc)


def new_message(type_url_or_name: str) -> Message | None:
    desc = find_descriptor(type_url_or_name)
    if desc is None:
        return None
    return message_class(desc)()


def unpack_any(any_msg: Message) -> Message | None:
    """The message inside a google.protobuf.Any, or None if its type is unknown."""
    msg = new_message(any_msg.type_url)  # type: ignore[attr-defined]
    if msg is None:
        return None
    if not any_msg.Unpack(msg):  # type: ignore[attr-defined]
        return None
    return msg
