# HTTP/2 streams (RFC 9113 5.1): the state machine as an explicit (state, input) table,
# per-stream flow-control windows and outbound queue, and the field validation of
# RFC 9113 8.2-8.3 (requests, responses, trailers).
#
# Contract: `transition(s, input)` moves `s` and returns an ACT_* value: ACT_OK, or what
# the connection must do: ACT_STREAM_CLOSED (stream error STREAM_CLOSED), ACT_PROTOCOL
# (connection error PROTOCOL_ERROR), ACT_IGNORE (drop the frame), ACT_USAGE (the local
# caller asked for something the state forbids: raise). The validators return None or
# the reason a header list is malformed (stream error PROTOCOL_ERROR), and fill the event.

from sofamesh._core.codecs.http2_events cimport RequestHeaders, ResponseHeaders

cdef enum:
    ST_IDLE = 0
    ST_OPEN = 1
    ST_HALF_CLOSED_LOCAL = 2
    ST_HALF_CLOSED_REMOTE = 3
    ST_CLOSED = 4
    ST_COUNT = 5

cdef enum:
    IN_SEND_HEADERS = 0
    IN_SEND_DATA = 1
    IN_SEND_END_STREAM = 2
    IN_SEND_RST = 3
    IN_RECV_HEADERS = 4
    IN_RECV_DATA = 5
    IN_RECV_END_STREAM = 6
    IN_RECV_RST = 7
    IN_RECV_WINDOW_UPDATE = 8
    IN_COUNT = 9

cdef enum:
    ACT_OK = 0
    ACT_STREAM_CLOSED = 1
    ACT_PROTOCOL = 2
    ACT_IGNORE = 3
    ACT_USAGE = 4


cdef class Stream:
    cdef readonly unsigned int stream_id
    cdef readonly int state                 # ST_*
    cdef bint remote_initiated
    cdef long long send_window              # what we may send (may go below 0 on SETTINGS)
    cdef long long recv_window              # what the peer may still send us
    cdef long long recv_unacked             # consumed, not yet given back by WINDOW_UPDATE
    cdef bint got_headers                   # request / final response headers seen
    cdef bint sent_headers                  # our request / response headers sent
    cdef bint head_request                  # client side: the response carries no body
    cdef long long content_length           # -1: none; from the headers received
    cdef long long data_received
    cdef list pending                       # list[bytes]: DATA waiting for window
    cdef Py_ssize_t pending_off             # bytes of pending[0] already sent
    cdef Py_ssize_t pending_bytes
    cdef bint pending_end                   # END_STREAM after the pending data
    cdef list pending_trailers              # list[tuple[bytes, bytes]] | None: after the data

cdef Stream new_stream(unsigned int stream_id, bint remote, long long send_window,
                       long long recv_window)
cdef int transition(Stream s, int event) noexcept
cdef int transition_closed(int event) noexcept

cdef str validate_request(list headers, RequestHeaders ev)
cdef str validate_response(list headers, int* status, long long* content_length)
cdef str validate_trailers(list headers)
