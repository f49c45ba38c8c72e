# HTTP/1.1 encoders (RFC 9112); see http1_encode.pxd for the contract.
#
#   request-line  = method SP request-target SP "HTTP/1.1" CRLF "host: " authority CRLF
#   status-line   = "HTTP/1." DIGIT SP 3DIGIT SP reason-phrase CRLF
#   field lines   = *( name ": " value CRLF ) [ framing line ] [ "connection: close" CRLF ] CRLF
#   chunk         = hex-size CRLF data CRLF;  last-chunk = "0" CRLF *trailer CRLF

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.string cimport memcpy

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport Head, h1_hdr, HK_HOST
from sofamesh._core.codecs.http1_body cimport FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF
from sofamesh._core.headers cimport HeaderMap, bytes_len, bytes_ptr

cdef extern from "string.h" nogil:
    int strncasecmp(const char* a, const char* b, size_t n)

# Envoy writes reason phrases from its own table (any other code: "Unknown").
REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 102: b"Processing", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 203: b"Non-Authoritative Information",
    204: b"No Content", 205: b"Reset Content", 206: b"Partial Content",
    207: b"Multi-Status", 208: b"Already Reported", 226: b"IM Used",
    300: b"Multiple Choices", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 305: b"Use Proxy", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized",
    402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 406: b"Not Acceptable",
    407: b"Proxy Authentication Required", 408: b"Request Timeout", 409: b"Conflict",
    410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed",
    413: b"Payload Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable", 417: b"Expectation Failed", 421: b"Misdirected Request",
    422: b"Unprocessable Entity", 423: b"Locked", 424: b"Failed Dependency",
    426: b"Upgrade Required", 428: b"Precondition Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
    506: b"Variant Also Negotiates", 507: b"Insufficient Storage", 508: b"Loop Detected",
    510: b"Not Extended", 511: b"Network Authentication Required",
}


cdef bytes reason_phrase(int code):
    return REASONS.get(code, b"Unknown")


cdef bint no_length_method(bytes method) noexcept:
    cdef const char* m = PyBytes_AS_STRING(method)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(method)
    if n == 3:
        return m[0] == 71 and m[1] == 69 and m[2] == 84          # GET
    if n == 4:
        return m[0] == 72 and m[1] == 69 and m[2] == 65 and m[3] == 68     # HEAD
    if n == 5:
        return m[0] == 84 and m[1] == 82 and m[2] == 65 and m[3] == 67 and \
            m[4] == 69                                             # TRACE
    if n == 6:
        return m[0] == 68 and m[1] == 69 and m[2] == 76 and m[3] == 69 and \
            m[4] == 84 and m[5] == 69                              # DELETE
    if n == 7:
        return m[0] == 67 and m[1] == 79 and m[2] == 78            # CONNECT
    return False


cdef inline int _field(WriteBuf wb, const char* name, Py_ssize_t nn, const char* value,
                       Py_ssize_t vn) except -1:
    # one room check for the whole line (four add() calls before: ~25 instructions a line)
    cdef char* o
    if wb.len + nn + vn + 4 > wb.cap:
        wb.grow(nn + vn + 4)
    o = wb.data + wb.len
    memcpy(o, name, nn)
    o += nn
    o[0] = b':'
    o[1] = b' '
    memcpy(o + 2, value, vn)
    o += vn + 2
    o[0] = b'\r'
    o[1] = b'\n'
    wb.len += nn + vn + 4
    return 0


