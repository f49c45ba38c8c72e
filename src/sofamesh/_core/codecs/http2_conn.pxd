# HTTP/2 connection (RFC 9113), sans-IO, usable as the server (downstream) or the client
# (upstream) end. ConnectionCore holds the state, reads frames and writes them;
# codecs/http2.pyx's Connection adds the public API.
#
# Contract:
# - `feed(bytes)` returns the events (codecs/http2_events) the bytes completed, plus any
#   that local calls raised since the last feed. It never raises for bad input: a stream
#   error queues RST_STREAM and yields StreamReset(remote=False); a connection error
#   queues GOAWAY, yields ConnectionError and makes the connection `closed` (later input
#   is ignored). Every such outcome bumps a counter (`stats`, Envoy's http2.* names).
# - Bytes to send accumulate in a write buffer; `data_to_send()` drains it. The outbound
#   flood guards count frames queued and not yet drained, as Envoy counts frames not yet
#   written to the socket.
# - Inbound flow control is backpressure: DATA shrinks the windows and they are given
#   back only when the caller calls `acknowledge_received_data(stream_id, n)` for bytes
#   it has consumed (padding is given back at once). Outbound DATA beyond the peer's
#   windows waits in the stream's queue (`outbound_buffered`) and leaves as WINDOW_UPDATEs
#   arrive.
# - Local misuse (sending on a closed stream, opening past the peer's limit) raises
#   UsageError: that is a bug in the caller, not bad network input.

from sofamesh._core.codecs.hpack cimport Decoder, Encoder
from sofamesh._core.codecs.http2_frames cimport FrameBuffer
from sofamesh._core.codecs.http2_streams cimport Stream

cdef enum:
    PHASE_PREFACE = 0       # server: waiting for the client's connection preface
    PHASE_SETTINGS = 1      # waiting for the peer's first frame, which must be SETTINGS
    PHASE_OPEN = 2
    PHASE_CLOSED = 3

# how a stream we no longer keep was closed: what a late frame for it means
cdef enum:
    GONE_NORMAL = 0         # both sides ended it  } frames on any of these are ignored,
    GONE_RESET_SENT = 1     # we reset it          } as Envoy 1.40 does (a higher id than
    GONE_RESET_RECV = 2     # the peer reset it    } any seen is an idle stream: an error)

cdef struct h2_stats:
    unsigned long long rx_reset
    unsigned long long tx_reset
    unsigned long long header_overflow
    unsigned long long rx_messaging_error
    unsigned long long inbound_empty_frames_flood
    unsigned long long inbound_priority_frames_flood
    unsigned long long inbound_window_update_frames_flood
    unsigned long long outbound_flood
    unsigned long long outbound_control_flood
    unsigned long long too_many_premature_resets
    unsigned long long continuation_flood
    unsigned long long goaway_sent
    unsigned long long stream_refused_errors
    unsigned long long trailers
    unsigned long long connection_errors
    unsigned long long stream_errors
    unsigned long long header_list_size_too_large


