# HPACK (RFC 7541) decoder and encoder; see hpack.pxd for the contract.
#
#   field representations (first octet; N = prefix of an HPACK integer):
#     1 N N N N N N N   indexed field                     index (7-bit prefix)
#     0 1 N N N N N N   literal, incremental indexing     name index (6) or 0 + name, value
#     0 0 1 N N N N N   dynamic table size update         max size (5)
#     0 0 0 1 N N N N   literal, never indexed            name index (4) or 0 + name, value
#     0 0 0 0 N N N N   literal, without indexing         name index (4) or 0 + name, value
#   string literal:   H N N N N N N N  length (7), then length octets (Huffman if H)
#   integer:          prefix all ones -> continue with 7 bits an octet, LSB group first
#
#   index space:  1 ...... 61 | 62 ...................... 61 + entries
#                 static table | dynamic table, newest first
#   an entry's size is len(name) + len(value) + 32; inserting evicts from the oldest end.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

from sofamesh._core.codecs.hpack_huffman cimport (
    huffman_decode, huffman_encode, huffman_encoded_length,
)

OK = HPACK_OK
E_TRUNCATED = HPACK_E_TRUNCATED
E_INTEGER = HPACK_E_INTEGER
E_INDEX = HPACK_E_INDEX
E_HUFFMAN = HPACK_E_HUFFMAN
E_TABLE_SIZE = HPACK_E_TABLE_SIZE
E_UPDATE_POSITION = HPACK_E_UPDATE_POSITION
E_LIMIT = HPACK_E_LIMIT
E_HEADER_TOO_LARGE = HPACK_E_HEADER_TOO_LARGE
E_LIST_TOO_LARGE = HPACK_E_LIST_TOO_LARGE
E_TOO_MANY = HPACK_E_TOO_MANY

ERROR_NAMES = {
    HPACK_E_TRUNCATED: "truncated", HPACK_E_INTEGER: "integer overflow",
    HPACK_E_INDEX: "bad index", HPACK_E_HUFFMAN: "bad Huffman string",
    HPACK_E_TABLE_SIZE: "table size update over the limit",
    HPACK_E_UPDATE_POSITION: "table size update misplaced or missing",
    HPACK_E_HEADER_TOO_LARGE: "header field too large",
    HPACK_E_LIST_TOO_LARGE: "header list too large", HPACK_E_TOO_MANY: "too many headers",
}


class HpackError(ValueError):
    def __init__(self, int code):
        super().__init__(ERROR_NAMES.get(code, str(code)))
        self.code = code


# RFC 7541 Appendix A
STATIC_TABLE = (
    (b':authority', b''),
    (b':method', b'GET'),
    (b':method', b'POST'),
    (b':path', b'/'),
    (b':path', b'/index.html'),
    (b':scheme', b'http'),
    (b':scheme', b'https'),
    (b':status', b'200'),
    (b':status', b'204'),
    (b':status', b'206'),
    (b':status', b'304'),
    (b':status', b'400'),
    (b':status', b'404'),
    (b':status', b'500'),
    (b'accept-charset', b''),
    (b'accept-encoding', b'gzip, deflate'),
    (b'accept-language', b''),
    (b'accept-ranges', b''),
    (b'accept', b''),
    (b'access-control-allow-origin', b''),
    (b'age', b''),
    (b'allow', b''),
    (b'authorization', b''),
    (b'cache-control', b''),
    (b'content-disposition', b''),
    (b'content-encoding', b''),
    (b'content-language', b''),
    (b'content-length', b''),
    (b'content-location', b''),
    (b'content-range', b''),
    (b'content-type', b''),
    (b'cookie', b''),
    (b'date', b''),
    (b'etag', b''),
    (b'expect', b''),
    (b'expires', b''),
    (b'from', b''),
    (b'host', b''),
    (b'if-match', b''),
    (b'if-modified-since', b''),
    (b'if-none-match', b''),
    (b'if-range', b''),
    (b'if-unmodified-since', b''),
    (b'last-modified', b''),
    (b'link', b''),
    (b'location', b''),
    (b'max-forwards', b''),
    (b'proxy-authenticate', b''),
    (b'proxy-authorization', b''),
    (b'range', b''),
    (b'referer', b''),
    (b'refresh', b''),
    (b'retry-after', b''),
    (b'server', b''),
    (b'set-cookie', b''),
    (b'strict-transport-security', b''),
    (b'transfer-encoding', b''),
    (b'user-agent', b''),
    (b'vary', b''),
    (b'via', b''),
    (b'www-authenticate', b''),
)
DEF STATIC_LEN = 61

