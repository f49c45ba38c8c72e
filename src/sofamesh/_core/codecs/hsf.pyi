from sofamesh._core.codecs.rpcframe import FrameDecoder

HSF_REQUEST: int
HSF_RESPONSE: int
HSF_HEARTBEAT: int

class HsfFrame:
    kind: int
    request_id: int
    version: int
    serialization: int
    ext: bytes
    timeout: int
    service: str
    method: str
    types: list
    args: list
    props: memoryview | bytes
    status: int
    body: memoryview | bytes
    heartbeat_rest: bytes
    raw: memoryview | None
    def __init__(
        self,
        kind: int = ...,
        request_id: int = ...,
        version: int = ...,
        serialization: int = ...,
        ext: bytes | None = ...,
        timeout: int = ...,
        service: str = ...,
        method: str = ...,
        types: object = ...,
        args: object = ...,
        props: bytes = ...,
        status: int = ...,
        body: bytes = ...,
        heartbeat_rest: bytes = ...,
    ) -> None: ...
    def encode(self) -> bytes: ...

class HsfDecoder(FrameDecoder): ...
