# HTTP/1.1 encoders, sans-IO: a protocol-neutral header map, body and trailers -> bytes.
#
# Contract: the connection that owns a WriteBuf renders a message head into it with
# `encode_request_head` / `encode_response_head` and takes the bytes; body data is framed
# by the returned framing (FR_LENGTH and FR_EOF: as it is; FR_CHUNKED: `encode_chunk`,
# then `encode_last_chunk` with the trailers, if any). PERF(benchmarks/http1_e2e.py): an
# HTTP/1 `Head` is rendered by copying its received lines (then its overlay of added
# entries), any other HeaderMap entry by entry.

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.headers cimport HeaderMap

cdef bytes reason_phrase(int code)
# Envoy frames a body-less request explicitly (content-length: 0) except for these methods
cdef bint no_length_method(bytes method) noexcept

# request line, host (the :authority), entries, then the framing header; returns the framing
# (FR_LENGTH: a content-length entry; FR_NONE: no body or an upgrade; FR_CHUNKED)
cdef int encode_request_head(WriteBuf wb, HeaderMap h, bint end_stream, bint upgrade) except -1
# the framing of a response to an HTTP/1.<minor> request: FR_NONE (no body, or a tunnel),
# FR_LENGTH (content-length), FR_CHUNKED (HTTP/1.1), FR_EOF (HTTP/1.0: until close)
cdef int response_framing(HeaderMap h, int minor, bint end_stream) except -1
cdef int encode_response_head(WriteBuf wb, HeaderMap h, int minor, int framing,
                              bint close) except -1
cdef int encode_chunk(WriteBuf wb, bytes data) except -1
# the last chunk and the trailer section (trailers: None for none)
cdef int encode_last_chunk(WriteBuf wb, HeaderMap trailers) except -1