cdef tuple _STATIC = STATIC_TABLE
cdef dict _STATIC_PAIR = {}       # dict[tuple[bytes, bytes], int]
cdef dict _STATIC_NAME = {}       # dict[bytes, int]: the first index with that name
for _i, _e in enumerate(STATIC_TABLE):
    _STATIC_PAIR.setdefault(_e, _i + 1)
    _STATIC_NAME.setdefault(_e[0], _i + 1)

# Sent as never-indexed literals (RFC 7541 7.1.3): credentials an intermediary must not
# let a compression oracle probe; short cookies are added in code (RFC 7541 7.1.3).
NEVER_INDEX = frozenset([b"authorization", b"proxy-authorization"])
# Not worth a table slot: values that change on (almost) every message.
NO_INDEX = frozenset([
    b":path", b"content-length", b"etag", b"last-modified", b"if-modified-since",
    b"if-none-match", b"age", b"location", b"set-cookie", b"x-request-id",
    b"x-envoy-upstream-service-time", b"grpc-message", b"traceparent", b"x-b3-traceid",
    b"x-b3-spanid", b"x-b3-parentspanid",
])


cdef inline int _read_int(const unsigned char* p, Py_ssize_t n, Py_ssize_t* pos,
                          unsigned int prefix_bits, Py_ssize_t* out) noexcept:
    cdef unsigned int mask = (1u << prefix_bits) - 1
    cdef unsigned long long v
    cdef unsigned int shift = 0
    cdef unsigned char b
    cdef Py_ssize_t i = pos[0]
    if i >= n:
        return HPACK_E_TRUNCATED
    v = p[i] & mask
    i += 1
    if v == mask:
        while True:
            if i >= n:
                return HPACK_E_TRUNCATED
            b = p[i]
            i += 1
            v += (<unsigned long long>(b & 0x7f)) << shift
            shift += 7
            if not (b & 0x80):
                break
            if shift > 28:
                return HPACK_E_INTEGER
        if v > 0x7fffffff:
            return HPACK_E_INTEGER
    pos[0] = i
    out[0] = <Py_ssize_t>v
    return 0


