# Hessian readers: a full final-spec Hessian 2 skipper/reader and SOFA's pre-final draft.
#
# Final Hessian 2.0 (Dubbo, HSF), first byte of a value:
#
#   0x00-0x1f  string, len 0-31 (UTF-16 units)    0x20-0x2f  binary, len 0-15
#   0x30-0x33  string, len < 1024 (+1 byte)        0x34-0x37  binary, len < 1024 (+1 byte)
#   0x38-0x3f  long, 3 bytes                       0x41 'A'   binary chunk, 0x42 'B' final
#   0x43 'C'   class def: name, int n, n names     0x44 'D'   double, 8 bytes
#   0x46 'F'   false    0x54 'T' true  0x4e 'N' null
#   0x48 'H'   untyped map: (k v)* 'Z'             0x49 'I'   int, 4 bytes
#   0x4a 'J'   date ms, 8 bytes   0x4b 'K' date min, 4 bytes    0x4c 'L' long, 8 bytes
#   0x4d 'M'   typed map: type (k v)* 'Z'          0x4f 'O'   object: int classref, fields
#   0x51 'Q'   reference: int                      0x52 'R'   string chunk, 0x53 'S' final
#   0x55 'U'   typed list: type v* 'Z'             0x56 'V'   typed list: type, int n, n v
#   0x57 'W'   list: v* 'Z'                        0x58 'X'   list: int n, n v
#   0x59 'Y'   long as int, 4 bytes                0x5b/0x5c  double 0.0 / 1.0
#   0x5d/0x5e/0x5f  double as byte / short / float
#   0x60-0x6f  object, classref 0-15               0x70-0x77  typed list, n 0-7: type, v*
#   0x78-0x7f  list, n 0-7: v*                     0x80-0xbf  int, 1 byte
#   0xc0-0xcf  int, 2 bytes   0xd0-0xd7 int, 3 bytes   0xd8-0xef long, 1   0xf0-0xff long, 2
#
# SOFA's pre-final draft (sofa-hessian-node "hessian 2.0", Bolt SofaRequest content) differs:
#
#   'O' int len, name bytes, int n, n strings  class definition (no string tag on the name)
#   'o' int classref, fields                   instance
#   'V' ['t' u16 len type] ['n' u8 n | 'l' u32 n] v* 'z'     list
#   'M' ['t' u16 len type] (k v)* 'z'          map
#   'R' u32 / 0x4a u8 / 0x4b u16               references
#   'd' date 8   'S'/'s' string chunk u16   'B'/'b' binary chunk u16   'g' 'h' 'i' 'j' 'k' doubles
#   0x77 'w' long as int, 4 bytes; ints/longs/short strings/binaries as in the final spec.

from cpython.bytes cimport PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcmp


cdef inline Py_ssize_t _utf8_span(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                  Py_ssize_t nchars) noexcept:
    """Byte end of `nchars` UTF-16 units of UTF-8 starting at pos, or -1 (truncated) / -2 (bad)."""
    cdef unsigned char c
    while nchars > 0:
        if pos >= end:
            return -1
        c = p[pos]
        if c < 0x80:
            pos += 1
        elif c < 0xc0:
            return -2
        elif c < 0xe0:
            pos += 2
        elif c < 0xf0:
            pos += 3
        elif c < 0xf8:
            # a 4-byte sequence carries a surrogate pair: two UTF-16 units
            pos += 4
            nchars -= 1
        else:
            return -2
        nchars -= 1
    if pos > end:
        return -1
    return pos


