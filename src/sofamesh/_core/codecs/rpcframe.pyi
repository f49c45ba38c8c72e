class ProtocolError:
    reason: str
    fatal: bool
    request_id: int
    frame: object | None
    def __init__(
        self, reason: str, fatal: bool = ..., request_id: int = ..., frame: object | None = ...
    ) -> None: ...

class FrameDecoder:
    need: int
    max_frame: int
    protocol_errors: int
    frames: int
    failed: bool
    buffered: int
    def __init__(self, max_frame: int = ...) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list: ...
