# Hessian readers over a byte span: the final Hessian 2.0 spec (Dubbo, HSF) and SOFA's
# pre-final 2.0 draft (Bolt SofaRequest content).
#
# Contract: a cursor never raises for bad input. Every method returns normally; on bad or
# truncated input it sets `err` (an H_ERR_* code) and the caller checks `err` after the
# call. Values read as Python objects (strings, small scalars) are only built for the few
# routing fields; everything else is skipped without allocating.

cdef enum:
    H_OK = 0
    H_ERR_TRUNCATED = 1     # the value runs past the end of the span
    H_ERR_BAD_TAG = 2       # a byte that cannot start a value here
    H_ERR_DEPTH = 3         # nesting deeper than H_MAX_DEPTH
    H_ERR_BAD_REF = 4       # an object names a class definition that was never sent
    H_ERR_BAD_UTF8 = 5      # a string is not UTF-8
    H_ERR_TOO_BIG = 6       # a length field larger than the span (checked before use)
    H_ERR_NOT_STRING = 7    # a routing field that must be a string is not

cdef enum:
    H_MAX_DEPTH = 64


cdef class HCursor:
    """What both dialects share: the span, the error code, bounds checks, UTF-8 string
    characters, int and string values (they differ there only in a tag or two)."""
    cdef const unsigned char* p
    cdef Py_ssize_t pos
    cdef Py_ssize_t end
    cdef public int err
    cdef object _owner              # the buffer p points into, kept alive
    cdef int depth
    cdef unsigned char int32_tag    # 0x59 'Y' (Hessian 2.0), 0x77 'w' (SOFA's draft)
    cdef unsigned char str_chunk_tag  # a non-final string chunk: 0x52 'R' / 0x73 's'

    cdef int _open(self, object data, Py_ssize_t start, Py_ssize_t end) except -1
    cdef void fail(self, int code) noexcept
    cdef bint _need(self, Py_ssize_t n) noexcept
    cdef int skip_string_chars(self, Py_ssize_t nchars)
    cdef long long read_int(self)   # an int or long value; err set if not one
    cdef object read_str(self)      # str, or None for null; err set if neither


cdef class H2Cursor(HCursor):
    """Final-spec Hessian 2 reader. Class definitions persist across values (Dubbo writes
    the whole body with one Hessian2Output)."""
    cdef list _class_fields         # list[int]: field count of each class definition

    cdef int _skip_chunks(self, int binary)
    cdef int _skip_n(self, long long n)
    cdef int _skip_until_z(self, int pairs)
    cdef int _skip_object(self, long long ref)
    cdef int _class_def(self)
    cdef int skip(self)             # skip one value; returns err
    # None/bool/int/str; any other value is skipped and read as Ellipsis
    cdef object read_simple(self)
    cdef dict read_map(self)        # an untyped (H) or typed (M) map of simple values
    cdef dict read_map_keys(self, tuple wanted)  # only the keys in wanted (UTF-8 bytes)
    cdef int skip_type(self)


cdef class H1Cursor(HCursor):
    """SOFA's pre-final Hessian 2.0 draft ('O' class definition, 'o' instance, 'V' list
    with 't'/'n'/'l', 'M' map, refs 0x4a/0x4b/'R', 'z' end)."""
    cdef list _classes              # list[list[str]]: field names of each class definition

    cdef int _skip_chunks(self, unsigned char more, unsigned char final)
    cdef int _skip_type_opt(self)
    cdef int _skip_until_z(self, int pairs)
    cdef int _class_def(self)
    cdef int skip(self)


cpdef object sofa_request_method(object content, Py_ssize_t start=*, Py_ssize_t end=*)
cpdef bytes h2_encode_str(str s)