cdef class Decoder:
    def __cinit__(self):
        self._entries = []
        self._scratch = NULL
        self._scratch_cap = 0

    def __init__(self, Py_ssize_t max_table_size=HPACK_DEFAULT_TABLE_SIZE,
                 Py_ssize_t max_header_list_size=65536, Py_ssize_t max_header_size=65536,
                 int max_headers=0):
        self._first = 0
        self._size = 0
        self._max_size = max_table_size
        self._allowed = max_table_size
        self._update_required = False
        self.max_header_list_size = max_header_list_size
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.last_list_size = 0

    def __dealloc__(self):
        free(self._scratch)

    cdef unsigned char* _grow(self, Py_ssize_t n) except NULL:
        cdef unsigned char* p
        if n > self._scratch_cap:
            n = max(n, 256)
            p = <unsigned char*>realloc(self._scratch, n)
            if p == NULL:
                raise MemoryError()
            self._scratch = p
            self._scratch_cap = n
        return self._scratch

    cdef void set_allowed_table_size(self, Py_ssize_t size) noexcept:
        # RFC 7541 4.2: a bound lowered below the table's size obliges the peer's encoder
        # to open its next block with a size update
        if size < self._max_size:
            self._update_required = True
        self._allowed = size

    cdef int _evict(self, Py_ssize_t limit) except -1:
        cdef tuple e
        while self._size > limit:
            e = <tuple>self._entries[self._first]
            self._size -= (PyBytes_GET_SIZE(e[0]) + PyBytes_GET_SIZE(e[1])
                           + HPACK_ENTRY_OVERHEAD)
            self._entries[self._first] = None
            self._first += 1
        if self._first == PyList_GET_SIZE(self._entries):
            self._entries = []
            self._first = 0
        elif self._first > 64 and self._first * 2 > PyList_GET_SIZE(self._entries):
            del self._entries[:self._first]
            self._first = 0
        return 0

    cdef int _insert(self, object entry, Py_ssize_t size) except -1:
        if size > self._max_size:
            self._evict(0)
            return 0
        self._evict(self._max_size - size)
        self._entries.append(entry)
        self._size += size
        return 0

    cdef int decode_block(self, const unsigned char* p, Py_ssize_t n, list out,
                          Py_ssize_t* done=NULL) except -100:
        cdef Py_ssize_t pos = 0, v = 0, idx, slen, nlen, vlen, fsize, total = 0
        cdef Py_ssize_t count = 0, ndyn, dpos
        cdef int rc, limit_err = 0
        cdef unsigned int prefix
        cdef unsigned char b
        cdef bint indexing, fields = False, huff
        cdef const unsigned char* vp
        cdef tuple entry
        cdef bytes name, value
        if done != NULL:
            done[0] = 0
        while pos < n:
            if done != NULL:
                done[0] = pos       # every representation before pos is complete
            b = p[pos]
            if b & 0x20 and not (b & 0xc0):
                # dynamic table size update: only before the first field
                if fields:
                    return HPACK_E_UPDATE_POSITION
                rc = _read_int(p, n, &pos, 5, &v)
                if rc:
                    return rc
                if v > self._allowed:
                    return HPACK_E_TABLE_SIZE
                self._max_size = v
                self._evict(v)
                self._update_required = False
                continue
            if not fields:
                if self._update_required:
                    return HPACK_E_UPDATE_POSITION
                fields = True
            if b & 0x80:
                rc = _read_int(p, n, &pos, 7, &idx)
                if rc:
                    return rc
                if idx == 0:
                    return HPACK_E_INDEX
                if idx <= STATIC_LEN:
                    entry = <tuple>_STATIC[idx - 1]
                else:
                    ndyn = PyList_GET_SIZE(self._entries)
                    dpos = ndyn - (idx - STATIC_LEN)
                    if dpos < self._first:
                        return HPACK_E_INDEX
                    entry = <tuple>self._entries[dpos]
                fsize = PyBytes_GET_SIZE(entry[0]) + PyBytes_GET_SIZE(entry[1])
                total += fsize + HPACK_ENTRY_OVERHEAD
                count += 1
                if limit_err == 0:
                    if fsize > self.max_header_size:
                        limit_err = HPACK_E_HEADER_TOO_LARGE
                    elif total > self.max_header_list_size:
                        limit_err = HPACK_E_LIST_TOO_LARGE
                    elif self.max_headers and count > self.max_headers:
                        limit_err = HPACK_E_TOO_MANY
                    else:
                        out.append(entry)
                continue
            if b & 0x40:
                prefix = 6
                indexing = True
            else:
                prefix = 4
                indexing = False
            rc = _read_int(p, n, &pos, prefix, &idx)
            if rc:
                return rc
            name = None
            if idx:
                if idx <= STATIC_LEN:
                    name = <bytes>(<tuple>_STATIC[idx - 1])[0]
                else:
                    ndyn = PyList_GET_SIZE(self._entries)
                    dpos = ndyn - (idx - STATIC_LEN)
                    if dpos < self._first:
                        return HPACK_E_INDEX
                    name = <bytes>(<tuple>self._entries[dpos])[0]
                nlen = PyBytes_GET_SIZE(name)
            else:
                if pos >= n:
                    return HPACK_E_TRUNCATED
                huff = p[pos] & 0x80
                rc = _read_int(p, n, &pos, 7, &slen)
                if rc:
                    return rc
                if slen > n - pos:
                    return HPACK_E_TRUNCATED
                if huff:
                    vp = self._grow(slen * 8 // 5 + 1)
                    nlen = huffman_decode(p + pos, slen, self._scratch)
                    if nlen < 0:
                        return HPACK_E_HUFFMAN
                else:
                    vp = p + pos
                    nlen = slen
                pos += slen
                # an object only when the field may be kept or the table must hold it
                if nlen <= self.max_header_size or (
                        indexing and nlen + HPACK_ENTRY_OVERHEAD <= self._max_size):
                    name = PyBytes_FromStringAndSize(<const char*>vp, nlen)
            # the value
            if pos >= n:
                return HPACK_E_TRUNCATED
            huff = p[pos] & 0x80
            rc = _read_int(p, n, &pos, 7, &slen)
            if rc:
                return rc
            if slen > n - pos:
                return HPACK_E_TRUNCATED
            if huff:
                vp = self._grow(slen * 8 // 5 + 1)
                vlen = huffman_decode(p + pos, slen, self._scratch)
                if vlen < 0:
                    return HPACK_E_HUFFMAN
            else:
                vp = p + pos
                vlen = slen
            pos += slen
            fsize = nlen + vlen
            total += fsize + HPACK_ENTRY_OVERHEAD
            count += 1
            value = None
            entry = None
            if limit_err == 0:
                if fsize > self.max_header_size:
                    limit_err = HPACK_E_HEADER_TOO_LARGE
                elif total > self.max_header_list_size:
                    limit_err = HPACK_E_LIST_TOO_LARGE
                elif self.max_headers and count > self.max_headers:
                    limit_err = HPACK_E_TOO_MANY
                else:
                    value = PyBytes_FromStringAndSize(<const char*>vp, vlen)
                    entry = (name, value)
                    out.append(entry)
            if indexing:
                if fsize + HPACK_ENTRY_OVERHEAD > self._max_size:
                    self._evict(0)
                else:
                    if entry is None:
                        # fits the table, so name and value are small enough to hold
                        value = PyBytes_FromStringAndSize(<const char*>vp, vlen)
                        entry = (name, value)
                    self._insert(entry, fsize + HPACK_ENTRY_OVERHEAD)
        if done != NULL:
            done[0] = pos
        elif not fields and self._update_required:
            return HPACK_E_UPDATE_POSITION
        self.last_list_size = total
        return limit_err

    def decode_into(self, bytes data, list out):
        return self.decode_block(<const unsigned char*>PyBytes_AS_STRING(data),
                                 PyBytes_GET_SIZE(data), out)

    def decode(self, data):
        cdef bytes b = bytes(data)
        cdef list out = []
        cdef int rc = self.decode_block(<const unsigned char*>PyBytes_AS_STRING(b),
                                        PyBytes_GET_SIZE(b), out)
        if rc:
            raise HpackError(rc)
        return out

    @property
    def max_allowed_table_size(self):
        return self._allowed

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, Py_ssize_t size):
        self.set_allowed_table_size(size)

    @property
    def table_size(self):
        return self._size

    @property
    def table_max_size(self):
        return self._max_size

    @property
    def table(self):
        return [e for e in reversed(self._entries[self._first:])]


cdef class Encoder:
    def __cinit__(self):
        self._out = NULL
        self._cap = 0
        self._entries = []
        self._by_pair = {}
        self._by_name = {}

    def __init__(self, Py_ssize_t max_table_size=HPACK_DEFAULT_TABLE_SIZE, bint huffman=True):
        self._first = 0
        self._base_seq = 0
        self._size = 0
        # the table starts at the protocol's 4096; a smaller size is announced by an update
        self._max_size = HPACK_DEFAULT_TABLE_SIZE
        self._pending_min = -1
        self._pending_final = -1
        self.huffman = huffman
        self.never_index = NEVER_INDEX
        self.no_index = NO_INDEX
        if max_table_size != HPACK_DEFAULT_TABLE_SIZE:
            self.set_max_table_size(max_table_size)

    def __dealloc__(self):
        free(self._out)

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* p
        if self._len + n > self._cap:
            cap = max(self._cap * 2, self._len + n, 512)
            p = <unsigned char*>realloc(self._out, cap)
            if p == NULL:
                raise MemoryError()
            self._out = p
            self._cap = cap
        return 0

    cdef void _put_int(self, unsigned int prefix_bits, unsigned char first,
                       unsigned long long v) noexcept:
        # the caller reserved room (an integer below 2^32 takes at most 6 octets)
        cdef unsigned int mask = (1u << prefix_bits) - 1
        if v < mask:
            self._out[self._len] = first | <unsigned char>v
            self._len += 1
            return
        self._out[self._len] = first | <unsigned char>mask
        self._len += 1
        v -= mask
        while v >= 128:
            self._out[self._len] = <unsigned char>((v & 0x7f) | 0x80)
            self._len += 1
            v >>= 7
        self._out[self._len] = <unsigned char>v
        self._len += 1

    cdef int _put_string(self, bytes s) except -1:
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(s)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(s), h
        if self.huffman and n > 1:
            h = huffman_encoded_length(p, n)
            if h < n:
                self._reserve(h + 8)
                self._put_int(7, 0x80, h)
                huffman_encode(p, n, self._out + self._len)
                self._len += h
                return 0
        self._reserve(n + 8)
        self._put_int(7, 0, n)
        memcpy(self._out + self._len, p, n)
        self._len += n
        return 0

    cdef Py_ssize_t _dyn_index(self, long long seq) noexcept:
        return <Py_ssize_t>(self._base_seq + PyList_GET_SIZE(self._entries) - seq)

    cdef int _add(self, object entry, bytes name, Py_ssize_t size) except -1:
        cdef long long seq
        if size > self._max_size:
            self._evict_to(0)
            return 0
        self._evict_to(self._max_size - size)
        seq = self._base_seq + PyList_GET_SIZE(self._entries)
        self._entries.append(entry)
        self._size += size
        self._by_pair[entry] = seq
        self._by_name[name] = seq
        return 0

    cpdef void set_max_table_size(self, Py_ssize_t size):
        if self._pending_min < 0:
            if size == self._max_size:
                return
            self._pending_min = size
        elif size < self._pending_min:
            self._pending_min = size
        self._pending_final = size
        self._max_size = size
        # evict down to the new size now; the peer does when it reads the update
        self._evict_to(size)

    cdef int _evict_to(self, Py_ssize_t limit) except -1:
        cdef tuple old
        cdef long long seq
        while self._size > limit:
            old = <tuple>self._entries[self._first]
            seq = self._base_seq + self._first
            self._size -= (PyBytes_GET_SIZE(old[0]) + PyBytes_GET_SIZE(old[1])
                           + HPACK_ENTRY_OVERHEAD)
            if self._by_pair.get(old) == seq:
                del self._by_pair[old]
            if self._by_name.get(old[0]) == seq:
                del self._by_name[old[0]]
            self._entries[self._first] = None
            self._first += 1
        if self._first > 64 and self._first * 2 > PyList_GET_SIZE(self._entries):
            del self._entries[:self._first]
            self._base_seq += self._first
            self._first = 0
        return 0

    cpdef bytes encode_block(self, list headers):
        cdef object item, found
        cdef bytes name, value
        cdef tuple pair
        cdef Py_ssize_t nidx, size
        cdef bint sensitive
        cdef unsigned char first
        cdef unsigned int prefix
        self._len = 0
        if self._pending_min >= 0:
            self._reserve(16)
            if self._pending_min < self._pending_final:
                self._put_int(5, 0x20, self._pending_min)
            self._put_int(5, 0x20, self._pending_final)
            self._pending_min = -1
        for item in headers:
            if type(item) is tuple and len(<tuple>item) == 2:
                pair = <tuple>item
            else:
                pair = (item[0], item[1])
            name = <bytes?>pair[0]
            value = <bytes?>pair[1]
            self._reserve(8)
            found = _STATIC_PAIR.get(pair)
            if found is not None:
                self._put_int(7, 0x80, <Py_ssize_t>found)
                continue
            sensitive = name in self.never_index or (
                PyBytes_GET_SIZE(value) < 20 and name == b"cookie")
            if not sensitive:
                found = self._by_pair.get(pair)
                if found is not None:
                    self._put_int(7, 0x80, STATIC_LEN + self._dyn_index(found))
                    continue
            found = _STATIC_NAME.get(name)
            if found is not None:
                nidx = <Py_ssize_t>found
            else:
                found = self._by_name.get(name)
                nidx = 0 if found is None else STATIC_LEN + self._dyn_index(found)
            size = PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + HPACK_ENTRY_OVERHEAD
            if sensitive:
                first = 0x10
                prefix = 4
            elif name in self.no_index or size * 4 > self._max_size * 3:
                first = 0x00
                prefix = 4
            else:
                first = 0x40
                prefix = 6
            if nidx:
                self._put_int(prefix, first, nidx)
            else:
                self._out[self._len] = first
                self._len += 1
                self._put_string(name)
            self._put_string(value)
            if first == 0x40:
                self._add(pair, name, size)
        return PyBytes_FromStringAndSize(<const char*>self._out, self._len)

    def encode(self, headers):
        cdef list hs = []
        for n, v in headers:
            if isinstance(n, str):
                n = n.encode("utf-8")
            if isinstance(v, str):
                v = v.encode("utf-8")
            hs.append((n, v))
        return self.encode_block(hs)

    @property
    def table_size(self):
        return self._size

    @property
    def table(self):
        return [e for e in reversed(self._entries[self._first:])]
