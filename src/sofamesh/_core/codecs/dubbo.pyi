from sofamesh._core.codecs.rpcframe import FrameDecoder

STATUS_NAMES: dict[int, str]
HESSIAN2: int
DUBBO_OK: int
DUBBO_SERIALIZATION_ERROR: int
DUBBO_CLIENT_TIMEOUT: int
DUBBO_SERVER_TIMEOUT: int
DUBBO_CHANNEL_INACTIVE: int
DUBBO_BAD_REQUEST: int
DUBBO_BAD_RESPONSE: int
DUBBO_SERVICE_NOT_FOUND: int
DUBBO_SERVICE_ERROR: int
DUBBO_SERVER_ERROR: int
DUBBO_CLIENT_ERROR: int
DUBBO_SERVER_THREADPOOL_EXHAUSTED: int

class DubboFrame:
    flags: int
    status: int
    request_id: int
    body: memoryview | bytes
    raw: memoryview | None
    parsed: int
    parse_err: int
    body_error: str | None
    dubbo_version: str | None
    service: str | None
    version: str | None
    method: str | None
    param_types: str | None
    attachments: dict | None
    args_start: int
    args_end: int
    body_end: int
    is_request: bool
    two_way: bool
    is_event: bool
    serialization: int
    is_heartbeat: bool
    group: str | None
    def __init__(
        self,
        request_id: int = ...,
        request: bool = ...,
        two_way: bool = ...,
        event: bool = ...,
        serialization: int = ...,
        status: int = ...,
        body: bytes | memoryview = ...,
    ) -> None: ...
    def parse_invocation(self, wanted: tuple[bytes, ...] | None = ...) -> int: ...
    def response_flag(self) -> int | None: ...
    def error_message(self) -> str | None: ...
    def encode(self) -> bytes: ...

class DubboDecoder(FrameDecoder): ...

def param_count(desc: str) -> int: ...
def rewrite_request_id(f: DubboFrame, new_id: int) -> bytes: ...
def heartbeat_response(req: DubboFrame) -> bytes: ...
def heartbeat(request_id: int) -> bytes: ...
def error_response(req: DubboFrame, status: int, message: str) -> bytes: ...
def encode_request(
    request_id: int,
    dubbo_version: str,
    service: str,
    version: str | None,
    method: str,
    param_types: str,
    args_raw: bytes = ...,
    attachments: dict | None = ...,
    two_way: bool = ...,
) -> bytes: ...
def encode_response(request_id: int, value_raw: bytes = ..., flag: int = ...) -> bytes: ...
