from sofamesh._core.codecs.http2_events import Event

class ConnectionCore:
    client_side: bool
    goaway_sent: bool
    goaway_received: bool
    max_outbound_frames: int
    max_outbound_control_frames: int
    max_consecutive_inbound_frames_with_empty_payload: int
    max_inbound_priority_frames_per_stream: int
    max_inbound_window_update_frames_per_data_frame_sent: int
    premature_reset_total_stream_count: int
    max_header_block_size: int
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
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]: ...
