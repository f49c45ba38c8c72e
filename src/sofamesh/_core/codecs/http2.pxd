# HTTP/2 connection (RFC 9113), sans-IO: the public API over http2_conn.ConnectionCore.
# See http2_conn.pxd for the contract (events out of feed(), bytes out of data_to_send(),
# errors as events and counters, backpressure through acknowledge_received_data()).

from sofamesh._core.codecs.http2_conn cimport ConnectionCore
from sofamesh._core.codecs.http2_streams cimport Stream


cdef class Connection(ConnectionCore):
    cdef Stream _stream(self, unsigned int stream_id)
    cdef Stream _open_local(self, unsigned int stream_id, list headers)