cdef class HCursor:
    cdef int _open(self, object data, Py_ssize_t start, Py_ssize_t end) except -1:
        """Points the cursor at data[start:end] (each dialect's __cinit__ calls it: a base
        __cinit__ would cost a second argument parse per cursor)."""
        cdef const unsigned char[::1] view
        self.err = H_OK
        self.depth = 0
        n = len(data)
        if end < 0 or end > n:
            end = n
        if start < 0:
            start = 0
        self.pos = start
        self.end = end
        if n == 0:
            self.p = <const unsigned char*>b""
            self._owner = b""
        elif type(data) is bytes:
            # PERF: rpc_bench (dubbo): no buffer acquisition for the common case
            self._owner = data
            self.p = <const unsigned char*>PyBytes_AS_STRING(data)
        else:
            view = data
            self._owner = view
            self.p = &view[0]
        return 0

    @property
    def offset(self):
        return self.pos

    cdef void fail(self, int code) noexcept:
        if self.err == H_OK:
            self.err = code

    cdef bint _need(self, Py_ssize_t n) noexcept:
        if n < 0 or self.end - self.pos < n:
            self.fail(H_ERR_TRUNCATED)
            return False
        return True

    cdef int skip_string_chars(self, Py_ssize_t nchars):
        cdef Py_ssize_t e = _utf8_span(self.p, self.pos, self.end, nchars)
        if e == -1:
            self.fail(H_ERR_TRUNCATED)
        elif e == -2:
            self.fail(H_ERR_BAD_UTF8)
        else:
            self.pos = e
        return self.err

    cdef long long read_int(self):
        """An int (or long) value: lengths, class refs, field counts, list sizes."""
        cdef unsigned char b
        cdef const unsigned char* q
        cdef long long v
        if not self._need(1):
            return 0
        b = self.p[self.pos]
        self.pos += 1
        q = self.p + self.pos
        if 0x80 <= b <= 0xbf:
            return <long long>b - 0x90
        if 0xc0 <= b <= 0xcf:
            if not self._need(1):
                return 0
            self.pos += 1
            return ((<long long>b - 0xc8) << 8) | q[0]
        if 0xd0 <= b <= 0xd7:
            if not self._need(2):
                return 0
            self.pos += 2
            return ((<long long>b - 0xd4) << 16) | (q[0] << 8) | q[1]
        if b == 0x49 or b == self.int32_tag:
            if not self._need(4):
                return 0
            self.pos += 4
            return <int>((<unsigned int>q[0] << 24) | (q[1] << 16) | (q[2] << 8) | q[3])
        if 0xd8 <= b <= 0xef:
            return <long long>b - 0xe0
        if 0xf0 <= b:
            if not self._need(1):
                return 0
            self.pos += 1
            return ((<long long>b - 0xf8) << 8) | q[0]
        if 0x38 <= b <= 0x3f:
            if not self._need(2):
                return 0
            self.pos += 2
            return ((<long long>b - 0x3c) << 16) | (q[0] << 8) | q[1]
        if b == 0x4c:
            if not self._need(8):
                return 0
            self.pos += 8
            v = 0
            for i in range(8):
                v = (v << 8) | q[i]
            return v
        self.pos -= 1
        self.fail(H_ERR_BAD_TAG)
        return 0

    cdef object read_str(self):
        """A string value (possibly chunked) as str, or None for null."""
        cdef unsigned char b
        cdef Py_ssize_t start, n
        cdef list parts = None
        if not self._need(1):
            return None
        b = self.p[self.pos]
        if b == 0x4e:
            self.pos += 1
            return None
        while True:
            if not self._need(1):
                return None
            b = self.p[self.pos]
            self.pos += 1
            if b <= 0x1f:
                n = b
            elif 0x30 <= b <= 0x33:
                if not self._need(1):
                    return None
                n = ((b - 0x30) << 8) | self.p[self.pos]
                self.pos += 1
            elif b == self.str_chunk_tag or b == 0x53:
                if not self._need(2):
                    return None
                n = (self.p[self.pos] << 8) | self.p[self.pos + 1]
                self.pos += 2
            else:
                self.pos -= 1
                self.fail(H_ERR_NOT_STRING)
                return None
            start = self.pos
            if self.skip_string_chars(n):
                return None
            try:
                s = PyUnicode_DecodeUTF8(<const char*>self.p + start, self.pos - start,
                                         "surrogatepass")
            except UnicodeDecodeError:
                self.fail(H_ERR_BAD_UTF8)
                return None
            if b == self.str_chunk_tag:
                if parts is None:
                    parts = []
                parts.append(s)
                continue
            if parts is not None:
                parts.append(s)
                return "".join(parts)
            return s


