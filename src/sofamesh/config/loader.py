"""Loads an Envoy v3 bootstrap from YAML, JSON or protobuf text/binary, as Envoy does.

Envoy converts YAML to JSON and parses it with protobuf's JSON mapping, but accepts
things `json_format` alone does not: lower-case enum names (`codec_type: auto`) and YAML
1.1 scalars. This module walks the document alongside the message descriptors first: it
normalises enums, resolves each Any's `@type` (naming the field path when it cannot),
rejects unknown fields with their path, and turns Istio's own filter protos (absent from
xds-protos) into `xds.type.v3.TypedStruct` so they pass through instead of failing.
`--config-yaml` is merged over the file with protobuf MergeFrom, as Envoy merges it.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import yaml
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from sofamesh.config import protos
from sofamesh.config.errors import ConfigError, Problem, join

# Messages whose JSON form is not an object of their fields: left for json_format.
_WKT_SCALAR = {
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.NullValue",
    "google.protobuf.Empty",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}

TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
# Type-URL namespaces of filters a mesh control plane sends that xds-protos cannot decode
# (Istio's own protos): carried as TypedStruct so the listener is not rejected (XDS.md).
PASSTHROUGH_NAMESPACES = ("istio.", "io.istio.", "envoy.tcp.metadataexchange.", "stats.")
_FILTER_MESSAGES = (
    "envoy.config.listener.v3.Filter",
    "envoy.config.listener.v3.ListenerFilter",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
)


class _Loader(yaml.SafeLoader):
    """YAML as Envoy reads it: no timestamp conversion; keys always strings; `!ignore`."""


# Envoy reads timestamps as plain strings.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Ignored:
    pass


_IGNORED = _Ignored()


def _construct_ignore(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    # Envoy drops `!ignore`-tagged entries (used to hold YAML anchors).
    return _IGNORED


_Loader.add_constructor("!ignore", _construct_ignore)


def _clean(v: Any, stack: tuple[int, ...] = ()) -> Any:
    """String keys, `!ignore` dropped; a YAML alias that contains itself is an error."""
    if isinstance(v, (dict, list)):
        if id(v) in stack:
            raise ConfigError("Unable to convert YAML as JSON: an alias refers to itself")
        stack = (*stack, id(v))
    if isinstance(v, dict):
        return {
            str(k): _clean(x, stack)
            for k, x in v.items()
            if k is not _IGNORED and x is not _IGNORED and not isinstance(k, _Ignored)
        }
    if isinstance(v, list):
        return [_clean(x, stack) for x in v if x is not _IGNORED]
    return v


def parse_yaml(text: str, where: str = "") -> dict:
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"Unable to parse YAML {where}: {e}".replace("  ", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Unable to convert YAML as JSON {where}: top level is not a mapping")
    return _clean(data)


def _field_map(desc: Descriptor) -> dict[str, FieldDescriptor]:
    m: dict[str, FieldDescriptor] = {}
    for f in desc.fields:
        m[f.name] = f
        m[f.json_name] = f
    return m


class _Normaliser:
    def __init__(self, allow_unknown: bool) -> None:
        self.allow_unknown = allow_unknown
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def message(self, obj: Any, desc: Descriptor, path: str) -> Any:
        full = desc.full_name
        if full == "google.protobuf.Any":
            return self.any(obj, path)
        if full in _WKT_SCALAR:
            return obj  # json_format reports their value errors with its own wording
        if not isinstance(obj, dict):
            self.problems.append(
                Problem(
                    path,
                    f"expected an object ({full}), got {type(obj).__name__} {obj!r:.40}",
                    "parse",
                )
            )
            return obj
        fields = _field_map(desc)
        out: dict[str, Any] = {}
        if full in _FILTER_MESSAGES and str(obj.get("name", "")).startswith("istio."):
            tc = obj.get("typed_config")
            if (
                isinstance(tc, dict)
                and isinstance(tc.get("@type"), str)
                and (protos.find_descriptor(tc["@type"]) is None)
            ):  # an Istio filter's own proto: carried opaquely, passed through
                rest = {k: v for k, v in tc.items() if k != "@type"}
                obj = {
                    **obj,
                    "typed_config": {"@type": TYPED_STRUCT, "type_url": tc["@type"], "value": rest},
                }
        for key, val in obj.items():
            f = fields.get(key)
            if f is None:
                p = join(path, key)
                if self.allow_unknown:
                    self.warnings.append(
                        f"{p}: unknown field ignored (--allow-unknown-static-fields)"
                    )
                    continue
                self.problems.append(Problem(p, f"unknown field '{key}' in {full}", "parse"))
                continue
            out[key] = self.field(val, f, join(path, f.name))
        return out

    def field(self, val: Any, f: FieldDescriptor, path: str) -> Any:
        if val is None:
            return val
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            if not isinstance(val, dict):
                return val
            vf = f.message_type.fields_by_name["value"]
            return {k: self.single(v, vf, f"{path}[{k!r}]") for k, v in val.items()}
        if f.is_repeated:
            # Envoy's JSON parser takes one value for a repeated field, and splices the
            # items of a nested list into it (`[a, [], [b]]` is `[a, b]`).
            val = _flatten(val) if isinstance(val, list) else [val]
            return [self.single(v, f, f"{path}[{i}]") for i, v in enumerate(val)]
        return self.single(val, f, path)

    def single(self, val: Any, f: FieldDescriptor, path: str) -> Any:
        if f.type == FieldDescriptor.TYPE_ENUM and isinstance(val, str):
            et = f.enum_type
            if val not in et.values_by_name and val.upper() in et.values_by_name:
                return val.upper()
            return val
        if f.message_type is not None:
            return self.message(val, f.message_type, path)
        return val

    def any(self, obj: Any, path: str) -> Any:
        if not isinstance(obj, dict):
            return obj
        url = obj.get("@type")
        if not isinstance(url, str) or not url:
            self.problems.append(Problem(path, "Any is missing its '@type'", "parse"))
            return obj
        desc = protos.find_descriptor(url)
        if desc is None:
            name = protos.type_name(url)
            if name.startswith(PASSTHROUGH_NAMESPACES):
                rest = {k: v for k, v in obj.items() if k != "@type"}
                return {"@type": TYPED_STRUCT, "type_url": url, "value": rest}
            self.problems.append(Problem(path, f"could not find @type '{url}'", "unknown_type"))
            return obj
        if desc.full_name in _WKT_SCALAR:
            return obj
        inner = self.message({k: v for k, v in obj.items() if k != "@type"}, desc, path)
        inner["@type"] = url
        return inner


def _flatten(items: list) -> list:
    out: list = []
    for v in items:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def dict_to_message(data: dict, msg: Any, *, allow_unknown: bool = False, where: str = "") -> Any:
    """Parses plain data (from YAML/JSON) into `msg` in place; raises ConfigError."""
    norm = _Normaliser(allow_unknown)
    clean = norm.message(data, msg.DESCRIPTOR, "")
    if norm.problems:
        raise ConfigError(norm.problems)
    try:
        json_format.ParseDict(
            clean, msg, ignore_unknown_fields=allow_unknown, descriptor_pool=protos.pool()
        )
    except json_format.ParseError as e:
        path, reason = _parse_error_path(str(e))
        raise ConfigError(
            [
                Problem(
                    path,
                    f"Unable to parse JSON as proto {where}: {reason}".replace("  ", " "),
                    "parse",
                )
            ]
        ) from None
    return msg


_AT = re.compile(r"\s+at (?:\w+)\.([\w.\[\]'\"-]*[\w\]])\.*$")
_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error_path(text: str) -> tuple[str, str]:
    """json_format's nested "Failed to parse a field: Failed to parse b field: reason at
    Msg.a.b[0]" -> ("a.b[0]", "reason")."""
    path = ""
    m = _AT.search(text)
    if m:
        path = m.group(1)
        text = text[: m.start()]
    names = _FIELD.findall(text)
    reason = _FIELD.split(text)[-1].strip() if names else text
    if not path and names:
        path = ".".join(names)
    return path, reason.rstrip(".")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        if not os.path.exists(path):
            raise ConfigError(f"Invalid path: {path}") from None
        raise ConfigError(f"unable to read file: {path}: {e.strerror}") from None