cdef int _entries(WriteBuf wb, HeaderMap h, bint skip_host) except -1:
    """The live entries; `skip_host`: a request's Host lines (the :authority is written)."""
    cdef Head hh
    cdef h1_hdr* hd
    cdef int i
    cdef list added
    cdef PyObject* n
    cdef PyObject* v
    cdef bytes k, val
    if type(h) is Head:
        hh = <Head>h
        for i in range(hh.nhdr):
            hd = &hh.hdrs[i]
            if hd.skip or (skip_host and hd.kind == HK_HOST):
                continue
            wb.add(hh.base + hd.name_off, hd.value_off + hd.value_len - hd.name_off)
            wb.add("\r\n", 2)
        added = hh.added
        if added is not None:
            for i in range(0, PyList_GET_SIZE(added), 2):
                n = PyList_GET_ITEM(added, i)      # borrowed: no reference counting
                if n != <PyObject*>None:
                    v = PyList_GET_ITEM(added, i + 1)
                    _field(wb, bytes_ptr(n), bytes_len(n), bytes_ptr(v), bytes_len(v))
        return 0
    for i in range(h.count()):
        if h.live(i):
            k = h.name_at(i)
            if skip_host and PyBytes_GET_SIZE(k) == 4 and \
                    strncasecmp(PyBytes_AS_STRING(k), "host", 4) == 0:
                continue
            val = h.value_at(i)
            _field(wb, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k), PyBytes_AS_STRING(val),
                   PyBytes_GET_SIZE(val))
    return 0


cdef int encode_request_head(WriteBuf wb, HeaderMap h, bint end_stream, bint upgrade) except -1:
    cdef Head hh
    cdef int framing
    cdef bytes method
    if type(h) is Head and (<Head>h).path_set is None:
        hh = <Head>h
        wb.add(hh.base, hh.method_len)
        wb.add(" ", 1)
        wb.add(hh.base + hh.path_off, hh.path_len)
        method = None
    else:
        method = h.method()
        wb.add_bytes(method)
        wb.add(" ", 1)
        wb.add_bytes(h.path())
    wb.add(" HTTP/1.1\r\nhost: ", 17)
    if type(h) is Head and (<Head>h).authority_set is None and (<Head>h).abs_host_len == 0 \
            and (<Head>h).host2_idx < 0:
        hh = <Head>h
        if hh.host_idx >= 0:
            wb.add(hh.base + hh.hdrs[hh.host_idx].value_off, hh.hdrs[hh.host_idx].value_len)
    else:
        wb.add_bytes(h.authority())
    wb.add("\r\n", 2)
    if h.find_from("content-length", 14, 0) >= 0:
        framing = FR_LENGTH
    elif upgrade:
        framing = FR_NONE
    elif end_stream:
        framing = FR_NONE
        if method is None:
            method = h.method()
        if not no_length_method(method):
            wb.add("content-length: 0\r\n", 19)
    else:
        framing = FR_CHUNKED
        wb.add("transfer-encoding: chunked\r\n", 28)
    _entries(wb, h, True)
    wb.add("\r\n", 2)
    return framing


cdef int response_framing(HeaderMap h, int minor, bint end_stream) except -1:
    if end_stream:
        return FR_NONE
    if h.find_from("content-length", 14, 0) >= 0:
        return FR_LENGTH
    return FR_CHUNKED if minor else FR_EOF


cdef int encode_response_head(WriteBuf wb, HeaderMap h, int minor, int framing,
                              bint close) except -1:
    cdef int status = h.get_status()
    wb.add("HTTP/1.1 " if minor else "HTTP/1.0 ", 9)
    wb.add_uint(status)
    wb.add(" ", 1)
    wb.add_bytes(reason_phrase(status))
    wb.add("\r\n", 2)
    _entries(wb, h, False)
    if framing == FR_CHUNKED:
        wb.add("transfer-encoding: chunked\r\n", 28)
    if close:
        wb.add("connection: close\r\n", 19)
    wb.add("\r\n", 2)
    return 0


cdef int encode_chunk(WriteBuf wb, bytes data) except -1:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if n:
        wb.add_hex(n)
        wb.add("\r\n", 2)
        wb.add_bytes(data)
        wb.add("\r\n", 2)
    return 0


cdef int encode_last_chunk(WriteBuf wb, HeaderMap trailers) except -1:
    wb.add("0\r\n", 3)
    if trailers is not None:
        _entries(wb, trailers, False)
    wb.add("\r\n", 2)
    return 0