cdef class H2Cursor(HCursor):
    def __cinit__(self, object data, Py_ssize_t start=0, Py_ssize_t end=-1):
        self._class_fields = []
        self.int32_tag = 0x59
        self.str_chunk_tag = 0x52
        self._open(data, start, end)

    cdef int _skip_chunks(self, int binary):
        """After a non-final chunk: chunks continue until a final one."""
        cdef unsigned char b
        cdef Py_ssize_t n
        while self.err == H_OK:
            if not self._need(1):
                break
            b = self.p[self.pos]
            self.pos += 1
            if binary:
                if b == 0x41 or b == 0x42:
                    if not self._need(2):
                        break
                    n = (self.p[self.pos] << 8) | self.p[self.pos + 1]
                    self.pos += 2
                    if not self._need(n):
                        break
                    self.pos += n
                    if b == 0x42:
                        break
                elif 0x20 <= b <= 0x2f:
                    n = b - 0x20
                    if self._need(n):
                        self.pos += n
                    break
                elif 0x34 <= b <= 0x37:
                    if not self._need(1):
                        break
                    n = ((b - 0x34) << 8) | self.p[self.pos]
                    self.pos += 1
                    if self._need(n):
                        self.pos += n
                    break
                else:
                    self.fail(H_ERR_BAD_TAG)
            else:
                if b == 0x52 or b == 0x53:
                    if not self._need(2):
                        break
                    n = (self.p[self.pos] << 8) | self.p[self.pos + 1]
                    self.pos += 2
                    self.skip_string_chars(n)
                    if b == 0x53:
                        break
                elif b <= 0x1f:
                    self.skip_string_chars(b)
                    break
                elif 0x30 <= b <= 0x33:
                    if not self._need(1):
                        break
                    n = ((b - 0x30) << 8) | self.p[self.pos]
                    self.pos += 1
                    self.skip_string_chars(n)
                    break
                else:
                    self.fail(H_ERR_BAD_TAG)
        return self.err

    cdef int skip_type(self):
        """A type: a string (the name) or an int (a reference to an earlier type)."""
        cdef unsigned char b
        if not self._need(1):
            return self.err
        b = self.p[self.pos]
        if b <= 0x1f or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
            return self._skip_chunks(0)
        self.read_int()
        return self.err

    cdef int _skip_n(self, long long n):
        if n < 0 or n > self.end - self.pos:
            # every value takes at least one byte: a count larger than the span is a lie
            self.fail(H_ERR_TOO_BIG)
            return self.err
        while n > 0 and self.err == H_OK:
            self.skip()
            n -= 1
        return self.err

    cdef int _skip_until_z(self, int pairs):
        while self.err == H_OK:
            if not self._need(1):
                break
            if self.p[self.pos] == 0x5a:
                self.pos += 1
                break
            self.skip()
            if pairs:
                self.skip()
        return self.err

    cdef int _skip_object(self, long long ref):
        if ref < 0 or ref >= len(self._class_fields):
            self.fail(H_ERR_BAD_REF)
            return self.err
        return self._skip_n(<long long>self._class_fields[ref])

    cdef int _class_def(self):
        cdef long long n
        self._skip_chunks(0)  # the class name is a string
        n = self.read_int()
        if self.err:
            return self.err
        if n < 0 or n > self.end - self.pos:
            self.fail(H_ERR_TOO_BIG)
            return self.err
        for _ in range(n):
            self._skip_chunks(0)
            if self.err:
                return self.err
        self._class_fields.append(n)
        return self.err

    cdef int skip(self):
        cdef unsigned char b
        cdef Py_ssize_t n
        if self.err:
            return self.err
        if not self._need(1):
            return self.err
        b = self.p[self.pos]
        if b <= 0x1f or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53:
            return self._skip_chunks(0)
        if 0x20 <= b <= 0x2f or 0x34 <= b <= 0x37 or b == 0x41 or b == 0x42:
            return self._skip_chunks(1)
        if 0x80 <= b or b == 0x49 or b == 0x59 or b == 0x4c or 0x38 <= b <= 0x3f:
            self.read_int()
            return self.err
        self.pos += 1
        if b == 0x4e or b == 0x54 or b == 0x46 or b == 0x5b or b == 0x5c:
            return self.err
        if b == 0x44 or b == 0x4a:
            n = 8
        elif b == 0x4b or b == 0x5f:
            n = 4
        elif b == 0x5d:
            n = 1
        elif b == 0x5e:
            n = 2
        else:
            n = -1
        if n >= 0:
            if self._need(n):
                self.pos += n
            return self.err
        if b == 0x51:  # reference
            self.read_int()
            return self.err
        self.depth += 1
        if self.depth > H_MAX_DEPTH:
            self.fail(H_ERR_DEPTH)
            return self.err
        if b == 0x43:  # class definition, then the value that uses it
            if self._class_def() == H_OK:
                self.skip()
        elif b == 0x4f:
            self._skip_object(self.read_int())
        elif 0x60 <= b <= 0x6f:
            self._skip_object(b - 0x60)
        elif b == 0x48:
            self._skip_until_z(1)
        elif b == 0x4d:
            if self.skip_type() == H_OK:
                self._skip_until_z(1)
        elif b == 0x55:
            if self.skip_type() == H_OK:
                self._skip_until_z(0)
        elif b == 0x57:
            self._skip_until_z(0)
        elif b == 0x56:
            if self.skip_type() == H_OK:
                self._skip_n(self.read_int())
        elif b == 0x58:
            self._skip_n(self.read_int())
        elif 0x70 <= b <= 0x77:
            if self.skip_type() == H_OK:
                self._skip_n(b - 0x70)
        elif 0x78 <= b <= 0x7f:
            self._skip_n(b - 0x78)
        else:
            self.pos -= 1
            self.fail(H_ERR_BAD_TAG)
        self.depth -= 1
        return self.err

    cdef object read_simple(self):
        cdef unsigned char b
        if not self._need(1):
            return None
        b = self.p[self.pos]
        if b <= 0x1f or 0x30 <= b <= 0x33 or b == 0x52 or b == 0x53 or b == 0x4e:
            return self.read_str()
        if b == 0x54:
            self.pos += 1
            return True
        if b == 0x46:
            self.pos += 1
            return False
        if 0x80 <= b or b == 0x49 or b == 0x59 or b == 0x4c or 0x38 <= b <= 0x3f:
            return self.read_int()
        self.skip()
        return ...

    cdef dict read_map(self):
        cdef dict out = {}
        cdef unsigned char b
        if not self._need(1):
            return out
        b = self.p[self.pos]
        if b != 0x48 and b != 0x4d:
            self.fail(H_ERR_BAD_TAG)
            return out
        self.pos += 1
        if b == 0x4d and self.skip_type():
            return out
        while self.err == H_OK:
            if not self._need(1):
                break
            if self.p[self.pos] == 0x5a:
                self.pos += 1
                break
            k = self.read_simple()
            v = self.read_simple()
            if self.err:
                break
            if k is not ...:
                out[k] = v
        return out

    cdef dict read_map_keys(self, tuple wanted):
        """Like read_map, but only the entries whose (string) key is in `wanted` (UTF-8
        bytes) are decoded; the rest are skipped without allocating."""
        cdef dict out = {}
        cdef unsigned char b
        cdef Py_ssize_t n, kstart, klen
        cdef bytes w
        if not self._need(1):
            return out
        b = self.p[self.pos]
        if b != 0x48 and b != 0x4d:
            self.fail(H_ERR_BAD_TAG)
            return out
        self.pos += 1
        if b == 0x4d and self.skip_type():
            return out
        while self.err == H_OK:
            if not self._need(1):
                break
            b = self.p[self.pos]
            if b == 0x5a:
                self.pos += 1
                break
            if b <= 0x1f or 0x30 <= b <= 0x33 or b == 0x53:
                if b <= 0x1f:
                    self.pos += 1
                    n = b
                elif b <= 0x33:
                    if not self._need(2):
                        break
                    n = ((b - 0x30) << 8) | self.p[self.pos + 1]
                    self.pos += 2
                else:
                    if not self._need(3):
                        break
                    n = (self.p[self.pos + 1] << 8) | self.p[self.pos + 2]
                    self.pos += 3
                kstart = self.pos
                if self.skip_string_chars(n):
                    break
                klen = self.pos - kstart
                matched = None
                for w in wanted:
                    if len(w) == klen and memcmp(self.p + kstart, <const char*>w, klen) == 0:
                        matched = w
                        break
                if matched is not None:
                    v = self.read_simple()
                    if self.err == H_OK and v is not ...:
                        out[(<bytes>matched).decode()] = v
                else:
                    self.skip()
            else:
                self.skip()
                self.skip()
        return out

    # Python-facing helpers (tests, control plane); the codecs use the cdef methods.
    def py_skip(self):
        """Skip one value; returns the error code (0 = ok)."""
        return self.skip()

    def py_read_str(self):
        return self.read_str()

    def py_read_map(self):
        return self.read_map()

    def py_read_simple(self):
        return self.read_simple()

    def py_read_map_keys(self, tuple wanted):
        return self.read_map_keys(wanted)


