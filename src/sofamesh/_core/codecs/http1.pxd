# HTTP/1.1 message heads and body framing, sans-IO, for the proxy hot path.
#
# Contract: `parse_request` / `parse_response` fill a reusable `Head` with offsets into the
# bytes object they were given (no Python object per header); codecs/http1_encode renders
# heads (a Head by memcpy of its kept lines). Bodies: codecs/http1_body.
# Return values: > 0 head length, 0 need more bytes, < 0 one of the H1_E_* errors.
# A `Head` is the HTTP/1 `headers.HeaderMap`: what the stream, filters and route table see.

from sofamesh._core.codecs.http1_body cimport FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF
from sofamesh._core.headers cimport HeaderMap, HeaderList

cdef enum:
    H1_MAX_HEADERS = 128
    H1_MAX_TOKENS = 8

cdef enum:
    H1_NEED_MORE = 0
    H1_E_BAD = -1           # malformed: 400 and close
    H1_E_TOO_LARGE = -2     # head over the size limit: 431
    H1_E_TOO_MANY = -3      # more headers than allowed: 431
    H1_E_NOT_IMPL = -4      # unknown transfer-coding on a request: 501
    H1_E_BAD_TARGET = -5    # request-target Envoy rejects (a fragment): 400, empty body
    H1_E_OBS_FOLD = -6      # a folded header line: unfold the head (unfold_head) and retry

# Headers the proxy treats specially, classified once while parsing.
cdef enum:
    HK_OTHER = 0
    HK_HOST = 1
    HK_CONTENT_LENGTH = 2
    HK_TRANSFER_ENCODING = 3
    HK_CONNECTION = 4
    HK_KEEP_ALIVE = 5
    HK_PROXY_CONNECTION = 6
    HK_UPGRADE = 7
    HK_EXPECT = 8
    HK_TE = 9
    HK_XFF = 10
    HK_X_REQUEST_ID = 11
    HK_X_FORWARDED_PROTO = 12
    HK_SERVER = 13
    HK_DATE = 14
    HK_USER_AGENT = 15
    HK_EXPECTED_TIMEOUT = 16    # x-envoy-expected-rq-timeout-ms
    HK_ENVOY_CONTROL = 17       # x-envoy-retry-on & co: read and removed by Envoy's router
    HK_TE_TRAILERS = 18         # "te: trailers", the one TE value Envoy forwards

cdef struct h1_hdr:
    int name_off
    int name_len
    int value_off
    int value_len
    int kind
    int skip        # set by the proxy to drop this line when re-rendering


cdef class Head(HeaderMap):
    cdef bytes raw                  # the bytes the offsets point into
    cdef Py_ssize_t start           # offset of the head inside raw
    cdef const char* base           # raw's data + start
    cdef int length                 # head length including the blank line
    cdef int nhdr
    cdef h1_hdr hdrs[H1_MAX_HEADERS]
    cdef int line_len               # request/status line without CRLF
    cdef int method_len             # request: method is base[0:method_len]
    cdef int path_off
    cdef int path_len
    cdef int minor                  # HTTP/1.<minor>
    cdef int status                 # response
    cdef int reason_off
    cdef int reason_len
    cdef long long content_length   # -1 when absent
    cdef bint chunked
    cdef bint te_other              # a transfer-encoding other than chunked
    cdef bint conn_close
    cdef bint conn_keep_alive
    cdef bint conn_upgrade
    cdef bint expect_continue
    cdef bint is_head_method
    cdef int host_idx
    cdef int upgrade_idx
    cdef int xff_idx
    cdef int xrid_idx
    cdef int xfp_idx
    cdef int host2_idx              # a second Host header (joined with ",")
    cdef int abs_host_off           # absolute-form target: its authority
    cdef int abs_host_len           # 0: origin-form
    cdef int ntok                   # Connection: tokens other than close/keep-alive/upgrade
    cdef int tok_off[H1_MAX_TOKENS]
    cdef int tok_len[H1_MAX_TOKENS]
    # mutations (headers.pxd): entries nhdr.. are `added` pairs; a removed one's name is None
    cdef list added                 # list[bytes | None] | None: name, value, name, value, ...
    cdef bytes path_set             # :path replaced (a rewrite), or None
    cdef bytes authority_set        # :authority replaced (a host rewrite), or None

    cdef void reset(self) noexcept
    cdef int find(self, const char* name, int n) noexcept    # removed entries included
    cdef bytes host(self)
    # authority() as a view (valid while the head is unchanged; n bytes), NULL when it is
    # not one piece of the head (two Host headers): then authority() (access logs)
    cdef const char* authority_ptr(self, Py_ssize_t* n) noexcept
    # HeaderMap
    cdef int count(self) noexcept
    cdef bint live(self, int i) noexcept
    cdef int find_from(self, const char* name, int n, int start) noexcept
    cdef bytes name_at(self, int i)
    cdef const char* name_ptr(self, int i, int* n) noexcept
    cdef bytes value_at(self, int i)
    cdef int remove_at(self, int i) except -1
    cdef bytes method(self)
    cdef bytes path(self)
    cdef const char* path_ptr(self, int* n) noexcept
    cdef bytes authority(self)
    cdef int get_status(self) noexcept
    cdef int add(self, bytes name, bytes value) except -1
    cdef int set_path(self, bytes path) except -1
    cdef int set_authority(self, bytes authority) except -1
    cdef int remove_router_controls(self) except -1
    # HTTP/1 connection-specific lines (RFC 9110 7.6.1: Connection and the headers it names,
    # Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade; on a request also TE other
    # than "trailers" and Expect, which the codec answered) are removed before the message
    # leaves the codec; `keep_upgrade` keeps Connection/Upgrade of an upgrade exchange.
    cdef int drop_connection_headers(self, bint request, bint keep_upgrade) except -1
    cdef bint nominated(self, int i) noexcept
    cdef int framing(self) noexcept      # request body framing: FR_NONE/LENGTH/CHUNKED


cdef int parse_request(Head h, bytes data, Py_ssize_t start, int max_bytes,
                       int max_headers) except -100
cdef int parse_response(Head h, bytes data, Py_ssize_t start, int max_bytes) except -100
cpdef bytes unfold_head(bytes data, Py_ssize_t start, Py_ssize_t head_len)
