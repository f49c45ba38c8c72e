# HTTP/2 connection (RFC 9113), sans-IO, for the server (downstream) and client (upstream)
# ends: the API a connection manager drives. Frames, state and limits live in
# http2_conn.pyx (frame diagrams there), streams in http2_streams.pyx.
#
#   conn = Connection(client_side=False, max_concurrent_streams=100, ...)
#   transport.write(conn.data_to_send())        # our SETTINGS (+ preface on a client)
#   for ev in conn.feed(received_bytes): ...    # RequestHeaders, Data, Trailers, ...
#   conn.send_headers(sid, [(b":status", b"200")]); conn.send_data(sid, body, True)
#   conn.acknowledge_received_data(sid, len(ev.data))   # after consuming: windows reopen
#   transport.write(conn.data_to_send())

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.codecs.hpack cimport Decoder, Encoder
from sofamesh._core.codecs.http2_conn cimport (
    ConnectionCore, GONE_RESET_SENT, PHASE_CLOSED, PHASE_PREFACE, PHASE_SETTINGS,
)
from sofamesh._core.codecs.http2_frames cimport *
from sofamesh._core.codecs.http2_streams cimport (
    ACT_OK, IN_SEND_DATA, IN_SEND_HEADERS, IN_SEND_RST, Stream, new_stream, transition,
)

from sofamesh._core.codecs.http2_events import (
    ConnectionError, Data, Event, GoAway, InformationalResponse, PingAcked, PingReceived,
    RequestHeaders, ResponseHeaders, SettingsAcked, SettingsReceived, StreamReset, Trailers,
    WindowUpdated,
)
from sofamesh._core.codecs.http2_frames import PREFACE

cdef bytes _PREFACE = PREFACE

__all__ = [
    "Connection", "UsageError", "PREFACE", "ConnectionError", "Data", "Event", "GoAway",
    "InformationalResponse", "PingAcked", "PingReceived", "RequestHeaders", "ResponseHeaders",
    "SettingsAcked", "SettingsReceived", "StreamReset", "Trailers", "WindowUpdated",
]

NO_ERROR = ERR_NO_ERROR
PROTOCOL_ERROR = ERR_PROTOCOL_ERROR
INTERNAL_ERROR = ERR_INTERNAL_ERROR
FLOW_CONTROL_ERROR = ERR_FLOW_CONTROL_ERROR
SETTINGS_TIMEOUT = ERR_SETTINGS_TIMEOUT
STREAM_CLOSED = ERR_STREAM_CLOSED
FRAME_SIZE_ERROR = ERR_FRAME_SIZE_ERROR
REFUSED_STREAM = ERR_REFUSED_STREAM
CANCEL = ERR_CANCEL
COMPRESSION_ERROR = ERR_COMPRESSION_ERROR
CONNECT_ERROR = ERR_CONNECT_ERROR
ENHANCE_YOUR_CALM = ERR_ENHANCE_YOUR_CALM
INADEQUATE_SECURITY = ERR_INADEQUATE_SECURITY
HTTP_1_1_REQUIRED = ERR_HTTP_1_1_REQUIRED

HEADER_TABLE_SIZE = SETTINGS_HEADER_TABLE_SIZE
ENABLE_PUSH = SETTINGS_ENABLE_PUSH
MAX_CONCURRENT_STREAMS = SETTINGS_MAX_CONCURRENT_STREAMS
INITIAL_WINDOW_SIZE = SETTINGS_INITIAL_WINDOW_SIZE
MAX_FRAME_SIZE = SETTINGS_MAX_FRAME_SIZE
MAX_HEADER_LIST_SIZE = SETTINGS_MAX_HEADER_LIST_SIZE
ENABLE_CONNECT_PROTOCOL = SETTINGS_ENABLE_CONNECT_PROTOCOL

STATE_NAMES = ("idle", "open", "half_closed_local", "half_closed_remote", "closed")


class UsageError(RuntimeError):
    """The caller asked for something the connection or stream state forbids."""


