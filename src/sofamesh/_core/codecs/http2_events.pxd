# Events an HTTP/2 connection (codecs/http2) hands its driver: small typed records.
# Header lists are list[tuple[bytes, bytes]] as HPACK decoded them, pseudo-headers first.

cdef class Event:
    pass

cdef class RequestHeaders(Event):
    cdef readonly unsigned int stream_id
    cdef readonly list headers          # list[tuple[bytes, bytes]]
    cdef readonly bint end_stream
    cdef readonly bytes method
    cdef readonly bytes scheme          # None for CONNECT
    cdef readonly bytes path            # None for CONNECT
    cdef readonly bytes authority       # None when absent (the host header may carry it)
    cdef readonly bytes protocol        # extended CONNECT (RFC 8441), else None
    cdef readonly long long content_length   # -1 when absent

cdef class ResponseHeaders(Event):
    cdef readonly unsigned int stream_id
    cdef readonly list headers          # list[tuple[bytes, bytes]]
    cdef readonly bint end_stream
    cdef readonly int status
    cdef readonly long long content_length

cdef class InformationalResponse(Event):
    cdef readonly unsigned int stream_id
    cdef readonly list headers          # list[tuple[bytes, bytes]]
    cdef readonly int status            # 1xx

cdef class Trailers(Event):
    cdef readonly unsigned int stream_id
    cdef readonly list headers          # list[tuple[bytes, bytes]]; always ends the stream

cdef class Data(Event):
    cdef readonly unsigned int stream_id
    cdef readonly bytes data
    cdef readonly bint end_stream
    cdef readonly unsigned int flow_controlled_length   # data + padding

cdef class StreamReset(Event):
    cdef readonly unsigned int stream_id
    cdef readonly unsigned int error_code
    cdef readonly bint remote           # the peer sent RST_STREAM (or refused it by GOAWAY)
    cdef readonly str reason            # ours: why we reset it

cdef class WindowUpdated(Event):
    cdef readonly unsigned int stream_id   # 0: the connection window
    cdef readonly unsigned int delta

cdef class SettingsReceived(Event):
    cdef readonly dict changed          # dict[int, int]: setting id -> value (acknowledged)

cdef class SettingsAcked(Event):
    cdef readonly dict changed          # dict[int, int]: our settings now in force

cdef class PingReceived(Event):
    cdef readonly bytes data            # answered already

cdef class PingAcked(Event):
    cdef readonly bytes data

cdef class GoAway(Event):
    cdef readonly unsigned int last_stream_id
    cdef readonly unsigned int error_code
    cdef readonly bytes debug_data

cdef class ConnectionError(Event):
    # we ended the connection: a GOAWAY with error_code is queued; flush it and close
    cdef readonly unsigned int error_code
    cdef readonly str reason


cdef RequestHeaders new_request_headers(unsigned int sid, list headers, bint end_stream)
cdef ResponseHeaders new_response_headers(unsigned int sid, list headers, bint end_stream,
                                          int status, long long content_length)
cdef Data new_data(unsigned int sid, bytes data, bint end_stream, unsigned int flow_len)
cdef StreamReset new_stream_reset(unsigned int sid, unsigned int code, bint remote, str reason)
cdef WindowUpdated new_window_updated(unsigned int sid, unsigned int delta)