cdef class H1Cursor(HCursor):
    def __cinit__(self, object data, Py_ssize_t start=0, Py_ssize_t end=-1):
        self._classes = []
        self.int32_tag = 0x77
        self.str_chunk_tag = 0x73
        self._open(data, start, end)

    cdef int _skip_chunks(self, unsigned char more, unsigned char final):
        cdef unsigned char b
        cdef Py_ssize_t n
        while self.err == H_OK:
            if not self._need(1):
                break
            b = self.p[self.pos]
            if more == 0x73 and (b <= 0x1f or 0x30 <= b <= 0x33):
                # a compact string ends the chunks, as read_str() takes it (the draft's
                # string ::= 's' b1 b0 <utf8> string; found by the atheris campaign)
                self.pos += 1
                if b <= 0x1f:
                    self.skip_string_chars(b)
                elif self._need(1):
                    n = ((b - 0x30) << 8) | self.p[self.pos]
                    self.pos += 1
                    self.skip_string_chars(n)
                break
            if not self._need(3):
                break
            if b != more and b != final:
                self.fail(H_ERR_BAD_TAG)
                break
            n = (self.p[self.pos + 1] << 8) | self.p[self.pos + 2]
            self.pos += 3
            if more == 0x73:
                self.skip_string_chars(n)
            elif self._need(n):
                self.pos += n
            if b == final:
                break
        return self.err

    cdef int _skip_type_opt(self):
        """An optional 't' u16-len type name."""
        cdef Py_ssize_t n
        if self.pos < self.end and self.p[self.pos] == 0x74:
            if not self._need(3):
                return self.err
            n = (self.p[self.pos + 1] << 8) | self.p[self.pos + 2]
            self.pos += 3
            if self._need(n):
                self.pos += n
        return self.err

    cdef int _skip_until_z(self, int pairs):
        while self.err == H_OK:
            if not self._need(1):
                break
            if self.p[self.pos] == 0x7a:
                self.pos += 1
                break
            self.skip()
            if pairs:
                self.skip()
        return self.err

    cdef int _class_def(self):
        cdef long long n, nf
        n = self.read_int()
        if self.err:
            return self.err
        if not self._need(n):
            return self.err
        self.pos += n
        nf = self.read_int()
        if self.err:
            return self.err
        if nf < 0 or nf > self.end - self.pos:
            self.fail(H_ERR_TOO_BIG)
            return self.err
        names = []
        for _ in range(nf):
            names.append(self.read_str())
            if self.err:
                return self.err
        self._classes.append(names)
        return self.err

    cdef int skip(self):
        cdef unsigned char b
        cdef Py_ssize_t n
        cdef long long ref
        if self.err:
            return self.err
        if not self._need(1):
            return self.err
        b = self.p[self.pos]
        if b <= 0x1f or 0x30 <= b <= 0x33:
            self.pos += 1
            if b <= 0x1f:
                return self.skip_string_chars(b)
            if self._need(1):
                n = ((b - 0x30) << 8) | self.p[self.pos]
                self.pos += 1
                self.skip_string_chars(n)
            return self.err
        if b == 0x53 or b == 0x73:
            return self._skip_chunks(0x73, 0x53)
        if b == 0x42 or b == 0x62:
            return self._skip_chunks(0x62, 0x42)
        if 0x20 <= b <= 0x2f:
            self.pos += 1
            if self._need(b - 0x20):
                self.pos += b - 0x20
            return self.err
        if 0x80 <= b or b == 0x49 or b == 0x77 or b == 0x4c or 0x38 <= b <= 0x3f:
            self.read_int()
            return self.err
        self.pos += 1
        if b == 0x4e or b == 0x54 or b == 0x46 or b == 0x67 or b == 0x68:
            return self.err
        if b == 0x44 or b == 0x64:
            n = 8
        elif b == 0x6b or b == 0x52:
            n = 4
        elif b == 0x69 or b == 0x4a:
            n = 1
        elif b == 0x6a or b == 0x4b:
            n = 2
        else:
            n = -1
        if n >= 0:
            if self._need(n):
                self.pos += n
            return self.err
        self.depth += 1
        if self.depth > H_MAX_DEPTH:
            self.fail(H_ERR_DEPTH)
            return self.err
        if b == 0x4f:  # class definition, then the instance that uses it
            if self._class_def() == H_OK:
                self.skip()
        elif b == 0x6f:
            ref = self.read_int()
            if self.err == H_OK:
                if ref < 0 or ref >= len(self._classes):
                    self.fail(H_ERR_BAD_REF)
                else:
                    for _ in range(len(<list>self._classes[ref])):
                        if self.skip():
                            break
        elif b == 0x56:
            if self._skip_type_opt() == H_OK and self._need(1):
                if self.p[self.pos] == 0x6e:
                    self.pos += 2
                elif self.p[self.pos] == 0x6c:
                    self.pos += 5
                if self.pos > self.end:
                    self.pos = self.end     # a truncated length: stay inside the span
                    self.fail(H_ERR_TRUNCATED)
                self._skip_until_z(0)
        elif b == 0x4d:
            if self._skip_type_opt() == H_OK:
                self._skip_until_z(1)
        else:
            self.pos -= 1
            self.fail(H_ERR_BAD_TAG)
        self.depth -= 1
        return self.err

    @property
    def offset(self):
        return self.pos

    def py_skip(self):
        return self.skip()

    def py_read_str(self):
        return self.read_str()


