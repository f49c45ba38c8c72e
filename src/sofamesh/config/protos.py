"""Envoy's v3 API messages (xds-protos): import every generated module once, find types by URL.

`json_format` resolves an Any's `@type` only for message types already in the default
descriptor pool, so every `*_pb2` module under `envoy`, `xds`, `udpa` and `validate` is
imported once, lazily, the first time a type is looked up (about 0.8 s; cached after).
"""

from __future__ import annotations

import importlib
import os
import threading

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

PACKAGES = ("validate", "udpa", "xds", "envoy")
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


def import_failures() -> dict[str, str]:
    """Generated modules that failed to import (module -> error); empty when all is well."""
    return dict(_failures)


def pool() -> descriptor_pool.DescriptorPool:
    import_all()
    return descriptor_pool.Default()


def type_name(type_url: str) -> str:
    """`type.googleapis.com/a.b.C` -> `a.b.C` (any host prefix, as protobuf allows)."""
    return type_url.rsplit("/", 1)[-1]


def find_descriptor(type_url_or_name: str) -> Descriptor | None:
    """The message descriptor for a type URL or full name, or None if no module defines it."""
    name = type_name(type_url_or_name)
    if not name:
        return None
    try:
        return pool().FindMessageTypeByName(name)
    except KeyError:
        return None


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
