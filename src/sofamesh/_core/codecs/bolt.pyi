from sofamesh._core.codecs.rpcframe import FrameDecoder

STATUS_NAMES: dict[int, str]
SOFA_REQUEST_CLASS: bytes
SOFA_RESPONSE_CLASS: bytes
SERVER_EXCEPTION_CLASS: bytes
BOLT_TYPE_RESPONSE: int
BOLT_TYPE_REQUEST: int
BOLT_TYPE_ONEWAY: int
BOLT_CMD_HEARTBEAT: int
BOLT_CMD_REQUEST: int
BOLT_CMD_RESPONSE: int
STATUS_SUCCESS: int
STATUS_ERROR: int
STATUS_SERVER_EXCEPTION: int
STATUS_UNKNOWN: int
STATUS_SERVER_THREADPOOL_BUSY: int
STATUS_ERROR_COMM: int
STATUS_NO_PROCESSOR: int
STATUS_TIMEOUT: int
STATUS_CLIENT_SEND_ERROR: int
STATUS_CODEC_EXCEPTION: int
STATUS_CONNECTION_CLOSED: int
STATUS_SERVER_SERIAL_EXCEPTION: int
STATUS_SERVER_DESERIAL_EXCEPTION: int

class BoltFrame:
    proto: int
    ver1: int
    type: int
    cmdcode: int
    ver2: int
    request_id: int
    codec: int
    switch: int
    timeout: int
    status: int
    class_name: bytes
    header_raw: memoryview | bytes
    content: memoryview | bytes
    raw: memoryview | None
    crc: int
    is_request: bool
    is_oneway: bool
    is_heartbeat: bool
    has_crc: bool
    def __init__(
        self,
        proto: int = ...,
        type: int = ...,
        cmdcode: int = ...,
        request_id: int = ...,
        codec: int = ...,
        timeout: int = ...,
        status: int = ...,
        class_name: bytes | str = ...,
        headers: dict | list | None = ...,
        content: bytes | memoryview = ...,
        ver1: int = ...,
        ver2: int = ...,
        switch: int = ...,
    ) -> None: ...
    def headers(self) -> list[tuple[str | None, str | None]]: ...
    def header(self, name: str) -> str | None: ...
    def service(self) -> str | None: ...
    def method(self) -> str | None: ...
    def encode(self) -> bytes: ...

class BoltDecoder(FrameDecoder):
    verify_crc: bool
    def __init__(self, max_frame: int = ..., verify_crc: bool = ...) -> None: ...

def encode_header_map(headers: dict | list) -> bytes: ...
def rewrite_request_id(f: BoltFrame, new_id: int) -> bytes: ...
def heartbeat_ack(req: BoltFrame) -> bytes: ...
def heartbeat(request_id: int, proto: int = ..., codec: int = ...) -> bytes: ...
def error_response(req: BoltFrame, status: int) -> bytes: ...