def parse_file(path: str, msg: Any, *, allow_unknown: bool = False) -> Any:
    """Reads a config file by its extension as Envoy does (.json .yaml .yml .pb .pb_text)."""
    raw = _read(path)
    where = f"'{path}'"
    if path.endswith(".pb"):
        try:
            msg.ParseFromString(raw)
        except Exception as e:  # noqa: BLE001 - reported, the process keeps running
            raise ConfigError(f"Unable to parse binary proto {where}: {e}") from None
        return msg
    if path.endswith(".pb_text"):
        protos.import_all()  # `[type.googleapis.com/...]` Any expansions need every type
        try:
            text_format.Parse(raw.decode(), msg, descriptor_pool=protos.pool())
        except text_format.ParseError as e:
            raise ConfigError(f"Unable to parse text proto {where}: {e}") from None
        return msg
    text = raw.decode("utf-8", errors="replace")
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"Unable to parse JSON {where}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Unable to parse JSON {where}: top level is not an object")
    else:
        data = parse_yaml(text, where)
    return dict_to_message(data, msg, allow_unknown=allow_unknown, where=where)


def load_bootstrap(
    path: str | os.PathLike | None = None,
    *,
    config_yaml: str | None = None,
    allow_unknown_fields: bool = False,
    validate: bool = True,
) -> Any:
    """The Bootstrap from `path` with `config_yaml` merged over it (Envoy's `-c` and
    `--config-yaml`), validated unless `validate=False`. Raises ConfigError."""
    from envoy.config.bootstrap.v3 import bootstrap_pb2

    if path is None and not config_yaml:
        raise ConfigError("At least one of --config-path or --config-yaml should be non-empty")
    bootstrap = bootstrap_pb2.Bootstrap()
    if path is not None:
        parse_file(os.fspath(path), bootstrap, allow_unknown=allow_unknown_fields)
    if config_yaml:
        overlay = bootstrap_pb2.Bootstrap()
        dict_to_message(
            parse_yaml(config_yaml, "--config-yaml"),
            overlay,
            allow_unknown=allow_unknown_fields,
            where="--config-yaml",
        )
        bootstrap.MergeFrom(overlay)
    if validate:
        from sofamesh.config.validate import validate_bootstrap

        validate_bootstrap(bootstrap)
    return bootstrap