cdef class ConnectionCore:
    cdef readonly bint client_side
    # SETTINGS_ENABLE_CONNECT_PROTOCOL advertised (allow_connect): extended CONNECT taken
    cdef readonly bint allow_connect
    cdef int _phase
    cdef int _preface_seen
    cdef FrameBuffer _out
    cdef Decoder _dec
    cdef Encoder _enc
    cdef dict _streams                  # dict[int, Stream]: idle..half-closed streams
    cdef dict _gone                     # dict[int, int]: recently closed stream -> GONE_*
    cdef dict _blocked                  # dict[int, Stream]: outbound data waiting for window
    cdef list _events                   # list[Event]: not yet returned by feed()
    cdef bytearray _inbuf               # an incomplete frame from the last feed
    cdef h2_stats c

    # ids
    cdef unsigned int _next_local_id
    cdef unsigned int _highest_remote_id
    cdef int _remote_open
    cdef int _local_open
    cdef unsigned long long _remote_opened_total
    cdef unsigned long long _remote_closed_total
    cdef unsigned long long _premature_resets

    # settings: ours (advertised; some apply on ACK) and the peer's
    cdef list _pending_local            # list[dict[int, int]]: sent, not yet acknowledged
    cdef dict _local_settings           # dict[int, int]: in force (acknowledged)
    cdef unsigned int _local_max_concurrent
    cdef long long _local_iws           # initial stream window the peer honours now
    cdef unsigned int _max_inbound_frame
    cdef unsigned int _remote_max_concurrent
    cdef long long _remote_iws
    cdef unsigned int _remote_max_frame
    cdef unsigned int _remote_max_header_list
    cdef dict _remote_settings          # dict[int, int]
    cdef unsigned int _table_size_cap   # our own bound on the encoder's table

    # windows
    cdef long long _conn_send_window
    cdef long long _conn_recv_window
    cdef long long _conn_recv_unacked
    cdef long long _conn_window_target
    cdef long long _stream_window_target

    # header block being assembled (HEADERS without END_HEADERS, then CONTINUATION)
    cdef unsigned int _cont_sid
    cdef bint _cont_end_stream
    cdef bint _cont_selfdep
    cdef bytearray _cont_block
    cdef bint _cont_discard             # the block went over the limit: stream reset,
    #                                     decoded piece by piece only to keep HPACK in step

    # GOAWAY
    cdef readonly bint goaway_sent
    cdef readonly bint goaway_received
    cdef unsigned int _goaway_last_id   # what we told the peer
    cdef unsigned int _remote_goaway_last_id

    # flood guards (Envoy's knobs)
    cdef public int max_outbound_frames
    cdef public int max_outbound_control_frames
    cdef public int max_consecutive_inbound_frames_with_empty_payload
    cdef public int max_inbound_priority_frames_per_stream
    cdef public int max_inbound_window_update_frames_per_data_frame_sent
    cdef public int premature_reset_total_stream_count
    cdef public Py_ssize_t max_header_block_size
    cdef int _empty_frames
    cdef unsigned long long _priority_in
    cdef unsigned long long _window_updates_in
    cdef unsigned long long _data_frames_out

    cpdef list feed(self, object data)
    cdef Py_ssize_t _process(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _frame(self, unsigned char ftype, unsigned char flags, unsigned int sid,
                    const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_data(self, unsigned char flags, unsigned int sid,
                      const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_headers(self, unsigned char flags, unsigned int sid,
                         const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_continuation(self, unsigned char flags, unsigned int sid,
                              const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_header_block(self, unsigned int sid, bint end_stream, bint selfdep,
                              const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_priority(self, unsigned int sid, const unsigned char* p,
                          Py_ssize_t n) except -1
    cdef int _on_rst_stream(self, unsigned int sid, const unsigned char* p,
                            Py_ssize_t n) except -1
    cdef int _on_settings(self, unsigned char flags, unsigned int sid,
                          const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_ping(self, unsigned char flags, unsigned int sid,
                      const unsigned char* p, Py_ssize_t n) except -1
    cdef int _on_goaway(self, unsigned int sid, const unsigned char* p,
                        Py_ssize_t n) except -1
    cdef int _on_window_update(self, unsigned int sid, const unsigned char* p,
                               Py_ssize_t n) except -1
    cdef int _empty_frame(self, bint empty) except -1

    cdef int _conn_error(self, unsigned int code, str reason) except -1
    cdef int _stream_error(self, unsigned int sid, Stream s, unsigned int code,
                           str reason) except -1
    cdef int _late_frame(self, unsigned int sid, bint data) except -1
    cdef bint _is_local_id(self, unsigned int sid) noexcept
    cdef int _close_stream(self, Stream s, int how) except -1
    cdef int _end_remote(self, Stream s) except -1
    cdef int _end_local(self, Stream s) except -1
    cdef int _give_back(self, Stream s, long long n) except -1
    cdef int _control_written(self) except -1
    cdef int _check_outbound(self) except -1
    cdef int _write_headers(self, Stream s, list headers, bint end_stream) except -1
    cdef int _write_settings(self, dict settings) except -1
    cdef int _flush_stream(self, Stream s) except -1
    cdef int _flush_blocked(self) except -1
