"""SOFARegistry's session-server protocol (sans-IO): its messages and their Bolt frames.

A client (SDK) holds one Bolt v1 connection to a session server (Java: port 9600; the
session server's HTTP port, 9603, answers `GET /api/servers/query` with the Bolt
addresses, `ip:port;ip:port`). Every message is a Bolt RPC request or response (codec 1,
hessian) whose class name is the Java class and whose content is that object in SOFA's
draft Hessian 2.0 (`sofa_hessian`); the header map is empty.

    client -> session   PublisherRegister / SubscriberRegister  -> RegisterResponse
                        SyncConfigRequest                       -> SyncConfigResponse
    session -> client   ReceivedData (a subscriber's data)      -> Result
    either way          Bolt heartbeat (cmdcode 0)              -> heartbeat ack

A register's `eventType` is REGISTER or UNREGISTER, its `version` counts the client's
changes to it, and `registId` (a UUID) names it. The server keys data by
`dataInfoId = dataId#@#instanceId#@#group` (instanceId DEFAULT_INSTANCE_ID when blank)
and pushes `ReceivedData` with `data = {zone: [DataBox{data}]}`, the subscriber's
registIds, a `segment` (the data center) and a `version` that only grows.

Facts from sofastack/sofa-registry (core/model, session server handlers and resources)
and the bytes sofa-registry-node 0.0.1 sends (tests/unit/pilot/test_sofa_wire.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sofamesh._core.codecs.bolt import (
    BOLT_TYPE_REQUEST,
    BOLT_TYPE_RESPONSE,
    STATUS_SUCCESS,
    BoltFrame,
)

from .sofa_hessian import HessianError, JavaLong, JavaObject, decode, encode

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_INSTANCE_ID",
    "DEFAULT_ZONE",
    "DELIMITER",
    "PublisherRegister",
    "ReceivedData",
    "RegisterResponse",
    "Result",
    "SubscriberRegister",
    "SyncConfigRequest",
    "SyncConfigResponse",
    "WireError",
    "data_info_id",
    "decode_body",
    "encode_request",
    "encode_response",
    "split_data_info_id",
]

PKG = "com.alipay.sofa.registry.core.model."
DELIMITER = "#@#"
DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_ZONE = "DEFAULT_ZONE"
DEFAULT_INSTANCE_ID = "DEFAULT_INSTANCE_ID"
DEFAULT_DATA_CENTER = "DefaultDataCenter"
HESSIAN2 = 1  # Bolt codec byte
# bolt.pyi lists BOLT_CMD_* but the extension does not export them (an enum in bolt.pxd)
BOLT_CMD_HEARTBEAT = 0
BOLT_CMD_REQUEST = 1
BOLT_CMD_RESPONSE = 2

REGISTER = "REGISTER"
UNREGISTER = "UNREGISTER"


class WireError(ValueError):
    """A frame whose content is not the message its class name says."""


def data_info_id(data_id: str, instance_id: str | None, group: str | None) -> str:
    return DELIMITER.join((data_id, instance_id or DEFAULT_INSTANCE_ID, group or DEFAULT_GROUP))


def split_data_info_id(dii: str) -> tuple[str, str, str]:
    """(dataId, instanceId, group); raises WireError when it has not three parts."""
    parts = dii.split(DELIMITER)
    if len(parts) != 3 or not parts[0]:
        raise WireError(f"not a dataInfoId: {dii!r}")
    return parts[0], parts[1], parts[2]


@dataclass(slots=True)
class _Register:
    data_id: str
    regist_id: str
    group: str = DEFAULT_GROUP
    instance_id: str | None = None
    zone: str | None = DEFAULT_ZONE
    app_name: str | None = None
    process_id: str | None = None
    client_id: str | None = None
    data_info_id: str | None = None
    ip: str | None = None
    port: int | None = None
    event_type: str = REGISTER
    version: int = 1
    timestamp: int = 0
    attributes: dict[str, str] | None = None

    def _base_fields(self) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "zone": self.zone,
            "appName": self.app_name,
            "dataId": self.data_id,
            "group": self.group,
            "processId": self.process_id,
            "registId": self.regist_id,
            "clientId": self.client_id,
            "dataInfoId": self.data_info_id,
            "ip": self.ip,
            "port": self.port,
            "eventType": self.event_type,
            "version": JavaLong(self.version),
            "timestamp": JavaLong(self.timestamp),
            "attributes": self.attributes,
        }

    @property
    def key(self) -> str:
        """The dataInfoId the server files it under."""
        return data_info_id(self.data_id, self.instance_id, self.group)

    @property
    def unregister(self) -> bool:
        return self.event_type == UNREGISTER


def _base_kwargs(f: dict[str, Any]) -> dict[str, Any]:
    ev = _opt_str(f, "eventType") or REGISTER
    if ev not in (REGISTER, UNREGISTER):
        raise WireError(f"eventType: {ev!r}")
    return {
        "data_id": _req_str(f, "dataId"),
        "regist_id": _req_str(f, "registId"),
        "group": _opt_str(f, "group") or DEFAULT_GROUP,
        "instance_id": _opt_str(f, "instanceId"),
        "zone": _opt_str(f, "zone"),
        "app_name": _opt_str(f, "appName"),
        "process_id": _opt_str(f, "processId"),
        "client_id": _opt_str(f, "clientId"),
        "data_info_id": _opt_str(f, "dataInfoId"),
        "ip": _opt_str(f, "ip"),
        "port": _opt_int(f, "port"),
        "event_type": ev,
        "version": _opt_int(f, "version") or 0,
        "timestamp": _opt_int(f, "timestamp") or 0,
        "attributes": _opt_str_map(f, "attributes"),
    }


@dataclass(slots=True)
class PublisherRegister(_Register):
    data_list: list[str] = field(default_factory=list)  # each DataBox's data

    CLASS = PKG + "PublisherRegister"

    def to_java(self) -> JavaObject:
        f = self._base_fields()
        f["dataList"] = [JavaObject(PKG + "DataBox", {"data": d}) for d in self.data_list]
        return JavaObject(self.CLASS, f)

    @classmethod
    def from_java(cls, o: JavaObject) -> PublisherRegister:
        boxes = o.fields.get("dataList") or []
        if not isinstance(boxes, list):
            raise WireError("dataList: not a list")
        return cls(data_list=[_box(b, "dataList") for b in boxes], **_base_kwargs(o.fields))


@dataclass(slots=True)
class SubscriberRegister(_Register):
    scope: str = "zone"

    CLASS = PKG + "SubscriberRegister"

    def to_java(self) -> JavaObject:
        f = self._base_fields()
        f["scope"] = self.scope
        return JavaObject(self.CLASS, f)

    @classmethod
    def from_java(cls, o: JavaObject) -> SubscriberRegister:
        return cls(scope=_opt_str(o.fields, "scope") or "zone", **_base_kwargs(o.fields))


@dataclass(slots=True)
class RegisterResponse:
    success: bool
    regist_id: str | None
    version: int
    refused: bool = False
    message: str | None = None

    CLASS = PKG + "RegisterResponse"

    def to_java(self) -> JavaObject:
        return JavaObject(
            self.CLASS,
            {
                "success": self.success,
                "registId": self.regist_id,
                "version": JavaLong(self.version),
                "refused": self.refused,
                "message": self.message,
            },
        )

    @classmethod
    def from_java(cls, o: JavaObject) -> RegisterResponse:
        f = o.fields
        return cls(
            success=bool(f.get("success")),
            regist_id=_opt_str(f, "registId"),
            version=_opt_int(f, "version") or 0,
            refused=bool(f.get("refused")),
            message=_opt_str(f, "message"),
        )


@dataclass(slots=True)
class ReceivedData:
    data_id: str
    group: str
    instance_id: str
    subscriber_regist_ids: list[str]
    data: dict[str, list[str]]  # zone -> each DataBox's data
    version: int
    segment: str = DEFAULT_DATA_CENTER
    scope: str = "zone"
    local_zone: str = DEFAULT_ZONE

    CLASS = PKG + "ReceivedData"

    def to_java(self) -> JavaObject:
        box = PKG + "DataBox"
        return JavaObject(
            self.CLASS,
            {
                "dataId": self.data_id,
                "group": self.group,
                "instanceId": self.instance_id,
                "segment": self.segment,
                "scope": self.scope,
                "subscriberRegistIds": list(self.subscriber_regist_ids),
                "data": {
                    z: [JavaObject(box, {"data": d}) for d in ds] for z, ds in self.data.items()
                },
                "version": JavaLong(self.version),
                "localZone": self.local_zone,
            },
        )

    @classmethod
    def from_java(cls, o: JavaObject) -> ReceivedData:
        f = o.fields
        raw = f.get("data") or {}
        if not isinstance(raw, dict):
            raise WireError("data: not a map")
        data: dict[str, list[str]] = {}
        for zone, boxes in raw.items():
            if not isinstance(zone, str) or not isinstance(boxes, list):
                raise WireError("data: not a map of zone to a list")
            data[zone] = [_box(b, "data") for b in boxes]
        ids = f.get("subscriberRegistIds") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise WireError("subscriberRegistIds: not a list of strings")
        return cls(
            data_id=_req_str(f, "dataId"),
            group=_opt_str(f, "group") or DEFAULT_GROUP,
            instance_id=_opt_str(f, "instanceId") or DEFAULT_INSTANCE_ID,
            subscriber_regist_ids=ids,
            data=data,
            version=_opt_int(f, "version") or 0,
            segment=_opt_str(f, "segment") or DEFAULT_DATA_CENTER,
            scope=_opt_str(f, "scope") or "zone",
            local_zone=_opt_str(f, "localZone") or DEFAULT_ZONE,
        )

    @property
    def key(self) -> str:
        return data_info_id(self.data_id, self.instance_id, self.group)


@dataclass(slots=True)
class Result:
    success: bool
    message: str | None = None

    CLASS = PKG + "Result"

    def to_java(self) -> JavaObject:
        return JavaObject(self.CLASS, {"success": self.success, "message": self.message})

    @classmethod
    def from_java(cls, o: JavaObject) -> Result:
        return cls(success=bool(o.fields.get("success")), message=_opt_str(o.fields, "message"))


@dataclass(slots=True)
class SyncConfigRequest:
    data_center: str | None = None
    zone: str | None = None

    CLASS = PKG + "SyncConfigRequest"

    def to_java(self) -> JavaObject:
        return JavaObject(self.CLASS, {"dataCenter": self.data_center, "zone": self.zone})

    @classmethod
    def from_java(cls, o: JavaObject) -> SyncConfigRequest:
        return cls(_opt_str(o.fields, "dataCenter"), _opt_str(o.fields, "zone"))


@dataclass(slots=True)
class SyncConfigResponse:
    available_segments: list[str]
    retry_interval: int = 30000
    success: bool = True
    message: str | None = None

    CLASS = PKG + "SyncConfigResponse"

    def to_java(self) -> JavaObject:
        return JavaObject(
            self.CLASS,
            {
                "availableSegments": list(self.available_segments),
                "retryInterval": self.retry_interval,
                "success": self.success,
                "message": self.message,
            },
        )

    @classmethod
    def from_java(cls, o: JavaObject) -> SyncConfigResponse:
        f = o.fields
        segs = f.get("availableSegments") or []
        if not isinstance(segs, list):
            raise WireError("availableSegments: not a list")
        return cls(
            available_segments=[str(s) for s in segs],
            retry_interval=_opt_int(f, "retryInterval") or 0,
            success=bool(f.get("success")),
            message=_opt_str(f, "message"),
        )


Message = (
    PublisherRegister
    | SubscriberRegister
    | RegisterResponse
    | ReceivedData
    | Result
    | SyncConfigRequest
    | SyncConfigResponse
)

MESSAGES: dict[str, Any] = {
    c.CLASS: c
    for c in (
        PublisherRegister,
        SubscriberRegister,
        RegisterResponse,
        ReceivedData,
        Result,
        SyncConfigRequest,
        SyncConfigResponse,
    )
}


def encode_request(request_id: int, msg: Message, timeout_ms: int = 3000) -> bytes:
    return BoltFrame(
        proto=1,
        type=BOLT_TYPE_REQUEST,
        cmdcode=BOLT_CMD_REQUEST,
        request_id=request_id,
        codec=HESSIAN2,
        timeout=timeout_ms,
        class_name=msg.CLASS,
        content=encode(msg.to_java()),
    ).encode()


def encode_response(request_id: int, msg: Message, status: int = STATUS_SUCCESS) -> bytes:
    return BoltFrame(
        proto=1,
        type=BOLT_TYPE_RESPONSE,
        cmdcode=BOLT_CMD_RESPONSE,
        request_id=request_id,
        codec=HESSIAN2,
        status=status,
        class_name=msg.CLASS,
        content=encode(msg.to_java()),
    ).encode()


def decode_body(class_name: bytes | str, content: bytes | memoryview) -> Message:
    """The message in one frame; WireError for an unknown class or content that does not
    hold it."""
    name = class_name.decode("utf-8", "replace") if isinstance(class_name, bytes) else class_name
    cls = MESSAGES.get(name)
    if cls is None:
        raise WireError(f"unknown class {name!r}")
    try:
        obj = decode(content)
    except HessianError as e:
        raise WireError(f"{name}: {e}") from None
    if not isinstance(obj, JavaObject):
        raise WireError(f"{name}: content is a {type(obj).__name__}, not an object")
    msg: Message = cls.from_java(obj)
    return msg


def _req_str(f: dict[str, Any], key: str) -> str:
    v = f.get(key)
    if not isinstance(v, str) or not v:
        raise WireError(f"{key}: required string, got {v!r}")
    return v


def _opt_str(f: dict[str, Any], key: str) -> str | None:
    v = f.get(key)
    if v is not None and not isinstance(v, str):
        raise WireError(f"{key}: expected a string, got {type(v).__name__}")
    return v


def _opt_int(f: dict[str, Any], key: str) -> int | None:
    v = f.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise WireError(f"{key}: expected an integer, got {type(v).__name__}")
    return v


def _opt_str_map(f: dict[str, Any], key: str) -> dict[str, str] | None:
    v = f.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise WireError(f"{key}: expected a map, got {type(v).__name__}")
    return {str(k): str(x) for k, x in v.items()}


def _box(b: Any, where: str) -> str:
    if isinstance(b, JavaObject):
        d = b.fields.get("data")
        if isinstance(d, str):
            return d
    raise WireError(f"{where}: expected DataBox{{data: string}}, got {b!r:.80}")
