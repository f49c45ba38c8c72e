# HPACK (RFC 7541), sans-IO: header blocks in, header lists out, and back.
#
# Contract:
# - `Decoder.decode_block(p, n, out)` decodes one complete header block, appending
#   (name, value) tuples of bytes to `out`, and returns HPACK_OK or an HPACK_E_* code.
#   It never raises for bad input. Every size is checked before an object is made:
#   a string's length against the bytes left in the block; a decoded string against the
#   header and header-list limits (an over-limit field is decoded in a C scratch buffer and
#   dropped, no object made, unless the dynamic table must hold it, which the table size
#   bounds).
#   Codes above HPACK_E_LIMIT leave the dynamic table out of step with the peer: the
#   connection is lost (HTTP/2 COMPRESSION_ERROR). The HPACK_E_LIMIT codes mean the whole
#   block was decoded and the table is in step, but the header list broke a limit:
#   a stream-level error (HTTP/2 resets the stream or answers 431).
#   With `done`, a prefix of a block may be given: done[0] is set to the end of the last
#   complete representation (HPACK_E_TRUNCATED then only means "more to come"), and the
#   table has taken every representation before it: a block too large to buffer is
#   decoded piece by piece to keep the table in step (HTTP/2 CONTINUATION floods).
# - `Encoder.encode_block(headers)` returns the block for a list of (name, value) bytes
#   tuples (names lower-case already), emitting any pending table-size update first.

cdef enum:
    HPACK_OK = 0
    HPACK_E_TRUNCATED = -1          # a representation runs past the end of the block
    HPACK_E_INTEGER = -2            # an integer over 2^31-1 (or longer than 5 octets)
    HPACK_E_INDEX = -3              # index 0, or beyond the static + dynamic tables
    HPACK_E_HUFFMAN = -4            # EOS inside a string, or bad padding
    HPACK_E_TABLE_SIZE = -5         # size update above the bound we advertised
    HPACK_E_UPDATE_POSITION = -6    # size update after a field, or a required one missing
    HPACK_E_LIMIT = -10             # (codes below: the block decoded, the table in step)
    HPACK_E_HEADER_TOO_LARGE = -11  # one field (name + value) over max_header_size
    HPACK_E_LIST_TOO_LARGE = -12    # sum(len(name) + len(value) + 32) over max_header_list_size
    HPACK_E_TOO_MANY = -13          # more than max_headers fields

cdef enum:
    HPACK_DEFAULT_TABLE_SIZE = 4096
    HPACK_ENTRY_OVERHEAD = 32


cdef class Decoder:
    cdef list _entries              # list[tuple[bytes, bytes] | None]: dynamic table,
    #                                 oldest at _first, newest last
    cdef Py_ssize_t _first
    cdef Py_ssize_t _size           # octets in the dynamic table (RFC 7541 4.1)
    cdef Py_ssize_t _max_size       # the table's size now (the last size update)
    cdef Py_ssize_t _allowed        # the bound we advertised (SETTINGS_HEADER_TABLE_SIZE)
    cdef bint _update_required      # the bound went down: the next block must open with an update
    cdef unsigned char* _scratch    # Huffman output, grown to the largest string seen
    cdef Py_ssize_t _scratch_cap
    cdef public Py_ssize_t max_header_list_size
    cdef public Py_ssize_t max_header_size
    cdef public int max_headers     # 0: no limit
    cdef readonly Py_ssize_t last_list_size   # RFC size of the last decoded list

    cdef int decode_block(self, const unsigned char* p, Py_ssize_t n, list out,
                          Py_ssize_t* done=*) except -100
    cdef void set_allowed_table_size(self, Py_ssize_t size) noexcept
    cdef int _evict(self, Py_ssize_t limit) except -1
    cdef int _insert(self, object entry, Py_ssize_t size) except -1
    cdef unsigned char* _grow(self, Py_ssize_t n) except NULL


cdef class Encoder:
    cdef list _entries              # list[tuple[bytes, bytes] | None], oldest at _first
    cdef Py_ssize_t _first
    cdef long long _base_seq        # insertion number of _entries[0]
    cdef Py_ssize_t _size
    cdef Py_ssize_t _max_size
    cdef dict _by_pair              # dict[tuple[bytes, bytes], int]: newest insertion number
    cdef dict _by_name              # dict[bytes, int]: newest insertion number of the name
    cdef Py_ssize_t _pending_min    # smallest size set since the last block (-1: none)
    cdef Py_ssize_t _pending_final
    cdef unsigned char* _out        # the block being built
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _len
    cdef public bint huffman        # Huffman-code strings when that is shorter
    cdef public frozenset never_index   # frozenset[bytes]: names sent as never-indexed
    cdef public frozenset no_index      # frozenset[bytes]: names not worth a table slot

    cpdef bytes encode_block(self, list headers)
    cpdef void set_max_table_size(self, Py_ssize_t size)
    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef void _put_int(self, unsigned int prefix_bits, unsigned char first,
                       unsigned long long v) noexcept
    cdef int _put_string(self, bytes s) except -1
    cdef int _add(self, object entry, bytes name, Py_ssize_t size) except -1
    cdef int _evict_to(self, Py_ssize_t limit) except -1
    cdef Py_ssize_t _dyn_index(self, long long seq) noexcept
