# Events an HTTP/2 connection hands its driver; see http2_events.pxd for the fields.


cdef class Event:
    def __repr__(self):
        fields = [f for f in dir(type(self)) if not f.startswith("_")]
        return "%s(%s)" % (type(self).__name__,
                           ", ".join("%s=%r" % (f, getattr(self, f)) for f in fields))


cdef class RequestHeaders(Event):
    pass


cdef class ResponseHeaders(Event):
    pass


cdef class InformationalResponse(Event):
    pass


cdef class Trailers(Event):
    pass


cdef class Data(Event):
    pass


cdef class StreamReset(Event):
    pass


cdef class WindowUpdated(Event):
    pass


cdef class SettingsReceived(Event):
    pass


cdef class SettingsAcked(Event):
    pass


cdef class PingReceived(Event):
    pass


cdef class PingAcked(Event):
    pass


cdef class GoAway(Event):
    pass


cdef class ConnectionError(Event):
    pass


cdef RequestHeaders new_request_headers(unsigned int sid, list headers, bint end_stream):
    cdef RequestHeaders e = RequestHeaders.__new__(RequestHeaders)
    e.stream_id = sid
    e.headers = headers
    e.end_stream = end_stream
    e.content_length = -1
    return e


cdef ResponseHeaders new_response_headers(unsigned int sid, list headers, bint end_stream,
                                          int status, long long content_length):
    cdef ResponseHeaders e = ResponseHeaders.__new__(ResponseHeaders)
    e.stream_id = sid
    e.headers = headers
    e.end_stream = end_stream
    e.status = status
    e.content_length = content_length
    return e


cdef Data new_data(unsigned int sid, bytes data, bint end_stream, unsigned int flow_len):
    cdef Data e = Data.__new__(Data)
    e.stream_id = sid
    e.data = data
    e.end_stream = end_stream
    e.flow_controlled_length = flow_len
    return e


cdef StreamReset new_stream_reset(unsigned int sid, unsigned int code, bint remote, str reason):
    cdef StreamReset e = StreamReset.__new__(StreamReset)
    e.stream_id = sid
    e.error_code = code
    e.remote = remote
    e.reason = reason
    return e


cdef WindowUpdated new_window_updated(unsigned int sid, unsigned int delta):
    cdef WindowUpdated e = WindowUpdated.__new__(WindowUpdated)
    e.stream_id = sid
    e.delta = delta
    return e