cpdef object sofa_request_method(object content, Py_ssize_t start=0, Py_ssize_t end=-1):
    """The `methodName` field of a SofaRequest in SOFA's pre-final Hessian, or None.

    Reads the leading class definition, then the instance's fields up to methodName
    (skipping the ones before it). Bad or truncated content gives None, never an error.
    """
    cdef H1Cursor c
    cdef long long ref
    cdef list names
    try:
        c = H1Cursor(content, start, end)
        if not c._need(1) or c.p[c.pos] != 0x4f:
            return None
        c.pos += 1
        if c._class_def():
            return None
        if not c._need(1) or c.p[c.pos] != 0x6f:
            return None
        c.pos += 1
        ref = c.read_int()
        if c.err or ref != len(c._classes) - 1:
            return None
        names = c._classes[ref]
        for name in names:
            if name == "methodName":
                s = c.read_str()
                return None if c.err else s
            if c.skip():
                return None
    except Exception:  # belt and braces: content is untrusted, routing falls back
        return None
    return None


cdef Py_ssize_t _utf16_units(str s):
    cdef Py_ssize_t n = len(s)
    cdef Py_UCS4 ch
    for ch in s:
        if ch > 0xffff:
            n += 1
    return n


cdef bytes _h2_final_chunk(str s):
    cdef bytes raw = s.encode("utf-8", "surrogatepass")
    cdef Py_ssize_t units = _utf16_units(s)
    if units <= 31:
        return bytes((units,)) + raw
    if units <= 1023:
        return bytes((0x30 + (units >> 8), units & 0xff)) + raw
    return b"S" + units.to_bytes(2, "big") + raw


