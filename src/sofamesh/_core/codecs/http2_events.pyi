from typing import TypeAlias

Header: TypeAlias = tuple[bytes, bytes]

class Event: ...

class RequestHeaders(Event):
    stream_id: int
    headers: list[Header]
    end_stream: bool
    method: bytes
    scheme: bytes | None
    path: bytes | None
    authority: bytes | None
    protocol: bytes | None
    content_length: int

class ResponseHeaders(Event):
    stream_id: int
    headers: list[Header]
    end_stream: bool
    status: int
    content_length: int

class InformationalResponse(Event):
    stream_id: int
    headers: list[Header]
    status: int

class Trailers(Event):
    stream_id: int
    headers: list[Header]

class Data(Event):
    stream_id: int
    data: bytes
    end_stream: bool
    flow_controlled_length: int

class StreamReset(Event):
    stream_id: int
    error_code: int
    remote: bool
    reason: str | None

class WindowUpdated(Event):
    stream_id: int
    delta: int

class SettingsReceived(Event):
    changed: dict[int, int]

class SettingsAcked(Event):
    changed: dict[int, int]

class PingReceived(Event):
    data: bytes

class PingAcked(Event):
    data: bytes

class GoAway(Event):
    last_stream_id: int
    error_code: int
    debug_data: bytes

class ConnectionError(Event):
    error_code: int
    reason: str
