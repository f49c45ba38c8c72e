# HTTP/2 downstream connections (h2c: prior knowledge, or handed over by the HTTP/1
# connection when AUTO sees the preface) and their streams.
#
# Contract: `Http2ServerConn` is the asyncio protocol of one client connection; it feeds
# codecs/http2.Connection (server side) and drives one `H2Stream` per request by stream
# id. An H2Stream is the connection manager's stream (http_router.RouterStream <-
# http_stream.HttpStream), so filters and the router see what they see on HTTP/1: the
# request as a HeaderList (`head`), decoded DATA, trailers. Responses are encoded by the
# codec; the connection writes what it queued once per read or upstream callback
# (`flush`). Request DATA is acknowledged (window given back) as the stream consumes it,
# and held while the stream is paused (its upstream full or connecting): HTTP/2 flow
# control is the backpressure, per stream.

from sofamesh._core.codecs.http2 cimport Connection
from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderList
from sofamesh._core.http_router cimport RouterStream


cdef class Http2ServerConn:
    cdef HcmConfig cfg
    cdef object transport
    cdef Connection codec
    cdef dict streams                   # dict[int, H2Stream]: streams not yet ended
    cdef bytes remote_ip
    cdef bytes xff_ip
    cdef int remote_port
    cdef bint closed
    cdef bint write_paused
    cdef bint close_when_idle           # draining: GOAWAY sent, close after the last stream
    cdef object idle_timer
    cdef dict stats_seen                # codec counters already added to cfg.h2_stats
    cdef bint flush_pending             # a write of what the codec queued is scheduled
    cdef object rt_timer                # the streams' route / per-try deadlines (arm_at)
    # between the drain's two GOAWAYs; after a connection error, the lingering close's end
    cdef object drain_timer
    cdef bint lingering                 # connection error: GOAWAY sent, reads discarded
    cdef double rt_due
    cdef int arm_at(self, double when) except -1
    cdef int flush(self) except -1      # schedule the write (once per loop turn)
    cdef int write_now(self) except -1
    cdef int _dispatch(self, list events) except -1
    cdef int _stream_ended(self, H2Stream s) except -1
    cdef int _sync_stats(self) except -1
    cdef int _arm_idle(self) except -1


cdef class H2Stream(RouterStream):
    cdef Http2ServerConn conn
    cdef unsigned int sid
    cdef bint resp_ended                # our END_STREAM (or RST_STREAM) is sent
    cdef bint rst                       # the stream was reset (either side)
    cdef bint paused_up                 # our client's window made us pause the upstream
    cdef long long unacked              # request DATA not acknowledged while paused
    cdef int _begin(self, HeaderList h, bint end_stream, bytes protocol) except -1
    cdef int _begin_connect(self, HeaderList h) except -1
    cdef int _begin_upgrade(self, HeaderList h, bytes protocol) except -1
    cdef int _upgrade_done(self) except -1
    cdef int _on_data(self, bytes data, bint end_stream, long long flow) except -1
    cdef int _on_trailers(self, HeaderList t) except -1
    cdef int _request_complete(self) except -1
    cdef int _on_reset(self, bint remote) except -1
    cdef int _finish(self) except -1
    cdef int _h2_headers(self, list headers, bint end_stream) except -1
    cdef int _overload_keepalive(self) except -1
    cdef int _h2_data(self, bytes data, bint end_stream) except -1
    cdef int _check_window(self) except -1