cpdef bytes h2_encode_str(str s):
    """A final-spec Hessian 2 string as Java's Hessian2Output writes it: 'R' chunks of
    0x8000 units while more than that remain, then the shortest final form."""
    cdef list out
    if len(s) <= 0x8000:
        return _h2_final_chunk(s)
    out = []
    while len(s) > 0x8000:
        chunk = s[:0x8000]
        s = s[0x8000:]
        cu = _utf16_units(chunk)
        out.append(b"R" + cu.to_bytes(2, "big") + chunk.encode("utf-8", "surrogatepass"))
    out.append(_h2_final_chunk(s))
    return b"".join(out)


def h2_encode_simple(object v):
    """Final-spec Hessian 2 encoding of None, bool, int, str (error replies, attachments)."""
    if v is None:
        return b"N"
    if v is True:
        return b"T"
    if v is False:
        return b"F"
    if isinstance(v, int):
        if -16 <= v <= 47:
            return bytes((0x90 + v,))
        if -2048 <= v <= 2047:
            return bytes((0xc8 + (v >> 8), v & 0xff))
        if -262144 <= v <= 262143:
            return bytes((0xd4 + (v >> 16), (v >> 8) & 0xff, v & 0xff))
        if -0x80000000 <= v <= 0x7fffffff:
            return b"I" + v.to_bytes(4, "big", signed=True)
        return b"L" + v.to_bytes(8, "big", signed=True)
    if isinstance(v, str):
        return h2_encode_str(v)
    raise TypeError(f"h2_encode_simple: unsupported {type(v).__name__}")


def h2_encode_map(dict m):
    """An untyped Hessian 2 map ('H' ... 'Z') of simple keys and values."""
    parts = [b"H"]
    for k, v in m.items():
        parts.append(h2_encode_simple(k))
        parts.append(h2_encode_simple(v))
    parts.append(b"Z")
    return b"".join(parts)
