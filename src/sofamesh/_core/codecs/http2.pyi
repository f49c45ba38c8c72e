from typing import TypeAlias

from sofamesh._core.codecs.http2_conn import ConnectionCore
from sofamesh._core.codecs.http2_events import (
    ConnectionError as ConnectionError,
)
from sofamesh._core.codecs.http2_events import (
    Data as Data,
)
from sofamesh._core.codecs.http2_events import (
    Event as Event,
)
from sofamesh._core.codecs.http2_events import (
    GoAway as GoAway,
)
from sofamesh._core.codecs.http2_events import (
    InformationalResponse as InformationalResponse,
)
from sofamesh._core.codecs.http2_events import (
    PingAcked as PingAcked,
)
from sofamesh._core.codecs.http2_events import (
    PingReceived as PingReceived,
)
from sofamesh._core.codecs.http2_events import (
    RequestHeaders as RequestHeaders,
)
from sofamesh._core.codecs.http2_events import (
    ResponseHeaders as ResponseHeaders,
)
from sofamesh._core.codecs.http2_events import (
    SettingsAcked as SettingsAcked,
)
from sofamesh._core.codecs.http2_events import (
    SettingsReceived as SettingsReceived,
)
from sofamesh._core.codecs.http2_events import (
    StreamReset as StreamReset,
)
from sofamesh._core.codecs.http2_events import (
    Trailers as Trailers,
)
from sofamesh._core.codecs.http2_events import (
    WindowUpdated as WindowUpdated,
)

PREFACE: bytes
NO_ERROR: int
PROTOCOL_ERROR: int
INTERNAL_ERROR: int
FLOW_CONTROL_ERROR: int
SETTINGS_TIMEOUT: int
STREAM_CLOSED: int
FRAME_SIZE_ERROR: int
REFUSED_STREAM: int
CANCEL: int
COMPRESSION_ERROR: int
CONNECT_ERROR: int
ENHANCE_YOUR_CALM: int
INADEQUATE_SECURITY: int
HTTP_1_1_REQUIRED: int
HEADER_TABLE_SIZE: int
ENABLE_PUSH: int
MAX_CONCURRENT_STREAMS: int
INITIAL_WINDOW_SIZE: int
MAX_FRAME_SIZE: int
MAX_HEADER_LIST_SIZE: int
ENABLE_CONNECT_PROTOCOL: int
STATE_NAMES: tuple[str, ...]

Header: TypeAlias = tuple[bytes, bytes]

class UsageError(RuntimeError): ...

class Connection(ConnectionCore):
    def __init__(
        self,
        client_side: bool = False,
        *,
        max_concurrent_streams: int = 2147483647,
        initial_stream_window_size: int = 268435456,
        initial_connection_window_size: int = 268435456,
        max_header_list_size: int = 61440,
        max_headers_count: int = 100,
        hpack_table_size: int = 4096,
        max_frame_size: int = 16384,
        max_outbound_frames: int = 10000,
        max_outbound_control_frames: int = 1000,
        max_consecutive_inbound_frames_with_empty_payload: int = 1,
        max_inbound_priority_frames_per_stream: int = 100,
        max_inbound_window_update_frames_per_data_frame_sent: int = 10,
        premature_reset_total_stream_count: int = 500,
        max_header_block_size: int = 0,
    ) -> None: ...
    def get_next_available_stream_id(self) -> int: ...
    @property
    def stream_ids_exhausted(self) -> bool: ...
    @property
    def can_open_stream(self) -> bool: ...
    def send_headers(
        self, stream_id: int, headers: list[Header], end_stream: bool = False
    ) -> None: ...
    def send_trailers(self, stream_id: int, headers: list[Header]) -> None: ...
    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None: ...
    def end_stream(self, stream_id: int) -> None: ...
    def reset_stream(self, stream_id: int, error_code: int = 8) -> None: ...
    def acknowledge_received_data(self, stream_id: int, n: int) -> None: ...
    def ping(self, opaque: bytes = ...) -> None: ...
    def goaway(
        self, error_code: int = 0, last_stream_id: int | None = None, debug_data: bytes = b""
    ) -> None: ...
    def update_settings(self, settings: dict[int, int]) -> None: ...
    def data_to_send(self) -> bytes: ...
    @property
    def closed(self) -> bool: ...
    @property
    def open_inbound_streams(self) -> int: ...
    @property
    def open_outbound_streams(self) -> int: ...
    @property
    def highest_remote_stream_id(self) -> int: ...
    @property
    def remote_goaway_last_stream_id(self) -> int: ...
    @property
    def local_settings(self) -> dict[int, int]: ...
    @property
    def remote_settings(self) -> dict[int, int]: ...
    @property
    def remote_max_concurrent_streams(self) -> int: ...
    @property
    def remote_max_frame_size(self) -> int: ...
    @property
    def outbound_connection_window(self) -> int: ...
    @property
    def inbound_connection_window(self) -> int: ...
    def stream_state(self, stream_id: int) -> str: ...
    def outbound_window(self, stream_id: int) -> int: ...
    def inbound_window(self, stream_id: int) -> int: ...
    def outbound_buffered(self, stream_id: int) -> int: ...
    @property
    def stats(self) -> dict[str, int]: ...
