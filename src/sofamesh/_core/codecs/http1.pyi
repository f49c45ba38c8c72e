MODE_NONE: int
MODE_LENGTH: int
MODE_CHUNKED: int
MODE_EOF: int
E_BAD: int
E_TOO_LARGE: int
E_TOO_MANY: int
E_NOT_IMPL: int
E_BAD_TARGET: int
E_OBS_FOLD: int

class Head:
    head_length: int
    head_start: int
    method_bytes: bytes
    target: bytes
    version_minor: int
    status_code: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body_length: int
    is_chunked: bool
    keep_alive: bool
    upgrade: bool
    expects_continue: bool
    def get(self, name: str | bytes) -> bytes | None: ...

from sofamesh._core.codecs.http1_body import BodyReader as BodyReader

def parse_request_head(
    data: bytes, start: int = 0, max_bytes: int = 61440, max_headers: int = 100
) -> tuple[int, Head]: ...
def parse_response_head(
    data: bytes, start: int = 0, max_bytes: int = 61440
) -> tuple[int, Head]: ...
def unfold_head(data: bytes, start: int, head_len: int) -> bytes: ...
