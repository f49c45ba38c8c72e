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
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]: ...