cdef class Connection(ConnectionCore):

    def __init__(self, bint client_side=False, *,
                 unsigned int max_concurrent_streams=MAX_STREAM_ID,
                 long long initial_stream_window_size=268435456,
                 long long initial_connection_window_size=268435456,
                 unsigned int max_header_list_size=61440,
                 int max_headers_count=100,
                 unsigned int hpack_table_size=4096,
                 unsigned int max_frame_size=DEFAULT_MAX_FRAME,
                 int max_outbound_frames=10000,
                 int max_outbound_control_frames=1000,
                 int max_consecutive_inbound_frames_with_empty_payload=1,
                 int max_inbound_priority_frames_per_stream=100,
                 int max_inbound_window_update_frames_per_data_frame_sent=10,
                 int premature_reset_total_stream_count=500,
                 Py_ssize_t max_header_block_size=0,
                 bint allow_connect=False):
        if not (DEFAULT_WINDOW <= initial_connection_window_size <= MAX_WINDOW):
            raise ValueError("initial_connection_window_size out of range")
        if not (0 <= initial_stream_window_size <= MAX_WINDOW):
            raise ValueError("initial_stream_window_size out of range")
        if not (DEFAULT_MAX_FRAME <= max_frame_size <= MAX_MAX_FRAME):
            raise ValueError("max_frame_size out of range")
        self.client_side = client_side
        self.allow_connect = allow_connect and not client_side
        self._phase = PHASE_SETTINGS if client_side else PHASE_PREFACE
        self._out = FrameBuffer()
        # the peer's encoder starts at 4096; a smaller bound applies once acknowledged
        self._dec = Decoder(4096, max_header_list_size, max_header_list_size,
                            max_headers_count)
        self._enc = Encoder()
        self._table_size_cap = hpack_table_size
        self._streams = {}
        self._gone = {}
        self._blocked = {}
        self._events = []
        self._inbuf = None
        self._next_local_id = 1 if client_side else 2
        self._pending_local = []
        self._local_settings = {}
        self._remote_settings = {}
        self._local_max_concurrent = max_concurrent_streams
        self._local_iws = DEFAULT_WINDOW
        self._max_inbound_frame = max_frame_size
        self._remote_max_concurrent = MAX_STREAM_ID
        self._remote_iws = DEFAULT_WINDOW
        self._remote_max_frame = DEFAULT_MAX_FRAME
        self._remote_max_header_list = 0xffffffff
        self._conn_send_window = DEFAULT_WINDOW
        self._conn_recv_window = initial_connection_window_size
        self._conn_window_target = initial_connection_window_size
        self._stream_window_target = initial_stream_window_size
        self.max_outbound_frames = max_outbound_frames
        self.max_outbound_control_frames = max_outbound_control_frames
        self.max_consecutive_inbound_frames_with_empty_payload = \
            max_consecutive_inbound_frames_with_empty_payload
        self.max_inbound_priority_frames_per_stream = max_inbound_priority_frames_per_stream
        self.max_inbound_window_update_frames_per_data_frame_sent = \
            max_inbound_window_update_frames_per_data_frame_sent
        self.premature_reset_total_stream_count = premature_reset_total_stream_count
        # a block is buffered up to this size; past it the stream is reset and the rest
        # decoded piece by piece without keeping anything (CVE-2024-27316)
        self.max_header_block_size = (max_header_block_size if max_header_block_size > 0
                                      else max_header_list_size + 16384)
        settings = {}
        if client_side:
            settings[SETTINGS_ENABLE_PUSH] = 0
            if hpack_table_size != 4096:
                settings[SETTINGS_HEADER_TABLE_SIZE] = hpack_table_size
        else:
            # a server's SETTINGS as Envoy 1.40 sends them, in its order: the table size
            # and extended CONNECT (RFC 8441, `allow_connect`) said even at their defaults,
            # no MAX_HEADER_LIST_SIZE (the limit is enforced, not advertised)
            settings[SETTINGS_HEADER_TABLE_SIZE] = hpack_table_size
            settings[SETTINGS_ENABLE_CONNECT_PROTOCOL] = 1 if self.allow_connect else 0
        settings[SETTINGS_MAX_CONCURRENT_STREAMS] = max_concurrent_streams
        settings[SETTINGS_INITIAL_WINDOW_SIZE] = initial_stream_window_size
        if client_side:
            settings[SETTINGS_MAX_HEADER_LIST_SIZE] = max_header_list_size
        if max_frame_size != DEFAULT_MAX_FRAME:
            settings[SETTINGS_MAX_FRAME_SIZE] = max_frame_size
        if client_side:
            self._out.reserve(PREFACE_LEN)
            self._out.put(<const unsigned char*>PyBytes_AS_STRING(_PREFACE), PREFACE_LEN)
        self._write_settings(settings)
        if initial_connection_window_size > DEFAULT_WINDOW:
            self._out.header(4, FT_WINDOW_UPDATE, 0, 0)
            self._out.put_u32(<unsigned int>(initial_connection_window_size - DEFAULT_WINDOW))
        self._out.frames = 0
        self._out.control_frames = 0

    # -- streams we open (client side) -------------------------------------------------

    def get_next_available_stream_id(self):
        if self._next_local_id > MAX_STREAM_ID:
            raise UsageError("stream ids exhausted: open a new connection")
        return self._next_local_id

    @property
    def stream_ids_exhausted(self):
        return self._next_local_id > MAX_STREAM_ID

    @property
    def can_open_stream(self):
        return (self.client_side and self._phase != PHASE_CLOSED and not self.goaway_received
                and self._next_local_id <= MAX_STREAM_ID
                and <unsigned int>self._local_open < self._remote_max_concurrent)

    cdef Stream _open_local(self, unsigned int stream_id, list headers):
        cdef Stream s
        if not self.client_side:
            raise UsageError("a server does not open streams (push is not supported)")
        if stream_id < self._next_local_id or not (stream_id & 1) or stream_id > MAX_STREAM_ID:
            raise UsageError("stream id %d is not the next odd id" % stream_id)
        if self.goaway_received:
            raise UsageError("the peer sent GOAWAY: no new streams")
        if <unsigned int>self._local_open >= self._remote_max_concurrent:
            raise UsageError("the peer's max_concurrent_streams is reached")
        self._next_local_id = stream_id + 2
        s = new_stream(stream_id, False, self._remote_iws, self._local_iws)
        for item in headers:
            if item[0] == b":method":
                s.head_request = item[1] == b"HEAD"
                break
        self._streams[stream_id] = s
        self._local_open += 1
        return s

    cdef Stream _stream(self, unsigned int stream_id):
        cdef Stream s
        if self._phase == PHASE_CLOSED:
            raise UsageError("the connection is closed")
        s = self._streams.get(stream_id)
        if s is None:
            raise UsageError("stream %d is not open" % stream_id)
        return s

    # -- sending -----------------------------------------------------------------------

    def send_headers(self, unsigned int stream_id, list headers, bint end_stream=False):
        """Request, response or (with end_stream) trailers. Names must be lower-case bytes.
        Trailers given while DATA waits for window leave after that DATA."""
        cdef Stream s
        if self._phase == PHASE_CLOSED:
            raise UsageError("the connection is closed")
        s = self._streams.get(stream_id)
        if s is None:
            s = self._open_local(stream_id, headers)
        elif s.pending_bytes:
            if not end_stream or s.pending_end:
                raise UsageError("headers behind queued DATA must be trailers")
            s.pending_trailers = headers
            s.pending_end = True
            return
        if transition(s, IN_SEND_HEADERS) != ACT_OK:
            raise UsageError("cannot send HEADERS on stream %d in state %s"
                             % (stream_id, STATE_NAMES[s.state]))
        self._write_headers(s, headers, end_stream)
        if end_stream:
            self._end_local(s)
        self._check_outbound()

    def send_trailers(self, unsigned int stream_id, list headers):
        self.send_headers(stream_id, headers, True)

    def send_data(self, unsigned int stream_id, data, bint end_stream=False):
        """Queue DATA; it leaves as the peer's windows allow (see outbound_buffered)."""
        cdef Stream s = self._stream(stream_id)
        cdef bytes b = bytes(data)
        if s.pending_end or transition(s, IN_SEND_DATA) != ACT_OK or not s.sent_headers:
            raise UsageError("cannot send DATA on stream %d in state %s"
                             % (stream_id, STATE_NAMES[s.state]))
        if PyBytes_GET_SIZE(b):
            if s.pending is None:
                s.pending = []
            s.pending.append(b)
            s.pending_bytes += PyBytes_GET_SIZE(b)
        if end_stream:
            s.pending_end = True
        self._flush_stream(s)
        self._check_outbound()

    def end_stream(self, unsigned int stream_id):
        self.send_data(stream_id, b"", True)

    def reset_stream(self, unsigned int stream_id, unsigned int error_code=ERR_CANCEL):
        cdef Stream s
        if self._phase == PHASE_CLOSED:
            return
        s = self._streams.get(stream_id)
        if s is None:
            return
        transition(s, IN_SEND_RST)
        self.c.tx_reset += 1
        self._out.header(4, FT_RST_STREAM, 0, stream_id)
        self._out.put_u32(error_code)
        self._close_stream(s, GONE_RESET_SENT)
        self._control_written()

    def acknowledge_received_data(self, unsigned int stream_id, long long n):
        """The caller consumed n bytes of DATA on stream_id: give the window back."""
        if n < 0:
            raise ValueError("negative byte count")
        self._give_back(self._streams.get(stream_id), n)
        self._check_outbound()

    def ping(self, bytes opaque=b"\0" * 8):
        if PyBytes_GET_SIZE(opaque) != 8:
            raise ValueError("PING carries 8 octets")
        if self._phase == PHASE_CLOSED:
            raise UsageError("the connection is closed")
        self._out.header(8, FT_PING, 0, 0)
        self._out.put(<const unsigned char*><const char*>opaque, 8)
        self._control_written()

    def goaway(self, unsigned int error_code=ERR_NO_ERROR, last_stream_id=None,
               bytes debug_data=b""):
        """GOAWAY. With NO_ERROR it is a graceful drain: streams up to last_stream_id
        (default: the highest the peer opened) go on; later ones are ignored. Sending
        MAX_STREAM_ID first and the real id later is Envoy's two-step drain."""
        cdef unsigned int last
        if self._phase == PHASE_CLOSED:
            return
        last = self._highest_remote_id if last_stream_id is None else last_stream_id
        self._out.header(8 + PyBytes_GET_SIZE(debug_data), FT_GOAWAY, 0, 0)
        self._out.put_u32(last)
        self._out.put_u32(error_code)
        self._out.put(<const unsigned char*><const char*>debug_data,
                      PyBytes_GET_SIZE(debug_data))
        self.goaway_sent = True
        self._goaway_last_id = last
        self.c.goaway_sent += 1
        if error_code != ERR_NO_ERROR:
            self._phase = PHASE_CLOSED
        self._check_outbound()

    def update_settings(self, dict settings):
        """Send SETTINGS; they apply when the peer acknowledges (SettingsAcked)."""
        if self._phase == PHASE_CLOSED:
            raise UsageError("the connection is closed")
        for ident, v in settings.items():
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                if v > MAX_WINDOW:
                    raise ValueError("initial window over 2^31-1")
                self._stream_window_target = v
            elif ident == SETTINGS_MAX_FRAME_SIZE and not (
                    DEFAULT_MAX_FRAME <= v <= MAX_MAX_FRAME):
                raise ValueError("max frame size out of range")
            elif ident == SETTINGS_MAX_HEADER_LIST_SIZE:
                self._dec.max_header_list_size = v
        self._write_settings(dict(settings))

    def data_to_send(self):
        """The bytes queued for the peer (and the outbound flood counts start over)."""
        return self._out.take()

    # -- state -------------------------------------------------------------------------

    @property
    def closed(self):
        """A connection error ended it (a GOAWAY is queued): flush, then close."""
        return self._phase == PHASE_CLOSED

    @property
    def open_inbound_streams(self):
        return self._remote_open

    @property
    def open_outbound_streams(self):
        return self._local_open

    @property
    def highest_remote_stream_id(self):
        return self._highest_remote_id

    @property
    def remote_goaway_last_stream_id(self):
        return self._remote_goaway_last_id

    @property
    def local_settings(self):
        return dict(self._local_settings)

    @property
    def remote_settings(self):
        return dict(self._remote_settings)

    @property
    def remote_max_concurrent_streams(self):
        return self._remote_max_concurrent

    @property
    def remote_max_frame_size(self):
        return self._remote_max_frame

    @property
    def outbound_connection_window(self):
        return self._conn_send_window

    @property
    def inbound_connection_window(self):
        return self._conn_recv_window

    def stream_state(self, unsigned int stream_id):
        cdef Stream s = self._streams.get(stream_id)
        return "closed" if s is None else STATE_NAMES[s.state]

    def outbound_window(self, unsigned int stream_id):
        cdef Stream s = self._streams.get(stream_id)
        return 0 if s is None else min(s.send_window, self._conn_send_window)

    def inbound_window(self, unsigned int stream_id):
        cdef Stream s = self._streams.get(stream_id)
        return 0 if s is None else s.recv_window

    def outbound_buffered(self, unsigned int stream_id):
        """DATA bytes queued on the stream, waiting for the peer's window."""
        cdef Stream s = self._streams.get(stream_id)
        return 0 if s is None else s.pending_bytes

    @property
    def stats(self):
        """Counters under Envoy's http2.* names (header_list_size_too_large among them; plus
        connection_errors, stream_errors, continuation_flood, too_many_premature_resets)."""
        return dict(self.c)
